"""`cellmfg predict`: a CSV scored offline on the same code path as POST /predict/* (service.formats.csvio)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from service.commands.offline import offline_predictor, offline_settings


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
             "project's mlflow.db; a given bundle wins over a registry set in the environment).")] = None,
) -> None:
    """Score a CSV with the served ONNX models, without a server (a lab PC, an air-gapped line).

    The same code as POST /predict/electrode|gdl|{model} with a text/csv body and Accept: text/csv, so the numbers
    are the service's. Exit code 0 when scored, 2 for a bad CSV or an unknown model or dataset (the message names
    line and column), 1 when a model exists but cannot be loaded.
    """
    from service.engine.config import ConfigError
    from service.engine.errors import CsvInputError, RequestRejectedError
    from service.engine.sources import SourceUnavailableError
    from service.formats.csvio import score_csv

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
    from service.formats.csvio import models_header

    typer.echo(f"cellmfg predict: {len(rows)} rows scored with {models_header(scored.answer)}; {outside} outside "
               f"the training range" + (f"; written to {out}" if out else ""), err=True)
