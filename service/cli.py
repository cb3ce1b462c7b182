"""`cellmfg serve`: start the prediction service under `bentoml serve`.

Only typer and the standard library are imported at module level, so `cellmfg --help` stays instant; the model
source is checked (and BentoML started) only when the command runs.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SERVICE_TARGET = "service.service:CellMfgService"
SERVICE_NAME = "cellmfg"  # the name given in @bentoml.service; BentoML config is keyed by it


def server_environment(bundle: Path | None = None, workers: int = 1, alias: str | None = None,
                       base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment `bentoml serve` needs for these options, on top of `base` (default: this process's)."""
    env = dict(os.environ if base is None else base)
    if bundle is not None:
        env["CELLMFG_BUNDLE"] = str(Path(bundle).expanduser().resolve())
    if alias is not None:
        env["CELLMFG_ALIAS"] = alias
    # `bentoml serve` has no --workers flag in 1.4; the worker count is service config, overridable as JSON.
    overrides = json.loads(env.get("BENTOML_CONFIG_OVERRIDES") or "{}")
    overrides.setdefault("services", {}).setdefault(SERVICE_NAME, {})["workers"] = workers
    env["BENTOML_CONFIG_OVERRIDES"] = json.dumps(overrides)
    # BentoML reports usage to its makers unless told not to; an offline lab server should not call out (the image
    # sets it too). An operator's explicit choice is kept.
    env.setdefault("BENTOML_DO_NOT_TRACK", "true")
    return env


def server_command(port: int, host: str | None = None) -> list[str]:
    """argv that starts the service with this interpreter's BentoML, from the project root, with a Prometheus
    multiprocess directory of its own (`bentoml_serve`)."""
    command = [sys.executable, "-m", "service.cli", "serve", SERVICE_TARGET, "--port", str(port),
               "--working-dir", str(PROJECT_ROOT)]
    if host is not None:
        command += ["--host", host]
    return command


def bentoml_serve(argv: list[str]) -> None:
    """Run `bentoml <argv>` (BentoML's own command line) in this process with a fresh Prometheus multiprocess
    directory, removed when the server stops.

    BentoML 1.4 always uses $BENTOML_HOME/prometheus_multiproc_dir and empties it when a server starts: a second
    server on the same host deleted the first one's metric files, whose /metrics then showed a dead process's
    numbers. The directory is BentoML's `prometheus_multiproc_dir` setting, which only code can change; the
    supervisor hands it to every worker as PROMETHEUS_MULTIPROC_DIR. A server killed with SIGKILL leaves its
    (small) directory under the temp dir behind."""
    import shutil
    import tempfile

    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml_cli.cli import cli

    directory = tempfile.mkdtemp(prefix="cellmfg-metrics-")
    BentoMLContainer.prometheus_multiproc_dir.set(directory)
    try:
        cli.main(args=argv, prog_name="bentoml")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def check_source(env: Mapping[str, str]) -> str:
    """Fail fast, before BentoML starts workers that would crash one after another: the description of the
    model source and security settings the service will use, or ConfigError / SourceUnavailableError with the
    reason (which never contains the token)."""
    from service.config import Settings
    from service.security import SecuritySettings
    from service.sources import open_source

    security = SecuritySettings.from_env(env)  # a bad token setting would fail every worker's start-up
    return f"{open_source(Settings.from_env(env)).description}; {security.describe()}"


