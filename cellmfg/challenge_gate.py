"""The live gate in the registry: make a challenger champion only when the line's measurements show it better.

One function, `promote_challenger`, decides and acts for both callers: `cellmfg registry promote --challenger`
(registry.cli, with the tracking URI of its environment) and the service's `POST /models/{name}/challenge/promote`
(service.challenge_admin, with the registry the service follows). Both hand it an MlflowClient and the tracking URI
explicitly: the service never touches MLflow's process-wide URIs.

The checks, in order, each a `ChallengerInputError` that leaves the registry untouched: the ONNX model is registered,
it has a champion and a challenger, the challenger reads the champion's features (same names, order and units),
the comparison is of the versions the registry holds now, and it has outcomes. Then the comparison is logged as
metrics on the challenger's run (one step per judgement) and as tags on the version, whatever the verdict; a
refusal is a `LiveGateError` saying why (n, the difference, its interval), and no alias moved. A promotion moves
`previous` to the old champion and `champion` to the challenger, drops the `challenger` alias, records
`promoted_by` (and the override's reason) as tags, and points the Keras model's `champion` at the net now served.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from cellmfg.challenge import LiveComparison, promotion_verdict
from cellmfg.contract import Contract, FeatureSpec, fetch_registered

CHAMPION, PREVIOUS, CHALLENGER = "champion", "previous", "challenger"
ONNX_SUFFIX = "_onnx"
OVERRIDE_REASON_TAG = "promotion_override_reason"
PROMOTED_BY_TAG = "promoted_by"


class ChallengeGateError(RuntimeError):
    """The challenger was not promoted; the message says why."""


class ChallengerInputError(ChallengeGateError):
    """A challenger that cannot be judged as asked (unknown model, no champion or challenger, another contract than
    the champion's, a comparison of other versions, no outcomes yet); nothing changed in the registry."""


class LiveGateError(ChallengeGateError):
    """The live comparison does not show the challenger better; the champion stays (the comparison is logged)."""


@dataclass(frozen=True)
class ChallengerPromotion:
    """What `promote_challenger` did: the ONNX version now champion, the one now previous, and why."""

    onnx_name: str
    champion_version: str
    previous_version: str
    comparison: dict[str, Any]
    reason: str
    override_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


def keras_name(name: str) -> str:
    """The Keras model behind an ONNX name (density_nmc_onnx -> density_nmc); other names as they are."""
    return name.removesuffix(ONNX_SUFFIX)


def onnx_name(name: str) -> str:
    """The served ONNX model of a Keras or ONNX name (density_nmc -> density_nmc_onnx)."""
    return f"{keras_name(name)}{ONNX_SUFFIX}"


def alias_version(client: Any, model_name: str, alias: str) -> str | None:
    """The version of `model_name` holding `alias`, or None (no such model or alias)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None


def registered_contract(tracking_uri: str, name: str, alias: str) -> Contract | None:
    """The contract of the ONNX version of `name` holding `alias`, or None when no version holds it."""
    from mlflow.exceptions import MlflowException

    try:
        return fetch_registered(tracking_uri, onnx_name(name), alias).contract
    except MlflowException:
        return None


def same_features(champion: Contract, features: list[FeatureSpec], what: str) -> None:
    """A challenger must read the champion's features, in order and in the same units: the service feeds it the
    rows it answers the champion with."""
    mine = [(f.name, f.unit) for f in features]
    theirs = [(f.name, f.unit) for f in champion.features]
    if mine != theirs:
        raise ChallengerInputError(
            f"{what}: its contract's features {[f'{n} [{u}]' for n, u in mine]} differ from the champion's "
            f"{[f'{n} [{u}]' for n, u in theirs]} ({champion.name} v{champion.lineage.keras_model_version}); a "
            "challenger must read the same features in the same order and units; nothing changed")


def challenger_versions(client: Any, tracking_uri: str, name: str) -> tuple[str, str]:
    """(champion, challenger) ONNX versions of `name`, after checking both exist and read the same features;
    ChallengerInputError (nothing changed) otherwise."""
    from mlflow.exceptions import MlflowException

    model = onnx_name(name)
    try:
        client.get_registered_model(model)
    except MlflowException as error:
        known = sorted(keras_name(m.name) for m in client.search_registered_models()
                       if m.name.endswith(ONNX_SUFFIX))
        raise ChallengerInputError(f"{keras_name(name)}: no registered model {model}; promoted models: "
                                   f"{', '.join(known) or 'none'}") from error
    champion, challenger = alias_version(client, model, CHAMPION), alias_version(client, model, CHALLENGER)
    if champion is None:
        raise ChallengerInputError(f"{model} has no champion; nothing to challenge")
    if challenger is None:
        raise ChallengerInputError(f"{model} has no challenger: train one with `cellmfg train from-ledger --model "
                                   f"{keras_name(name)}` and register it with `cellmfg registry promote --model "
                                   f"models:/{keras_name(name)}@challenger --alias challenger`")
    champion_contract = registered_contract(tracking_uri, name, CHAMPION)
    challenger_contract = registered_contract(tracking_uri, name, CHALLENGER)
    if champion_contract is None or challenger_contract is None:
        raise ChallengerInputError(f"{model}: the champion's or the challenger's contract cannot be read")
    same_features(champion_contract, challenger_contract.features, f"{model} v{challenger} (challenger)")
    return champion, challenger


def promote_challenger(client: Any, tracking_uri: str, name: str, comparison: LiveComparison,
                       compared: tuple[str, str], override_reason: str | None = None) -> ChallengerPromotion:
    """Make the challenger champion when the live comparison shows it better (interval below 0), or when
    `override_reason` says why anyway (recorded as a tag). `compared` = (champion, challenger) ONNX versions the
    comparison is about: they must be the registry's now. The comparison is logged as metrics on the challenger
    version's run whatever the verdict. Raises ChallengerInputError or LiveGateError; then no alias moved."""
    model = onnx_name(name)
    champion, challenger = challenger_versions(client, tracking_uri, name)
    if compared != (champion, challenger):
        raise ChallengerInputError(f"{model}: the live comparison is of champion v{compared[0]} with challenger "
                                   f"v{compared[1]}, the registry's are v{champion} and v{challenger}; retry after "
                                   "the service's next poll (CELLMFG_POLL_SECONDS)")
    if comparison.n == 0:
        raise ChallengerInputError(f"{model}: no outcomes yet for rows both v{champion} and v{challenger} scored: "
                                   "post the QC lab's measurements (POST /outcomes) first; nothing changed")
    override_reason = (override_reason or "").strip() or None
    promotable, reason = promotion_verdict(comparison)
    log_live_comparison(client, model, challenger, comparison)
    if not promotable and override_reason is None:
        raise LiveGateError(f"{model} v{challenger} not promoted: {reason}")
    if override_reason is not None:
        client.set_model_version_tag(model, challenger, OVERRIDE_REASON_TAG, override_reason)
    client.set_model_version_tag(model, challenger, PROMOTED_BY_TAG, "live_comparison" if promotable else "override")
    client.set_registered_model_alias(model, PREVIOUS, champion)
    client.set_registered_model_alias(model, CHAMPION, challenger)
    client.delete_registered_model_alias(model, CHALLENGER)
    keras_version = sync_keras_champion(client, model)
    keras = keras_name(model)
    if keras_version is not None and alias_version(client, keras, CHALLENGER) == keras_version:
        client.delete_registered_model_alias(keras, CHALLENGER)  # it is the champion now
    return ChallengerPromotion(model, challenger, champion, comparison.model_dump(), reason,
                               override_reason if not promotable else None)


def log_live_comparison(client: Any, model: str, version: str, comparison: LiveComparison) -> None:
    """The live comparison as metrics on the version's run (one step per judgement, so the history stays) and as
    tags on the version (the latest, readable in the registry's UI)."""
    model_version = client.get_model_version(model, version)
    values = {"live_n": comparison.n, "live_groups": comparison.n_groups,
              "live_champion_mape_pct": comparison.champion_mape_pct,
              "live_challenger_mape_pct": comparison.challenger_mape_pct,
              "live_difference_pct": comparison.difference_pct,
              "live_difference_low_pct": comparison.interval_pct[0] if comparison.interval_pct else None,
              "live_difference_high_pct": comparison.interval_pct[1] if comparison.interval_pct else None}
    stamp = int(time.time() * 1000)
    for key, value in values.items():
        if value is not None:
            if model_version.run_id:
                client.log_metric(model_version.run_id, key, float(value), timestamp=stamp, step=comparison.n)
            client.set_model_version_tag(model, version, key, f"{float(value):.6g}")


def sync_keras_champion(client: Any, onnx_model_name: str) -> str | None:
    """Point the Keras model's `champion` at the version the served ONNX champion was exported from, so
    `models:/density_graphite@champion` names the net that is served. When the ONNX champion comes from another
    Keras model (a zero-shot fallback serves the source net) or there is none, the Keras alias is removed rather
    than left naming a net nobody serves. Returns the Keras version now holding `champion`, if any."""
    from mlflow.exceptions import MlflowException

    keras = keras_name(onnx_model_name)
    champion = alias_version(client, onnx_model_name, CHAMPION)
    target = None
    if champion is not None:
        tags = client.get_model_version(onnx_model_name, champion).tags
        if tags.get("keras_model_name") == keras and tags.get("keras_model_version"):
            target = str(tags["keras_model_version"])
    try:
        if target is not None:
            client.set_registered_model_alias(keras, CHAMPION, target)
        elif alias_version(client, keras, CHAMPION) is not None:
            client.delete_registered_model_alias(keras, CHAMPION)
    except MlflowException:  # no Keras model of that name in this registry (bundled or hand-registered ONNX)
        return None
    return target
