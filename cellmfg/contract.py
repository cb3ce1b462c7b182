"""The model contract and the model bundle: everything a served model needs, travelling with it.

A contract (JSON, versioned schema) describes one ONNX model: task, target with unit and physical range, features
in input order with units, training ranges and the fixed scaling the net applies, metrics (validation estimates for
choices, test figures for the report), the conformal quantile with its measured coverage and width, a SHAP
background, lineage and library versions, and the sha256 of the ONNX file. The registry writes it; the service
reads it and never imports TensorFlow.

`PromotionInputs` is the seam between training and registry: everything a promotion needs, written by training as
one typed artifact, so the registry neither re-reads the data nor imports training code.

A bundle is a directory of ONNX files, their contracts and a `manifest.json` with checksums, so a server can run
without reaching MLflow. `load_bundle` refuses a tampered or incomplete bundle, naming the file.
"""

from __future__ import annotations

import hashlib
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

CONTRACT_SCHEMA_VERSION: Literal[2] = 2
MANIFEST_NAME = "manifest.json"
CONTRACT_ARTIFACT = "contract.json"
PROMOTION_INPUTS_ARTIFACT = "promotion_inputs.json"  # written by training, read by the registry to build a contract
ONNX_METADATA_KEY = "cellmfg_contract"
ONNX_INPUT_NAME = "features"
# An ensemble graph's outputs: the members' mean (what is served as the prediction) and their standard deviation.
ONNX_PREDICTION_NAME = "prediction"
ONNX_SPREAD_NAME = "spread"


class ContractError(ValueError):
    """A contract, bundle or model file that cannot be trusted; the message names the file."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureSpec(_Strict):
    name: str
    unit: str
    train_min: float
    train_max: float
    physical_min: float
    physical_max: float
    # The median of the training rows: a typical recipe, where the lab page's form starts (None: not recorded).
    train_median: float | None = None
    # The net's first (frozen) layer computes z = (x - scale_centre) / scale_width, a fixed physical scale.
    scale_centre: float = 0.0
    scale_width: float = 1.0
    # Constant on the source rows the (base) net was trained on: the net ignores it (weight 0), since the source
    # says nothing about its effect; predictions do not change when it changes.
    constant_in_source: bool = False
    # Sorted training quantile edges (e.g. deciles: 11 values, min to max) for the service's input-drift PSI; None in
    # contracts written before the ledger (the service then reports only the share outside the training range).
    train_quantiles: list[float] | None = None


class TargetSpec(_Strict):
    task: str
    column: str
    unit: str
    # Interval ends are clipped to this range (a mass loading is never below 0, a tortuosity never below 1).
    physical_min: float | None = None
    physical_max: float | None = None


class Metrics(_Strict):
    test_mape_pct: float = Field(description="test MAPE on the first grouped 70/30 split (report only)")
    test_mape_pct_mean: float | None = Field(default=None, description="mean test MAPE over repeated grouped splits")
    test_mape_pct_std: float | None = None
    n_splits: int | None = None
    test_mae: float | None = None
    test_r2: float | None = None
    validation_mape_pct: float | None = Field(
        default=None, description="grouped inner-validation MAPE of the chosen configuration on the training part: "
        "what registry choices and gates compare (never test rows)")
    zero_shot_test_mape_pct: float | None = Field(default=None, description="the pretrained net as is, same split")
    zero_shot_validation_mape_pct: float | None = Field(
        default=None, description="the pretrained net as is, on the same training-part rows as validation_mape_pct")
    out_of_fold_mape_pct: float | None = Field(
        default=None, description="MAPE on the training part of out-of-fold predictions, each inner fold predicted "
        "by the configuration chosen on the other folds (no choice read it, unlike validation_mape_pct, the minimum "
        "over the candidates): what the zero-shot gate compares with zero_shot_validation_mape_pct, same rows")


class Conformal(_Strict):
    coverage: float = 0.9
    # Relative residual |y - p| / |p|: the nets are trained on a relative loss (MAPE), so errors scale with p.
    # Interval: [p - q|p|, p + q|p|], then clipped to the target's physical range.
    relative_quantile: float
    n_calibration: int
    method: str = "split-conformal on relative residuals of held-out rows"
    measured_coverage: float | None = Field(
        default=None, description="share of held-out test rows inside their interval, calibrated at group level "
        "on the out-of-fold residuals of the split's training part, averaged over the repeated splits")
    mean_relative_width: float | None = Field(
        default=None, description="mean (upper - lower) / |prediction| of those clipped intervals: the width a "
        "user can expect")
    n_evaluated: int | None = None
    # Recipe-dependent width (normalised split-conformal). With scale "spread" the interval is
    # p ± spread_quantile·(σ(x) + spread_offset·|p|), σ(x) the ensemble members' standard deviation (the graph's
    # spread output); with "constant" it is p ± relative_quantile·|p| as before. Contracts written before ensembles
    # carry none of these fields and mean "constant".
    scale: Literal["constant", "spread"] = Field(
        default="constant", description="what the served interval's width follows: a constant share of the "
        "prediction, or the ensemble spread of this recipe (see scale_reason)")
    scale_reason: str | None = Field(
        default=None, description="why this scale was chosen: the stated rule and its figures on validation data")
    ensemble_members: int | None = Field(default=None, description="nets averaged into the prediction")
    spread_quantile: float | None = Field(
        default=None, description="conformal quantile of |y - p| / (σ + spread_offset·|p|) over calibration groups")
    spread_offset: float | None = Field(
        default=None, description="added relative spread (median σ/|p| of the calibration rows), so a recipe on "
        "which the members happen to agree still gets an interval")
    constant_measured_coverage: float | None = Field(
        default=None, description="held-out coverage of the constant-width interval (same splits, same model)")
    constant_mean_relative_width: float | None = None
    spread_measured_coverage: float | None = Field(
        default=None, description="held-out coverage of the spread-scaled interval (same splits, same model)")
    spread_mean_relative_width: float | None = None

    def uses_spread(self) -> bool:
        return self.scale == "spread" and self.spread_quantile is not None and self.spread_offset is not None


class BaseModelRef(_Strict):
    name: str
    version: str


class Lineage(_Strict):
    keras_model_name: str
    keras_model_version: str
    run_id: str
    base_model: BaseModelRef | None = None
    data_sha256: str
    data_rows: int
    git_commit: str


class Contract(_Strict):
    schema_version: Literal[2] = CONTRACT_SCHEMA_VERSION
    name: str = Field(description="registered ONNX model name, e.g. density_nmc_onnx")
    task: str
    dataset: str
    kind: Literal["electrode", "gdl"]
    # zero_shot: a target served by its pretrained source net, because no transfer beat it (registry fallback)
    role: Literal["pretrained", "transfer", "zero_shot"]
    target: TargetSpec
    input_name: str = ONNX_INPUT_NAME
    output_name: str
    # The graph output carrying the ensemble spread per row (None: a single net, no spread)
    spread_output_name: str | None = None
    features: list[FeatureSpec]
    metrics: Metrics
    conformal: Conformal
    shap_background: list[list[float]] = Field(description="representative training rows, in feature order")
    lineage: Lineage
    opset: int
    versions: dict[str, str]
    onnx_sha256: str | None = Field(default=None, description="sha256 of the ONNX file; None inside the ONNX itself")
    created_at: str

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def source_constant_features(self) -> list[str]:
        return [f.name for f in self.features if f.constant_in_source]

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


class Selection(_Strict):
    """The configuration grouped inner validation chose for the registered net (nothing here read test rows)."""

    method: str = Field(description="e.g. transfer_paper (the paper's adapter) or transfer_residual (ours)")
    learning_rate: float
    width: int
    validation_mape_pct: float | None


class ZeroShotInputs(_Strict):
    """The transfer's base net applied as is to this target: what the registry needs to serve it instead."""

    metrics: Metrics
    conformal: Conformal


