"""The streaming learner, measured: throughput, prequential replay, forgetting with and without EWC,
and freshness (feedback -> served adapter) through the real service, Kafka protocol and Redis.

    python bench/learner_bench.py --model runs/llm4rec --temporal-model runs/llm4rec-temporal
        [--sections throughput,prequential,forgetting,freshness] [--arms ARM,...]

- throughput: `Learner.process` on full micro-batches of the default size (one torch thread), publishing
  each batch's adapter to an in-process store (encode and sign included); random clicks, and the same
  clicks carrying the user vector the service served (`ServedUser`).
- prequential (recommend, then learn): a model trained on the first 80% of a dataset by time
  (`--temporal-model`, any dataset); the remaining interactions (first-time user-item pairs) stream in
  time order in batches of 64; each event is first scored (rank of its item among the listed items the
  user has not met, HR@10 and NDCG@10) against the user's history up to the event before it, as the
  service appends clicks at once, then the batch is learned. (Scoring a whole batch against the
  histories before it made users' rating sessions look unpredictable and popularity look useful.)
  Items first seen after the cut are listed when first clicked, with their content-only vectors.
  Users are encoded as the service encodes them. Arms: popularity fixed at the cut and streaming
  (the floors), frozen, the learner with each part switched on alone and together, and a periodic
  full retrain every tenth of the stream (the yardstick), each with the CPU seconds it spent
  learning; when named, periodic warm fine-tunes (`training.finetune`: the served weights trained on
  for an epoch), alone or under the learner. `--arms` runs some of them; the table shows every arm
  stored for the checkpoint (.cache/prequential), so slow arms can run in parallel.
- forgetting: the adapter alone, or the item rows alone, learn from a drifted segment (random users
  suddenly clicking one genre), then the temporal model's own test set is evaluated (full ranking),
  at several consolidation weights.
- freshness: the service (ASGI, in process) with Kafka (librdkafka's mock cluster, child process) and
  Redis, the learner consuming in the same event loop with its default batching: time from POST
  /feedback until /recommend reports the new adapter, and until the user's history holds the event.
Rewrites the `learner-<part>` sections of BENCHMARKS.md (`learner-<part>-<dataset>` for the two on
the temporal model).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from markdown_sections import command_line, machine, write_section
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.kafka_mock: the mock Kafka cluster in a child process

from common.adapter_store import MemoryAdapterStore  # noqa: E402
from common.events import FeedbackEvent, ServedUser  # noqa: E402
from common.process import freeze_startup_objects  # noqa: E402
from common.settings import AdapterSettings  # noqa: E402
from learner.build import DAY_S, build_learner  # noqa: E402
from learner.metrics import LearnerMetrics  # noqa: E402
from learner.pipeline import Learner  # noqa: E402
from learner.popularity import DecayedPopularity  # noqa: E402
from learner.settings import BatchSettings, GuardSettings, LearnerSettings, OnlineSettings  # noqa: E402
from models.data import Interactions  # noqa: E402
from models.scoring import PAD  # noqa: E402
from models.sequences import window_batches  # noqa: E402
from models.splits import temporal  # noqa: E402
from retrieval.user_models import UserVectors  # noqa: E402
from service.state import app_state  # noqa: E402
from tests.redis_keys import delete_prefixed  # noqa: E402
from training.checkpoint import Switches, checkpoint_version, read_checkpoint_meta, save_checkpoint  # noqa: E402
from training.experiment import OpenedCheckpoint as Checkpoint  # noqa: E402
from training.experiment import open_checkpoint  # noqa: E402
from training.finetune import fine_tune, merged  # noqa: E402

CACHE = ROOT / ".cache/text-embeddings"
RESULTS = ROOT / ".cache/prequential"  # per-event results of each arm, by checkpoint version and stream
USER_REFRESH_EVERY = LearnerSettings.model_fields["user_refresh_every"].default


def _learner(model: Path, guard: GuardSettings | None = None, user_refresh_every: int = USER_REFRESH_EVERY,
             **online: float) -> Learner:  # fmt: skip
    guard = guard or GuardSettings(holdout_every=0)
    return build_learner(model, CACHE, MemoryAdapterStore(), AdapterSettings(signing_key="bench"),  # type: ignore[arg-type]
                         OnlineSettings(**online).to_config(), guard.to_config(), LearnerMetrics(),  # type: ignore[arg-type]
                         user_refresh_every=user_refresh_every)  # fmt: skip


class _TimedUserModel:
    """A user model whose encodings are timed: how much of a batch goes to encoding users."""

    def __init__(self, model: Any) -> None:
        self.model, self.seconds = model, 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def encode(self, histories: Any) -> torch.Tensor:
        t = time.perf_counter()
        out = self.model.encode(histories)
        self.seconds += time.perf_counter() - t
        return out


def _rates(model: Path, runs: list[tuple[dict[str, float | bool], GuardSettings | None, list[list[FeedbackEvent]]]],
           warm: int) -> list[tuple[float, float]]:  # fmt: skip
    """Events/s of each run's learner (its online settings, guardrail and batches), and the share of its
    time spent encoding users, after `warm` warm-up batches (they fill the per-user vector cache, as a
    running learner has). Each learner takes its timed batches in two contiguous blocks, the runs in
    one order for the first half and in the reverse order for the second, so that a drift in the
    machine's load falls on every run alike while each runs with its own tables in the caches, as a
    learner process does (interleaving single batches of several learners made every one slower)."""
    learners = [_learner(model, g, **online) for online, g, _ in runs]
    for j in range(warm):
        for learner, (_, _, stream) in zip(learners, runs, strict=True):
            asyncio.run(learner.process(stream[j]))
    timers = [_TimedUserModel(learner.trainer.users.model) for learner in learners]
    for learner, timer in zip(learners, timers, strict=True):
        learner.trainer.users.model = timer  # type: ignore[assignment]
    freeze_startup_objects()  # as the learner process does after building its learner
    seconds = [0.0] * len(runs)
    n = len(runs[0][2])
    half = warm + (n - warm) // 2
    for blocks, order in ((range(warm, half), range(len(runs))), (range(half, n), reversed(range(len(runs))))):
        for k in order:
            t = time.perf_counter()
            for j in blocks:
                asyncio.run(learners[k].process(runs[k][2][j]))
            seconds[k] += time.perf_counter() - t
    events = [sum(map(len, stream[warm:])) for _, _, stream in runs]
    return [(e / s, timer.seconds / s) for e, s, timer in zip(events, seconds, timers, strict=True)]


def _as_served(model: Path, stream: list[list[FeedbackEvent]]) -> list[list[FeedbackEvent]]:
    """The stream as clicks on served lists: each event carries the vector the service served its user
    from (`ServedUser`: the history just before the event), encoded here, outside the learner's time,
    as the service did to answer the request the click came from."""
    learner = _learner(model)
    users, ids, histories = learner.trainer.users.model, learner.item_ids, learner.histories
    out = []
    for batch in stream:
        windows = []
        for e in batch:  # each event's window: the history before it, earlier events of the batch included
            windows.append(tuple(histories[e.user_id][-users.window :]))
            if e.is_positive:
                histories[e.user_id] = [*histories[e.user_id], learner.item_index[e.item_id]][-learner.history_cap :]
        vectors = users.encode(windows).numpy()
        out.append([e.model_copy(update={"served": ServedUser.of(learner.base_model, [ids[i] for i in w], v)})
                    for e, w, v in zip(batch, windows, vectors, strict=True)])  # fmt: skip
    return out


def throughput(model: Path, events: int = 16_384, size: int = BatchSettings().size) -> str:
    """The learner's defaults (micro-batches of the default size: under load every batch is full) on
    random clicks and on clicks from served lists, with and without the guardrail, against the adapter
    alone (the old learner), in the same run."""
    ck = open_checkpoint(model, CACHE)
    rng = np.random.default_rng(0)
    users, items = ck.data.user_ids, ck.data.item_ids
    warm = 2
    stream = [[FeedbackEvent(user_id=users[int(u)], item_id=items[int(i)], type="click")  # type: ignore[arg-type]
               for u, i in zip(rng.integers(len(users), size=size), rng.integers(len(items), size=size), strict=True)]
              for _ in range(warm + -(-events // size))]  # fmt: skip
    served = _as_served(model, stream)
    old, guard = ARMS["adapter alone (the old learner)"], GuardSettings()
    rates = _rates(model, [(old, None, stream), ({}, None, stream), ({}, guard, stream), ({}, None, served),
                           ({}, guard, served)], warm)  # fmt: skip
    (base, _), (rate, encoding), (guarded, _), (logged, logged_enc), (logged_guarded, _) = rates
    n = sum(map(len, stream[warm:]))
    return (f"### Throughput\n\n{n:,} random clicks on `{model.name}` ({ck.data.name}, {ck.data.num_items:,} items) "
            f"in micro-batches of {size:,} (the default: under load every batch is full) after {warm} warm-up "
            f"batches; one torch thread; sampled softmax ({OnlineSettings().negatives:,} negatives), a step every "
            f"{OnlineSettings().step_size} events, one publish per batch (encode, sign, store); users encoded as the "
            f"service encodes them ({_refresh_policy(USER_REFRESH_EVERY)}). \"Served\": the same clicks as if "
            "made on served lists, each carrying the vector the service served its user from (`ServedUser`), "
            "which the learner takes instead of encoding the user again. The guardrail: one event in "
            f"{guard.holdout_every} held out, up to {guard.holdout_size} of them scored against the full catalogue "
            "at every batch. Each learner times half its batches in one block, the runs in one order, then the "
            "other half in the reverse order. Machine: " + machine() + ".\n\n"
            "| learner | events/s on one core | vs the adapter alone | share encoding users |\n|---|---|---|---|\n"
            f"| the adapter alone (the old learner), random clicks | {base:,.0f} | 1.00x | |\n"
            f"| defaults, random clicks | {rate:,.0f} | {rate / base:.2f}x | {encoding:.0%} |\n"
            f"| defaults + guardrail, random clicks | {guarded:,.0f} | {guarded / base:.2f}x | |\n"
            f"| defaults, served | {logged:,.0f} | {logged / base:.2f}x | {logged_enc:.0%} |\n"
            f"| **defaults + guardrail, served (production)** | **{logged_guarded:,.0f}** | "
            f"{logged_guarded / base:.2f}x | |\n")  # fmt: skip


def _refresh_policy(every: int) -> str:
    return "a user re-encoded after every appended item" if every == 1 else (
        f"a user's vector reused until {every} items were appended")  # fmt: skip


def _rank_metrics(scores: torch.Tensor, targets: list[int], exclude: list[set[int]]) -> tuple[list[float], list[float]]:
    """HR@10 and NDCG@10 per row: the target's rank among items not excluded (ties count against)."""
    hr, ndcg = [], []
    for row, (t, ex) in enumerate(zip(targets, exclude, strict=True)):
        s = scores[row].clone()
        if ex:
            s[list(ex)] = -torch.inf
        rank = int((s > s[t]).sum())
        hr.append(float(rank < 10))
        ndcg.append(1.0 / np.log2(rank + 2) if rank < 10 else 0.0)
    return hr, ndcg


