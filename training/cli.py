"""Thin CLI for the training stage: `cellmfg train all|pretrain|transfer|from-ledger` and `cellmfg study
learning-curve`; `cellmfg data …` is datagen/cli.py, `cellmfg registry …` registry/cli.py.

Heavy imports (TensorFlow, MLflow) happen inside the commands. Progress bars go to stderr so `--json` output on
stdout stays machine-readable; with `--json` the last stdout line is one JSON object.

`train all` writes its report to its own run folder (runs/train-all-…/) and the parent MLflow runs; the committed
docs/results.* change only with `--write-docs`. `pretrain` and `transfer` register the net as `{task}_{dataset}`
(the dataset is `--dataset NAME`, else the CSV's file name: e.g. density_lfp), the name the service looks up for the
dataset (`chemistry=lfp` on /predict/electrode) once it is promoted; they and `from-ledger` (a new version of a
served model, alias `challenger`) print the chemistry or dataset and the endpoint it will answer at
(`cellmfg.endpoints`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from cellmfg.console import JsonOption, err, fail, progress
from cellmfg.domain import model_name

train_app = typer.Typer(no_args_is_help=True, add_completion=False)
PROJECT_ROOT = Path(__file__).resolve().parent.parent

SeedOption = Annotated[int | None, typer.Option(help="Random seed for splits, weights and shuffling (default: the "
                                                     "preset's, 42).")]


# ---------------------------------------------------------------------------------------------------------------
# cellmfg train

PresetOption = Annotated[str, typer.Option(help="Config preset: paper (250 epochs, 20 splits) or quick (5 epochs, "
                                                 "3 splits; tests).")]
# The options `train pretrain` and `train transfer` share.
TargetColumnOption = Annotated[str, typer.Option("--target", help="Target column, e.g. density_g_cm3 (or the task "
                                                                  "name).")]
ModelNameOption = Annotated[str | None, typer.Option("--name", help="Registered model name (default: "
                                                                    "{task}_{dataset}, the name the service looks up "
                                                                    "for the dataset; another name is served only at "
                                                                    "/predict/{name}_onnx).")]
DatasetNameOption = Annotated[str | None, typer.Option(
    "--dataset", help="Dataset name the model is recorded and served under: the chemistry (electrode data) or dataset "
                      "(GDL data) value of /predict/electrode or /predict/gdl (default: the CSV's file name without "
                      ".csv).")]
TestFractionOption = Annotated[float | None, typer.Option("--test-fraction", help="Test share of the rows (default "
                                                                                   "0.3).")]


def _config(preset: str, seed: int | None, test_fraction: float | None = None) -> Any:
    from training.config import load_config

    try:
        return load_config(preset, seed, test_fraction=test_fraction)
    except ValueError as error:
        fail(str(error))


def _resolve_target(column: str, kind: str) -> Any:
    from cellmfg.domain import targets_for

    for target in targets_for(kind):  # type: ignore[arg-type]
        if column in (target.column, target.task):
            return target
    allowed = ", ".join(t.column for t in targets_for(kind))  # type: ignore[arg-type]
    fail(f"--target: unknown target column {column!r} for {kind} data; allowed: {allowed}")


def _dataset_name(given: str | None, csv: Path, kind: Any) -> str:
    """The dataset name the model is recorded and served under: --dataset, else the CSV's stem; an error names the
    rule when the service could not be asked for it."""
    from cellmfg.endpoints import dataset_name_problem

    name = given if given is not None else csv.stem
    problem = dataset_name_problem(name, kind)
    if problem is not None:
        fail(f"--dataset: {problem}" if given is not None
             else f"{csv}: the file name gives the dataset name, and {problem}; give one with --dataset NAME")
    return name


def _serving(registered: str, target: Any, kind: Any, dataset: str) -> Any:
    """Where the model will answer; said up front on stderr too when it will not answer for its dataset (a --name
    the service does not look up), before minutes of training."""
    from cellmfg.endpoints import Serving

    serving = Serving(registered, kind, target.task, dataset)
    if serving.note() is not None:
        err.print(f"note: {escape(serving.note() or '')}", highlight=False, soft_wrap=True)
    return serving


def _load_user_csv(path: Path, target_column: str) -> tuple[Any, Any]:
    """Validate a user CSV and resolve its target before any MLflow run opens."""
    import pandas as pd

    from cellmfg.dataio import DataValidationError, load_csv
    from cellmfg.domain import kind_of_columns

    try:
        header = list(pd.read_csv(path, nrows=0).columns) if path.is_file() else []
        kind = kind_of_columns(header)
        target = _resolve_target(target_column, kind)
        loaded = load_csv(path, [target.column], kind=kind)
    except DataValidationError as error:
        fail(str(error))
    return loaded, target


@train_app.command("all")
def train_all(
    preset: PresetOption = "paper",
    seed: SeedOption = None,
    results_dir: Annotated[Path | None, typer.Option(
        help="Where the results report goes (default: runs/train-all-{preset}-{UTC time}/, gitignored).")] = None,
    write_docs: Annotated[bool, typer.Option(
        "--write-docs/--no-docs", help="Also rewrite the committed docs/results.md and docs/results.csv.")] = False,
    as_json: JsonOption = False,
) -> None:
    """The paper's full set on the shipped data: 3 pretrained nets, 5 transfers, comparisons, baselines.

    The results report (Markdown and CSV) goes to the run's own folder and to every parent MLflow run; the committed
    docs/results.* change only with --write-docs.
    """
    import time

    config = _config(preset, seed)
    from training import jobs, report, tracking

    tracking.configure()
    started = time.perf_counter()
    watch = jobs.Stopwatch()
    with progress(jobs.work_units(config), quiet=False) as advance:
        results = jobs.train_all(config, advance, watch)
    summaries = [r.summary for r in results]
    folders = [results_dir or default_results_dir(config.preset)]
    if write_docs:
        folders.append(PROJECT_ROOT / "docs")
    for folder in folders:
        write_results(folder, summaries, config)
    seconds = time.perf_counter() - started
    stages = {name: round(value, 1) for name, value in watch.laps.items()}
    if as_json:
        print(json.dumps({"seconds": round(seconds, 1), "stages": stages, "results": [str(f) for f in folders],
                          "models": [s.model_dump(mode="json") for s in summaries]}))
    else:
        # The verdicts only: the full tables (every method, paired intervals, coverage) are in the report.
        for summary in summaries:
            print("- " + report.verdict_sentence(summary).replace("**", ""))
        print("Full tables: " + ", ".join(str(f / "results.md") for f in folders) +
              " (and results/results.md on each parent MLflow run)")
        print(f"{len(results)} models registered in {seconds:.0f} s; MLflow: {tracking.tracking_uri()}")
        for name, value in stages.items():
            print(f"  {value:6.1f} s  {name}")


def default_results_dir(preset: str) -> Path:
    """runs/train-all-{preset}-{UTC time}/ in the project (gitignored): one folder per run, never the docs."""
    from datetime import UTC, datetime

    return PROJECT_ROOT / "runs" / f"train-all-{preset}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"


def write_results(folder: Path, summaries: list[Any], config: Any) -> None:
    """results.md (with its header) and results.csv of a `train all` run in `folder`."""
    from training import report

    folder.mkdir(parents=True, exist_ok=True)
    header = (f"# Results: `cellmfg train all --preset {config.preset}` (seed {config.seed})\n\n"
              "Generated by the run; do not edit by hand.\n\n")
    (folder / "results.md").write_text(header + report.markdown(summaries, config.coverage, report.protocol(config)))
    report.long_table(summaries).to_csv(folder / "results.csv", index=False)


def _print_result(summary: Any, serving: Any, as_json: bool) -> None:
    """The run's report, then where the registered model will answer once promoted (under "serving" in JSON)."""
    from training import report

    if as_json:
        print(json.dumps({**summary.model_dump(mode="json"), "serving": serving.to_json()}))
        return
    print(f"run {summary.run_id}: {summary.model_uri}")
    print(report.markdown([summary]))
    print(f"Registered {serving.model} v{summary.registered_version}. Once promoted (`cellmfg registry promote "
          f"--model {serving.model}`), {serving.sentence()}")


