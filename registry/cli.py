"""Thin CLI for the registry stage (`cellmfg registry …`); the recipe itself is in `registry.promote`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from cellmfg.console import JsonOption, err, fail

app = typer.Typer(no_args_is_help=True, add_completion=False)


def _fail(message: str, code: int = 1) -> NoReturn:
    """Registry commands exit 1 when a step is refused or fails, 2 on bad input."""
    fail(message, code)


def _setup() -> Any:
    from cellmfg import mlflow_setup

    mlflow_setup.configure()
    from registry import promote

    return promote


@app.command("promote")
def promote_command(
    model: Annotated[str | None, typer.Option(
        help="Keras model: a name (density_nmc) or a reference: models:/density_nmc/3, models:/density_nmc/latest, "
             "models:/density_nmc@challenger, runs:/RUN_ID/model.")] = None,
    version: Annotated[str | None, typer.Option(help="Version to promote (default: the version a reference names, "
                                                     "else the lowest validation MAPE).")] = None,
    all_models: Annotated[bool, typer.Option("--all", help="Promote all eight task/dataset models.")] = False,
    zero_shot_fallback: Annotated[bool, typer.Option(
        help="When a transfer does not beat its pretrained net as is, serve that net for the target instead.")]
    = True,
    alias: Annotated[str, typer.Option(
        help="Alias to move: champion (served), or challenger (scored in shadow beside the champion; its "
             "features must be the champion's).")] = "champion",
    challenger: Annotated[str | None, typer.Option(
        help="Instead of --model: make this model's challenger champion if the live comparison on the line's "
             "measurements shows it better (interval excluding 0), e.g. --challenger density_nmc.")] = None,
    override: Annotated[bool, typer.Option(help="With --challenger: promote even when the live comparison does "
                                                "not show it better; needs --reason.")] = False,
    reason: Annotated[str | None, typer.Option(help="Why --override (recorded as a tag on the version).")] = None,
    ledger_url: Annotated[str | None, typer.Option(
        help="With --challenger: the service that scores both (its GET /models/NAME/challenge); default "
             "$CELLMFG_SERVICE_URL, else http://127.0.0.1:3000. $CELLMFG_API_TOKEN is sent when set.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Export to ONNX, pass the parity and metric gates, register `{name}_onnx` and move `champion` (or
    `challenger`); print the chemistry (or GDL dataset) and the endpoints the model answers at. With
    --challenger: the live gate instead (see `--challenger`)."""
    from cellmfg.domain import MODEL_NAMES

    if challenger is not None:
        if model is not None or all_models or version is not None:
            _fail("--challenger takes no --model, --all or --version: it promotes the version holding the "
                  "challenger alias", 2)
        _promote_challenger(challenger, override, reason, ledger_url, as_json)
        return
    if override or reason is not None or ledger_url is not None:
        _fail("--override, --reason and --ledger-url apply to --challenger", 2)
    if alias not in ("champion", "challenger"):
        _fail(f"--alias {alias!r}: allowed: champion, challenger", 2)
    if all_models == (model is not None):
        _fail("give exactly one of --model NAME or --all", 2)
    if all_models and version is not None:
        _fail("--version applies to one --model, not --all", 2)
    if all_models and alias != "champion":
        _fail("--alias challenger applies to one --model (a challenger from `train from-ledger`), not --all", 2)
    promote = _setup()
    names = list(MODEL_NAMES) if all_models else []
    if model is not None:
        name, referenced = _keras_target(model)
        if referenced is not None and version is not None and referenced != version:
            _fail(f"--model {model} names version {referenced} but --version says {version}; give one", 2)
        names, version = [name], version or referenced
    started = time.perf_counter()
    results, failures = [], []
    for name in names:
        try:
            try:
                result = promote.promote(name, version, alias)
            except promote.ZeroShotGateError as error:
                if not zero_shot_fallback:
                    raise
                err.print(f"{escape(f'{name}: {error}')}; serving the pretrained net as is instead",
                          highlight=False, soft_wrap=True)
                result = promote.promote_zero_shot(name, version, alias)
        except promote.ChallengerInputError as error:
            _fail(f"{name}: {error}", 2)
        except promote.GateError as error:
            failures.append({"name": name, "error": str(error)})
            err.print(f"[red]{escape(f'{name}: {error}')}[/]", highlight=False, soft_wrap=True)
            continue
        results.append(result.to_json())
        if not as_json:
            if result.skipped:
                print(f"{name}: version {result.keras_version} is already {result.alias} ({result.onnx_name} "
                      f"v{result.onnx_version}); nothing to do")
            elif result.alias == "challenger":
                print(f"{name}: v{result.keras_version} → {result.onnx_name} v{result.onnx_version} @challenger "
                      f"(parity {result.parity_max_relative_error:.1e}); the service scores it in shadow from its "
                      f"next poll: GET /models/{result.onnx_name}/challenge")
                continue
            else:
                print(f"{name}: v{result.keras_version} → {result.onnx_name} v{result.onnx_version} @champion "
                      f"(parity {result.parity_max_relative_error:.1e}, test MAPE {result.test_mape_pct:.2f}%"
                      + (f", previous v{result.previous_version}" if result.previous_version else "") + ")")
            # Services following @champion take it at their next poll (CELLMFG_POLL_SECONDS).
            print(f"  {result.serving.sentence()}".replace("\n", "\n  "))
    seconds = time.perf_counter() - started
    if as_json:
        print(json.dumps({"promoted": results, "failed": failures, "seconds": round(seconds, 1)}))
    else:
        print(f"{len(results)} promoted, {len(failures)} failed in {seconds:.1f} s")
    if failures:
        raise typer.Exit(1)


