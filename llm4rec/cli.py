"""`llm4rec` commands. Settings are parsed here and handed down as small config objects."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
import uvloop
from fastapi import FastAPI
from redis.asyncio import Redis

from common.adapter import AdapterRejectedError, Manifest, decode, encode
from common.adapter_store import RedisAdapterStore
from common.process import limit_malloc_arenas
from common.settings import MissingSettingError
from learner.fine_tune import recover
from learner.settings import LearnerSettings
from llm4rec.bootstrap import train_and_swap
from llm4rec.embedded import adapter_store, learn_in_process
from llm4rec.supervisor import supervise
from models.data import RecDataset
from recdata import CONVERTERS, DatasetError, convert, load_dataset
from retrieval.catalog import build_item_index
from retrieval.context import build_context_index, build_entries
from retrieval.engines import IndexInUseError, make_engine
from service.app import create_app
from service.components import collections
from service.settings import Settings
from service.state import ServiceState, app_state
from training.ablation import VARIANTS, run_ablation
from training.checkpoint import (
    ServingCheckpoint,
    checkpoint_version,
    load_serving_checkpoint,
    read_checkpoint_meta,
)
from training.evaluate import PROTOCOLS, EvalContext, evaluate
from training.experiment import (
    SPLITS,
    OpenedCheckpoint,
    RunConfig,
    llm4rec_fit_config,
    llm4rec_metrics,
    make_split,
    open_checkpoint,
    run_baseline,
)
from training.finetune import feedback_interactions, fine_tune, merged, read_events
from training.llm4rec_train import (
    GAMMA_TOLERANCE,
    CheckpointMismatchError,
    Switches,
    save_checkpoint,
    train_llm4rec,
)
from training.report import markdown_table, write_report
from training.text_embeddings import embed_texts
from training.zoo import BASELINES

app = typer.Typer(
    help="LLM4Rec: recommendation with multimodal fusion, causal debiasing and RAG.", no_args_is_help=True
)
data_app = typer.Typer(help="Dataset conversion and inspection.", no_args_is_help=True)
app.add_typer(data_app, name="data")

DatasetOpt = Annotated[str, typer.Option(help="Bundled name (ml-latest-small) or a dataset folder.")]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=2)


def _load(dataset: str) -> RecDataset:
    try:
        return load_dataset(dataset)
    except DatasetError as e:
        raise _fail(str(e)) from e


@data_app.command("convert")
def data_convert(
    src: Annotated[Path, typer.Argument(help="Folder holding the original files.")],
    dst: Annotated[Path, typer.Argument(help="Folder to write the generic format to.")],
    fmt: Annotated[
        str | None, typer.Option("--format", help=f"One of {sorted(CONVERTERS)}; detected if omitted.")
    ] = None,
) -> None:
    """Convert a MovieLens distribution to the generic format (interactions.csv, items.csv, ...)."""
    try:
        data = convert(src, dst, fmt)
    except DatasetError as e:
        raise _fail(str(e)) from e
    typer.echo(f"wrote {dst}: {data.num_users} users, {data.num_items} items, {len(data.interactions)} interactions")


@data_app.command("info")
def data_info(
    dataset: Annotated[str, typer.Argument(help="Bundled name or dataset folder.")] = "ml-latest-small",
) -> None:
    """Validate a dataset and print its size and features."""
    d = _load(dataset)
    density = len(d.interactions) / (d.num_users * d.num_items)
    typer.echo(
        f"{d.name}: {d.num_users} users, {d.num_items} items, {len(d.interactions)} interactions, density {density:.4%}"
    )
    typer.echo(
        f"text: {list(d.item_text)}  categorical: {list(d.item_categorical)}  numerical: {list(d.item_numerical)}"
    )
    typer.echo(
        f"user attributes: {list(d.user_attributes)}  sensitive: {list(d.sensitive)}  fingerprint: {d.fingerprint()}"
    )


MODELS = (*BASELINES, "llm4rec")
CacheOpt = Annotated[Path, typer.Option(help="Where item text embeddings are cached.")]
DEFAULT_CACHE = Path(".cache/text-embeddings")


def _run_config(split: str, protocol: str, min_rating: float | None, seed: int, max_epochs: int | None,
                time_budget: float | None) -> RunConfig:  # fmt: skip
    if protocol not in PROTOCOLS or split not in SPLITS:
        raise _fail(f"protocol must be one of {PROTOCOLS} and split one of {SPLITS}")
    return RunConfig(split, protocol, min_rating, seed, max_epochs, time_budget)


@app.command("eval")
def eval_cmd(
    dataset: DatasetOpt = "ml-latest-small",
    models: Annotated[str, typer.Option(help=f"Comma-separated, from {list(MODELS)}.")] = ",".join(MODELS),
    model: Annotated[Path | None, typer.Option(help="Evaluate this checkpoint (from `llm4rec train`) instead.")] = None,
    protocol: Annotated[str, typer.Option(help=f"One of {PROTOCOLS}.")] = "full",
    split: Annotated[str, typer.Option(help=f"One of {SPLITS}.")] = "leave-one-out",
    min_rating: Annotated[float | None, typer.Option(help="Keep only ratings >= this as positives.")] = None,
    seed: int = 0,
    max_epochs: Annotated[int | None, typer.Option(help="Cap on training epochs (quick runs).")] = None,
    time_budget: Annotated[float | None, typer.Option(help="Seconds per model before training stops.")] = None,
    cache_dir: CacheOpt = DEFAULT_CACHE,
    out: Annotated[Path, typer.Option(help="Folder for results.json, results.md, results.png.")] = Path("results"),
) -> None:
    """Train the chosen models (or load a checkpoint), evaluate on the test split, write a report."""
    if model is not None:
        _eval_checkpoint(model, protocol, cache_dir, out)
        return
    names = [m.strip() for m in models.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        raise _fail(f"unknown models {unknown}; known: {list(MODELS)}")
    config = _run_config(split, protocol, min_rating, seed, max_epochs, time_budget)
    data = _load(dataset)
    sp = make_split(data, config)
    results = {}
    for name in names:
        if name == "llm4rec":
            trained = train_llm4rec(data, sp, Switches(), llm4rec_fit_config(config), cache_dir)
            results[name] = llm4rec_metrics(trained, sp, config)
        else:
            results[name] = run_baseline(name, data, sp, config)
    _report(out, results, data, config, len(sp.test))


def _report(out: Path, results: dict[str, dict[str, float]], data: RecDataset, config: RunConfig, users: int) -> None:
    meta = {"dataset": data.name, "split": config.split, "protocol": config.protocol, "seed": config.seed,
            "min_rating": config.min_rating, "fingerprint": data.fingerprint(), "users_evaluated": users}  # fmt: skip
    write_report(out, results, meta)
    typer.echo(markdown_table(results))
    typer.echo(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'results.png'}")


def _eval_checkpoint(path: Path, protocol: str, cache_dir: Path, out: Path) -> None:
    ck = _open(path, cache_dir, protocol)
    ctx = EvalContext.build(ck.data, ck.train)
    metrics = evaluate(ck.model, ck.split.test, ctx, protocol=protocol, seed=ck.config.seed)
    _report(out, {"llm4rec": metrics}, ck.data, ck.config, len(ck.split.test))


def _open(path: Path, cache_dir: Path, protocol: str = "full") -> OpenedCheckpoint:
    try:
        return open_checkpoint(path, cache_dir, protocol)
    except (CheckpointMismatchError, DatasetError) as e:
        raise _fail(str(e)) from e


def _open_for_serving(path: Path, cache_dir: Path) -> ServingCheckpoint:
    try:
        return load_serving_checkpoint(path, cache_dir)
    except (CheckpointMismatchError, DatasetError) as e:
        raise _fail(str(e)) from e


def _switches(no: list[str], with_: list[str], lambda_fair: float, lambda_parity: float) -> Switches:
    fields = {f.replace("_", "-"): f for f in Switches.__dataclass_fields__ if not f.startswith("lambda_")}
    bad = [n for n in [*no, *with_] if n not in fields]
    if bad:
        raise _fail(f"unknown component(s) {bad}; can switch: {sorted(fields)}")
    flips = {fields[n]: False for n in no} | {fields[n]: True for n in with_}
    return Switches(**flips, lambda_fair=lambda_fair, lambda_parity=lambda_parity)


_COMPONENTS = "fusion, text, categorical, numerical, ids, cross-attention, adaptive-weights, ipw, pop-deconfound, fair"
NoOpt = Annotated[list[str] | None, typer.Option("--no", help=f"Switch a component off (repeatable): {_COMPONENTS}.")]
WithOpt = Annotated[
    list[str] | None,
    typer.Option("--with", help="Switch a component on (repeatable); adaptive-weights and ipw are off by default."),
]


@app.command("train")
def train_cmd(
    out: Annotated[Path, typer.Option(help="Checkpoint folder to write.")],
    dataset: DatasetOpt = "ml-latest-small",
    no: NoOpt = None,
    with_: WithOpt = None,
    lambda_fair: Annotated[float, typer.Option(help="Weight of the fairness adversary.")] = 0.1,
    lambda_parity: Annotated[float, typer.Option(help="Weight of the per-group training-loss gap.")] = 0.0,
    split: Annotated[str, typer.Option(help=f"One of {SPLITS}.")] = "leave-one-out",
    min_rating: Annotated[float | None, typer.Option(help="Keep only ratings >= this as positives.")] = None,
    seed: int = 0,
    max_epochs: Annotated[int | None, typer.Option(help="Cap on training epochs.")] = None,
    time_budget: Annotated[float | None, typer.Option(help="Seconds before training stops.")] = None,
    gamma_tolerance: Annotated[
        float,
        typer.Option(
            help="Serve the popularity weight closest to 0 whose validation "
            "NDCG@10 is within this relative tolerance of the best candidate's."
        ),
    ] = GAMMA_TOLERANCE,
    cache_dir: CacheOpt = DEFAULT_CACHE,
) -> None:
    """Train the LLM4Rec model (early stopping on validation NDCG@10) and save a checkpoint."""
    sw = _switches(no or [], with_ or [], lambda_fair, lambda_parity)
    config = _run_config(split, "full", min_rating, seed, max_epochs, time_budget)
    data = _load(dataset)
    sp = make_split(data, config)
    trained = train_llm4rec(data, sp, sw, llm4rec_fit_config(config), cache_dir, gamma_tolerance=gamma_tolerance)
    run = {"split": split, "min_rating": min_rating, "seed": seed}
    extra = {"dataset_ref": dataset, "run": run, "fit": asdict(trained.fit), "train_seconds": trained.seconds}
    save_checkpoint(out, trained.model, data, sp.train, sw, extra)
    weights = ", ".join(f"{k} {v:.2f}" for k, v in trained.model.modality_weights().items())
    typer.echo(f"best validation NDCG@10 {trained.fit.best_valid_ndcg:.4f} at epoch {trained.fit.best_epoch}, "
               f"{trained.seconds:.0f}s; modality weights: {weights}; wrote {out}")  # fmt: skip


@app.command("finetune")
def finetune_cmd(
    model: Annotated[Path, typer.Option(help="Checkpoint folder to start from.")],
    events: Annotated[
        Path,
        typer.Option(
            help="Feedback since its training, one JSON event per line (the "
            "service's spool and Kafka topic carry this format)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Checkpoint folder to write.")],
    epochs: Annotated[int, typer.Option(min=1, help="Epochs over every interaction, old and new.")] = 1,
    seed: int = 0,
    cache_dir: CacheOpt = DEFAULT_CACHE,
) -> None:
    """Train a checkpoint on for a few epochs over its training interactions plus the positive feedback
    since (a warm start; far cheaper than training again, BENCHMARKS.md); the new checkpoint's
    training log holds both."""
    ck = _open_for_serving(model, cache_dir)
    try:
        new, unknown = feedback_interactions(read_events(events), ck.data)
    except (OSError, ValueError) as e:
        raise _fail(str(e)) from e
    log = merged(ck.train.log, new)
    tuned = fine_tune(ck.model, ck.data, log, ck.meta, cache_dir, epochs, seed)
    source = {"from": ck.version, "events": len(new), "epochs": epochs, "seed": seed}
    extra = {k: ck.meta[k] for k in ("dataset_ref", "run", "fit") if k in ck.meta} | {"fine_tune": source}
    save_checkpoint(out, tuned, ck.data, log, Switches(**ck.meta["switches"]), extra)
    typer.echo(f"fine-tuned on {len(log):,} interactions ({len(new):,} new; {unknown:,} events on users or items "
               f"the dataset does not know left out) for {epochs} epoch(s); wrote {out}")  # fmt: skip


@app.command("ablate")
def ablate_cmd(
    dataset: DatasetOpt = "ml-latest-small",
    variants: Annotated[str, typer.Option(help="Comma-separated variant names, or 'all'.")] = "all",
    seed: int = 0,
    max_epochs: Annotated[int | None, typer.Option(help="Cap on training epochs.")] = None,
    cache_dir: CacheOpt = DEFAULT_CACHE,
    out: Annotated[Path, typer.Option(help="Folder for the ablation table and chart.")] = Path("results/ablation"),
) -> None:
    """Train the default model and each variant with one component flipped; print and save the table."""
    chosen = list(VARIANTS) if variants == "all" else [v.strip() for v in variants.split(",")]
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        raise _fail(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    config = _run_config("leave-one-out", "full", None, seed, max_epochs, None)
    data = _load(dataset)
    sp = make_split(data, config)
    _report(out, run_ablation(data, sp, chosen, config, cache_dir), data, config, len(sp.test))


index_app = typer.Typer(help="The Qdrant item index and RAG context collection.", no_args_is_help=True)
app.add_typer(index_app, name="index")
LocationOpt = Annotated[
    str, typer.Option(help="A folder (embedded Qdrant Edge), qdrant-local:PATH, :memory:, or a Qdrant server URL.")
]


@index_app.command("build")
def index_build(
    model: Annotated[Path, typer.Option(help="Checkpoint folder from `llm4rec train`.")],
    location: LocationOpt = ".cache/index",
    context: Annotated[bool, typer.Option(help="Also (re)build the RAG context collection.")] = True,
    items: Annotated[bool, typer.Option(help="(Re)build the item collection.")] = True,
    cache_dir: CacheOpt = DEFAULT_CACHE,
) -> None:
    """(Re)build the item index from a checkpoint; readers switch to it only once it is complete."""
    ck = _open_for_serving(model, cache_dir)
    engine = make_engine(location)
    items_name, context_name = collections(ck.version, ck.meta)
    if items:
        built = build_item_index(engine, ck.model, ck.data, ck.train.popularity(), items_name)
        typer.echo(f"items: {built.count()} points of dimension {built.dim} published at {location}")
    if context:
        entries = build_entries(ck.data)
        ctx = build_context_index(engine, entries, lambda texts: embed_texts(texts, cache_dir), context_name)
        typer.echo(f"context: {ctx.count()} entries published")


@app.command("serve")
def serve_cmd(
    host: str = "127.0.0.1",
    port: int = 8000,
    train_if_missing: Annotated[bool, typer.Option(help="Train a model in the background if none exists.")] = True,
    time_budget: Annotated[float, typer.Option(help="Training seconds when a model must be trained first.")] = 300,
) -> None:
    """Run the REST service on the settings from the environment (RECSYS_...). With no model yet it
    answers at once from content vectors and popularity, trains and indexes a model on the bundled
    MovieLens in the background, and swaps it in when ready."""
    # a shell's background job starts with SIGINT ignored: take it from the first moment (uvicorn installs
    # its graceful handlers once serving starts)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    limit_malloc_arenas()
    settings = Settings()
    embedded = not settings.kafka.bootstrap_servers  # no Kafka: the learner runs in this process
    learner_settings = LearnerSettings()
    store = adapter_store(learner_settings, settings.redis_url, settings.state_dir) if embedded else None

    async def started(state: ServiceState) -> None:
        """Before the first request: the embedded learner subscribes now (so it sees every event), or,
        with no model yet, once the background build has swapped the trained model in."""
        log_path = state.settings.cache_dir.parent / "background-build.log"
        learn = None if store is None else functools.partial(learn_in_process, state, learner_settings, store, log_path)
        if not state.recommender.c.model.cold_start:
            if learn is not None:
                await learn()
        elif train_if_missing:
            typer.echo(f"no model yet: serving popularity, then content vectors, while a model trains in the "
                       f"background (at most {time_budget:.0f} s, progress in {log_path}; GET /readyz tells the "
                       "stage)")  # fmt: skip
            state.tasks.append(asyncio.create_task(train_and_swap(state, time_budget, log_path, learn)))

    try:
        if embedded:
            recover(settings)  # a fine-tune cut by a kill: its model folder and its events
        _index_available(settings.index.location, settings.model_dir)
        app = create_app(settings, adapter_store=store, on_started=started)
    except (ValueError, IndexInUseError) as e:
        raise _fail(str(e)) from e
    # uvloop, as uvicorn itself would pick: this process owns the loop because the learner shares it
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the SIGINT it shut down on
        uvloop.run(_serve(app, host, port))
    # shut down (feedback spooled and fsynced, stores closed); a bundle build abandoned in a worker thread
    # would otherwise hold the interpreter's exit until it finishes
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _index_available(location: str, model_dir: Path) -> None:
    """Fail before serving, in one line, when another process holds the model's embedded index (the
    lifespan would report it inside uvicorn's traceback)."""
    if location.startswith(("http://", "https://")) or location == ":memory:":
        return
    try:
        names = collections(checkpoint_version(model_dir), read_checkpoint_meta(model_dir))
    except (OSError, CheckpointMismatchError):  # no model yet: nothing of its index to hold
        return
    engine = make_engine(location)
    try:
        for name in names:
            engine.open(name)
    finally:
        engine.close()