def serve(
    port: Annotated[int, typer.Option("--port", "-p", help="HTTP port to listen on.")] = 3000,
    bundle: Annotated[Path | None, typer.Option(
        help="Bundle directory to serve from (sets CELLMFG_BUNDLE). With MLFLOW_TRACKING_URI also set, the "
             "registry is preferred and the bundle is the fallback.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes, each with its own model sessions.")] = 1,
    alias: Annotated[str | None, typer.Option(
        envvar="CELLMFG_ALIAS",
        help="Registry alias to serve and follow (default: CELLMFG_ALIAS, else champion).")] = None,
) -> None:
    """Start the prediction service (BentoML + onnxruntime) on PORT.

    Models come from the MLflow registry (MLFLOW_TRACKING_URI) by ALIAS, or from a bundle directory; they are
    verified on load and hot-swapped when the alias moves (every CELLMFG_POLL_SECONDS, default 30). Swagger UI
    is at http://localhost:PORT/, metrics at /metrics.
    """
    from service.config import ConfigError
    from service.sources import SourceUnavailableError

    env = server_environment(bundle=bundle, workers=workers, alias=alias)
    try:
        source = check_source(env)
    except (ConfigError, SourceUnavailableError) as error:
        typer.echo(f"cellmfg serve: cannot start: {error}", err=True)
        raise typer.Exit(code=2) from error
    typer.echo(f"cellmfg serve: models from {source}; {workers} worker(s) on port {port}", err=True)
    command = server_command(port)
    os.chdir(PROJECT_ROOT)
    # exec, not a child: signals (Ctrl-C, SIGTERM from an orchestrator) reach BentoML's supervisor directly (it runs
    # in the exec'd process, `bentoml_serve`).
    os.execve(command[0], command, env)


# --- design: `cellmfg design`, the recipe search of POST /design/* run offline (service.design) ---