def _promote_challenger(name: str, override: bool, reason: str | None, ledger_url: str | None,
                        as_json: bool) -> None:
    """`promote --challenger NAME`: check the registry, read the service's live comparison, gate, move aliases."""
    import os

    if override and not (reason or "").strip():
        _fail("--override needs --reason \"why\" (recorded on the version)", 2)
    if reason is not None and not override:
        _fail("--reason goes with --override", 2)
    promote = _setup()
    try:
        promote.challenger_versions(name)
        url = ledger_url or os.environ.get("CELLMFG_SERVICE_URL") or "http://127.0.0.1:3000"
        comparison, compared = live_comparison(url, promote.onnx_name(promote.keras_name(name)),
                                               os.environ.get("CELLMFG_API_TOKEN"))
        result = promote.promote_challenger(name, comparison, compared, reason.strip() if override and reason
                                            else None)
    except promote.ChallengerInputError as error:
        _fail(str(error), 2)
    except (promote.LiveGateError, LiveComparisonUnavailableError) as error:
        _fail(str(error), 1)
    if as_json:
        print(json.dumps(result.to_json()))
        return
    how = f"override: {result.override_reason}" if result.override_reason else result.reason
    print(f"{result.onnx_name}: challenger v{result.champion_version} is champion (previous v{result.previous_version})"
          f"; {how}")


class LiveComparisonUnavailableError(RuntimeError):
    """The service's live comparison could not be read."""


def live_comparison(service_url: str, onnx_model: str, token: str | None) -> tuple[Any, tuple[str, str]]:
    """The service's paired comparison of `onnx_model`'s champion and challenger (GET /models/NAME/challenge), and
    the (champion, challenger) versions it is about."""
    import httpx

    from cellmfg.challenge import LiveComparison

    url = f"{service_url.rstrip('/')}/models/{onnx_model}/challenge"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(url, headers=headers, timeout=60)
    except httpx.HTTPError as error:
        raise LiveComparisonUnavailableError(f"cannot read the live comparison at {url} ({type(error).__name__}: "
                                             f"{error}); give the service's address with --ledger-url") from error
    try:
        body = response.json()
    except ValueError:
        body = {"error": response.text[:300]}
    if response.status_code != 200:
        raise LiveComparisonUnavailableError(f"{url} answered {response.status_code}: {body.get('error', body)}")
    fields = set(LiveComparison.model_fields)
    comparison = LiveComparison.model_validate({k: v for k, v in body.items() if k in fields})
    return comparison, (str(body["champion"]["version"]), str(body["challenger"]["version"]))


@app.command("rollback")
def rollback_command(
    model: Annotated[str, typer.Option(
        help="Model name (density_nmc or density_nmc_onnx), or a reference to the version to restore: "
             "models:/density_nmc_onnx/2, models:/density_nmc/3 (the ONNX export of Keras v3), models:/NAME@ALIAS.")],
    as_json: JsonOption = False,
) -> None:
    """Move `champion` back to the `previous` version (or to the version a reference names)."""
    promote = _setup()
    try:
        name, to_version = _onnx_target(model, promote)
        demoted, restored = promote.rollback(name, to_version)
    except promote.GateError as error:
        _fail(str(error))
    if as_json:
        print(json.dumps({"model": name, "champion": restored, "previous": demoted}))
    elif demoted is None:
        print(f"{name}: champion restored to v{restored}")
    else:
        print(f"{name}: champion v{demoted} → v{restored} (previous now v{demoted})")


