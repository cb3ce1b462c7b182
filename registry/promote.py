"""Registry stage: promote a registered Keras model to an ONNX `champion` the service can trust.

The flow, one step each in `promote_candidate()`, the one recipe for every kind of candidate:

1. pick the candidate: the given version, or the registered version with the lowest validation MAPE (grouped
   inner validation of the training part; test rows never choose) (`promote`); or, when no transfer beats its
   base, the base net itself judged on the target's rows (`promote_zero_shot`);
2. export it to ONNX (tf2onnx from a `tf.function`), one named input `features`, dynamic batch dimension;
3. parity gate: on a probe set spanning the training ranges plus unlabelled rows of the data, onnxruntime and
   Keras agree within 1e-5 relative; otherwise stop;
4. metric gate: validation MAPE no worse than the current champion's, and for a transfer model better than the
   zero-shot pretrained net on the same training-part rows, both out of fold (the transfer's figure predicts each
   inner fold with the configuration chosen on the other folds, so no choice flatters it); otherwise stop and say
   by how much;
5. write the contract and log the ONNX model (contract in its metadata and as `contract.json`) as a version of
   `{name}_onnx`, tagged with the Keras version it came from; read it back and verify its checksum;
6. move alias `champion` to it and `previous` to the former champion.

A failed gate raises `GateError` before anything is logged, so no alias moves. `rollback()` swaps `champion` and
`previous`. The Keras model's run carries `promotion_inputs.json` (`cellmfg.contract.PromotionInputs`, written by
training) with the feature ranges and scaling, probe rows, SHAP background, validation and test metrics and the
calibrated conformal quantile the contract needs.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from cellmfg import challenge_gate
from cellmfg import contract as contracts
from cellmfg.challenge import LiveComparison
from cellmfg.challenge_gate import ChallengerInputError, ChallengerPromotion, same_features
from cellmfg.challenge_gate import LiveGateError as LiveGateError  # re-exported: registry.cli catches it here
from cellmfg.endpoints import Serving

CHAMPION, PREVIOUS, CHALLENGER = "champion", "previous", "challenger"
ONNX_SUFFIX = "_onnx"
OPSET = 17
PARITY_RTOL = 1e-5
PROBE_ROWS = 256


class GateError(RuntimeError):
    """A promotion gate failed; nothing was logged and no alias moved."""


class ZeroShotGateError(GateError):
    """A transfer model did not beat its own pretrained net applied as is."""


@dataclass(frozen=True)
class Promotion:
    name: str
    keras_version: str
    onnx_name: str
    onnx_version: str
    previous_version: str | None
    parity_max_relative_error: float
    test_mape_pct: float
    serving: Serving  # where the champion answers: the kind's endpoint for its dataset, and its own route
    skipped: bool = False
    alias: str = CHAMPION  # the alias moved: champion, or challenger (served in shadow beside the champion)

    def to_json(self) -> dict[str, Any]:
        return {**vars(self), "serving": self.serving.to_json()}


def serving_of(name: str, contract: contracts.Contract) -> Serving:
    """Where the champion `contract` describes answers when served under the Keras name `name`."""
    return Serving(name, contract.kind, contract.task, contract.dataset)


def _client() -> Any:
    from mlflow import MlflowClient

    return MlflowClient()


def _uri() -> str:
    import mlflow

    return str(mlflow.get_tracking_uri())


def onnx_name(name: str) -> str:
    return f"{name}{ONNX_SUFFIX}"


# -- step 1 ------------------------------------------------------------------------------------------------------


def pick_candidate(name: str, version: str | None) -> Any:
    """The requested version, or the one whose run has the lowest validation MAPE (never a test figure)."""
    client = _client()
    if version is not None:
        return client.get_model_version(name, version)
    versions = client.search_model_versions(f"name='{name}'")
    if not versions:
        raise GateError(f"no registered versions of {name!r}; run `cellmfg train all` first")
    return min(versions, key=lambda v: (validation_mape_of(v), -int(v.version)))


def validation_mape_of(model_version: Any) -> float:
    metrics = _client().get_run(model_version.run_id).data.metrics
    return float(metrics.get("validation_mape_pct", float("inf")))


def promotion_inputs(model_version: Any) -> contracts.PromotionInputs:
    """The typed inputs training logged beside this version."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    source = f"runs:/{model_version.run_id}/{contracts.PROMOTION_INPUTS_ARTIFACT}"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = download_artifacts(run_id=model_version.run_id, artifact_path=contracts.PROMOTION_INPUTS_ARTIFACT,
                                      dst_path=tmp)
        except MlflowException as error:
            raise GateError(f"{source}: missing; retrain this model with the current `cellmfg train`") from error
        try:
            return contracts.PromotionInputs.model_validate_json(Path(path).read_text())
        except ValidationError as error:
            raise GateError(f"{source}: not valid promotion inputs: {error.errors()[0]['msg']}") from error


