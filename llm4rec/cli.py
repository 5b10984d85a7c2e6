"""`llm4rec` commands. Settings are parsed here and handed down as small config objects."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from recdata import CONVERTERS, DatasetError, convert, load_dataset
from training.evaluate import PROTOCOLS
from training.experiment import SPLITS, RunConfig, make_split, run_baseline
from training.report import markdown_table, write_report
from training.zoo import BASELINES

app = typer.Typer(
    help="LLM4Rec: recommendation with multimodal fusion, causal debiasing and RAG.", no_args_is_help=True
)
data_app = typer.Typer(help="Dataset conversion and inspection.", no_args_is_help=True)
app.add_typer(data_app, name="data")
log = logging.getLogger("llm4rec")

DatasetOpt = Annotated[str, typer.Option(help="Bundled name (ml-latest-small) or a dataset folder.")]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=2)


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
    try:
        d = load_dataset(dataset)
    except DatasetError as e:
        raise _fail(str(e)) from e
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


@app.command("eval")
def eval_cmd(
    dataset: DatasetOpt = "ml-latest-small",
    models: Annotated[str, typer.Option(help=f"Comma-separated, from {sorted(BASELINES)}.")] = ",".join(BASELINES),
    protocol: Annotated[str, typer.Option(help=f"One of {PROTOCOLS}.")] = "full",
    split: Annotated[str, typer.Option(help=f"One of {SPLITS}.")] = "leave-one-out",
    min_rating: Annotated[float | None, typer.Option(help="Keep only ratings >= this as positives.")] = None,
    seed: int = 0,
    max_epochs: Annotated[int | None, typer.Option(help="Cap on training epochs (quick runs).")] = None,
    time_budget: Annotated[float | None, typer.Option(help="Seconds per model before training stops.")] = None,
    out: Annotated[Path, typer.Option(help="Folder for results.json, results.md, results.png.")] = Path("results"),
) -> None:
    """Train the chosen baselines, evaluate them on the test split, and write a report."""
    names = [m.strip() for m in models.split(",") if m.strip()]
    unknown = [m for m in names if m not in BASELINES]
    if unknown or protocol not in PROTOCOLS or split not in SPLITS:
        raise _fail(f"unknown models {unknown}" if unknown else f"protocol in {PROTOCOLS}, split in {SPLITS}")
    try:
        data = load_dataset(dataset)
    except DatasetError as e:
        raise _fail(str(e)) from e
    config = RunConfig(split, protocol, min_rating, seed, max_epochs, time_budget)
    sp = make_split(data, config)
    results = {name: run_baseline(name, data, sp, config) for name in names}
    meta = {"dataset": data.name, "split": split, "protocol": protocol, "seed": seed, "min_rating": min_rating,
            "fingerprint": data.fingerprint(), "users_evaluated": len(sp.test)}  # fmt: skip
    write_report(out, results, meta)
    typer.echo(markdown_table(results))
    typer.echo(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'results.png'}")