def _scores(learner: Learner, histories: list[np.ndarray], users: list[str] | None = None) -> torch.Tensor:
    """Scores of every item; with `users`, their vectors under the cache policy the service serves with."""
    t = learner.trainer
    with torch.no_grad():
        return t.adapter.scores(t.base_users(histories, users or ()), t.items, t.gamma)


HALF_LIFE_DAYS = OnlineSettings().popularity_half_life_days  # the streaming popularity's, in every arm that has it
# what each arm learns; every arm reads the same growing histories and catalogue
Arm = dict[str, Any]  # OnlineSettings fields, `user_refresh_every`, and `_EncoderTuning`'s fine_tune*
ARMS: dict[str, Arm] = {
    "frozen": {"adapter_updates": False, "item_updates": False, "popularity_half_life_days": 0},
    "adapter alone (the old learner)": {"adapter_updates": True, "item_updates": False, "popularity_half_life_days": 0},
    "learner defaults (adapter + item rows + streaming popularity)": {},
    "defaults without streaming popularity": {"popularity_half_life_days": 0},
    "item rows alone": {"adapter_updates": False, "popularity_half_life_days": 0},
    "streaming popularity alone": {"adapter_updates": False, "item_updates": False},
    # the service's cache policy at 5 (a user's vector reused until 5 items were appended): what the
    # learner used before its policy became the service's
    "frozen (user vectors refreshed every 5 items)": {
        "adapter_updates": False,
        "item_updates": False,
        "popularity_half_life_days": 0,
        "user_refresh_every": 5,
    },
    "learner defaults (user vectors refreshed every 5 items)": {"user_refresh_every": 5},
    # the user encoder fine-tuned online beside the defaults (`_EncoderTuning`): measured, not adopted
    "defaults + user encoder fine-tuned (Adam 3e-4)": {"fine_tune": "encoder", "fine_tune_lr": 3e-4},
    "defaults + user encoder fine-tuned (Adam 1e-4 with 16 replayed windows)": {
        "fine_tune": "encoder",
        "fine_tune_lr": 1e-4,
        "fine_tune_replay": 16,
    },
}
FROZEN = ARMS["frozen"]
SCOPES = {"encoder": "user encoder", "all": "item fusion and user encoder"}  # what `_EncoderTuning` moves
# one setting moved from the defaults, and more ways to fine-tune: run only when named by --arms
MOVED = (
    ("lambda_item", 0.1),
    ("lambda_item", 0.01),
    ("lambda_item", 0.0),
    ("lr", 0.1),
    ("lr", 0.02),
    ("lr", 0.01),
    ("lr", 0.005),
    ("negatives", 0),
    ("negatives", 512),
    *(("popularity_half_life_days", d) for d in (14, 30, 60, 365)),
)