@train_app.command("pretrain")
def train_pretrain(
    target: TargetColumnOption,
    data_csv: Annotated[Path | None, typer.Option(
        "--data", help="Source dataset CSV (the large one); required.")] = None,
    dataset: DatasetNameOption = None,
    name: ModelNameOption = None,
    preset: PresetOption = "paper",
    seed: SeedOption = None,
    test_fraction: TestFractionOption = None,
    as_json: JsonOption = False,
) -> None:
    """Pretrain a net on a lab's large dataset and register it as {task}_{dataset}."""
    if data_csv is None:
        # Before --dataset named the data set, it took the CSV: say so rather than only "missing option".
        fail("give the source CSV with --data PATH" + (f" (--dataset names the dataset, e.g. {Path(dataset).stem})"
                                                       if dataset else ""))
    loaded, target_spec = _load_user_csv(data_csv, target)
    dataset_name = _dataset_name(dataset, data_csv, loaded.kind)
    registered = name or model_name(target_spec.task, dataset_name)
    serving = _serving(registered, target_spec, loaded.kind, dataset_name)
    config = _config(preset, seed, test_fraction)

    from training import jobs, tracking

    tracking.configure()
    data = _prepare(loaded, target_spec, dataset_name)
    tracking.use_experiment(target_spec.task)
    with tracking.run(f"pretrain-{registered}", tags={"task": target_spec.task}), progress(2) as bar:
        result = jobs.run_source(data, config, registered, bar)
    _print_result(result.summary, serving, as_json)


