"""`cellmfg suggest`: which experiments to run next, offline, with the search of POST /suggest/*
(service.design.suggest)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from service.commands.design import name_value_pairs, parse_number
from service.commands.offline import offline_predictor, offline_settings


def _ranges(option: str, items: list[str], ends: tuple[str, str], form: str) -> dict[str, dict[str, float]]:
    """NAME=A:B options as {NAME: {ends[0]: A, ends[1]: B}}."""
    ranges: dict[str, dict[str, float]] = {}
    for name, value in name_value_pairs(option, items):
        low, sep, high = value.partition(":")
        if not sep:
            raise typer.BadParameter(f"{name}={value}: expected {form}", param_hint=option)
        ranges[name] = {ends[0]: parse_number(option, low), ends[1]: parse_number(option, high)}
    return ranges


def suggest_request_body(kind: str, dataset: str, k: int, fixed: list[str], bounds: list[str], windows: list[str],
                         explain: bool) -> dict[str, object]:
    """The JSON body POST /suggest/{kind} would get for these command-line options."""
    return {"chemistry" if kind == "electrode" else "dataset": dataset, "k": k,
            "fixed": {name: parse_number("--fix", value) for name, value in name_value_pairs("--fix", fixed)},
            "bounds": _ranges("--bound", bounds, ("min", "max"), "NAME=MIN:MAX"),
            "window": _ranges("--window", windows, ("low", "high"), "TARGET=LOW:HIGH"), "explain": explain}


def _print_suggestions(answer: dict[str, Any]) -> None:
    """The suggestions as a table, one column per recipe: settings, then predictions with interval and spread."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"strategy: {answer['strategy']}: {answer['strategy_reason']}")
    suggestions = answer["suggestions"]
    search = answer["search"]
    table = Table(title=f"{len(suggestions)} experiment(s) to run next, from {search['candidates']} candidates in "
                        f"{search['seconds'] * 1000:.0f} ms")
    table.add_column("", no_wrap=True)
    for s in suggestions:
        table.add_column(f"#{s['rank']}", justify="right", no_wrap=True)
    for column in search["free"]:
        table.add_row(column, *(f"{s['settings'][column]:g}" for s in suggestions))
    targets = [c for c in suggestions[0]["prediction"] if c in (suggestions[0]["prediction"].get("interval") or {})] \
        if suggestions else []
    for column in targets:
        table.add_row(f"[bold]{column}[/bold]", *(f"[bold]{s['prediction'][column]:.4g}[/bold]" for s in suggestions))
        table.add_row("  90 % interval", *(
            f"{s['prediction']['interval'][column][0]:.3g}-{s['prediction']['interval'][column][1]:.3g}"
            for s in suggestions))
        if all(s["spread"] for s in suggestions):
            table.add_row("  spread", *(f"{s['spread'][column]:.2g}" for s in suggestions))
    if any(s["score"] is not None for s in suggestions):
        table.add_row("score", *(f"{s['score']:.3g}" if s["score"] is not None else "-" for s in suggestions))
    console.print(table)
    for s in suggestions:
        console.print(f"#{s['rank']}: {s['why']}")


def suggest(
    chemistry: Annotated[str | None, typer.Option(help="Electrode dataset whose models choose (nmc, ...).")] = None,
    dataset: Annotated[str | None, typer.Option(help="GDL dataset whose model chooses (gdl1000, ...).")] = None,
    k: Annotated[int, typer.Option("-k", help="How many experiments to suggest (1-50).")] = 4,
    fix: Annotated[list[str] | None, typer.Option(
        "--fix", "-f", help="A parameter every suggestion keeps: FEATURE=VALUE (repeatable).")] = None,
    bound: Annotated[list[str] | None, typer.Option(
        help="A narrower search range for a free parameter: FEATURE=MIN:MAX (repeatable).")] = None,
    window: Annotated[list[str] | None, typer.Option(
        help="A wanted range of a target: TARGET=LOW:HIGH (repeatable); the suggestions then maximise the chance "
             "of landing in it.")] = None,
    explain: Annotated[bool, typer.Option(help="Add the SHAP explanation of each suggestion (in --json).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer of POST /suggest/* as JSON.")] = False,
    bundle: Annotated[Path | None, typer.Option(
        help="Bundle directory of the models (default CELLMFG_BUNDLE, else MLFLOW_TRACKING_URI's registry, else the "
             "project's mlflow.db; a given bundle wins over a registry set in the environment).")] = None,
) -> None:
    """Suggest the next experiments: the recipes the models are least sure of, or most likely to land in a window.

    Example: cellmfg suggest --chemistry nmc -k 4 --fix am_wt_pct=94 --window density_g_cm3=2.8:3.1 --bundle bundle/

    Exit code 0 with suggestions, 1 when no recipe can reach the window (the reachable range is printed), 2 on bad
    input.
    """
    from pydantic import ValidationError
    from pydantic_core import to_json

    from cellmfg.domain import Kind
    from service.design.suggest import Suggester
    from service.design.suggest_schemas import ElectrodeSuggestRequest, GdlSuggestRequest, suggest_problem
    from service.engine.config import ConfigError
    from service.engine.errors import RequestRejectedError
    from service.engine.sources import SourceUnavailableError

    if (chemistry is None) == (dataset is None):
        raise typer.BadParameter("give exactly one of --chemistry (electrodes) or --dataset (GDL)")
    kind: Kind = "electrode" if chemistry is not None else "gdl"
    name = chemistry if chemistry is not None else dataset or ""
    body = suggest_request_body(kind, name, k, fix or [], bound or [], window or [], explain)
    request_type = ElectrodeSuggestRequest if kind == "electrode" else GdlSuggestRequest
    try:
        request = request_type.model_validate(body)
    except ValidationError as error:
        for item in error.errors(include_url=False):
            typer.echo(f"cellmfg suggest: {item['msg']}", err=True)
        raise typer.Exit(code=2) from None
    try:
        suggester = Suggester(offline_predictor(offline_settings(bundle)))
    except (ConfigError, SourceUnavailableError) as error:
        typer.echo(f"cellmfg suggest: cannot load the models: {error}", err=True)
        raise typer.Exit(code=2) from error
    problem = suggest_problem(kind, name, request.k, request.fixed, request.bounds, request.window, request.explain)
    try:
        answer = suggester.suggest(problem)
    except RequestRejectedError as rejected:
        if as_json:
            typer.echo(to_json(rejected.body(), indent=2).decode())
        typer.echo(f"cellmfg suggest: {rejected.message}", err=True)
        raise typer.Exit(code=2 if rejected.status == 400 else 1) from None
    if as_json:
        typer.echo(to_json(answer, indent=2).decode())
    else:
        _print_suggestions(answer)