def _tuning(scope: str, lr: float, replay: int) -> Arm:
    return {"fine_tune": scope, "fine_tune_lr": lr, **({"fine_tune_replay": replay} if replay else {})}


TUNING: dict[str, Arm] = (
    {f"defaults with {k} {v:g}": {k: v} for k, v in MOVED}
    | {
        # the two single moves that scored best on ml-latest-small, together
        "defaults with lr 0.02 and negatives 0": {"lr": 0.02, "negatives": 0},
    }
    | {
        f"defaults + {what} fine-tuned (Adam {lr:g}{f' with {r} replayed windows' if r else ''})": _tuning(scope, lr, r)
        for scope, what in SCOPES.items()
        for lr in (1e-4, 3e-4, 1e-3)
        for r in (0, 16)
        if _tuning(scope, lr, r) not in ARMS.values()
    }
)
EVERY_ARM = ARMS | TUNING
RETRAIN = "periodic full retrain (every 10%)"


@dataclass(frozen=True)
class Periodic:
    """Every `every` of the stream a model replaces the served one: trained from scratch (`warm_epochs`
    None) or the served weights trained on for `warm_epochs` epochs, over every user's sequence, a
    random share `users` of them, or only those of the users active since the last one (`active_only`);
    `online`: what the learner does in between."""

    warm_epochs: int | None = None
    active_only: bool = False
    online: Arm = field(default_factory=lambda: dict(FROZEN))
    every: float = 0.1
    users: float = 1.0


