"""`cellmfg ledger`: measured predictions out of the prediction ledger, for retraining."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

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

    from service.engine.config import ConfigError, ledger_url_from_env
    from service.ledger import Ledger
    from service.ledger.outcomes_http import outcomes_csv

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
