"""Online updates of the serving adapter from feedback (LLM4Rec eq. 26-33).

- Momentum SGD (eq. 26-27): v <- mu v + g, theta <- theta - eta_t v.
- Uncertainty-scaled step (eq. 28): eta_t = eta * max(min_scale, 1 - H / log N), H the mean entropy of
  the model's next-item distribution on the batch: the less sure the model is, the smaller the step.
- Importance-selected updates (eq. 29-30): per tensor, s = |g| / max|g|; only entries with s >= tau move.
  The fraction that moved is reported.
- Explicit and implicit feedback (eq. 31-32): ratings are explicit, the rest implicit; each group's
  loss is weighted by its measured reliability, the inverse of the running variance of its per-event
  loss (noisier signals count less), normalised to mean 1 over the groups in the batch.
- Elastic Weight Consolidation (eq. 33; Kirkpatrick et al. 2017), online variant (Schwarz et al. 2018):
  lambda/2 * sum F (theta - theta*)^2 with a diagonal Fisher F estimated on the training data, kept as a
  running average of squared gradients, and the anchor theta* refreshed every `consolidate_every` events.
- A non-finite loss or gradient skips the step and is counted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from models.adapter import ServingAdapter
from models.llm4rec import LLM4Rec
from models.scoring import pad_histories

EXPLICIT, IMPLICIT = "explicit", "implicit"


@dataclass(frozen=True)
class OnlineConfig:
    """The online update's knobs. No defaults here: they live, with their bounds and the reasons for
    their values, in `learner.settings.OnlineSettings`, whose `to_config()` builds this."""

    lr: float  # eta, eq. 27
    momentum: float  # mu, eq. 26
    importance_threshold: float  # tau, eq. 30
    lambda_ewc: float  # lambda, eq. 33
    fisher_decay: float  # running average of squared gradients (online EWC)
    consolidate_every: int  # events between anchor refreshes
    min_lr_scale: float  # floor of the uncertainty scaling, eq. 28
    reliability_decay: float  # running loss variance per feedback group, eq. 31-32
    history_len: int  # newest items the user model reads in the learner
    refresh_every: int  # a user's frozen-model vector is recomputed once their history grew by this much
    negatives: int  # sampled-softmax negatives per step (0: full softmax)


@dataclass(frozen=True)
class Example:
    """One event ready to learn from: the user's history before it, the item, and its signal."""

    history: np.ndarray  # internal item ids, oldest first
    item: int
    group: str  # EXPLICIT | IMPLICIT
    positive: float  # weight of "the user wants this item" (next-item cross-entropy)
    negative: float  # weight of "the user does not want it" (unlikelihood, -log(1 - p))
    user: str = ""  # whose history: keys the frozen-model vector cache ("" = not cached)


@dataclass(frozen=True)
class StepStats:
    loss: float
    ewc: float
    lr: float
    updated_fraction: float
    skipped: bool


@dataclass(frozen=True)
class Snapshot:
    params: dict[str, torch.Tensor]
    velocity: dict[str, torch.Tensor]
    fisher: dict[str, torch.Tensor]
    anchor: dict[str, torch.Tensor]
    loss_var: dict[str, float]
    events_since_anchor: int


def _clone(d: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in d.items()}