def _pairs(option: str, items: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise typer.BadParameter(f"{item!r}: expected NAME=VALUE", param_hint=option)
        pairs.append((name.strip(), value.strip()))
    return pairs


def _number(option: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a number", param_hint=option) from None


def design_request_body(kind: str, dataset: str, targets: list[str], fixed: list[str], bounds: list[str],
                        tolerance_pct: float, k: int, explain: bool) -> dict[str, object]:
    """The JSON body POST /design/{kind} would get for these command-line options."""
    wanted: dict[str, dict[str, float]] = {}
    for name, value in _pairs("--target", targets):
        number, _, tolerance = value.partition(":")
        wanted[name] = {"value": _number("--target", number),
                        "tolerance_pct": _number("--target", tolerance) if tolerance else tolerance_pct}
    limits: dict[str, dict[str, float]] = {}
    for name, value in _pairs("--bound", bounds):
        low, sep, high = value.partition(":")
        if not sep:
            raise typer.BadParameter(f"{name}={value}: expected NAME=MIN:MAX", param_hint="--bound")
        limits[name] = {"min": _number("--bound", low), "max": _number("--bound", high)}
    return {"chemistry" if kind == "electrode" else "dataset": dataset, "targets": wanted,
            "fixed": {name: _number("--fix", value) for name, value in _pairs("--fix", fixed)},
            "bounds": limits, "k": k, "explain": explain}


def _print_design(answer: dict[str, Any]) -> None:
    """The recipes as a table with one column per recipe (settings, then predictions with their interval)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    search = answer["search"]
    fixed = ", ".join(f"{k} = {v:g}" for k, v in search["fixed"].items()) or "none"
    console.print(f"fixed: {fixed}")
    if search["fixed_outside_training_range"]:
        console.print(f"[yellow]outside the training range (extrapolation): "
                      f"{', '.join(search['fixed_outside_training_range'])}[/yellow]")
    for column, goal in answer["targets"].items():
        reach = answer["reachable"][column]
        unit = "" if goal["unit"] == "1" else f" {goal['unit']}"
        console.print(f"target {column}: {goal['value']:g}{unit} ± {goal['tolerance_pct']:g} %; reachable "
                      f"{reach['min']:.4g} to {reach['max']:.4g}{unit}")
    recipes = answer["recipes"]
    table = Table(title=f"{len(recipes)} recipe(s), found in {search['seconds'] * 1000:.0f} ms")
    table.add_column("", no_wrap=True)
    for recipe in recipes:
        table.add_column(f"#{recipe['rank']}", justify="right", no_wrap=True)
    for column in search["free"]:
        table.add_row(column, *(f"{r['settings'][column]:g}" for r in recipes))
    for column in answer["targets"]:
        table.add_row(f"[bold]{column}[/bold]", *(f"[bold]{r['prediction'][column]:.4g}[/bold]" for r in recipes))
        table.add_row("  90 % interval", *(
            f"{r['prediction']['interval'][column][0]:.3g}-{r['prediction']['interval'][column][1]:.3g}"
            for r in recipes))
    table.add_row("in domain", *("yes" if r["prediction"]["in_domain"] else "no" for r in recipes))
    console.print(table)


def _print_closest(body: dict[str, Any]) -> None:
    closest = body.get("closest")
    if closest:
        settings = ", ".join(f"{k} = {v:g}" for k, v in closest["settings"].items())
        deviations = ", ".join(f"{k} {v:+.1f} %" for k, v in closest["deviation_pct"].items())
        typer.echo(f"closest recipe found: {settings} ({deviations})", err=True)


def design(
    targets: Annotated[list[str], typer.Option(
        "--target", "-t", help="Wanted value: COLUMN=VALUE or COLUMN=VALUE:TOLERANCE_PCT (repeat for each "
                               "target), e.g. mass_loading_mg_cm2=20 or density_g_cm3=3.0:2.")],
    chemistry: Annotated[str | None, typer.Option(help="Electrode dataset whose models are searched (nmc, ...).")]
    = None,
    dataset: Annotated[str | None, typer.Option(help="GDL dataset whose model is searched (gdl1000, ...).")] = None,
    fix: Annotated[list[str] | None, typer.Option(
        "--fix", "-f", help="A parameter kept exactly: FEATURE=VALUE, e.g. solid_content_pct=60 (repeatable).")]
    = None,
    bound: Annotated[list[str] | None, typer.Option(
        help="A narrower search range for a free parameter: FEATURE=MIN:MAX (repeatable).")] = None,
    tolerance_pct: Annotated[float, typer.Option(help="Tolerance of targets that do not give their own, in %.")]
    = 5.0,
    k: Annotated[int, typer.Option("-k", help="At most this many (diverse) recipes.")] = 5,
    explain: Annotated[bool, typer.Option(help="Add the SHAP explanation of each recipe (in --json).")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer of POST /design/* as JSON.")] = False,
    bundle: Annotated[Path | None, typer.Option(
        help="Bundle directory of the models (default CELLMFG_BUNDLE, else MLFLOW_TRACKING_URI's registry).")]
    = None,
) -> None:
    """Find the settings that give a wanted electrode (or GDL), offline, with the same search as POST /design/*.

    Example: cellmfg design --chemistry nmc --target mass_loading_mg_cm2=20 --target density_g_cm3=3.0:3
    --fix solid_content_pct=60 --bundle bundle/

    Exit code 0 with recipes, 1 when no recipe meets the targets (the reachable range is printed), 2 on bad input.
    """
    from pydantic import ValidationError
    from pydantic_core import to_json

    from cellmfg.domain import Kind
    from service.config import ConfigError, Settings
    from service.design import Designer
    from service.design_schemas import ElectrodeDesignRequest, GdlDesignRequest, design_problem
    from service.predict import RequestRejectedError
    from service.sources import SourceUnavailableError

    if (chemistry is None) == (dataset is None):
        raise typer.BadParameter("give exactly one of --chemistry (electrodes) or --dataset (GDL)")
    kind: Kind = "electrode" if chemistry is not None else "gdl"
    name = chemistry if chemistry is not None else dataset or ""
    body = design_request_body(kind, name, targets, fix or [], bound or [], tolerance_pct, k, explain)
    request_type = ElectrodeDesignRequest if kind == "electrode" else GdlDesignRequest
    try:
        request = request_type.model_validate(body)
    except ValidationError as error:
        for item in error.errors(include_url=False):
            typer.echo(f"cellmfg design: {item['msg']}", err=True)
        raise typer.Exit(code=2) from None
    env = server_environment(bundle=bundle)
    try:
        designer = Designer(offline_predictor(Settings.from_env(env)))
    except (ConfigError, SourceUnavailableError) as error:
        typer.echo(f"cellmfg design: cannot load the models: {error}", err=True)
        raise typer.Exit(code=2) from error
    problem = design_problem(kind, name, request.targets, request.fixed, request.bounds, request.k, request.explain)
    try:
        answer = designer.design(problem)
    except RequestRejectedError as rejected:
        if as_json:
            typer.echo(to_json(rejected.body(), indent=2).decode())
        typer.echo(f"cellmfg design: {rejected.message}", err=True)
        _print_closest(rejected.body())
        raise typer.Exit(code=2 if rejected.status == 400 else 1) from None
    if as_json:
        typer.echo(to_json(answer, indent=2).decode())
    else:
        _print_design(answer)


# --- end design ---


# --- serve: `cellmfg predict`, a CSV scored offline on the same code path as POST /predict/* (service.csvio) ---

DEFAULT_TRACKING_DB = PROJECT_ROOT / "mlflow.db"  # the store `cellmfg train` and `registry` use when unset


def offline_settings(bundle: Path | None) -> Any:
    """Service settings for a command that loads models without a server: --bundle, else CELLMFG_BUNDLE, else
    MLFLOW_TRACKING_URI, else the project's own SQLite store (what training and the registry wrote to)."""
    from service.config import Settings

    env = server_environment(bundle=bundle)
    if not env.get("CELLMFG_BUNDLE") and not env.get("MLFLOW_TRACKING_URI") and DEFAULT_TRACKING_DB.is_file():
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{DEFAULT_TRACKING_DB}"
    if bundle is not None:
        env.pop("MLFLOW_TRACKING_URI", None)  # an explicit bundle is what the user wants scored with
    return Settings.from_env(env)


def offline_predictor(settings: Any) -> Any:
    """The service's Predictor over the source's whole catalogue, loaded once, no polling."""
    from service.explain import Explainers
    from service.model_store import ModelStore
    from service.predict import Predictor
    from service.sources import open_source

    store = ModelStore(open_source(settings), None, settings.ort_threads, required=settings.required_models)
    store.load_all()
    return Predictor(store, Explainers(), settings)


def predict(
    csv_path: Annotated[Path, typer.Option("--csv", help="CSV to score: a header with the feature columns (units in "
                                                         "the names, as in data/*.csv); other columns are echoed.")],
    out: Annotated[Path | None, typer.Option(help="Where to write the scored CSV (default: standard output).")]
    = None,
    chemistry: Annotated[str | None, typer.Option(help="Electrode dataset whose models score it (nmc, lfp, ...).")]
    = None,
    dataset: Annotated[str | None, typer.Option(help="GDL dataset whose model scores it (gdl1000, ...).")] = None,
    model: Annotated[str | None, typer.Option(help="One served model by name, e.g. density_lfp_onnx.")] = None,
    explain: Annotated[bool, typer.Option(help="Add SHAP contributions as columns.")] = False,
    interval: Annotated[bool, typer.Option(help="Add the conformal interval bounds as columns.")] = False,
    bundle: Annotated[Path | None, typer.Option(
        help="Bundle directory of the models (default CELLMFG_BUNDLE, else MLFLOW_TRACKING_URI's registry, else the "
             "project's mlflow.db).")] = None,
) -> None:
    """Score a CSV with the served ONNX models, without a server (a lab PC, an air-gapped line).

    The same code as POST /predict/electrode|gdl|{model} with a text/csv body and Accept: text/csv, so the numbers
    are the service's. Exit code 0 when scored, 2 for a bad CSV or an unknown model or dataset (the message names
    line and column), 1 when a model exists but cannot be loaded.
    """
    from service.config import ConfigError
    from service.csvio import CsvInputError, score_csv
    from service.predict import RequestRejectedError
    from service.sources import SourceUnavailableError

    if sum(x is not None for x in (chemistry, dataset, model)) != 1:
        raise typer.BadParameter("give exactly one of --chemistry, --dataset or --model")
    if not csv_path.is_file():
        typer.echo(f"cellmfg predict: {csv_path}: no such file", err=True)
        raise typer.Exit(code=2)
    try:
        predictor = offline_predictor(offline_settings(bundle))
    except (ConfigError, SourceUnavailableError) as error:
        typer.echo(f"cellmfg predict: cannot load the models: {error}", err=True)
        raise typer.Exit(code=2) from error
    served = {m.name for m in predictor.store.models()}
    if model is not None and model not in served and f"{model}_onnx" in served:
        model = f"{model}_onnx"  # the Keras name of a promoted model
    try:
        scored = score_csv(predictor, csv_path.read_bytes(), kind="electrode" if chemistry else "gdl",
                           dataset=chemistry or dataset, model=model, explain=explain, interval=interval,
                           source=str(csv_path))
    except CsvInputError as error:
        typer.echo(f"cellmfg predict: {error.message}", err=True)
        for problem in error.detail[1:]:
            typer.echo(f"  {problem['msg']}", err=True)
        raise typer.Exit(code=2) from None
    except RequestRejectedError as rejected:
        typer.echo(f"cellmfg predict: {rejected.message}", err=True)
        raise typer.Exit(code=2 if rejected.status < 500 else 1) from None
    text = scored.to_csv()
    if out is None:
        sys.stdout.write(text)
    else:
        # Written beside the target and renamed: a failure never leaves a half-written file under the name.
        partial = out.with_name(f".{out.name}.partial")
        partial.write_text(text, encoding="utf-8")
        partial.replace(out)
    rows = scored.answer["predictions"]
    outside = sum(1 for row in rows if not row["in_domain"])
    from service.csvio import models_header

    typer.echo(f"cellmfg predict: {len(rows)} rows scored with {models_header(scored.answer)}; {outside} outside "
               f"the training range" + (f"; written to {out}" if out else ""), err=True)


# --- end serve ---


if __name__ == "__main__":
    bentoml_serve(sys.argv[1:])  # server_command's entry point: `python -m service.cli serve ...`


ledger_app = typer.Typer(help="The prediction ledger: measured predictions out, for retraining.", no_args_is_help=True,
                         add_completion=False)



@ledger_app.callback()
def _ledger_group() -> None:
    """A group even with one command, so `cellmfg ledger export` reads the same when more commands come."""


@ledger_app.command("export")
def ledger_export(
    model: Annotated[str, typer.Option("--model", help="Served model name, e.g. density_nmc_onnx.")],
    out: Annotated[Path, typer.Option("--out", help="CSV file to write (the dataset schema).")],
    since: Annotated[str | None, typer.Option(
        "--since", help="Only rows measured at or after this ISO 8601 time (with a zone, e.g. "
                        "2026-01-05T00:00:00+00:00).")] = None,
    url: Annotated[str | None, typer.Option("--url", help="Ledger database URL; default: what the service uses "
                                                          "(CELLMFG_LEDGER_URL, else the SQLite file in "
                                                          "CELLMFG_LEDGER_DIR).")] = None,
) -> None:
    """Write `model`'s measured predictions in the dataset CSV schema (sample_id, group_id, inputs, measured
    targets), ready for `cellmfg train transfer --data`."""
    from datetime import datetime

    from service.config import ConfigError, ledger_url_from_env
    from service.ledger import Ledger
    from service.outcomes import outcomes_csv

    try:
        database = url or ledger_url_from_env(os.environ)
    except ConfigError as error:
        raise typer.BadParameter(str(error)) from None
    if database is None:
        raise typer.BadParameter("CELLMFG_LEDGER_URL=off: there is no ledger to export; pass --url")
    start = None
    if since is not None:
        try:
            start = datetime.fromisoformat(since)
        except ValueError:
            start = None
        if start is None or start.tzinfo is None:
            raise typer.BadParameter(f"--since {since!r}: allowed: an ISO 8601 time with a zone, "
                                     "e.g. 2026-01-05T00:00:00+00:00")
    with Ledger.open(database) as ledger:
        table = ledger.outcomes(model, start)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(outcomes_csv(table), encoding="utf-8")
    typer.echo(f"{len(table)} measured rows of {model} -> {out}")