@train_app.command("transfer")
def train_transfer(
    base: Annotated[str, typer.Option(help="Pretrained model URI, e.g. models:/density_graphite@champion.")],
    data_csv: Annotated[Path, typer.Option("--data", help="Small target dataset CSV.")],
    target: TargetColumnOption,
    dataset: DatasetNameOption = None,
    name: ModelNameOption = None,
    preset: PresetOption = "paper",
    seed: SeedOption = None,
    test_fraction: TestFractionOption = None,
    as_json: JsonOption = False,
) -> None:
    """Adapt a pretrained net to a lab's small dataset and compare it, on grouped splits, with every alternative;
    register it as {task}_{dataset}."""
    loaded, target_spec = _load_user_csv(data_csv, target)
    dataset_name = _dataset_name(dataset, data_csv, loaded.kind)
    registered = name or model_name(target_spec.task, dataset_name)
    serving = _serving(registered, target_spec, loaded.kind, dataset_name)
    config = _config(preset, seed, test_fraction)
    import dataclasses

    from training import jobs, nets, tracking

    nets.single_threaded()  # before loading the base net initialises TensorFlow
    tracking.configure()
    base_ref = _load_base(base, loaded, data_csv)
    base_ref = dataclasses.replace(base_ref, source=_base_source(base_ref, target_spec))
    data = _prepare(loaded, target_spec, dataset_name)
    tracking.use_experiment(target_spec.task)
    with tracking.run(f"transfer-{registered}", tags={"task": target_spec.task}), progress(2) as bar:
        result = jobs.run_target(data, base_ref, config, registered, bar)
    _print_result(result.summary, serving, as_json)


