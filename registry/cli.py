"""Thin CLI for the registry stage (`cellmfg registry …`); the recipe itself is in `registry.promote`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(no_args_is_help=True, add_completion=False)
err = Console(stderr=True)
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line.")]


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _setup() -> Any:
    from training import tracking

    tracking.configure()
    from registry import promote

    return promote


@app.command("promote")
def promote_command(
    model: Annotated[str | None, typer.Option(help="Registered Keras model name, e.g. density_nmc.")] = None,
    version: Annotated[str | None, typer.Option(help="Version to promote (default: lowest test MAPE).")] = None,
    all_models: Annotated[bool, typer.Option("--all", help="Promote all eight task/dataset models.")] = False,
    zero_shot_fallback: Annotated[bool, typer.Option(
        help="When a transfer does not beat its pretrained net as is, serve that net for the target instead.")]
    = True,
    as_json: JsonOption = False,
) -> None:
    """Export to ONNX, pass the parity and metric gates, register `{name}_onnx` and move `champion`."""
    from cellmfg.___domain import MODEL_NAMES

    if all_models == (model is not None):
        _fail("give exactly one of --model NAME or --all", 2)
    if all_models and version is not None:
        _fail("--version applies to one --model, not --all", 2)
    promote = _setup()
    names = list(MODEL_NAMES) if all_models else [str(model)]
    started = time.perf_counter()
    results, failures = [], []
    for name in names:
        try:
            try:
                result = promote.promote(name, version)
            except promote.ZeroShotGateError as error:
                if not zero_shot_fallback:
                    raise
                err.print(f"{escape(f'{name}: {error}')}; serving the pretrained net as is instead",
                          highlight=False, soft_wrap=True)
                result = promote.promote_zero_shot(name, version)
        except promote.GateError as error:
            failures.append({"name": name, "error": str(error)})
            err.print(f"[red]{escape(f'{name}: {error}')}[/]", highlight=False, soft_wrap=True)
            continue
        results.append(result.to_json())
        if not as_json:
            if result.skipped:
                print(f"{name}: version {result.keras_version} is already champion ({result.onnx_name} "
                      f"v{result.onnx_version}); nothing to do")
            else:
                print(f"{name}: v{result.keras_version} → {result.onnx_name} v{result.onnx_version} @champion "
                      f"(parity {result.parity_max_relative_error:.1e}, test MAPE {result.test_mape_pct:.2f}%"
                      + (f", previous v{result.previous_version}" if result.previous_version else "") + ")")
    seconds = time.perf_counter() - started
    if as_json:
        print(json.dumps({"promoted": results, "failed": failures, "seconds": round(seconds, 1)}))
    else:
        print(f"{len(results)} promoted, {len(failures)} failed in {seconds:.1f} s")
    if failures:
        raise typer.Exit(1)


@app.command("rollback")
def rollback_command(
    model: Annotated[str, typer.Option(help="Model name, e.g. density_nmc (or density_nmc_onnx).")],
    as_json: JsonOption = False,
) -> None:
    """Move `champion` back to the `previous` version."""
    promote = _setup()
    try:
        demoted, restored = promote.rollback(model)
    except promote.GateError as error:
        _fail(str(error))
    if as_json:
        print(json.dumps({"model": model, "champion": restored, "previous": demoted}))
    else:
        print(f"{model}: champion v{demoted} → v{restored} (previous now v{demoted})")


@app.command("list")
def list_command(as_json: JsonOption = False) -> None:
    """Every registered model, its versions, aliases and test MAPE."""
    promote = _setup()
    rows = promote.listing()
    if as_json:
        print(json.dumps(rows))
        return
    from rich.table import Table

    table = Table("model", "version", "aliases", "role", "test MAPE %")
    for row in rows:
        for entry in row["versions"]:
            table.add_row(row["name"], entry["version"], ",".join(entry["aliases"]), entry["role"] or "",
                          f"{entry['test_mape_pct']:.2f}")
    Console().print(table)


@app.command("export-bundle")
def export_bundle_command(
    out: Annotated[Path, typer.Option(help="Output folder for the bundle.")],
    alias: Annotated[str, typer.Option(help="Alias to export.")] = "champion",
    as_json: JsonOption = False,
) -> None:
    """Write ONNX files, contracts and a checksummed manifest: a server needs nothing else."""
    promote = _setup()
    try:
        manifest = promote.export_bundle(alias, out)
    except promote.GateError as error:
        _fail(str(error))
    from cellmfg.contract import load_bundle

    models = load_bundle(out)  # read back: what we wrote must verify
    if as_json:
        print(json.dumps({"manifest": str(manifest), "models": [f"{m.name}:{m.version}" for m in models]}))
    else:
        print(f"bundle of {len(models)} models at {out} (" + ", ".join(f"{m.name} v{m.version}" for m in models)
              + ")")