class OnlineTrainer:
    def __init__(self, model: LLM4Rec, adapter: ServingAdapter, config: OnlineConfig) -> None:
        self.model, self.adapter, self.config = model.eval(), adapter, config
        with torch.no_grad():
            self.items = model.item_vectors()[0].detach().clone()  # (N, D) fixed between re-trainings; own copy
            self.pop = model.popularity_term(model.serve_gamma).detach()  # (N,)
        self.params = dict(adapter.named_parameters())
        self.velocity = {k: torch.zeros_like(p) for k, p in self.params.items()}
        self.fisher = {k: torch.zeros_like(p) for k, p in self.params.items()}
        self.anchor = {k: p.detach().clone() for k, p in self.params.items()}
        self.loss_var = {EXPLICIT: 1.0, IMPLICIT: 1.0}
        self.events_since_anchor = 0
        self.skipped = 0
        self._user_cache: dict[str, tuple[int, torch.Tensor]] = {}

    def base_users(self, histories: Sequence[np.ndarray], users: Sequence[str] = ()) -> torch.Tensor:
        """(B, D) the frozen user model over each history. With `users`, a user's vector is reused
        until their history has grown by `refresh_every` items: the frozen model's view of a user moves
        slowly, and re-encoding every history on every event is most of the learner's cost."""
        keys = list(users) or [""] * len(histories)
        todo = [j for j, (k, h) in enumerate(zip(keys, histories, strict=True)) if self._stale(k, len(h))]
        fresh = {}
        if todo:
            with torch.no_grad():  # not inference_mode: the adapter's autograd graph starts from these
                L = self.config.history_len
                seq = pad_histories([histories[j][-L:] for j in todo], L)
                fresh = dict(zip(todo, self.model.user_vectors(seq), strict=True))
        for j, v in fresh.items():
            if keys[j]:
                self._user_cache[keys[j]] = (len(histories[j]), v)
        if len(self._user_cache) > 200_000:
            self._user_cache.clear()
        return torch.stack([fresh[j] if j in fresh else self._user_cache[keys[j]][1] for j in range(len(keys))])

    def _stale(self, user: str, history_len: int) -> bool:
        cached = self._user_cache.get(user) if user else None
        return cached is None or history_len - cached[0] >= self.config.refresh_every

    def losses(self, batch: Sequence[Example], full: bool = False,
               adapter: ServingAdapter | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Per-example loss (B,) and the batch's mean predictive entropy (normalised to [0, 1]).

        Training steps use a sampled softmax (the targets against `negatives` items drawn uniformly,
        with the logQ correction; Bengio & Senecal 2008): the full catalogue is most of a step's cost.
        `full` scores every item (the guardrail's exact yardstick); `adapter` defaults to the trained one."""
        a = adapter or self.adapter
        u = a.user(self.base_users([e.history for e in batch], [e.user for e in batch]))  # (B, D)
        idx = torch.tensor([e.item for e in batch])
        rows = torch.arange(len(batch))
        N, K = self.items.shape[0], self.config.negatives
        if full or K <= 0 or N <= 2 * K:
            logp = torch.log_softmax(u @ self.items.T + a.item_bias + self.pop, dim=1)  # (B, N)
            lp, norm = logp[rows, idx], math.log(N)
        else:
            cand = torch.cat([idx, torch.randint(N, (K,))])  # (B + K,): every target is everyone's candidate
            logits = u @ self.items[cand].T + a.item_bias[cand] + self.pop[cand]  # (B, B + K)
            # uniform sampling: a negative stands for N / K items (logQ); targets enter once, exactly
            logits = logits + torch.cat([torch.zeros(len(batch)), torch.full((K,), math.log(N / K))])
            clash = (cand.unsqueeze(0) == idx.unsqueeze(1)) & ~torch.eye(len(batch), len(cand), dtype=torch.bool)
            logp = torch.log_softmax(logits.masked_fill(clash, -torch.inf), dim=1)
            lp, norm = logp[rows, rows], math.log(len(cand))  # entropy can reach log(candidates) at most
        pos = torch.tensor([e.positive for e in batch])
        neg = torch.tensor([e.negative for e in batch])
        per = pos * -lp + neg * -torch.log1p(-lp.exp().clamp(max=1 - 1e-6))
        p = logp.detach().exp()
        entropy = -(p * logp.detach().nan_to_num(0.0, neginf=0.0)).sum(1).mean() / norm
        return per, entropy

    def step(self, batch: Sequence[Example]) -> StepStats:
        c = self.config
        per, entropy = self.losses(batch)
        if not torch.isfinite(per).all():
            self.skipped += 1
            return StepStats(float("nan"), 0.0, 0.0, 0.0, True)
        weights = self._reliability(batch, per.detach())
        data_loss = (weights * per).mean()
        data_grads = torch.autograd.grad(data_loss, list(self.params.values()))
        with torch.no_grad():
            drift = {k: p - self.anchor[k] for k, p in self.params.items()}
            ewc = sum(((self.fisher[k] * d**2).sum() for k, d in drift.items()), torch.zeros(()))
            # the EWC term's gradient in closed form: lambda * F * (theta - theta*)
            grads = [g + c.lambda_ewc * self.fisher[k] * drift[k] for k, g in zip(self.params, data_grads, strict=True)]
        if not torch.isfinite(data_loss) or any(not torch.isfinite(g).all() for g in grads):
            self.skipped += 1
            return StepStats(float("nan"), float(ewc), 0.0, 0.0, True)  # e.g. an exploding EWC pull
        lr = c.lr * max(c.min_lr_scale, 1.0 - float(entropy))
        moved = total = 0
        with torch.no_grad():
            for (k, p), g, gd in zip(self.params.items(), grads, data_grads, strict=True):
                mask = (g.abs() >= c.importance_threshold * g.abs().max().clamp(min=1e-12)).to(g.dtype)
                self.velocity[k].mul_(c.momentum).add_(g * mask)
                p.sub_(lr * self.velocity[k] * mask)
                self.fisher[k].mul_(c.fisher_decay).add_((1 - c.fisher_decay) * gd**2)
                moved, total = moved + int(mask.sum()), total + mask.numel()
        self._maybe_consolidate(len(batch))
        return StepStats(float(data_loss.detach()), float(ewc), lr, moved / max(total, 1), False)

    def _reliability(self, batch: Sequence[Example], per: torch.Tensor) -> torch.Tensor:
        """Eq. 31-32: inverse running loss variance per feedback group, mean 1 over present groups."""
        groups = [e.group for e in batch]
        for g in set(groups):
            vals = per[[i for i, x in enumerate(groups) if x == g]]
            if len(vals) > 1:
                d = self.config.reliability_decay
                self.loss_var[g] = d * self.loss_var[g] + (1 - d) * float(vals.var())
        inv = {g: 1.0 / (self.loss_var[g] + 1e-3) for g in set(groups)}
        mean = sum(inv.values()) / len(inv)
        return torch.tensor([inv[g] / mean for g in groups])

    def _maybe_consolidate(self, n: int) -> None:
        self.events_since_anchor += n
        if self.events_since_anchor >= self.config.consolidate_every:
            self.anchor = {k: p.detach().clone() for k, p in self.params.items()}
            self.events_since_anchor = 0

    def fit_fisher(self, batches: Sequence[Sequence[Example]]) -> None:
        """The diagonal Fisher of the next-item loss on training examples: EWC's notion of what the
        adapter must not forget."""
        acc = {k: torch.zeros_like(p) for k, p in self.params.items()}
        for batch in batches:
            per, _ = self.losses(batch)
            for (k, _), g in zip(self.params.items(), torch.autograd.grad(per.mean(), list(self.params.values())),
                                 strict=True):  # fmt: skip
                acc[k] += g.detach() ** 2
        self.fisher = {k: v / max(len(batches), 1) for k, v in acc.items()}

    def evaluate(self, batch: Sequence[Example], adapter: ServingAdapter | None = None) -> float:
        """Mean loss without updating (the publishing guardrail's yardstick)."""
        if not batch:
            return 0.0
        with torch.no_grad():
            per, _ = self.losses(batch, full=True, adapter=adapter)
        return float(per.mean())

    def snapshot(self) -> Snapshot:
        """Everything a step changes, to undo it when its publish fails."""
        return Snapshot(_clone(self.params), _clone(self.velocity), _clone(self.fisher), _clone(self.anchor),
                        dict(self.loss_var), self.events_since_anchor)  # fmt: skip

    def restore(self, snap: Snapshot) -> None:
        with torch.no_grad():
            for k, v in snap.params.items():
                self.params[k].copy_(v)
        self.velocity, self.fisher, self.anchor = _clone(snap.velocity), _clone(snap.fisher), _clone(snap.anchor)
        self.loss_var, self.events_since_anchor = dict(snap.loss_var), snap.events_since_anchor

    def state(self) -> dict[str, np.ndarray]:
        return self.adapter.tensors()

    def load(self, tensors: dict[str, np.ndarray]) -> None:
        self.adapter.load_tensors(tensors)