@train_app.command("from-ledger")
def train_from_ledger(
    model: Annotated[str, typer.Option(help="The served model to challenge, as its Keras name: density_nmc.")],
    since: Annotated[str | None, typer.Option(
        help="Only outcomes recorded at or after this time (ISO 8601 with a time zone, e.g. 2026-01-01T00:00:00Z; "
             "default: every outcome).")] = None,
    ledger_url: Annotated[str | None, typer.Option(
        help="The service whose prediction ledger to read (its GET /outcomes); default $CELLMFG_SERVICE_URL, else "
             "http://127.0.0.1:3000. $CELLMFG_API_TOKEN is sent when set.")] = None,
    ledger_csv: Annotated[Path | None, typer.Option(
        help="Instead of --ledger-url: rows `cellmfg ledger export --model NAME_onnx` wrote.")] = None,
    data_csv: Annotated[Path | None, typer.Option(
        "--data", help="The original target rows (default: the champion's own training CSV, as logged).")] = None,
    out_dir: Annotated[Path | None, typer.Option(
        help="Where the combined training CSV is kept (default: runs/from-ledger-{model}-{UTC time}/).")] = None,
    preset: PresetOption = "paper",
    seed: SeedOption = None,
    test_fraction: TestFractionOption = None,
    as_json: JsonOption = False,
) -> None:
    """Train a challenger on the champion's rows plus the line's measured ledger rows (a sheet's rows never
    split), from the same base net with every alternative on the same grouped splits, as `train transfer` does;
    register it as a new version of the model with alias `challenger` and its lineage (ledger rows, time window,
    parent champion). Then `cellmfg registry promote --model models:/NAME@challenger --alias challenger` lets
    the service score it in shadow."""
    import os

    from training import from_ledger as fl

    start = _since(since)
    if ledger_url is not None and ledger_csv is not None:
        fail("give --ledger-url or --ledger-csv, not both", 2)
    config = _config(preset, seed, test_fraction)
    import dataclasses

    import mlflow

    from training import jobs, nets, tracking

    nets.single_threaded()  # before loading the base net initialises TensorFlow
    tracking.configure()
    client = mlflow.tracking.MlflowClient()
    try:
        parent = fl.parent_champion(client, model)
        onnx_model = f"{model}{fl.ONNX_SUFFIX}"
        if ledger_csv is not None:
            if not ledger_csv.is_file():
                raise fl.FromLedgerError(f"--ledger-csv {ledger_csv}: no such file")
            source, text = str(ledger_csv), ledger_csv.read_text(encoding="utf-8-sig")
        else:
            source = ledger_url or os.environ.get("CELLMFG_SERVICE_URL") or fl.DEFAULT_SERVICE_URL
            text = fl.fetch_ledger(source, onnx_model, start, os.environ.get("CELLMFG_API_TOKEN"))
        ledger = fl.read_ledger_csv(text, source)
        original_path = fl.original_data_path(parent, data_csv)
    except fl.FromLedgerError as error:
        fail(str(error), 2)
    original, target_spec = _load_user_csv(original_path, parent.target_column or "density_g_cm3")
    try:
        combined = fl.combine(original.frame, original.kind, target_spec.column, ledger, source)
    except fl.FromLedgerError as error:
        fail(str(error), 2)
    folder = out_dir or PROJECT_ROOT / "runs" / f"from-ledger-{model}-{_utc_stamp()}"
    folder.mkdir(parents=True, exist_ok=True)
    combined_path = folder / f"{parent.dataset}.csv"
    combined.frame.to_csv(combined_path, index=False)
    loaded, _ = _load_user_csv(combined_path, target_spec.column)
    serving = _serving(model, target_spec, loaded.kind, parent.dataset)
    base_ref = _load_base(f"models:/{parent.base_name}/{parent.base_version}", loaded, combined_path)
    base_ref = dataclasses.replace(base_ref, source=_base_source(base_ref, target_spec))
    data = _prepare(loaded, target_spec, parent.dataset)
    lineage = {**combined.lineage(), "ledger_source": source, "ledger_since": start.isoformat() if start else "",
               "parent_champion_onnx_version": parent.onnx_version,
               "parent_champion_keras_version": parent.keras_version, "parent_champion_role": parent.role,
               "trained_from": "ledger"}
    tracking.use_experiment(target_spec.task)
    with tracking.run(f"from-ledger-{model}", tags={"task": target_spec.task, **lineage}), progress(2) as bar:
        mlflow.log_artifact(str(combined_path), "data")
        result = jobs.run_target(data, base_ref, config, model, bar)
    version = result.registered_version
    if version is None:  # registration is what this command is for; log_task registers a named model
        fail(f"{model}: the trained net was not registered")
    tracking.tag_model_version(model, version, lineage)
    client.set_registered_model_alias(model, fl.CHALLENGER_ALIAS, version)
    if as_json:
        print(json.dumps({**result.summary.model_dump(mode="json"), "serving": serving.to_json(),
                          "alias": fl.CHALLENGER_ALIAS, "lineage": lineage, "data": str(combined_path)}))
        return
    from training import report

    print(report.markdown([result.summary]))
    print(f"Registered {model} v{version} @{fl.CHALLENGER_ALIAS}: {combined.original_rows} original rows + "
          f"{combined.ledger_rows} ledger rows in {combined.ledger_groups} groups (parent champion "
          f"{onnx_model} v{parent.onnx_version}); training rows in {combined_path}.")
    print(f"Score it in shadow: cellmfg registry promote --model models:/{model}@{fl.CHALLENGER_ALIAS} "
          f"--alias {fl.CHALLENGER_ALIAS}")