async def _serve(app: FastAPI, host: str, port: int) -> None:
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        if server.should_exit:  # a signal during a long startup build: uvicorn would finish the build first.
            # Nothing was served or accepted yet, and an index being built is published only once complete.
            typer.echo("stopped while starting")
            sys.stdout.flush()
            os._exit(0)
        await asyncio.sleep(0.1)
    if server.started:
        _announce(app_state(app).recommender.c.catalogue.data.user_ids[0], host, port)
    await task


def _announce(user: str, host: str, port: int) -> None:
    base = f"http://{host}:{port}"
    example = json.dumps({"user_id": user, "k": 5})
    event = json.dumps({"events": [{"user_id": user, "item_id": "1", "type": "like"}]})
    typer.echo(f"serving on {base} (metrics at {base}/metrics); try:\n"
               f"  curl -s {base}/recommend -H 'content-type: application/json' -d '{example}'\n"
               f"  curl -s {base}/feedback -H 'content-type: application/json' -d '{event}'")  # fmt: skip


@app.command("learn")
def learn_cmd() -> None:
    """Run the streaming learner on the RECSYS_ settings (Kafka feedback -> adapters in Redis)."""
    from learner.__main__ import main as learner_main

    asyncio.run(learner_main(LearnerSettings()))


adapter_app = typer.Typer(help="Adapter versions in Redis.", no_args_is_help=True)
app.add_typer(adapter_app, name="adapter")