@app.command("retire")
def retire_command(
    model: Annotated[list[str], typer.Option(
        help="Model to stop serving (repeatable): density_lfp, density_lfp_onnx or models:/density_lfp@champion.")],
    alias: Annotated[str, typer.Option(help="Alias to remove (the one the service follows).")] = "champion",
    as_json: JsonOption = False,
) -> None:
    """Remove the serving alias: services following it stop serving the model at their next poll.

    The retired version keeps `previous`, so `cellmfg registry rollback --model NAME` serves it again."""
    promote = _setup()
    retired, failures = [], []
    for text in model:
        try:
            name, _ = _onnx_target(text, promote, with_version=False)
            version = promote.retire(name, alias)
        except promote.GateError as error:
            failures.append({"model": text, "error": str(error)})
            err.print(f"[red]{escape(str(error))}[/]", highlight=False, soft_wrap=True)
            continue
        retired.append({"model": name, "version": version, "alias": alias})
        if not as_json:
            print(f"{retired[-1]['model']}: v{version} no longer holds @{alias} (rollback serves it again)")
    if as_json:
        print(json.dumps({"retired": retired, "failed": failures}))
    if failures:
        raise typer.Exit(1)


def _keras_target(text: str) -> tuple[str, str | None]:
    """(Keras model name, version or None) for `promote --model`: a bare name leaves the version to the gates."""
    from mlflow import MlflowClient

    from cellmfg.modelref import ModelReferenceError, parse_reference, resolve_reference

    try:
        reference = parse_reference(text, allow_bare=True)
        if reference.kind == "name":
            name = str(reference.name)
            version = None
        else:
            resolved = resolve_reference(reference, MlflowClient())
            if resolved.name is None:
                raise ModelReferenceError(f"{text!r}: the run's model is not registered; register it (train "
                                          "registers its nets) or name a registered version")
            name, version = resolved.name, resolved.version
    except ModelReferenceError as error:
        _fail(str(error), 2)
    if name.endswith("_onnx"):
        _fail(f"{text!r} is an ONNX export; promote takes the Keras model it came from, e.g. "
              f"{name.removesuffix('_onnx')}", 2)
    return name, version


def _onnx_target(text: str, promote: Any, with_version: bool = True) -> tuple[str, str | None]:
    """(ONNX model name, ONNX version or None) for rollback and retire; a Keras reference with a version names the
    ONNX version exported from it. Without `with_version` only the name is worked out."""
    from mlflow import MlflowClient

    from cellmfg.modelref import ModelReferenceError, parse_reference, resolve_reference

    try:
        reference = parse_reference(text, allow_bare=True)
        if reference.kind == "name" or (reference.name is not None and not with_version):
            return promote.onnx_name(promote.keras_name(str(reference.name))), None
        resolved = resolve_reference(reference, MlflowClient())
    except ModelReferenceError as error:
        _fail(str(error), 2)
    if resolved.name is None or resolved.version is None:
        _fail(f"{text!r} names no registered model version", 2)
    onnx = promote.onnx_name(promote.keras_name(resolved.name))
    if resolved.name == onnx:
        return onnx, resolved.version
    return onnx, promote.onnx_version_for(resolved.name, resolved.version)


@app.command("list")
def list_command(as_json: JsonOption = False) -> None:
    """Every registered model, its versions, aliases, validation MAPE (promotion chooses by it) and test MAPE."""
    promote = _setup()
    rows = promote.listing()
    if as_json:
        print(json.dumps(rows))
        return
    from rich.table import Table

    table = Table("model", "version", "aliases", "role", "validation MAPE %", "test MAPE %")
    for row in rows:
        for entry in row["versions"]:
            table.add_row(row["name"], entry["version"], ",".join(entry["aliases"]), entry["role"] or "",
                          *(f"{entry[key]:.2f}" if entry[key] is not None else "—"
                            for key in ("validation_mape_pct", "test_mape_pct")))
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