def _since(text: str | None) -> Any:
    """--since as an aware datetime, or a clear error."""
    from datetime import datetime

    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        fail(f"--since {text!r}: not an ISO 8601 time; allowed: e.g. 2026-01-01T00:00:00Z", 2)
    if moment.tzinfo is None:
        fail(f"--since {text!r}: no time zone; allowed: an ISO 8601 time with one, e.g. 2026-01-01T00:00:00Z", 2)
    return moment


def _utc_stamp() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def _prepare(loaded: Any, target: Any, name: str) -> Any:
    """The dataset, or a clear error when its groups cannot be split (too few distinct samples)."""
    from training import fit

    data = fit.prepare(loaded, target, name)
    groups = len(set(data.groups.tolist()))
    if groups < 5:
        fail(f"{loaded.source}: {groups} distinct sample group(s); grouped train/validation/test splits need at "
              "least 5 (rows with identical inputs, or one group_id, count as one group)")
    return data


def _base_source(base: Any, target: Any) -> Any:
    """The base net's own training data, for the pooled comparison, when its CSV is still where it was logged
    and unchanged; else None (the pooled comparison is then left out)."""
    import mlflow

    from cellmfg.dataio import DataValidationError, file_sha256, load_csv
    from training import fit

    if not base.version:
        return None
    try:
        version = mlflow.tracking.MlflowClient().get_model_version(base.name, base.version)
        params = mlflow.tracking.MlflowClient().get_run(str(version.run_id)).data.params
        path = Path(params.get("data_source", ""))
        if not path.is_file() or file_sha256(path) != params.get("data_sha256"):
            return None
        return fit.prepare(load_csv(path, [target.column]), target, params.get("dataset", path.stem))
    except (mlflow.exceptions.MlflowException, DataValidationError, OSError, ValueError):
        return None


def _load_base(uri: str, loaded: Any, source: Path) -> Any:
    """Load and check the base net named by an MLflow reference (models:/NAME/VERSION, models:/NAME/latest,
    models:/NAME@ALIAS or runs:/RUN_ID/PATH): its inputs must be this data's feature columns, in order."""
    import mlflow

    from cellmfg.domain import feature_columns
    from cellmfg.modelref import ModelReferenceError, resolve_reference
    from training.jobs import BaseRef

    client = mlflow.tracking.MlflowClient()
    try:
        resolved = resolve_reference(uri, client)
    except ModelReferenceError as error:
        fail(f"base model: {error}")
    expected = resolved.tags.get("features")
    columns = ",".join(feature_columns(loaded.kind))
    if expected and expected != columns:
        fail(f"base model {uri} takes inputs [{expected}] but {source} has {loaded.kind} columns [{columns}]")
    try:
        # The pinned URI: an alias or `latest` that moves while this runs must not change the net halfway.
        model = mlflow.keras.load_model(resolved.load_uri)
    except (mlflow.exceptions.MlflowException, ValueError, OSError) as error:
        fail(f"cannot load base model {uri} ({resolved.load_uri}): {str(error).splitlines()[0]}")
    width = int(model.inputs[0].shape[-1])
    if width != len(feature_columns(loaded.kind)):
        fail(f"base model {uri} takes {width} inputs but {source} has {len(feature_columns(loaded.kind))} "
              f"{loaded.kind} feature columns")
    return BaseRef(model, resolved.name or "", resolved.version or "", resolved.tags.get("dataset", ""))


# ---------------------------------------------------------------------------------------------------------------
# cellmfg study

study_app = typer.Typer(no_args_is_help=True, add_completion=False)