class PromotionInputs(_Strict):
    """Everything a promotion needs about one registered Keras version, written by training beside the model."""

    schema_version: Literal[1] = 1
    kind: Literal["electrode", "gdl"]
    task: str
    dataset: str
    role: Literal["pretrained", "transfer"]
    target: TargetSpec
    features: list[FeatureSpec]
    shap_background: list[list[float]]
    probe_x: list[list[float]] = Field(description="unlabelled rows of this dataset for the ONNX parity check")
    metrics: Metrics
    conformal: Conformal
    selection: Selection
    zero_shot: ZeroShotInputs | None = None
    data_sha256: str
    data_rows: int
    groups: int = Field(description="distinct groups (replicate sets) in the data")

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]


def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_contract(text: str | bytes, source: str) -> Contract:
    try:
        return Contract.model_validate_json(text)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise ContractError(f"{source}: contract does not match schema v{CONTRACT_SCHEMA_VERSION}: "
                            f"{where}: {first['msg']}") from error


class LoadedModel(BaseModel):
    """An ONNX model with its verified contract, as the service consumes it."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)
    name: str
    version: str
    alias: str
    contract: Contract
    onnx_bytes: bytes


def verify_model(contract: Contract, onnx_bytes: bytes, source: str) -> None:
    """The ONNX bytes are the ones the contract describes."""
    actual = sha256_bytes(onnx_bytes)
    if contract.onnx_sha256 != actual:
        raise ContractError(f"{source}: sha256 {actual[:12]}… does not match the contract's "
                            f"{(contract.onnx_sha256 or 'none')[:12]}…; the ONNX file was changed or swapped")


# ---------------------------------------------------------------------------------------------------------------
# Bundles


class ManifestEntry(_Strict):
    name: str
    version: str
    alias: str
    onnx: str
    contract: str
    onnx_sha256: str
    contract_sha256: str


class Manifest(_Strict):
    schema_version: Literal[1] = 1
    created_at: str
    models: list[ManifestEntry]


def write_bundle(models: list[LoadedModel], out: Path) -> Path:
    """Write ONNX files, contracts and the manifest; the manifest goes last so a half-written bundle is refused."""
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for model in models:
        onnx_file = f"{model.name}.onnx"
        contract_file = f"{model.name}.contract.json"
        contract_text = model.contract.to_json().encode()
        (out / onnx_file).write_bytes(model.onnx_bytes)
        (out / contract_file).write_bytes(contract_text)
        entries.append(ManifestEntry(
            name=model.name, version=model.version, alias=model.alias, onnx=onnx_file, contract=contract_file,
            onnx_sha256=sha256_bytes(model.onnx_bytes), contract_sha256=sha256_bytes(contract_text)))
    manifest = Manifest(created_at=now_iso(), models=entries)
    with tempfile.NamedTemporaryFile("w", dir=out, delete=False, suffix=".tmp") as handle:
        handle.write(manifest.model_dump_json(indent=2))
    Path(handle.name).replace(out / MANIFEST_NAME)
    return out / MANIFEST_NAME


def load_bundle(directory: str | Path) -> list[LoadedModel]:
    """Read a bundle, verifying the manifest, every checksum and every contract; refuse anything off."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ContractError(f"{manifest_path}: bundle manifest missing")
    try:
        manifest = Manifest.model_validate_json(manifest_path.read_bytes())
    except ValidationError as error:
        raise ContractError(f"{manifest_path}: not a valid bundle manifest: {error.errors()[0]['msg']}") from error
    models = [load_bundle_entry(directory, entry) for entry in manifest.models]
    if not models:
        raise ContractError(f"{manifest_path}: the bundle lists no models")
    return models


