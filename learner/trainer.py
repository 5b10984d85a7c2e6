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
  running average of squared gradients (`fisher_decay` 1: the training data's, never the stream's), and
  the anchor theta* refreshed every `consolidate_every` events; taken as a proximal step after the data
  step, so that no lambda makes it diverge.
- Item-side learning: the corrections of the items' served vectors are trained too, row by row (eq. 29-30
  per item: s_i = |g_i| / max_j |g_j|), and consolidated differently from the adapter: their anchor is
  always the trained vectors (delta = 0) and their Fisher is the training data's and never decays into
  the stream's. Per item it is n_i * E[(1 - p)^2 u^2], the summed Fisher of the n_i training events whose
  target it was (the other events' terms are smaller by p^2): an item the training data knew well moves
  little, a rarely seen or new item follows its clicks.
- Streaming popularity (`learner.popularity`): the eq. 15 term reads a time-decayed count.
- A non-finite loss or gradient skips the step and is counted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from learner.popularity import DecayedPopularity
from models.adapter import ServingAdapter
from models.llm4rec import LLM4Rec
from retrieval.user_models import GenerativeUserModel, History, UserVectors

EXPLICIT, IMPLICIT = "explicit", "implicit"
ITEM_ROWS = {"item_bias", "item_delta"}  # the adapter's parameters with a row per item


@dataclass(frozen=True)
class OnlineConfig:
    """The online update's knobs. No defaults here: they live, with their bounds and the reasons for
    their values, in `learner.settings.OnlineSettings`, whose `to_config()` builds this."""

    lr: float  # eta, eq. 27
    momentum: float  # mu, eq. 26
    importance_threshold: float  # tau, eq. 30
    lambda_ewc: float  # lambda, eq. 33
    fisher_decay: float  # running average of squared gradients (online EWC); 1: the training data's, kept
    consolidate_every: int  # events between anchor refreshes
    min_lr_scale: float  # floor of the uncertainty scaling, eq. 28
    max_grad_norm: float  # bound on the adapter's gradient and on each item row's (0: none)
    reliability_decay: float  # running loss variance per feedback group, eq. 31-32
    negatives: int  # sampled-softmax negatives per step (0: full softmax)
    step_size: int  # examples per step (`Learner` splits a micro-batch's)
    adapter_updates: bool  # train the user-side map and the item biases
    item_updates: bool  # train the item-vector corrections
    item_lr: float  # eta of the item corrections (the proximal EWC step keeps well-known items nearly still)
    lambda_item: float  # EWC weight of the item corrections
    popularity_half_life_days: float  # 0: the training-time popularity, fixed


class Example(NamedTuple):
    """One event ready to learn from: the user's history before it, the item, and its signal. (A named
    tuple: a frozen dataclass took three times as long to build, per event of a stream.)"""

    history: History  # internal item ids, oldest first
    item: int
    group: str  # EXPLICIT | IMPLICIT
    positive: float  # weight of "the user wants this item" (next-item cross-entropy)
    negative: float  # weight of "the user does not want it" (unlikelihood, -log(1 - p))
    user: str = ""  # whose history: keys the users' vector cache ("" = not cached)
    served: np.ndarray | None = None  # (D,) the frozen model's vector of `history` as the service served it


@dataclass(frozen=True)
class StepStats:
    loss: float
    ewc: float
    lr: float
    updated_fraction: float
    skipped: bool


@dataclass(frozen=True)
class _Rows:
    """The item rows a softmax covered: `ids` (None: every item) and their corrections `delta`."""

    ids: torch.Tensor | None
    delta: torch.Tensor


_Losses = tuple[torch.Tensor, torch.Tensor, torch.Tensor, _Rows]  # per-example loss, entropy, user vectors, rows


@dataclass(frozen=True)
class Snapshot:
    adapter: dict[str, torch.Tensor]
    velocity: dict[str, torch.Tensor]
    fisher: dict[str, torch.Tensor]
    anchor: dict[str, torch.Tensor]
    loss_var: dict[str, float]
    events_since_anchor: int
    popularity: tuple[np.ndarray, float | None] | None
    last_step: torch.Tensor
    steps: int


def _clone(d: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in d.items()}


def _clipped(grads: dict[str, torch.Tensor], max_norm: float) -> dict[str, torch.Tensor]:
    """Gradients no larger than `max_norm`: the adapter's as one vector, the item rows' row by row. The
    user map and the item rows form a product, and without a bound they fed each other: a single user's
    binge drove the item corrections' norm from 1.2 to 1,000 in twelve steps of a small model once the
    map made it confident (the uncertainty scaling then gives the full step)."""
    if max_norm <= 0:
        return grads
    out = dict(grads)
    dense = [k for k in grads if k != "item_delta"]
    norm = torch.sqrt(sum(((grads[k] ** 2).sum() for k in dense), torch.zeros(())))
    for k in dense:
        out[k] = grads[k] * min(1.0, max_norm / max(float(norm), 1e-12))
    if "item_delta" in grads:
        g = grads["item_delta"]
        out["item_delta"] = g * (max_norm / g.norm(dim=1, keepdim=True).clamp(min=max_norm))
    return out


def _signal_loss(batch: Sequence[Example], lp: torch.Tensor) -> torch.Tensor:
    """(B,) each example's loss from its target's log-probability `lp`: cross-entropy weighted by how much
    the user wants the item, plus unlikelihood -log(1 - p) weighted by how much they do not."""
    pos = torch.tensor([e.positive for e in batch])
    neg = torch.tensor([e.negative for e in batch])
    return pos * -lp + neg * -torch.log1p(-lp.exp().clamp(max=1 - 1e-6))


_MINUS_INF = torch.tensor(-math.inf)


def _clashes(col: torch.Tensor, rows: int, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a sampled softmax's row meets its own target again, as another row's target or as a
    negative (accidental hits, masked out): (row, column) indices. `col`: each candidate's unique item,
    the first `rows` candidates being the rows' targets; `counts`: how often each unique item occurs.
    Only the rows whose target occurs more than once are compared: where the catalogue is large enough to
    sample from, a small share."""
    shared = (counts.index_select(0, col[:rows]) > 1).nonzero().squeeze(1)
    r, c = (col.unsqueeze(0) == col.index_select(0, shared).unsqueeze(1)).nonzero(as_tuple=True)
    r = shared.index_select(0, r)
    other = r != c
    return r[other], c[other]


def _importance(g: torch.Tensor, tau: float, rows: bool) -> torch.Tensor:
    """Eq. 29-30's selection mask: entries (or, with `rows`, whole rows by their norm) whose gradient is
    at least tau times the largest."""
    s = g.norm(dim=1, keepdim=True) if rows else g.abs()
    return (s >= tau * s.max().clamp(min=1e-12)).to(g.dtype).expand_as(g)


class OnlineTrainer:
    def __init__(self, model: LLM4Rec, adapter: ServingAdapter, config: OnlineConfig,
                 popularity: DecayedPopularity | None = None, user_refresh_every: int = 1) -> None:  # fmt: skip
        self.model, self.adapter, self.config = model.eval(), adapter, config
        # the frozen model's users, encoded and cached as the service does (`ProcessSettings.user_refresh_every`)
        self.users = UserVectors(GenerativeUserModel(model, version=""), user_refresh_every)
        with torch.no_grad():
            self.items = model.item_vectors()[0].detach().clone()  # (N, D) fixed between re-trainings; own copy
        on = model.config.pop_deconfound
        self.gamma = 0.0 if not on else float(model.gamma if model.serve_gamma is None else model.serve_gamma)
        self.popularity = popularity
        if popularity is not None:
            self._publish_popularity()
        learnt = {"A": config.adapter_updates, "B": config.adapter_updates, "item_bias": config.adapter_updates,
                  "item_delta": config.item_updates}  # fmt: skip
        self.params = {k: p for k, p in adapter.named_parameters() if learnt[k]}
        self.velocity = {k: torch.zeros_like(p) for k, p in self.params.items()}
        self.fisher = {k: torch.zeros_like(p) for k, p in self.params.items()}
        self.anchor = {k: p.detach().clone() for k, p in self.params.items()}
        self.loss_var = {EXPLICIT: 1.0, IMPLICIT: 1.0}
        self.events_since_anchor = 0
        self.skipped = 0
        self.steps = 0  # item-row steps taken; `last_step` (N,): the step each row's velocity was last updated
        self.last_step = torch.zeros(self.items.shape[0], dtype=torch.int64)

    def add_items(self, vectors: torch.Tensor) -> None:
        """Rows for items added after training (`vectors`: (m, D) their content-only vectors): no
        correction yet, and no Fisher (no training event knew them), so they follow their clicks."""
        m = len(vectors)
        self.items = torch.cat([self.items, vectors.detach().to(self.items.dtype)])
        self.adapter.grow(m)
        self.params = {k: p for k, p in self.adapter.named_parameters() if k in self.params}
        for state in (self.velocity, self.fisher, self.anchor):
            for k in ITEM_ROWS & state.keys():
                state[k] = torch.cat([state[k], state[k].new_zeros(m, *state[k].shape[1:])])
        self.last_step = torch.cat([self.last_step, self.last_step.new_zeros(m)])
        if self.popularity is not None:
            self._publish_popularity()

    def base_users(self, histories: Sequence[History], users: Sequence[str] = ()) -> torch.Tensor:
        """(B, D) the frozen user model over each history; with `users`, under the service's cache policy."""
        return self.users(list(users) or [""] * len(histories), histories)

    def base_of(self, batch: Sequence[Example], cached: bool = True) -> torch.Tensor:
        """(B, D) each example's frozen user vector: the one the service served for its history when the
        event logged it (`Example.served`), else encoded (`cached`: under the service's cache policy)."""
        todo = [j for j, e in enumerate(batch) if e.served is None]
        users = [batch[j].user if cached else "" for j in todo]
        encoded = self.base_users([batch[j].history for j in todo], users) if todo else None
        if len(todo) == len(batch):
            return encoded  # type: ignore[return-value]
        blank = np.zeros(self.items.shape[1], np.float32)
        out = torch.from_numpy(np.stack([blank if e.served is None else e.served for e in batch]))
        if encoded is not None:
            out[todo] = encoded
        return out

    def losses(self, batch: Sequence[Example], full: bool = False, adapter: ServingAdapter | None = None,
               base: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Per-example loss (B,) and the batch's mean predictive entropy (normalised to [0, 1]).

        Training steps use a sampled softmax (the targets against `negatives` items drawn uniformly,
        with the logQ correction; Bengio & Senecal 2008): the full catalogue is most of a step's cost.
        `full` scores every item (the guardrail's exact yardstick); `adapter` defaults to the trained one;
        `base`: the examples' frozen user vectors (B, D) when known (`base_users`), else encoded here."""
        per, entropy, _, _ = self._losses(batch, full, adapter, base=base)
        return per, entropy

    def _losses(self, batch: Sequence[Example], full: bool, adapter: ServingAdapter | None, leaf: bool = False,
                base: torch.Tensor | None = None) -> _Losses:  # fmt: skip
        """`losses`, the adapted user vectors (B, D) they were computed from, and the item rows the
        logits covered. `leaf`: those rows' corrections are a fresh leaf tensor (what a step takes the
        gradient of: the rows the softmax did not cover have none, and are never materialised)."""
        a = adapter or self.adapter
        if base is None:
            base = self.base_of(batch)
        u = a.user(base)  # (B, D)
        idx = torch.tensor([e.item for e in batch])
        rows = torch.arange(len(batch))
        N, K = self.items.shape[0], self.config.negatives
        if full or K <= 0 or N <= 2 * K:
            covered = _Rows(None, a.item_delta.detach().requires_grad_() if leaf else a.item_delta)
            logp = torch.log_softmax(self._catalogue_logits(u, covered.delta, a), dim=1)
            lp, norm = logp[rows, idx], math.log(N)
        else:
            cand = torch.cat([idx, torch.randint(N, (K,))])  # (B + K,): every target is everyone's candidate
            ids, col, counts = torch.unique(cand, return_inverse=True, return_counts=True)
            # index_select: row gathers several times faster than advanced indexing on the CPU
            rows_delta = (a.item_delta.detach() if leaf else a.item_delta).index_select(0, ids)
            covered = _Rows(ids, rows_delta.requires_grad_() if leaf else rows_delta)
            v = self.items.index_select(0, cand) + covered.delta.index_select(0, col)
            offset = self.gamma * a.log_pop.index_select(0, cand)
            # uniform sampling: a negative stands for N / K items (logQ); targets enter once, exactly
            offset[len(batch) :] += math.log(N / K)
            logits = torch.addmm(a.item_bias.index_select(0, cand) + offset, u, v.T)  # (B, B + K)
            logp = torch.log_softmax(logits.index_put_(_clashes(col, len(batch), counts), _MINUS_INF), dim=1)
            lp, norm = logp[rows, rows], math.log(len(cand))  # entropy can reach log(candidates) at most
        per = _signal_loss(batch, lp)
        p = logp.detach().exp()
        entropy = -(p * logp.detach().clamp(min=-1e30)).sum(1).mean() / norm  # masked: 0 * -1e30 = 0
        return per, entropy, u, covered

    def step(self, batch: Sequence[Example]) -> StepStats:
        c = self.config
        if not self.params:
            return StepStats(0.0, 0.0, 0.0, 0.0, True)
        items = "item_delta" in self.params
        per, entropy, _, covered = self._losses(batch, False, None, leaf=items)
        if not torch.isfinite(per).all():
            self.skipped += 1
            return StepStats(float("nan"), 0.0, 0.0, 0.0, True)
        dense = {k: p for k, p in self.params.items() if k != "item_delta"}
        data_loss = (self._reliability(batch, per.detach()) * per).mean()
        grads = dict(zip([*dense, *(["item_delta"] if items else [])],
                         torch.autograd.grad(data_loss, [*dense.values(), *([covered.delta] if items else [])]),
                         strict=True))  # fmt: skip
        grads = _clipped(grads, c.max_grad_norm)
        with torch.no_grad():
            ewc = sum(((c.lambda_ewc * self.fisher[k] * (p - self.anchor[k]) ** 2).sum() for k, p in dense.items()),
                      torch.zeros(()))  # fmt: skip
        if not torch.isfinite(data_loss) or any(not torch.isfinite(g).all() for g in grads.values()):
            self.skipped += 1
            return StepStats(float("nan"), float(ewc), 0.0, 0.0, True)
        scale = max(c.min_lr_scale, 1.0 - float(entropy))
        lr = c.lr * scale
        moved = total = 0
        self.steps += 1
        with torch.no_grad():
            for k, p in dense.items():
                mask = _importance(grads[k], c.importance_threshold, rows=False)
                self.velocity[k].mul_(c.momentum).add_(grads[k] * mask)
                # the proximal EWC step, argmin_x |x - (p - lr v)|^2 / 2 lr + lambda F (x - p*)^2 / 2: stable at
                # any lambda, where the explicit step lambda F (p - p*) diverges once lr lambda F > 2
                pull = lr * c.lambda_ewc * self.fisher[k] * mask
                p.copy_((p - lr * self.velocity[k] * mask + pull * self.anchor[k]) / (1 + pull))
                self.fisher[k].mul_(c.fisher_decay).add_((1 - c.fisher_decay) * grads[k] ** 2)
                moved, total = moved + int(mask.sum()), total + mask.numel()
            if items:
                item_ewc, rows_moved = self._step_items(covered, grads["item_delta"], c.item_lr * scale)
                ewc, moved = ewc + item_ewc, moved + rows_moved * self.items.shape[1]
                total += self.adapter.item_delta.numel()
        self._maybe_consolidate(len(batch))
        return StepStats(float(data_loss.detach()), float(ewc), lr, moved / max(total, 1), False)

    def _step_items(self, covered: _Rows, g: torch.Tensor, eta: float) -> tuple[torch.Tensor, int]:
        """Momentum SGD on the covered rows with eq. 29-30's row selection, then the proximal EWC step
        `argmin_x |x - p|^2 / 2 eta + lambda F x^2 / 2` (anchor 0) on the rows that moved: an explicit
        EWC gradient step diverges once eta * lambda * F > 2, and the items' Fisher grows with their
        training counts. Only the selected rows are touched: a row left out (outside the softmax's cover,
        or below the threshold) does not move, and its velocity decays lazily, by momentum ** (steps
        since its last update), which is the dense update's value exactly. Most sampled negatives are
        left out, so this also spares most of a step's gathers of item rows.
        Returns the moved rows' EWC penalty before the step and how many rows moved."""
        c, p, v = self.config, self.adapter.item_delta, self.velocity["item_delta"]
        moved = _importance(g, c.importance_threshold, rows=True)[:, 0] > 0
        ids = (covered.ids if covered.ids is not None else torch.arange(len(p)))[moved]
        g = g[moved]
        fisher, rows = self.fisher["item_delta"].index_select(0, ids), p.index_select(0, ids)
        ewc = (c.lambda_item * fisher * rows**2).sum()
        decay = c.momentum ** (self.steps - self.last_step[ids]).to(v.dtype)
        vel = v.index_select(0, ids) * decay.unsqueeze(1) + g
        v.index_copy_(0, ids, vel)
        self.last_step[ids] = self.steps
        p.index_copy_(0, ids, (rows - eta * vel) / (1 + eta * c.lambda_item * fisher))
        return ewc, len(ids)

    def observe(self, items: np.ndarray, timestamps: np.ndarray) -> None:
        """Count positive events into the streaming popularity (no-op when it is off)."""
        if self.popularity is not None and len(items):
            self.popularity.add(items, timestamps)
            self._publish_popularity()

    def _publish_popularity(self) -> None:
        assert self.popularity is not None
        with torch.no_grad():
            self.adapter.log_pop.copy_(torch.from_numpy(self.popularity.log1p(len(self.adapter.log_pop))))

    def _reliability(self, batch: Sequence[Example], per: torch.Tensor) -> torch.Tensor:
        """Eq. 31-32: inverse running loss variance per feedback group, mean 1 over present groups."""
        groups = [e.group for e in batch]
        for g in set(groups):
            vals = per[[i for i, x in enumerate(groups) if x == g]]
            var = float(vals.var()) if len(vals) > 1 else math.nan
            if math.isfinite(var):  # one overflowing batch must not zero a group's weight for good
                d = self.config.reliability_decay
                self.loss_var[g] = d * self.loss_var[g] + (1 - d) * var
        inv = {g: 1.0 / (self.loss_var[g] + 1e-3) for g in set(groups)}
        mean = sum(inv.values()) / len(inv)
        return torch.tensor([inv[g] / mean for g in groups])

    def _maybe_consolidate(self, n: int) -> None:
        """The adapter's anchor moves to where it is; the items' stays at the trained vectors."""
        self.events_since_anchor += n
        if self.events_since_anchor >= self.config.consolidate_every:
            self.anchor = {k: a if k == "item_delta" else self.params[k].detach().clone()
                           for k, a in self.anchor.items()}  # fmt: skip
            self.events_since_anchor = 0

    def fit_fisher(self, batches: Sequence[Sequence[Example]], item_counts: np.ndarray | None = None) -> None:
        """The diagonal Fisher of the next-item loss on training examples: EWC's notion of what the
        adapter must not forget. The items' rows: `item_counts` (N,) training events per item times the
        examples' mean (1 - p_target)^2 u^2 (the module docstring says why)."""
        acc = {k: torch.zeros_like(p) for k, p in self.params.items()}
        target_term = torch.zeros(self.items.shape[1])
        n = 0
        for batch in batches:
            per, _, u, _ = self._losses(batch, False, None)
            grads = torch.autograd.grad(per.mean(), list(self.params.values())) if self.params else ()
            for k, g in zip(self.params, grads, strict=True):
                acc[k] += g.detach() ** 2
            with torch.no_grad():
                u = u.detach()
                target_term += ((1 - (-per.detach()).exp()).unsqueeze(1) ** 2 * u**2).sum(0)
                n += len(batch)
        self.fisher = {k: v / max(len(batches), 1) for k, v in acc.items()}
        if "item_delta" in self.fisher:
            counts = torch.zeros(self.items.shape[0]) if item_counts is None else torch.from_numpy(item_counts).float()
            self.fisher["item_delta"] = counts.unsqueeze(1) * (target_term / max(n, 1))

    def evaluate(self, batch: Sequence[Example], adapter: ServingAdapter | None = None,
                 base: torch.Tensor | None = None) -> float:  # fmt: skip
        """Mean loss without updating (the publishing guardrail's yardstick; `base` as in `losses`)."""
        return float(self.full_losses(batch, adapter, base).mean()) if batch else 0.0

    def full_losses(self, batch: Sequence[Example], adapter: ServingAdapter | None = None,
                    base: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """(B,) each example's loss against the full catalogue, without updating; one example's loss does
        not depend on the others in the batch."""
        a = adapter or self.adapter
        with torch.no_grad():
            u = a.user(self.base_of(batch) if base is None else base)
            logits = self._catalogue_logits(u, a.item_delta, a)
            target = logits.gather(1, torch.tensor([[e.item] for e in batch])).squeeze(1)
            return _signal_loss(batch, target - torch.logsumexp(logits, 1))

    def _catalogue_logits(self, u: torch.Tensor, delta: torch.Tensor, a: ServingAdapter) -> torch.Tensor:
        """(B, N) adapted users' scores of every item, as served (eq. 15's popularity term included), with
        the item corrections `delta`; the biases enter as two more columns: one matmul, and no pass over
        the (B, N) logits to add them."""
        table = torch.cat([self.items + delta, a.item_bias.unsqueeze(1), a.log_pop.unsqueeze(1)], 1)
        return torch.cat([u, torch.ones(len(u), 1), torch.full((len(u), 1), self.gamma)], 1) @ table.T

    def snapshot(self) -> Snapshot:
        """Everything a step or an observation changes, to undo them when their publish fails."""
        pop = self.popularity
        counts = None if pop is None else (pop.counts.copy(), pop.t)
        fixed = "item_delta"  # the items' Fisher and anchor never change after `fit_fisher`: not copied
        return Snapshot(_clone(self.adapter.state_dict()), _clone(self.velocity),
                        _clone({k: v for k, v in self.fisher.items() if k != fixed}),
                        _clone({k: v for k, v in self.anchor.items() if k != fixed}), dict(self.loss_var),
                        self.events_since_anchor, counts, self.last_step.clone(), self.steps)  # fmt: skip

    def restore(self, snap: Snapshot) -> None:
        self.adapter.load_state_dict(snap.adapter)
        self.velocity = _clone(snap.velocity)
        self.fisher, self.anchor = self.fisher | _clone(snap.fisher), self.anchor | _clone(snap.anchor)
        self.loss_var, self.events_since_anchor = dict(snap.loss_var), snap.events_since_anchor
        self.last_step, self.steps = snap.last_step.clone(), snap.steps
        if self.popularity is not None and snap.popularity is not None:
            self.popularity.counts, self.popularity.t = snap.popularity[0].copy(), snap.popularity[1]

    def state(self) -> dict[str, np.ndarray]:
        return self.adapter.tensors()

    def load(self, tensors: dict[str, np.ndarray]) -> None:
        self.adapter.load_tensors(tensors)
