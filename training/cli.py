"""Thin CLI for the data and training stages (`cellmfg data …`, `cellmfg train …`).

Heavy imports (TensorFlow, MLflow) happen inside the commands. Progress bars go to stderr so `--json` output on
stdout stays machine-readable; with `--json` the last stdout line is one JSON object.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

data_app = typer.Typer(no_args_is_help=True, add_completion=False)
train_app = typer.Typer(no_args_is_help=True, add_completion=False)
err = Console(stderr=True)
PROJECT_ROOT = Path(__file__).resolve().parent.parent

SeedOption = Annotated[int | None, typer.Option(help="Random seed (default: the dataset/config default).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line.")]


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def _progress(total: int, quiet: bool = False) -> Iterator[Callable[..., None]]:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, disable=quiet, transient=False) as progress:
        bar = progress.add_task("starting", total=total)

        def advance(label: str, steps: int = 1) -> None:
            progress.update(bar, advance=steps, description=label[:60])

        yield advance


# ---------------------------------------------------------------------------------------------------------------
# cellmfg data


@data_app.command("generate")
def data_generate(
    seed: SeedOption = None,
    quick: Annotated[bool, typer.Option(help="Only a few GDL rows (fast; for smoke tests).")] = False,
    check: Annotated[bool, typer.Option(help="Regenerate and fail on any difference from the files in --out.")]
    = False,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: the project's data/).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Generate the five datasets (electrodes from a process model, GDLs from microstructures)."""
    from cellmfg.___domain import DATASETS
    from cellmfg.dataio import DATA_DIR
    from training import datagen

    seed = datagen.DEFAULT_SEED if seed is None else seed
    directory = out or DATA_DIR
    total = sum(s.paper_rows for s in DATASETS.values()) if not quick else \
        sum(s.paper_rows for s in DATASETS.values() if s.kind == "electrode") + 2 * (datagen.QUICK_GDL_ROWS + 2)
    with _progress(total) as advance:
        def step(name: str, rows: int) -> None:
            advance(f"{'checking' if check else 'generating'} {name}", rows)

        if check:
            problems = datagen.check(seed, directory, quick=quick, progress=step)
        else:
            generated = datagen.generate(seed, directory, quick=quick, progress=step)
    if check:
        result: dict[str, Any] = {"identical": not problems, "problems": problems, "seed": seed}
        if as_json:
            print(json.dumps(result))
        for problem in problems:
            err.print(f"[red]{escape(problem)}[/]", highlight=False, soft_wrap=True)
        if problems:
            raise typer.Exit(1)
        if not as_json:
            print(f"data/ matches a fresh generation with seed {seed}" + (" (quick sample of GDL rows)" if quick
                                                                          else ""))
        return
    summary = {name: {"path": str(path), "seconds": round(generated.seconds[name], 2)}
               for name, path in generated.paths.items()}
    if as_json:
        print(json.dumps({"seed": seed, "datasets": summary}))
    else:
        for name, info in summary.items():
            print(f"{name:10s} {info['path']}  ({info['seconds']} s)")