@adapter_app.command("list")
def adapter_list() -> None:
    """Stored versions and which one is served."""
    asyncio.run(_adapter_list(LearnerSettings()))


@adapter_app.command("rollback")
def adapter_rollback(version: int) -> None:
    """Serve an older version again: it is re-published, signed, under a new (higher) version number,
    because the service only ever moves forward."""
    try:
        new = asyncio.run(_adapter_rollback(LearnerSettings(), version))
    except AdapterRejectedError as e:
        raise _fail(str(e)) from e
    typer.echo(f"version {version} re-published as {new}")


async def _adapter_list(s: LearnerSettings) -> None:
    redis = Redis.from_url(_redis_url(s))
    store = RedisAdapterStore(redis, s.adapter.prefix, s.adapter.keep)
    current = await store.current()
    for v in await store.versions():
        typer.echo(f"{v}{'  (served)' if v == current else ''}")
    await redis.aclose()


def _redis_url(s: LearnerSettings) -> str:
    try:
        return s.require_redis_url("adapter versions live in Redis")
    except MissingSettingError as e:
        raise _fail(str(e)) from e


async def _adapter_rollback(s: LearnerSettings, version: int) -> int:
    redis = Redis.from_url(_redis_url(s))
    try:
        store = RedisAdapterStore(redis, s.adapter.prefix, s.adapter.keep)
        fields = await store.fetch(version)
        if fields is None:
            raise AdapterRejectedError("missing", f"version {version} is not stored (kept: {await store.versions()})")
        old = json.loads(fields[b"manifest"])
        shapes = {k: tuple(v) for k, v in old["shapes"].items()}
        manifest, tensors = decode(fields, s.adapter.key(), shapes, newer_than=0)
        new = await store.current() + 1
        republished = Manifest(new, manifest.base_model, old["shapes"], manifest.events_seen, items=manifest.items)
        await store.publish(new, encode(tensors, republished, s.adapter.key()), [])
        return new
    finally:
        await redis.aclose()


@app.command("up")
def up_cmd(host: str = "127.0.0.1", port: int = 8000) -> None:
    """The stack on this machine without Docker: the service, and the learner as its own process when
    Kafka is configured (RECSYS_KAFKA__BOOTSTRAP_SERVERS; the learner then needs RECSYS_REDIS_URL). With
    the embedded defaults the learner runs inside the service. Stops all of them within 10 s of SIGTERM or
    SIGINT (Ctrl-C, also when started with SIGINT ignored), or when one exits; exits 0 on a requested stop."""
    settings = Settings()
    commands = [[sys.executable, "-m", "llm4rec", "serve", "--host", host, "--port", str(port)]]
    if settings.kafka.bootstrap_servers:
        if not settings.redis_url:
            raise _fail("the separate learner publishes adapters to Redis: set RECSYS_REDIS_URL")
        commands.append([sys.executable, "-m", "learner"])
    if code := supervise(commands, grace_s=8.0):
        raise typer.Exit(code=code)