PERIODIC: dict[str, Periodic] = {
    RETRAIN: Periodic(),
    **{f"periodic warm fine-tune ({e} epoch{'s' * (e > 1)} every 10%)": Periodic(e) for e in (1, 2)},
    **{f"learner defaults + periodic warm fine-tune ({e} epoch{'s' * (e > 1)} every 10%)": Periodic(e, online={})
       for e in (1, 2)},
    **{f"{on}periodic warm fine-tune of the active users ({e} epoch{'s' * (e > 1)} every 10%)":
       Periodic(e, True, online) for e in (1, 3) for on, online in (("", FROZEN), ("learner defaults + ", {}))},
    # within a tenth of the retrain's CPU seconds on ml-latest-small (its trainings stop after 5 epochs)
    **{f"{on}periodic warm fine-tune (1 epoch every 20%)": Periodic(1, online=online, every=0.2)
       for on, online in (("", FROZEN), ("learner defaults + ", {}))},
    **{f"learner defaults + periodic warm fine-tune (1 epoch every {name})": Periodic(1, online={}, every=every)
       for name, every in (("25%", 0.25), ("third", 1 / 3))},
    "learner defaults + periodic warm fine-tune (half the users, 1 epoch every 10%)": Periodic(1, online={}, users=0.5),
    "learner defaults + periodic warm fine-tune (half the users, 1 epoch every 20%)":
        Periodic(1, online={}, every=0.2, users=0.5),
}  # fmt: skip
FLOORS = {"popularity fixed at the cut": None, "popularity streaming": HALF_LIFE_DAYS}


def _stream(ck: Checkpoint) -> list[tuple[int, int, int]]:
    """(user, item, timestamp) of the first-time user-item pairs after the temporal cut, in time order."""
    split = temporal(ck.data)
    inter = ck.data.interactions
    cut = split.train.timestamp.max()
    stream, seen = [], set(zip(split.train.user.tolist(), split.train.item.tolist(), strict=True))
    for j in np.argsort(inter.timestamp, kind="stable"):
        u, i, ts = int(inter.user[j]), int(inter.item[j]), int(inter.timestamp[j])
        if ts > cut and (u, i) not in seen:
            seen.add((u, i))
            stream.append((u, i, ts))
    return stream


class _PopularityArm:
    """A floor every learner must clear: rank by a popularity count, fixed at the cut or streaming."""

    def __init__(self, ck: Checkpoint, half_life_days: float | None) -> None:
        log, n = ck.train.log, ck.data.num_items
        self.pop = (None if half_life_days is None else
                    DecayedPopularity.from_log(log.item, log.timestamp, n, half_life_days * DAY_S))  # fmt: skip
        self.fixed = np.log1p(ck.train.popularity()).astype(np.float32)

    def scores(self, n: int) -> torch.Tensor:
        return torch.from_numpy(self.fixed if self.pop is None else self.pop.log1p()).expand(n, -1)

    def learn(self, chunk: list[tuple[int, int, int]]) -> None:
        if self.pop is not None:
            self.pop.add(np.array([i for _, i, _ in chunk]), np.array([t for _, _, t in chunk]))