@data_app.command("validate")
def data_validate(
    csv: Annotated[Path, typer.Argument(help="A CSV in the canonical column format.")],
    dataset: Annotated[str | None, typer.Option(help="Paper dataset to compare ranges with (e.g. nmc).")] = None,
    target: Annotated[list[str] | None, typer.Option(help="Target column(s) that must be present.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Check a lab's CSV: columns, types, NaN/inf, duplicates, physical bounds; report out-of-range values."""
    from cellmfg.dataio import DataValidationError, load_csv

    try:
        loaded = load_csv(csv, target or [], dataset=dataset)
    except (DataValidationError, KeyError) as error:
        _fail(str(error))
        return
    report = {"file": str(csv), "kind": loaded.kind, "rows": len(loaded.frame), "sha256": loaded.sha256,
              "ignored_columns": loaded.ignored_columns,
              "out_of_paper_range": [vars(item) for item in loaded.out_of_range]}
    if as_json:
        print(json.dumps(report))
        return
    print(f"{csv}: {report['rows']} valid {loaded.kind} rows")
    for item in loaded.out_of_range:
        print(f"  {item.column}: {item.rows} row(s) outside the paper range {item.paper_min:g}–{item.paper_max:g} "
              f"(observed {item.observed_min:g}–{item.observed_max:g}); accepted")


# ---------------------------------------------------------------------------------------------------------------
# cellmfg train

PresetOption = Annotated[str, typer.Option(help="Config preset: paper (250 epochs) or quick (tests).")]


def _config(preset: str, seed: int | None, test_fraction: float | None = None) -> Any:
    from training.config import load_config

    try:
        return load_config(preset, seed, test_fraction=test_fraction)
    except ValueError as error:
        _fail(str(error))


def _resolve_target(column: str, kind: str) -> Any:
    from cellmfg.___domain import targets_for

    for target in targets_for(kind):  # type: ignore[arg-type]
        if column in (target.column, target.task):
            return target
    allowed = ", ".join(t.column for t in targets_for(kind))  # type: ignore[arg-type]
    _fail(f"unknown target column {column!r} for {kind} data; allowed: {allowed}")


def _load_user_csv(path: Path, target_column: str) -> tuple[Any, Any]:
    """Validate a user CSV and resolve its target before any MLflow run opens."""
    import pandas as pd

    from cellmfg.___domain import kind_of_columns
    from cellmfg.dataio import DataValidationError, load_csv

    try:
        header = list(pd.read_csv(path, nrows=0).columns) if path.is_file() else []
        kind = kind_of_columns(header)
        target = _resolve_target(target_column, kind)
        loaded = load_csv(path, [target.column], kind=kind)
    except DataValidationError as error:
        _fail(str(error))
    return loaded, target


@train_app.command("all")
def train_all(
    preset: PresetOption = "paper",
    seed: SeedOption = None,
    docs: Annotated[bool | None, typer.Option(help="Write docs/results.md and .csv (default: paper preset)")]
    = None,
    as_json: JsonOption = False,
) -> None:
    """The paper's full set on the shipped data: 3 pretrained nets, 5 transfers, comparisons, baselines."""
    import time

    config = _config(preset, seed)
    from training import report, tracking, train

    tracking.configure()
    started = time.perf_counter()
    watch = train.Stopwatch()
    with _progress(train.work_units(config), quiet=False) as advance:
        results = train.train_all(config, advance, watch)
    summaries = [r.to_json() for r in results]
    markdown = report.markdown(summaries)
    if docs if docs is not None else preset == "paper":
        docs_dir = PROJECT_ROOT / "docs"
        docs_dir.mkdir(exist_ok=True)
        header = (f"# Results: `cellmfg train all --preset {config.preset}` (seed {config.seed})\n\n"
                  "Generated by the run; do not edit by hand.\n\n")
        (docs_dir / "results.md").write_text(header + markdown)
        report.long_table(summaries).to_csv(docs_dir / "results.csv", index=False)
    seconds = time.perf_counter() - started
    stages = {name: round(value, 1) for name, value in watch.laps.items()}
    if as_json:
        print(json.dumps({"seconds": round(seconds, 1), "stages": stages, "models": summaries}))
    else:
        print(markdown)
        print(f"{len(results)} models registered in {seconds:.0f} s; MLflow: {tracking.tracking_uri()}")
        for name, value in stages.items():
            print(f"  {value:6.1f} s  {name}")


def _print_result(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))
        return
    print(f"run {summary['run_id']}: {summary['model_uri']}")
    print(f"test MAPE {summary['test_mape_pct']:.2f}%  baselines: " +
          ", ".join(f"{k} {v:.2f}%" for k, v in summary["baselines"].items()))


@train_app.command("pretrain")
def train_pretrain(
    dataset: Annotated[Path, typer.Option(help="Source dataset CSV (the large one).")],
    target: Annotated[str, typer.Option(help="Target column, e.g. density_g_cm3 (or the task name).")],
    name: Annotated[str | None, typer.Option(help="Registered model name (default: {task}_{csv stem}).")] = None,
    preset: PresetOption = "paper",
    seed: SeedOption = None,
    test_fraction: Annotated[float | None, typer.Option(help="Test share of the rows (default 0.3).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Pretrain a net on a lab's large dataset and register it."""
    loaded, target_spec = _load_user_csv(dataset, target)
    config = _config(preset, seed, test_fraction)
    import mlflow

    from training import tracking, train

    tracking.configure()
    data = train.prepare(loaded, target_spec, dataset.stem)
    registered = name or f"{target_spec.task}_{dataset.stem}"
    mlflow.set_experiment(tracking.experiment_name(target_spec.task))
    with tracking.run(f"pretrain-{registered}", tags={"task": target_spec.task}), _progress(config.repeats + 3) as bar:
        result = train.run_source(data, config, registered, bar)
    _print_result(result.to_json(), as_json)


@train_app.command("transfer")
def train_transfer(
    base: Annotated[str, typer.Option(help="Pretrained model URI, e.g. models:/density_graphite@champion.")],
    data_csv: Annotated[Path, typer.Option("--data", help="Small target dataset CSV.")],
    target: Annotated[str, typer.Option(help="Target column, e.g. density_g_cm3 (or the task name).")],
    name: Annotated[str | None, typer.Option(help="Registered model name (default: {task}_{csv stem}).")] = None,
    preset: PresetOption = "paper",
    seed: SeedOption = None,
    test_fraction: Annotated[float | None, typer.Option(help="Test share of the rows (default 0.3).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Adapt a pretrained net to a lab's small dataset (frozen net + one adapter layer) and register it."""
    loaded, target_spec = _load_user_csv(data_csv, target)
    config = _config(preset, seed, test_fraction)
    import mlflow

    from training import tracking, train

    tracking.configure()
    base_ref = _load_base(base, loaded, data_csv)
    data = train.prepare(loaded, target_spec, data_csv.stem)
    registered = name or f"{target_spec.task}_{data_csv.stem}"
    mlflow.set_experiment(tracking.experiment_name(target_spec.task))
    with tracking.run(f"transfer-{registered}", tags={"task": target_spec.task}), _progress(config.repeats + 2) as bar:
        result = train.run_target(data, base_ref, config, registered, bar)
    _print_result(result.to_json(), as_json)


def _load_base(uri: str, loaded: Any, source: Path) -> Any:
    """Load and check the base net: its inputs must be this data's feature columns, in order."""
    import mlflow

    from cellmfg.___domain import feature_columns
    from training.train import BaseRef

    client = mlflow.tracking.MlflowClient()
    name, version, dataset = uri, "", ""
    try:
        if uri.startswith("models:/"):
            reference = uri.removeprefix("models:/")
            if "@" in reference:
                name, alias = reference.split("@", 1)
                model_version = client.get_model_version_by_alias(name, alias)
            else:
                name, number = reference.split("/", 1)
                model_version = client.get_model_version(name, number)
            version, dataset = str(model_version.version), model_version.tags.get("dataset", "")
            expected = model_version.tags.get("features")
            columns = ",".join(feature_columns(loaded.kind))
            if expected and expected != columns:
                _fail(f"base model {uri} takes inputs [{expected}] but {source} has {loaded.kind} columns "
                      f"[{columns}]")
        model = mlflow.keras.load_model(uri)
    except (mlflow.exceptions.MlflowException, ValueError, OSError) as error:
        _fail(f"cannot load base model {uri}: {str(error).splitlines()[0]}")
    width = int(model.inputs[0].shape[-1])
    if width != len(feature_columns(loaded.kind)):
        _fail(f"base model {uri} takes {width} inputs but {source} has {len(feature_columns(loaded.kind))} "
              f"{loaded.kind} feature columns")
    return BaseRef(model, name, version, dataset)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(train_app())