def zero_shot_inputs(base: contracts.PromotionInputs, target: contracts.PromotionInputs
                     ) -> contracts.PromotionInputs:
    """The base net served for the target as is: its own features, ranges and SHAP background (what it knows),
    the target's task and dataset, and the zero-shot metrics and conformal quantile training measured on the
    target's grouped held-out rows; probes from both datasets."""
    if target.zero_shot is None:
        raise GateError(f"{target.task} on {target.dataset}: no zero-shot scores in the promotion inputs")
    return base.model_copy(update={
        "task": target.task, "dataset": target.dataset, "metrics": target.zero_shot.metrics,
        "conformal": target.zero_shot.conformal, "probe_x": [*base.probe_x, *target.probe_x],
        "selection": target.selection.model_copy(update={
            "method": "zero_shot", "validation_mape_pct": target.zero_shot.metrics.validation_mape_pct})})


# -- step 2 ------------------------------------------------------------------------------------------------------


def load_keras(model_version: Any) -> Any:
    import mlflow

    return mlflow.keras.load_model(f"models:/{model_version.name}/{model_version.version}")


def export_onnx(keras_model: Any, n_features: int) -> Any:
    """ONNX graph of the Keras model: input `features` [batch, n], output `prediction` [batch, 1]."""
    import tensorflow as tf
    import tf2onnx

    signature = (tf.TensorSpec([None, n_features], tf.float32, name=contracts.ONNX_INPUT_NAME),)

    @tf.function(input_signature=signature)
    def serve(features: tf.Tensor) -> dict[str, tf.Tensor]:
        output = keras_model(features, training=False)  # an ensemble answers {"prediction", "spread"}
        return dict(output) if isinstance(output, dict) else {contracts.ONNX_PREDICTION_NAME: output}

    onnx_model, _ = tf2onnx.convert.from_function(serve, input_signature=signature, opset=OPSET)
    return onnx_model


# -- step 3 ------------------------------------------------------------------------------------------------------


def probe_set(inputs: contracts.PromotionInputs, seed: int = 0) -> np.ndarray:
    """Random rows inside the training ranges, their corners' extremes, and unlabelled rows of the data."""
    low = np.asarray([f.train_min for f in inputs.features])
    high = np.asarray([f.train_max for f in inputs.features])
    rng = np.random.default_rng(seed)
    random_rows = low + rng.random((PROBE_ROWS, len(low))) * (high - low)
    return np.vstack([random_rows, low, high, np.asarray(inputs.probe_x)]).astype("float32")