class _Retrainer:
    """The yardstick (what Gorse does): every tenth of the stream, a new model trained from scratch on
    the cut's interactions plus the stream so far, served until the next. It trains for the epochs the
    cut's model needed to reach its best validation (the stream offers no held-out period to stop on),
    with the same switches, configuration, seed and serving gamma (as a multiple of the learned one).
    `how` says when, and whether it is instead a cheap warm fine-tune (`training.finetune`)."""

    def __init__(self, ck: Checkpoint, model: Path, stream_len: int, folder: Path, how: Periodic) -> None:
        meta = read_checkpoint_meta(model)
        self.ck, self.folder, self.meta, self.how = ck, folder, meta, how
        self.warm = how.warm_epochs is not None
        self.served = ck.model  # what a warm fine-tune starts from
        self.epochs = how.warm_epochs if how.warm_epochs is not None else int(meta["fit"]["best_epoch"])
        self.last = 0  # stream events seen at the last replacement
        parts = round(1 / how.every)
        self.due = {stream_len * k // parts for k in range(1, parts)}

    def retrain(self, seen: list[tuple[int, int, int]]) -> Path:
        ck, how = self.ck, self.how
        clicks = Interactions(*(np.array(c, np.int64) for c in zip(*seen, strict=True)))  # no stars
        log = merged(ck.train.log, clicks)
        chosen = None  # the users whose sequences the training reads (None: all)
        if how.active_only:
            chosen = np.isin(np.arange(ck.data.num_users), [u for u, _, _ in seen[self.last :]])
        elif how.users < 1:
            chosen = np.random.default_rng(len(seen)).random(ck.data.num_users) < how.users
        fit_on = None if chosen is None else log.take(chosen[log.user])
        self.last = len(seen)
        seed = int(self.meta["run"]["seed"]) + (len(seen) if self.warm else 0)  # warm: new shuffles each time
        model = fine_tune(self.served, ck.data, log, self.meta, CACHE, self.epochs, seed, self.warm, fit_on)
        self.served = model
        out = self.folder / f"at-{len(seen)}"
        save_checkpoint(out, model, ck.data, log, Switches(**self.meta["switches"]),
                        {k: self.meta[k] for k in ("dataset_ref", "run")})  # fmt: skip
        return out


def _replay(ck: Checkpoint, model: Path, stream: list[tuple[int, int, int]], arm: str,
            batch: int) -> tuple[np.ndarray, float]:  # fmt: skip
    """Per scored event: (HR@10, NDCG@10, the item's clicks in the stream before it, whether the item
    was new after the cut), and the CPU seconds the arm spent learning. Items enter the catalogue when
    first clicked (content-only vectors, as POST /items gives them), users are scored once they have a
    history."""
    with tempfile.TemporaryDirectory() as folder:
        return _replay_in(ck, model, stream, arm, batch, Path(folder))


def _replay_in(ck: Checkpoint, model: Path, stream: list[tuple[int, int, int]], arm: str, batch: int,
               folder: Path) -> tuple[np.ndarray, float]:  # fmt: skip
    pop_arm = _PopularityArm(ck, FLOORS[arm]) if arm in FLOORS else None
    retrainer = _Retrainer(ck, model, len(stream), folder, PERIODIC[arm]) if arm in PERIODIC else None
    online = dict(PERIODIC[arm].online if retrainer else {} if pop_arm else EVERY_ARM[arm])
    tune = [online.pop(k) for k in ("fine_tune", "fine_tune_lr", "fine_tune_replay") if k in online]
    learner = _learner(model, GuardSettings(), **online)  # type: ignore[arg-type]
    tuner = _EncoderTuning(learner, *tune) if tune else None  # type: ignore[arg-type]
    learner.histories = {ck.data.user_ids[u]: [int(x) for x in h] for u, h in ck.train.sequences().items()}
    cpu_s = 0.0
    met = {u: set(h) for u, h in learner.histories.items()}  # exclusions: every item met, uncapped
    listed = ck.train.popularity() > 0
    warm = listed.copy()
    clicks = np.zeros(ck.data.num_items, np.int64)
    out = []
    for lo in tqdm(range(0, len(stream), batch), desc=f"prequential: {arm}", leave=False):
        if retrainer and any(lo <= d < lo + batch for d in retrainer.due):
            histories, start = learner.histories, time.process_time()
            learner = _learner(retrainer.retrain(stream[:lo]), GuardSettings(), **online)  # type: ignore[arg-type]
            learner.histories = histories
            cpu_s += time.process_time() - start  # the training and the new learner's set-up
        chunk = stream[lo : lo + batch]
        listed[[i for _, i, _ in chunk]] = True  # announced before it is clicked
        users = [ck.data.user_ids[u] for u, _, _ in chunk]
        known, hs, seen = _before_each(chunk, users, learner.histories, met)
        if known:
            s = pop_arm.scores(len(known)).clone() if pop_arm else _scores(learner, hs, [users[k] for k in known])
            s[:, ~torch.from_numpy(listed)] = -torch.inf
            targets = [chunk[k][1] for k in known]
            h, n = _rank_metrics(s, targets, seen)
            out += zip(h, n, clicks[targets], ~warm[targets], strict=True)
        np.add.at(clicks, [i for _, i, _ in chunk], 1)
        events = [FeedbackEvent(user_id=ck.data.user_ids[u], item_id=ck.data.item_ids[i], type="click",  # type: ignore[arg-type]
                                timestamp=ts) for u, i, ts in chunk]  # fmt: skip
        for e in events:
            met.setdefault(e.user_id, set()).add(learner.item_index[e.item_id])
        if pop_arm:
            pop_arm.learn(chunk)
            for e in events:
                learner.histories.setdefault(e.user_id, []).append(learner.item_index[e.item_id])
        else:
            start = time.process_time()
            asyncio.run(learner.process(events))
            if tuner:
                tuner.learn(learner, users)
            cpu_s += time.process_time() - start
    return np.array(out), cpu_s


class _EncoderTuning:
    """What online fine-tuning of the model itself adds to the learner (an arm, not a learner feature):
    after each batch, one Adam step of the next-item loss (full softmax over the served item vectors) on
    the newest window of each user the batch touched, plus `replay` windows ending at random points of
    random users' histories. `scope` "encoder" moves the transformer and positions; "all" every item
    vector too (the whole catalogue's rows would be republished)."""

    def __init__(self, learner: Learner, scope: str, lr: float, replay: int = 0) -> None:
        m = learner.trainer.model
        self.whole = scope == "all"
        params = ([p for n, p in m.named_parameters() if not n.startswith("adversary") and n != "gamma"]
                  if self.whole else [*m.encoder.parameters(), *m.pos_emb.parameters()])  # fmt: skip
        self.optimizer, self.replay, self.rng = torch.optim.Adam(params, lr=lr), replay, np.random.default_rng(0)

    def learn(self, learner: Learner, users: list[str]) -> None:
        t, m = learner.trainer, learner.trainer.model
        hs = learner.histories
        ends = {u: len(hs.get(u, [])) for u in users}
        everyone = list(hs)
        for j in self.rng.integers(len(everyone), size=self.replay):
            n = len(hs[everyone[j]])
            ends.setdefault(everyone[j], int(self.rng.integers(2, n + 1)) if n > 1 else 0)
        windows = [np.asarray(hs[u][max(0, e - m.config.max_len - 1) : e], np.int64) for u, e in ends.items() if e > 1]
        if not windows:
            return
        _, inp, tgt = next(window_batches([(0, w) for w in windows], len(windows), self.rng))
        mask = tgt != PAD
        m.train()
        items = m.fusion(m.items)[0] if self.whole else t.items
        logits = m.encode(inp, items)[mask] @ items.T + t.gamma * t.adapter.log_pop.detach()
        loss = torch.nn.functional.cross_entropy(logits, tgt[mask])
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        m.eval()
        if self.whole:
            m.set_items(m.items)  # drops the cached item vectors
            with torch.no_grad():
                t.items = m.item_vectors()[0].detach().clone()
        t.users = UserVectors(t.users.model, t.users.refresh_every)  # every user's vector changed


def _before_each(chunk: list[tuple[int, int, int]], users: list[str], histories: dict[str, list[int]],
                 met: dict[str, set[int]]) -> tuple[list[int], list[np.ndarray], list[set[int]]]:  # fmt: skip
    """The chunk's events whose user has a history, each with the history and the items met just before
    it: the service appends a click to the history as it accepts it, so the next list already knows
    the user's earlier clicks of the chunk even though the learner has not learnt them yet."""
    known, hs, seen = [], [], []
    earlier: dict[str, list[int]] = {}
    for k, ((_, item, _), uid) in enumerate(zip(chunk, users, strict=True)):
        before = earlier.setdefault(uid, [])
        history = [*histories.get(uid, []), *before]
        if history:
            known.append(k)
            hs.append(np.asarray(history, np.int64))
            seen.append(met.get(uid, set()) | set(before))
        before.append(item)
    return known, hs, seen


CLICK_BUCKETS = ((0, 1), (1, 5), (5, 20), (20, 50), (50, None))  # clicks before the scored event


def _arm_key(name: str) -> str:
    """Where an arm's results are stored: a digest of what it runs (its settings with the defaults
    filled in), so that renaming or reordering arms never relabels a stored result, and a changed
    default is a new arm."""
    if name in FLOORS:
        what: dict[str, Any] = {"popularity floor, half-life days": FLOORS[name]}
    elif name in PERIODIC:
        how, default = PERIODIC[name], Periodic()
        what = {"retrain": 10}
        if how.warm_epochs:
            what |= {"warm_epochs": how.warm_epochs, **OnlineSettings(**how.online).model_dump()}
            moved = ("active_only", "every", "users")  # named only when moved, so older arms keep their keys
            what |= {k: getattr(how, k) for k in moved if getattr(how, k) != getattr(default, k)}
    else:
        arm = EVERY_ARM[name]
        online = {k: v for k, v in arm.items() if k in OnlineSettings.model_fields}
        what = OnlineSettings(**online).model_dump() | {k: v for k, v in arm.items() if k not in online}
        what.setdefault("user_refresh_every", USER_REFRESH_EVERY)
    return hashlib.sha1(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def prequential(model: Path, batch: int = 64, limit: int | None = None, arms: list[str] | None = None) -> str:
    """Runs `arms` (default: all but the tuning ones) and writes each arm's per-event results under `RESULTS`, keyed by
    the checkpoint's version and the stream; the table shows every arm stored for this version, so arms can be run
    in separate processes (the retrain arm is the slow one)."""
    ck = open_checkpoint(model, CACHE)
    stream = _stream(ck)[:limit] if limit else _stream(ck)
    new = len({i for _, i, _ in stream} - set(np.flatnonzero(ck.train.popularity() > 0).tolist()))
    store = RESULTS / f"{checkpoint_version(model)}-{len(stream)}-{batch}-per-event"
    store.mkdir(parents=True, exist_ok=True)
    paths = {n: store / f"{_arm_key(n)}.npz" for n in [*FLOORS, *EVERY_ARM, *PERIODIC]}  # the table's order
    for name in tqdm(arms or [*FLOORS, *ARMS, RETRAIN], desc="prequential arms"):
        r, cpu_s = _replay(ck, model, stream, name, batch)
        np.savez(paths[name], events=r, cpu_s=cpu_s)
    saved = {n: np.load(path) for n, path in paths.items() if path.exists()}
    results = {n: f["events"] for n, f in saved.items()}
    cpu = {n: float(f["cpu_s"]) for n, f in saved.items()}
    base = results.get("frozen")
    rows = []
    for name, r in results.items():
        hr, nd = r[:, :2].mean(0)
        se = r[:, :2].std(0) / np.sqrt(len(r))
        diff = ""
        if base is not None and name != "frozen":
            d = (r[:, 1] - base[:, 1]) / base[:, 1].mean()
            diff = f"{100 * d.mean():+.1f}% ± {100 * d.std() / np.sqrt(len(d)):.1f}"
        rows.append(f"| {name} | {hr:.4f} ± {se[0]:.4f} | {nd:.4f} ± {se[1]:.4f} | {diff} | {cpu[name]:.1f} |")
    r = next(iter(results.values()))
    return ("### Prequential replay (recommend, then learn)\n\n"
            f"`{model.name}` ({ck.data.name}) trained on the first 80% of interactions by time; {len(r):,} streamed "
            f"events scored (first-time user-item pairs after the cut, users with a history; {new:,} items "
            f"first seen after the cut enter the catalogue, content-only, when first clicked). Each event is scored "
            "against the user's history up to the event before it (the service appends a click as it accepts it) "
            f"and learnt in batches of {batch}, after its batch was scored; streaming popularity's half-life "
            f"{HALF_LIFE_DAYS:g} days. Every arm reads the same growing histories and encodes users as the service "
            f"does ({_refresh_policy(USER_REFRESH_EVERY)}, unless the arm says otherwise); the learner arms run "
            "with the production guardrail (one event in 10 held out). "
            "CPU s: process CPU seconds spent learning (the learner's batches; the retrain arm's nine trainings), "
            "one torch thread.\n\n"
            "| arm | HR@10 (± s.e.) | NDCG@10 (± s.e.) | NDCG@10 vs frozen (paired ± s.e.) | CPU s |\n"
            "|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n" + _new_items_table(results))  # fmt: skip


def _new_items_table(results: dict[str, np.ndarray]) -> str:
    """HR@10 of events on items new after the cut, by the clicks the item had received before, against
    events on warm items."""
    head = [f"{lo}" if hi == lo + 1 else (f"{lo}-{hi - 1}" if hi else f"{lo}+") for lo, hi in CLICK_BUCKETS]
    lines = ["HR@10 of events on new items, by the clicks the item had received in the stream before the "
             "event (events in brackets), against events on items known at the cut.\n",
             "| arm | " + " | ".join(f"new, {h} clicks" for h in head) + " | warm |",
             "|---|" + "---|" * (len(head) + 1)]  # fmt: skip
    for name, r in results.items():
        new, clicks = r[:, 3] > 0, r[:, 2]
        cells = []
        for lo, hi in CLICK_BUCKETS:
            m = new & (clicks >= lo) & (clicks < (hi if hi is not None else np.inf))
            cells.append(f"{r[m, 0].mean():.3f} ({int(m.sum())})" if m.any() else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r[~new, 0].mean():.3f} ({int((~new).sum())}) |")
    return "\n".join(lines) + "\n"


# what learns in each forgetting row, and its consolidation weight
FORGETTING_ARMS: dict[str, Arm] = {
    **{
        f"adapter, EWC lambda {lam:g}": {"adapter_updates": True, "item_updates": False, "lambda_ewc": lam}
        for lam in (0.0, 1.0, 100.0)
    },
    # the training data's Fisher kept (it never decays into the drift's), at weights that hold some
    **{
        f"adapter, training Fisher kept, EWC lambda {lam:g}": {
            "adapter_updates": True,
            "item_updates": False,
            "fisher_decay": 1.0,
            "lambda_ewc": lam,
        }
        for lam in (1e5, 1e6)
    },
    **{
        f"item rows, lambda_item {lam:g}": {"adapter_updates": False, "lambda_item": lam}
        for lam in (0.0, 0.01, 0.1, 1.0)
    },
}


def forgetting(model: Path, steps: int = 60) -> str:
    """Each learnt part alone (streaming popularity off), at several consolidation weights."""
    ck = open_checkpoint(model, CACHE)
    test = ck.split.test
    genre = "Horror"
    drift_items = [i for i in range(ck.data.num_items) if genre in ck.data.aspects(i)]
    train_seen = [set() for _ in range(ck.data.num_users)]
    for u, i in zip(ck.train.log.user.tolist(), ck.train.log.item.tolist(), strict=True):
        train_seen[u].add(i)

    def test_ndcg(learner: Learner) -> float:
        rows = range(len(test))
        hs = [test.history_of(r) for r in rows]
        s = _scores(learner, hs)
        targets = [int(test.targets[test.target_indptr[r]]) for r in rows]
        return float(np.mean(_rank_metrics(s, targets, [train_seen[int(test.users[r])] for r in rows])[1]))

    rows = []
    base = None
    for name, online in FORGETTING_ARMS.items():
        rng = np.random.default_rng(0)  # the same drift for every row
        learner = _learner(model, popularity_half_life_days=0, **online)
        if base is None:
            base = test_ndcg(learner)
        users = list(learner.histories)
        for _ in tqdm(range(steps), desc=f"drift, {name}"):
            events = [FeedbackEvent(user_id=users[int(u)], item_id=ck.data.item_ids[int(rng.choice(drift_items))],  # type: ignore[arg-type]
                                    type="click") for u in rng.integers(len(users), size=128)]  # fmt: skip
            asyncio.run(learner.process(events))
        after = test_ndcg(learner)
        rows.append(f"| {name} | {base:.4f} | {after:.4f} | {100 * (after / base - 1):+.1f}% |")
    return (
        "### Forgetting: consolidation on and off\n\n"
        f"`{model.name}` ({ck.data.name}): {steps} batches of 128 clicks on {genre} films by random users (a drift), "
        "then the model's own test set (full ranking, training items excluded). Each row trains one part "
        "alone at one consolidation weight, on the same drift.\n\n"
        "| learns | NDCG@10 before | after the drift | change |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )


async def _freshness(model: Path, trials: int) -> str:
    from httpx import ASGITransport, AsyncClient
    from redis.asyncio import Redis

    from common.adapter_store import RedisAdapterStore
    from common.settings import KafkaSettings
    from learner.consumer import run as run_learner
    from learner.settings import LearnerSettings
    from service.app import create_app
    from service.settings import FeedbackSettings, IndexSettings, Settings
    from tests.kafka_mock import mock_kafka

    prefix = f"bench:{uuid.uuid4().hex}:"
    with mock_kafka() as kafka:
        kafka_settings = KafkaSettings(bootstrap_servers=kafka.bootstrap, group_id=prefix)
        adapter = AdapterSettings(prefix=prefix + "adapter:", signing_key="bench", poll_s=1.0)  # type: ignore[arg-type]
        index = IndexSettings(location=str(ROOT / ".cache/index"))
        settings = Settings(model_dir=model, cache_dir=CACHE, redis_url="redis://127.0.0.1:6379/0",
                            history_prefix=prefix + "history:", index=index, kafka=kafka_settings, adapter=adapter,
                            feedback=FeedbackSettings(spool_dir=ROOT / ".cache" / f"spool-{prefix[6:-1]}",
                                                      dedupe_prefix=prefix + "event:"))  # fmt: skip
        ls = LearnerSettings(model_dir=model, cache_dir=CACHE, kafka=kafka_settings, adapter=adapter,
                             redis_url="redis://127.0.0.1:6379/0", learner_metrics_port=0)  # fmt: skip
        redis = Redis.from_url(ls.require_redis_url("the bench's adapters"))
        learner = _learner(model)
        learner.store, learner.key = RedisAdapterStore(redis, adapter.prefix), adapter.key()
        stop = asyncio.Event()
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            task = asyncio.create_task(run_learner(learner, kafka_settings, ls.batch.size, ls.batch.max_wait_ms,
                                                   LearnerMetrics(), stop))  # fmt: skip
            adapter_s, history_s = [], []
            async with AsyncClient(transport=ASGITransport(app), base_url="http://bench") as client:
                users, items = list(learner.histories)[:trials], list(learner.item_index)
                watcher = app_state(app).recommender.adapters
                assert watcher is not None, "the trained model serves adapters"
                for n, user in enumerate(users):
                    before = watcher.current.version
                    event = {"event_id": uuid.uuid4().hex, "user_id": user, "item_id": items[-1 - n], "type": "like"}
                    t0 = time.perf_counter()
                    await client.post("/feedback", json={"events": [event]})
                    recent = await app_state(app).history.recent(user, 1)
                    history_s.append(
                        time.perf_counter() - t0 if recent and recent[-1][0] == event["item_id"] else np.nan
                    )
                    while True:
                        r = await client.post("/recommend", json={"user_id": user, "k": 10, "explain": False})
                        if r.json()["adapter_version"] > before:
                            break
                        await asyncio.sleep(0.01)
                    adapter_s.append(time.perf_counter() - t0)
            stop.set()
            await asyncio.wait_for(task, 30)
        await delete_prefixed(redis, prefix)
        await redis.aclose()
    a, h = np.array(adapter_s) * 1000, np.array(history_s) * 1000
    return ("### Freshness\n\n"
            f"{trials} single-event feedback posts (service in process over ASGI, Kafka protocol via librdkafka's mock "
            "cluster in a child process, the real Redis, the learner in the same event loop with its default "
            f"batching: up to {BatchSettings().size:,} events or {BatchSettings().max_wait_ms} ms; the service's "
            "adapter poll 1 s, pub/sub notices immediate).\n\n"
            "| from POST /feedback to | p50 ms | p95 ms | max ms |\n|---|---|---|---|\n"
            f"| the user's history holding the event | {np.nanmedian(h):.1f} | {np.nanpercentile(h, 95):.1f} | "
            f"{np.nanmax(h):.1f} |\n"
            f"| /recommend serving the new adapter | {np.median(a):.0f} | {np.percentile(a, 95):.0f} | "
            f"{a.max():.0f} |\n")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=ROOT / "runs/llm4rec")
    p.add_argument("--temporal-model", type=Path, default=ROOT / "runs/llm4rec-temporal")
    p.add_argument("--sections", default="throughput,prequential,forgetting,freshness")
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--arms", help="prequential arms to run, comma-separated (default: all); the table shows "
                   "every arm stored for the model")  # fmt: skip
    args = p.parse_args()
    torch.set_num_threads(1)
    wanted = args.sections.split(",")
    runs = {"throughput": lambda: throughput(args.model),
            "freshness": lambda: asyncio.run(_freshness(args.model, args.trials)),
            "prequential": lambda: prequential(args.temporal_model, arms=args.arms.split(",") if args.arms else None),
            "forgetting": lambda: forgetting(args.temporal_model)}  # fmt: skip
    for name in wanted:  # each part owns its section, so one can be re-run alone
        body = f"Command: `{command_line()}`.\n\n" + runs[name]()
        print(body)
        on_temporal = name in ("prequential", "forgetting")
        dataset = read_checkpoint_meta(args.temporal_model)["dataset"] if on_temporal else ""
        write_section(f"learner-{name}" + (f"-{dataset}" if dataset else ""), body)


if __name__ == "__main__":
    main()