def _number_list(text: str | None, option: str, kind: type) -> tuple[Any, ...] | None:
    """"2,4,8" → (2, 4, 8); a clear error naming the option when an entry is not a number."""
    if text is None:
        return None
    try:
        return tuple(kind(part) for part in text.split(",") if part.strip())
    except ValueError:
        fail(f"{option}: {text!r} is not a comma-separated list of {'whole numbers' if kind is int else 'numbers'}")


@study_app.command("learning-curve")
def study_learning_curve(
    data_csv: Annotated[Path, typer.Option("--data", help="Dataset CSV (the target's, or the source's without "
                                                          "--base).")],
    target: TargetColumnOption,
    base: Annotated[str | None, typer.Option(help="Pretrained model URI, e.g. models:/density_graphite/1; without "
                                                  "it only scratch and random forest run (source-size "
                                                  "ablation).")] = None,
    sizes: Annotated[str | None, typer.Option(help="Training group counts, e.g. 2,4,6,8 (default: 2, 4, 6, 8, 12, "
                                                   "16, 24, … and all available groups).")] = None,
    fractions: Annotated[str | None, typer.Option(help="Instead of --sizes: shares of the available training "
                                                       "groups, e.g. 0.25,0.5,0.75,1.")] = None,
    repeats: Annotated[int, typer.Option(help="Grouped outer splits, each with its own fixed test part.")] = 10,
    preset: PresetOption = "paper",
    seed: SeedOption = None,
    test_fraction: TestFractionOption = None,
    out: Annotated[Path | None, typer.Option(help="Also write learning_curve.md, .csv and .png here.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Test MAPE of transfer, scratch, random forest and zero-shot on 2, 4, 6, … whole groups of the data, over
    grouped repeated splits with paired intervals; logged to one MLflow run (table and plot)."""
    loaded, target_spec = _load_user_csv(data_csv, target)
    config = _config(preset, seed, test_fraction)
    size_list = _number_list(sizes, "--sizes", int)
    fraction_list = _number_list(fractions, "--fractions", float)
    from training import fit, study

    data = fit.prepare(loaded, target_spec, data_csv.stem)
    try:
        points = study.curve_splits(data.groups, config, repeats, size_list, fraction_list)
    except study.StudyInputError as error:
        fail(str(error))
    from training import nets, tracking

    nets.single_threaded()  # before loading the base net initialises TensorFlow
    tracking.configure()
    frozen = nets.frozen_features(_load_base(base, loaded, data_csv).model, data.x) if base else None
    import mlflow

    name = f"learning-curve-{data.name}-{target_spec.task}"
    tracking.use_experiment("learning_curve")  # its own experiment: study runs register no model
    with tracking.run(name, tags={"task": target_spec.task, "study": "learning_curve"}) as active:
        mlflow.log_params({"base": base or "none", "data": str(data_csv), "data_sha256": loaded.sha256,
                           "repeats": repeats, "sizes": ",".join(str(s) for s in sorted({p.size for p in points})),
                           **config.flat_params()})
        with progress(1) as bar:
            mapes = study.method_mapes(data, points, config, frozen)
            bar(f"{name}: trained")
        table = study.summarise(points, mapes, config)
        for method, groups, mape in zip(table["method"], table["groups"], table["test_mape_pct"], strict=True):
            mlflow.log_metric(f"{method}_test_mape_pct", float(mape), step=int(groups))
        text = study.markdown(table)
        with tracking.artifact_dir() as temporary:
            targets = [Path(temporary)] + ([out] if out is not None else [])
            for folder in targets:
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "learning_curve.md").write_text(text)
                table.to_csv(folder / "learning_curve.csv", index=False)
                study.plot(table, f"{data.name} {target_spec.task}", folder / "learning_curve.png")
            mlflow.log_artifacts(temporary, "learning_curve")
    if as_json:
        print(json.dumps({"run_id": active.info.run_id, "table": json.loads(table.to_json(orient="records"))}))
    else:
        print(text)
        print(f"MLflow run {active.info.run_id} ({tracking.tracking_uri()})" + (f"; files in {out}" if out else ""))

if __name__ == "__main__":  # pragma: no cover
    sys.exit(train_app())
