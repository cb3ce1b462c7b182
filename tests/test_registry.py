"""Registry: ONNX export with parity, metric gate, aliases, rollback and bundles (quick-preset models)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import onnxruntime as ort
import pytest

from cellmfg import contract as contracts
from cellmfg.dataio import load_shipped
from cellmfg.domain import DENSITY
from registry import promote
from training import jobs, tracking
from training.config import load_config

pytestmark = [pytest.mark.trains, pytest.mark.filterwarnings("ignore::UserWarning")]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Two versions of density_graphite (different seeds) and one density_nmc transfer, in a fresh store."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    tracking.configure()
    mlflow.set_experiment("registry-test")
    source = jobs.prepare(load_shipped("graphite"), DENSITY, "graphite")
    target = jobs.prepare(load_shipped("nmc"), DENSITY, "nmc")
    results = []
    for seed in (1, 2):
        config = dataclasses.replace(load_config("quick", seed), repeats=2)
        with tracking.run(f"seed-{seed}"):
            results.append(jobs.run_source(source, config, "density_graphite"))
    base = jobs.BaseRef(results[0].model, "density_graphite", "1", "graphite", source)
    with tracking.run("transfer"):
        transfer = jobs.run_target(target, base, dataclasses.replace(load_config("quick", 1), repeats=2),
                                   "density_nmc")
    # Versions are chosen and gated by validation MAPE (never test).
    mapes = {r.registered_version: r.summary.methods["pretrained"].validation_mape_pct_first_split
             for r in results}
    assert mapes["1"] != mapes["2"]
    worse, better = sorted(mapes, key=lambda v: -mapes[v])
    yield {"uri": uri, "worse": worse, "better": better, "mapes": mapes, "transfer": transfer}
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous
    mlflow.set_tracking_uri(previous or tracking.DEFAULT_TRACKING_URI)


def _aliases(name: str) -> dict[str, str]:
    try:
        model = mlflow.tracking.MlflowClient().get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        return {}
    return {alias: str(version) for alias, version in model.aliases.items()}


def test_perturbed_onnx_fails_parity_and_moves_nothing(registry: dict[str, Any],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx.numpy_helper

    real_export = promote.export_onnx

    def perturbed(keras_model: Any, n_features: int) -> Any:
        model = real_export(keras_model, n_features)
        weights = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
        array = onnx.numpy_helper.to_array(weights).copy()
        array.flat[0] += 0.5
        weights.CopyFrom(onnx.numpy_helper.from_array(array, weights.name))
        return model

    monkeypatch.setattr(promote, "export_onnx", perturbed)
    with pytest.raises(promote.GateError, match="parity gate: onnxruntime and Keras differ by up to"):
        promote.promote("density_graphite", registry["worse"])
    assert _aliases("density_graphite_onnx") == {}


def test_promotion_aliases_metric_gate_and_rollback(registry: dict[str, Any]) -> None:
    first = promote.promote("density_graphite", registry["worse"])
    assert first.parity_max_relative_error <= 1e-5
    assert _aliases("density_graphite_onnx") == {"champion": first.onnx_version}
    second = promote.promote("density_graphite")  # no version: picks the lowest validation MAPE
    assert second.keras_version == registry["better"]
    assert _aliases("density_graphite_onnx") == {"champion": second.onnx_version, "previous": first.onnx_version}

    with pytest.raises(promote.GateError, match=r"metric gate: validation MAPE .* worse than the champion's .* by "):
        promote.promote("density_graphite", registry["worse"])
    assert _aliases("density_graphite_onnx") == {"champion": second.onnx_version, "previous": first.onnx_version}

    again = promote.promote("density_graphite", registry["better"])
    assert again.skipped

    demoted, restored = promote.rollback("density_graphite")
    assert (demoted, restored) == (second.onnx_version, first.onnx_version)
    assert _aliases("density_graphite_onnx") == {"champion": first.onnx_version, "previous": second.onnx_version}
    champion = contracts.fetch_registered(registry["uri"], "density_graphite_onnx", "champion")
    assert champion.contract.lineage.keras_model_version == registry["worse"]


def _with_validation(monkeypatch: pytest.MonkeyPatch, transfer: float, zero_shot: float) -> None:
    """Fix the transfer's and its zero-shot net's validation MAPEs, so both gate outcomes are exercised whatever
    the quick training produced."""
    real = promote.promotion_inputs

    def fixed(model_version: Any) -> contracts.PromotionInputs:
        inputs = real(model_version)
        if inputs.role != "transfer" or inputs.zero_shot is None:
            return inputs
        metrics = inputs.metrics.model_copy(update={"validation_mape_pct": transfer, "out_of_fold_mape_pct": transfer,
                                                    "zero_shot_validation_mape_pct": zero_shot})
        zero = inputs.zero_shot.model_copy(update={"metrics": inputs.zero_shot.metrics.model_copy(
            update={"validation_mape_pct": zero_shot, "out_of_fold_mape_pct": zero_shot})})
        return inputs.model_copy(update={"metrics": metrics, "zero_shot": zero})

    monkeypatch.setattr(promote, "promotion_inputs", fixed)


def test_transfer_gate_zero_shot_fallback_and_contract(registry: dict[str, Any],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # 1. Zero-shot better on validation: the transfer is refused and nothing moves...
    _with_validation(monkeypatch, transfer=9.0, zero_shot=5.0)
    with pytest.raises(promote.ZeroShotGateError, match="not better than the zero-shot"):
        promote.promote("density_nmc")
    assert _aliases("density_nmc_onnx") == {}
    # 2. ...and the base net is served for the target instead, with the target's zero-shot scores.
    fallback = promote.promote_zero_shot("density_nmc")
    # The base net answers for the target's chemistry, under the transfer's name.
    assert fallback.serving.endpoints() == ["POST /predict/electrode (chemistry=nmc)", "POST /predict/density_nmc_onnx"]
    model = contracts.fetch_registered(registry["uri"], "density_nmc_onnx", "champion")
    assert model.contract.role == "zero_shot" and model.contract.dataset == "nmc"
    assert model.contract.lineage.keras_model_name == "density_graphite"
    assert model.contract.metrics.validation_mape_pct == 5.0
    zero_shot_test = registry["transfer"].summary.methods["zero_shot"].test_mape_pct_first_split
    assert fallback.test_mape_pct == pytest.approx(zero_shot_test, abs=1e-3)
    # 3. A transfer better than zero-shot on validation replaces that champion.
    _with_validation(monkeypatch, transfer=4.0, zero_shot=5.0)
    result = promote.promote("density_nmc")
    contract = contracts.fetch_registered(registry["uri"], "density_nmc_onnx", "champion").contract
    assert contract.role == "transfer" and contract.lineage.base_model is not None
    assert contract.lineage.base_model.name == "density_graphite"
    assert contract.feature_names[0] == "am_wt_pct" and contract.target.unit == "g/cm³"
    assert contract.target.physical_min == 0.0 and contract.conformal.measured_coverage is not None
    assert contract.source_constant_features == ["coating_speed_m_min"]
    assert contract.conformal.relative_quantile > 0 and len(contract.shap_background) <= 20
    assert result.onnx_version == _aliases("density_nmc_onnx")["champion"]
    assert result.to_json()["serving"]["chemistry"] == "nmc" and result.to_json()["serving"]["note"] is None
    assert _aliases("density_nmc_onnx")["previous"] == fallback.onnx_version
    model = contracts.fetch_registered(registry["uri"], "density_nmc_onnx", "champion")
    assert contract.onnx_sha256 == contracts.sha256_bytes(model.onnx_bytes)
    assert contracts.contract_from_onnx_metadata(model.onnx_bytes, "x").onnx_sha256 is None
    # 4. The zero-shot net cannot come back over a better champion.
    with pytest.raises(promote.GateError, match="worse than the champion"):
        promote.promote_zero_shot("density_nmc")


def test_onnx_equals_keras_on_random_in_range_inputs(registry: dict[str, Any]) -> None:
    model = contracts.fetch_registered(registry["uri"], "density_graphite_onnx", "champion")
    keras_model = mlflow.keras.load_model(
        f"models:/density_graphite/{model.contract.lineage.keras_model_version}")
    low = np.array([f.train_min for f in model.contract.features])
    high = np.array([f.train_max for f in model.contract.features])
    # The contract carries each feature's training deciles, min to max: the reference of the service's drift PSI.
    for feature in model.contract.features:
        edges = feature.train_quantiles
        assert edges is not None and len(edges) == 11 and edges == sorted(edges), feature
        assert (edges[0], edges[-1]) == (feature.train_min, feature.train_max), feature
    x = (low + np.random.default_rng(11).random((500, len(low))) * (high - low)).astype("float32")
    session = ort.InferenceSession(model.onnx_bytes, providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {model.contract.input_name: x})[0].reshape(-1)
    keras_out = np.asarray(keras_model(x), dtype=float).reshape(-1)
    assert np.allclose(onnx_out, keras_out, rtol=1e-5, atol=0)


def test_bundle_loads_with_onnxruntime_and_refuses_tampering(registry: dict[str, Any], tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    promote.export_bundle("champion", bundle)
    models = contracts.load_bundle(bundle)
    assert {m.name for m in models} >= {"density_graphite_onnx"}
    for model in models:
        session = ort.InferenceSession(model.onnx_bytes, providers=["CPUExecutionProvider"])
        rows = np.asarray(model.contract.shap_background, dtype="float32")
        assert session.run(None, {model.contract.input_name: rows})[0].shape == (len(rows), 1)

    onnx_file = bundle / f"{models[0].name}.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0x01
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(contracts.ContractError, match=rf"{onnx_file.name}: checksum does not match"):
        contracts.load_bundle(bundle)
    onnx_file.unlink()
    with pytest.raises(contracts.ContractError, match="missing from the bundle"):
        contracts.load_bundle(bundle)


def test_listing_shows_the_validation_mape_promotion_chooses_by(registry: dict[str, Any]) -> None:
    from typer.testing import CliRunner

    from cellmfg_cli import build

    rows = {row["name"]: row["versions"] for row in promote.listing()}
    listed = {v["version"]: v for v in rows["density_graphite"]}
    for version, mape in registry["mapes"].items():
        assert listed[version]["validation_mape_pct"] == pytest.approx(mape, abs=1e-4)
        assert listed[version]["test_mape_pct"] is not None
    result = CliRunner().invoke(build(), ["registry", "list"], env={"COLUMNS": "200"})  # a table, not wrapped
    assert result.exit_code == 0, result.output
    assert "validation" in result.output and "density_graphite" in result.output
    assert all(f"{mape:.2f}" in result.output for mape in registry["mapes"].values())


def test_promote_prints_the_chemistry_and_endpoints_without_mlflow_notices(registry: dict[str, Any]) -> None:
    import json
    import logging

    from typer.testing import CliRunner

    from cellmfg_cli import build

    if "champion" in _aliases("density_graphite_onnx"):
        promote.retire("density_graphite")  # so the promotion below registers a new ONNX version
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.WARNING)  # what the console sets unless --verbose (cellmfg_cli.quiet_libraries)
    try:
        result = CliRunner().invoke(build(), ["registry", "promote", "--model", "density_graphite", "--version",
                                              registry["better"]])
        again = CliRunner().invoke(build(), ["registry", "promote", "--model", "density_graphite", "--json"])
    finally:
        logger.setLevel(level)
    assert result.exit_code == 0, result.output
    assert "→ density_graphite_onnx v" in result.stdout
    assert ("chemistry graphite (electrode): answers at POST /predict/electrode (chemistry=graphite) and "
            "POST /predict/density_graphite_onnx") in result.stdout
    for text in (result.stdout, result.stderr):
        assert "Successfully registered" not in text and "Created version" not in text, text
    assert again.exit_code == 0, again.output
    serving = json.loads(again.stdout.strip().splitlines()[-1])["promoted"][0]["serving"]
    assert serving["chemistry"] == "graphite" and serving["on_kind_endpoint"] is True