def onnx_predict(onnx_bytes: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.asarray(session.run(None, {name: x.astype("float32")})[0], dtype=float).reshape(-1)


def parity_error(keras_model: Any, onnx_bytes: bytes, probe: np.ndarray) -> float:
    """Largest difference between onnxruntime and Keras on the probe rows, relative to the prediction.

    The denominator is floored at the mean |prediction|: a corner of the training box where a prediction passes
    near zero would otherwise turn float32 rounding (~1e-7 of the operands) into a large "relative" error.
    """
    output = keras_model(probe, training=False)
    if isinstance(output, dict):  # an ensemble: every output (mean and spread) against its graph output, by name
        import onnxruntime as ort

        session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        if sorted(names) != sorted(output):
            return float("inf")
        got = dict(zip(names, session.run(None, {session.get_inputs()[0].name: probe.astype("float32")}),
                       strict=True))
        prediction = np.asarray(output[contracts.ONNX_PREDICTION_NAME], dtype=float).reshape(-1)
        # Every output is judged relative to the prediction's scale (the spread is a share of it).
        scale = np.maximum(np.abs(prediction), max(float(np.mean(np.abs(prediction))), 1e-12))
        return max(float(np.max(np.abs(np.asarray(got[k], dtype=float).reshape(-1)
                                       - np.asarray(v, dtype=float).reshape(-1)) / scale)) for k, v in output.items())
    expected = np.asarray(output, dtype=float).reshape(-1)
    actual = onnx_predict(onnx_bytes, probe)
    scale = np.maximum(np.abs(expected), max(float(np.mean(np.abs(expected))), 1e-12))
    return float(np.max(np.abs(actual - expected) / scale))


def parity_gate(keras_model: Any, onnx_bytes: bytes, probe: np.ndarray) -> float:
    error = parity_error(keras_model, onnx_bytes, probe)
    if not error <= PARITY_RTOL:
        raise GateError(f"parity gate: onnxruntime and Keras differ by up to {error:.3g} relative on "
                        f"{len(probe)} probe rows (allowed {PARITY_RTOL:g})")
    return error


# -- step 4 ------------------------------------------------------------------------------------------------------


def champion_contract(name: str) -> contracts.Contract | None:
    from mlflow.exceptions import MlflowException

    try:
        return contracts.fetch_registered(_uri(), onnx_name(name), CHAMPION).contract
    except MlflowException:
        return None


def metric_gate(inputs: contracts.PromotionInputs, champion: contracts.Contract | None, role: str) -> None:
    """Validation estimates only: no worse than the champion's, and a transfer better than its zero-shot net.

    The zero-shot comparison is like with like: both figures are out-of-fold MAPEs on the same training-part rows,
    and neither was chosen by them. The chosen configuration's validation MAPE is the minimum over the candidates
    (optimistic: with eight candidates it beats a zero-shot net it merely ties); the gate reads
    `out_of_fold_mape_pct` instead, where each inner fold is predicted by the configuration chosen on the others.
    Zero-shot fits and chooses nothing, so its MAPE on those rows is already out of fold."""
    mape = inputs.metrics.validation_mape_pct
    if mape is None:
        raise GateError("metric gate: no validation MAPE in the promotion inputs; retrain with `cellmfg train`")
    incumbent = champion.metrics.validation_mape_pct if champion is not None else None
    if champion is not None and incumbent is not None and mape > incumbent:
        raise GateError(f"metric gate: validation MAPE {mape:.3f}% is worse than the champion's "
                        f"{incumbent:.3f}% (version {champion.lineage.keras_model_version}) "
                        f"by {mape - incumbent:.3f} points")
    zero_shot = inputs.metrics.zero_shot_validation_mape_pct
    if role != "transfer" or zero_shot is None:
        return
    transfer = inputs.metrics.out_of_fold_mape_pct
    if transfer is None:
        raise GateError("metric gate: no out-of-fold MAPE to compare with the zero-shot net in the promotion inputs; "
                        "retrain with the current `cellmfg train`")
    if not transfer < zero_shot:
        raise ZeroShotGateError(f"metric gate: transfer out-of-fold MAPE {transfer:.3f}% (each inner fold predicted "
                                f"by the configuration chosen on the others) is not better than the zero-shot "
                                f"pretrained net's {zero_shot:.3f}% on the same rows (by {transfer - zero_shot:.3f} "
                                "points)")


# -- step 5 ------------------------------------------------------------------------------------------------------


def build_contract(model_version: Any, inputs: contracts.PromotionInputs, onnx_model: Any,
                   served_as: str | None = None, role: str | None = None) -> contracts.Contract:
    tags = model_version.tags
    chosen_role: Any = role or tags.get("role", "pretrained")  # validated by the Contract model
    base = (contracts.BaseModelRef(name=tags["base_model_name"], version=tags["base_model_version"])
            if tags.get("base_model_name") else None)
    return contracts.Contract(
        name=onnx_name(served_as or model_version.name), task=inputs.task, dataset=inputs.dataset,
        kind=inputs.kind, role=chosen_role, target=inputs.target,
        output_name=onnx_model.graph.output[0].name, features=inputs.features,
        spread_output_name=next((o.name for o in onnx_model.graph.output
                                 if o.name == contracts.ONNX_SPREAD_NAME), None),
        metrics=inputs.metrics, conformal=inputs.conformal, shap_background=inputs.shap_background,
        lineage=contracts.Lineage(
            keras_model_name=model_version.name, keras_model_version=str(model_version.version),
            run_id=model_version.run_id, base_model=base, data_sha256=inputs.data_sha256,
            data_rows=inputs.data_rows, git_commit=tags.get("git_commit", "unknown")),
        opset=OPSET,
        versions={p: package_version(p) for p in ("onnx", "onnxruntime", "tf2onnx", "tensorflow-cpu", "keras")},
        created_at=contracts.now_iso(),
    )


def embed_contract(onnx_model: Any, contract: contracts.Contract) -> tuple[bytes, contracts.Contract]:
    """Put the contract in the ONNX metadata, then return the bytes and the contract with their checksum."""
    del onnx_model.metadata_props[:]
    entry = onnx_model.metadata_props.add()
    entry.key, entry.value = contracts.ONNX_METADATA_KEY, contract.to_json()
    onnx_bytes = onnx_model.SerializeToString()
    return onnx_bytes, contract.model_copy(update={"onnx_sha256": contracts.sha256_bytes(onnx_bytes)})


def log_onnx(model_version: Any, onnx_bytes: bytes, contract: contracts.Contract) -> str:
    """Log and register the ONNX model in its own run; returns the new `{name}_onnx` version."""
    import mlflow
    import onnx

    from cellmfg.mlflow_setup import registration_notices_off, use_experiment

    use_experiment(contract.task)
    tags = {"keras_model_name": model_version.name, "keras_model_version": str(model_version.version),
            "task": contract.task, "dataset": contract.dataset, "role": contract.role,
            "test_mape_pct": f"{contract.metrics.test_mape_pct:.4f}", "onnx_sha256": contract.onnx_sha256 or ""}
    if contract.metrics.validation_mape_pct is not None:
        tags["validation_mape_pct"] = f"{contract.metrics.validation_mape_pct:.4f}"
    with mlflow.start_run(run_name=f"promote-{model_version.name}-v{model_version.version}", tags=tags), \
            registration_notices_off():
        mlflow.log_text(contract.to_json(), contracts.CONTRACT_ARTIFACT)
        info = mlflow.onnx.log_model(onnx.load_from_string(onnx_bytes), name="model",
                                     registered_model_name=contract.name, save_as_external_data=False,
                                     pip_requirements=[f"onnxruntime=={package_version('onnxruntime')}"])
    version = str(info.registered_model_version)
    client = _client()
    for key, value in tags.items():
        client.set_model_version_tag(contract.name, version, key, value)
    return version


# -- step 6 ------------------------------------------------------------------------------------------------------


def move_aliases(onnx_model_name: str, new_version: str) -> str | None:
    client = _client()
    former = _alias_version(onnx_model_name, CHAMPION)
    if former is not None:
        client.set_registered_model_alias(onnx_model_name, PREVIOUS, former)
    client.set_registered_model_alias(onnx_model_name, CHAMPION, new_version)
    sync_keras_champion(onnx_model_name)
    return former


def keras_name(name: str) -> str:
    """The Keras model behind an ONNX name (density_nmc_onnx -> density_nmc); other names as they are."""
    return name.removesuffix(ONNX_SUFFIX)


def sync_keras_champion(onnx_model_name: str) -> str | None:
    """Point the Keras model's `champion` at the net the ONNX champion was exported from (or remove it);
    cellmfg.challenge_gate.sync_keras_champion. Returns the Keras version now holding `champion`, if any."""
    return challenge_gate.sync_keras_champion(_client(), onnx_model_name)


def _alias_version(model_name: str, alias: str) -> str | None:
    return challenge_gate.alias_version(_client(), model_name, alias)


# -- the recipe --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """What one promotion exports and gates: a registered Keras version, the typed inputs it is judged and described
    by, the role it will serve in, and the name it is served under."""

    model_version: Any
    inputs: contracts.PromotionInputs
    role: str
    served_as: str


def transfer_candidate(name: str, version: str | None = None) -> Candidate:
    """The model's own version (given, or the lowest validation MAPE)."""
    chosen = pick_candidate(name, version)
    return Candidate(chosen, promotion_inputs(chosen), chosen.tags.get("role", "pretrained"), name)


def zero_shot_candidate(name: str, version: str | None = None) -> Candidate:
    """The transfer's pretrained base net, judged on the target's rows and described by the source's training data
    (what it knows), with the conformal quantile from the target's held-out rows."""
    transfer = pick_candidate(name, version)
    base = _client().get_model_version(transfer.tags["base_model_name"], transfer.tags["base_model_version"])
    return Candidate(base, zero_shot_inputs(promotion_inputs(base), promotion_inputs(transfer)), "zero_shot", name)


def promote(name: str, version: str | None = None, alias: str = CHAMPION) -> Promotion:
    """Promote the model's own candidate (see the module docstring for the recipe) to `alias`."""
    return promote_candidate(transfer_candidate(name, version), alias)


def promote_zero_shot(name: str, version: str | None = None, alias: str = CHAMPION) -> Promotion:
    """Serve a target with its pretrained source net when no transfer beats it (the zero-shot gate failed)."""
    return promote_candidate(zero_shot_candidate(name, version), alias)


def promote_candidate(candidate: Candidate, alias: str = CHAMPION) -> Promotion:
    """The one recipe for every kind of candidate. With `alias` challenger the export is registered beside the
    champion for shadow scoring: its features must be the champion's, its metric gate leaves out the comparison
    with the champion's validation MAPE (measured on other rows; the live comparison decides), and only the
    `challenger` alias moves."""
    if alias not in (CHAMPION, CHALLENGER):
        raise GateError(f"alias {alias!r}: allowed: {CHAMPION}, {CHALLENGER}")
    # 1. the candidate is picked; skip it when it already holds the alias (same Keras model, version and role)
    name, source = candidate.served_as, candidate.model_version
    champion = champion_contract(name)
    if alias == CHALLENGER:
        if champion is None:
            raise ChallengerInputError(f"{onnx_name(name)} has no champion to challenge; promote one first")
        same_features(champion, candidate.inputs.features, f"{source.name} v{source.version}")
    holder = champion if alias == CHAMPION else registered_contract(name, CHALLENGER)
    if holder is not None and holder.role == candidate.role and \
            holder.lineage.keras_model_name == source.name and \
            holder.lineage.keras_model_version == str(source.version):
        return Promotion(name, str(source.version), onnx_name(name), _alias_version(onnx_name(name), alias)
                         or "", None, 0.0, holder.metrics.test_mape_pct, serving_of(name, holder), skipped=True,
                         alias=alias)
    # 2. export it to ONNX
    keras_model = load_keras(source)
    onnx_model = export_onnx(keras_model, len(candidate.inputs.features))
    # 3. parity gate on probe rows from every dataset the inputs describe
    parity = parity_gate(keras_model, onnx_model.SerializeToString(), probe_set(candidate.inputs))
    # 4. metric gate: validation estimates only, against the current champion
    metric_gate(candidate.inputs, champion if alias == CHAMPION else None, candidate.role)
    # 5. write the contract, log the ONNX model under the served name, read it back and verify
    contract = build_contract(source, candidate.inputs, onnx_model, served_as=name, role=candidate.role)
    onnx_bytes, contract = embed_contract(onnx_model, contract)
    new_version = log_onnx(source, onnx_bytes, contract)
    _verify_logged(contracts.LoadedModel(name=contract.name, version=new_version, alias="", contract=contract,
                                         onnx_bytes=onnx_bytes), _uri())
    # 6. move the aliases
    if alias == CHALLENGER:
        _client().set_registered_model_alias(contract.name, CHALLENGER, new_version)
        former = None
    else:
        former = move_aliases(contract.name, new_version)
    return Promotion(name, str(source.version), contract.name, new_version, former, parity,
                     contract.metrics.test_mape_pct, serving_of(name, contract), alias=alias)


# -- champion and challenger: the live gate (cellmfg.challenge_gate, shared with the service's promote endpoint) -


def registered_contract(name: str, alias: str) -> contracts.Contract | None:
    """The contract of the ONNX version holding `alias`, or None when no version holds it."""
    return challenge_gate.registered_contract(_uri(), name, alias)


def challenger_versions(name: str) -> tuple[str, str]:
    """(champion, challenger) ONNX versions of `name` in this registry (cellmfg.challenge_gate.challenger_versions)."""
    return challenge_gate.challenger_versions(_client(), _uri(), name)


def promote_challenger(name: str, comparison: LiveComparison, compared: tuple[str, str],
                       override_reason: str | None = None) -> ChallengerPromotion:
    """The live gate on this registry: cellmfg.challenge_gate.promote_challenger, the one the service's
    POST /models/{name}/challenge/promote applies too."""
    return challenge_gate.promote_challenger(_client(), _uri(), name, comparison, compared, override_reason)


def _verify_logged(expected: contracts.LoadedModel, uri: str) -> None:
    """What MLflow stored is byte for byte what was gated (a re-serialisation would break the checksum)."""
    from mlflow.artifacts import download_artifacts

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(download_artifacts(artifact_uri=f"models:/{expected.name}/{expected.version}", dst_path=tmp,
                                         tracking_uri=uri))
        stored = next(folder.rglob("*.onnx")).read_bytes()
    contracts.verify_model(expected.contract, stored, f"models:/{expected.name}/{expected.version}")


def rollback(name: str, to_version: str | None = None) -> tuple[str | None, str]:
    """Champion back to `previous` (or to `to_version`); `previous` then points at the demoted version, so a second
    rollback undoes. After `retire` (no champion) it restores the retired version. Returns (demoted, restored)."""
    model = onnx_name(keras_name(name))
    current_champion, former = _alias_version(model, CHAMPION), _alias_version(model, PREVIOUS)
    target = to_version or former
    if target is None:
        raise GateError(f"{model}: no `previous` version to roll back to")
    client = _client()
    client.set_registered_model_alias(model, CHAMPION, target)
    if current_champion is not None and current_champion != target:
        client.set_registered_model_alias(model, PREVIOUS, current_champion)
    elif former == target:
        client.delete_registered_model_alias(model, PREVIOUS)  # restored after a retire: nothing was demoted
    sync_keras_champion(model)
    return current_champion, target


def retire(name: str, alias: str = CHAMPION) -> str:
    """Remove `alias` from the ONNX model, so services following that alias stop serving it at their next poll.

    The version keeps `previous` (when the champion is retired), so `rollback` brings it back. Returns the version
    that held the alias."""
    model = onnx_name(keras_name(name))
    version = _alias_version(model, alias)
    if version is None:
        raise GateError(f"{model}: no version holds alias {alias!r}; nothing to retire")
    client = _client()
    client.delete_registered_model_alias(model, alias)
    if alias == CHAMPION:
        client.set_registered_model_alias(model, PREVIOUS, version)
        sync_keras_champion(model)
    return version


def onnx_version_for(name: str, keras_version: str) -> str:
    """The newest ONNX version exported from Keras version `keras_version` of `name`."""
    model, source = onnx_name(keras_name(name)), (keras_name(name), keras_version)
    found = [v for v in _client().search_model_versions(f"name='{model}'")
             if (v.tags.get("keras_model_name"), v.tags.get("keras_model_version")) == source]
    if not found:
        raise GateError(f"{keras_name(name)} version {keras_version} was never promoted: no {model} version comes "
                        f"from it (promote it with `cellmfg registry promote --model models:/{keras_name(name)}/"
                        f"{keras_version}`)")
    return str(max(int(v.version) for v in found))


def listing() -> list[dict[str, Any]]:
    """Every registered model with its versions, aliases, validation MAPE (what promotion chooses by) and test
    MAPE (read once, for the report)."""
    client = _client()
    rows = []
    for model in client.search_registered_models():
        aliases: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        versions = []
        for mv in client.search_model_versions(f"name='{model.name}'"):
            validation, test = mv.tags.get("validation_mape_pct"), mv.tags.get("test_mape_pct")
            versions.append({"version": str(mv.version), "aliases": sorted(aliases.get(str(mv.version), [])),
                             "validation_mape_pct": float(validation) if validation else None,
                             "test_mape_pct": float(test) if test else None,
                             "role": mv.tags.get("role"), "keras_model_version": mv.tags.get("keras_model_version")})
        rows.append({"name": model.name, "versions": sorted(versions, key=lambda v: int(v["version"]))})
    return sorted(rows, key=lambda r: r["name"])


def export_bundle(alias: str, out: Path) -> Path:
    """Every `*_onnx` model behind `alias`, verified, written as a self-contained bundle."""
    client = _client()
    models = []
    for model in client.search_registered_models():
        if model.name.endswith(ONNX_SUFFIX) and alias in (model.aliases or {}):
            models.append(contracts.fetch_registered(_uri(), model.name, alias))
    if not models:
        raise GateError(f"no ONNX model has alias {alias!r}; run `cellmfg registry promote --all` first")
    return contracts.write_bundle(sorted(models, key=lambda m: m.name), out)
