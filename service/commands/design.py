"""`cellmfg design`: the recipe search of POST /design/* run offline (service.design.search)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from service.commands.offline import offline_predictor, offline_settings


def name_value_pairs(option: str, items: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise typer.BadParameter(f"{item!r}: expected NAME=VALUE", param_hint=option)
        pairs.append((name.strip(), value.strip()))
    return pairs


def parse_number(option: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a number", param_hint=option) from None


def design_request_body(kind: str, dataset: str, targets: list[str], fixed: list[str], bounds: list[str],
                        tolerance_pct: float, k: int, explain: bool) -> dict[str, object]:
    """The JSON body POST /design/{kind} would get for these command-line options."""
    wanted: dict[str, dict[str, float]] = {}
    for name, value in name_value_pairs("--target", targets):
        number, _, tolerance = value.partition(":")
        wanted[name] = {"value": parse_number("--target", number),
                        "tolerance_pct": parse_number("--target", tolerance) if tolerance else tolerance_pct}
    limits: dict[str, dict[str, float]] = {}
    for name, value in name_value_pairs("--bound", bounds):
        low, sep, high = value.partition(":")
        if not sep:
            raise typer.BadParameter(f"{name}={value}: expected NAME=MIN:MAX", param_hint="--bound")
        limits[name] = {"min": parse_number("--bound", low), "max": parse_number("--bound", high)}
    return {"chemistry" if kind == "electrode" else "dataset": dataset, "targets": wanted,
            "fixed": {name: parse_number("--fix", value) for name, value in name_value_pairs("--fix", fixed)},
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
        help="Bundle directory of the models (default CELLMFG_BUNDLE, else MLFLOW_TRACKING_URI's registry, else the "
             "project's mlflow.db; a given bundle wins over a registry set in the environment).")]
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
    from service.design.schemas import ElectrodeDesignRequest, GdlDesignRequest, design_problem
    from service.design.search import Designer
    from service.engine.config import ConfigError
    from service.engine.errors import RequestRejectedError
    from service.engine.sources import SourceUnavailableError

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
    try:
        designer = Designer(offline_predictor(offline_settings(bundle)))
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