def load_bundle_entry(directory: Path, entry: ManifestEntry) -> LoadedModel:
    """One model of a bundle, verified on its own: both files present, both checksums, the contract, the model."""
    onnx_path, contract_path = directory / entry.onnx, directory / entry.contract
    for path in (onnx_path, contract_path):
        if not path.is_file():
            raise ContractError(f"{path}: listed in the manifest but missing from the bundle")
    contract_bytes = contract_path.read_bytes()
    if sha256_bytes(contract_bytes) != entry.contract_sha256:
        raise ContractError(f"{contract_path}: checksum does not match the manifest; the file was changed")
    onnx_bytes = onnx_path.read_bytes()
    if sha256_bytes(onnx_bytes) != entry.onnx_sha256:
        raise ContractError(f"{onnx_path}: checksum does not match the manifest; the file was changed")
    contract = parse_contract(contract_bytes, str(contract_path))
    verify_model(contract, onnx_bytes, str(onnx_path))
    return LoadedModel(name=entry.name, version=entry.version, alias=entry.alias, contract=contract,
                       onnx_bytes=onnx_bytes)


# ---------------------------------------------------------------------------------------------------------------
# MLflow registry (mlflow-skinny is enough: the service uses this path too)


def fetch_registered(tracking_uri: str, name: str, alias: str) -> LoadedModel:
    """Download the ONNX model version behind `alias` and its contract artifact, and verify them."""
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    version = client.get_model_version_by_alias(name, alias)
    # The version's own artifact location, not a models:/ URI: that one would be resolved against the
    # process-wide registry URI, which child processes inherit and may point elsewhere.
    source = client.get_model_version_download_uri(name, version.version)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(download_artifacts(artifact_uri=source, dst_path=tmp, tracking_uri=tracking_uri))
        onnx_files = sorted(model_dir.rglob("*.onnx"))
        if not onnx_files:
            raise ContractError(f"models:/{name}/{version.version}: no .onnx file in the model artifacts")
        onnx_bytes = onnx_files[0].read_bytes()
        contract_path = Path(download_artifacts(run_id=version.run_id, artifact_path=CONTRACT_ARTIFACT,
                                                dst_path=tmp, tracking_uri=tracking_uri))
        contract = parse_contract(contract_path.read_bytes(), f"runs:/{version.run_id}/{CONTRACT_ARTIFACT}")
    verify_model(contract, onnx_bytes, f"models:/{name}/{version.version}")
    return LoadedModel(name=name, version=str(version.version), alias=alias, contract=contract,
                       onnx_bytes=onnx_bytes)


def contract_summary(contract: Contract) -> dict[str, Any]:
    """The part of a contract clients see at GET /models."""
    return {
        "task": contract.task, "dataset": contract.dataset, "role": contract.role,
        "target": contract.target.model_dump(), "metrics": contract.metrics.model_dump(),
        "features": [f.model_dump() for f in contract.features], "lineage": contract.lineage.model_dump(),
    }


def contract_from_onnx_metadata(onnx_bytes: bytes, source: str) -> Contract:
    """The contract embedded in the ONNX file's metadata (written with onnx_sha256=None).

    Read with onnxruntime, which the service has anyway; the `onnx` package is a training/registry dependency."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    text = session.get_modelmeta().custom_metadata_map.get(ONNX_METADATA_KEY)
    if text is None:
        raise ContractError(f"{source}: no {ONNX_METADATA_KEY!r} metadata in the ONNX file")
    return parse_contract(text, source)

