"""The open catalogue in-process: whatever the source offers is served, appears and disappears at the next poll,
and a broken newcomer is refused and counted while everything else keeps serving."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from cellmfg.contract import MANIFEST_NAME, LoadedModel, sha256_bytes, write_bundle
from cellmfg.domain import DATASETS, TASKS, feature_columns
from service.engine import metrics
from service.engine.config import SERVED_MODEL_NAMES, Settings
from service.engine.errors import RequestRejectedError
from service.engine.explain import Explainers
from service.engine.model_store import ModelStore
from service.engine.predict import Predictor
from service.engine.sources import BundleSource, RegistrySource
from testkit.fakes import (
    LFP_RANGES,
    corrupt_onnx,
    custom_model,
    example_rows,
    fake_models,
    in_process_app,
    in_range_rows,
    invalid_contract,
    lfp_models,
    onnx_predict,
    service_client,
)
from testkit.processes import wait_for
from testkit.registry import register_model, sqlite_tracking_uri

POLL = 0.2

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::PendingDeprecationWarning")

ORIGINAL = fake_models()
LFP_X = np.array([[LFP_RANGES[c][0] + (LFP_RANGES[c][1] - LFP_RANGES[c][0]) * f for c in feature_columns("electrode")]
                  for f in (0.1, 0.5, 0.9)])


def _rows(x: np.ndarray, kind: str = "electrode") -> list[dict[str, float]]:
    return [dict(zip(feature_columns(kind), map(float, row), strict=True)) for row in x]  # type: ignore[arg-type]


def _originals_answer(client: TestClient) -> dict[str, list[float]]:
    """Every original model's predictions on fixed rows, through the kind endpoints."""
    out = {}
    for task in TASKS:
        spec = DATASETS[task.dataset]
        field = "chemistry" if spec.kind == "electrode" else "dataset"
        body = {field: task.dataset, "rows": example_rows(spec.kind, task.dataset, 5, seed=3)}
        response = client.post(f"/predict/{spec.kind}", json=body)
        assert response.status_code == 200, response.text
        out[task.model_name] = [row[task.target.column] for row in response.json()["predictions"]]
    return out


def _expected_originals() -> dict[str, list[float]]:
    out = {}
    for task, model in zip(TASKS, ORIGINAL, strict=True):
        out[task.model_name] = onnx_predict(model, in_range_rows(task.dataset, 5, seed=3)).tolist()
    return out


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    write_bundle(ORIGINAL, tmp_path)
    return tmp_path


@pytest.fixture
def client(bundle: Path) -> Iterator[TestClient]:
    with service_client(bundle, poll_seconds=POLL) as test_client:
        yield test_client


def _electrode_datasets(client: TestClient) -> list[str]:
    return list(client.get("/models").json()["datasets"]["electrode"])


def _served(client: TestClient) -> dict[str, str]:
    return {m["name"]: m["version"] for m in client.get("/models").json()["models"]}


def test_a_new_chemistry_is_served_at_the_next_poll_and_leaves_when_retired(client: TestClient,
                                                                           bundle: Path) -> None:
    expected = _expected_originals()
    assert _originals_answer(client) == expected
    refused = client.post("/predict/electrode", json={"chemistry": "lfp", "rows": _rows(LFP_X)})
    assert refused.status_code == 400
    assert "'lfp'" in refused.text and "graphite, si_gra, nmc" in refused.text

    write_bundle([*ORIGINAL, *lfp_models()], bundle)  # promoted: the bundle now offers it
    wait_for(lambda: "lfp" in _electrode_datasets(client) and "mass_loading_lfp_onnx" in _served(client),
             timeout=POLL + 10, what="lfp to be served")
    answer = client.post("/predict/electrode", json={"chemistry": "lfp", "rows": _rows(LFP_X), "interval": True})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["models"]["density"] == {"name": "density_lfp_onnx", "version": "1", "alias": "champion"}
    for model, column in zip(lfp_models(), ("density_g_cm3", "mass_loading_mg_cm2"), strict=True):
        assert [row[column] for row in body["predictions"]] == onnx_predict(model, LFP_X).tolist()
    described = client.get("/models").json()
    assert described["datasets"] == {"electrode": ["graphite", "si_gra", "nmc", "lfp"],
                                     "gdl": ["gdl200", "gdl1000"]}
    lfp = next(m for m in described["models"] if m["name"] == "density_lfp_onnx")
    assert lfp["endpoints"] == ["POST /predict/electrode (chemistry=lfp)", "POST /predict/density_lfp_onnx"]
    assert described["ready"] is True and described["missing"] == {}
    assert metrics.sample(metrics.MODEL_INFO, model="density_lfp_onnx", version="1") == 1
    openapi = client.get("/docs.json").json()
    chemistry = openapi["components"]["schemas"]["ElectrodeRequest"]["properties"]["chemistry"]
    assert "lfp" in chemistry["examples"], chemistry
    assert _originals_answer(client) == expected

    write_bundle(ORIGINAL, bundle)  # retired
    wait_for(lambda: "lfp" not in _electrode_datasets(client), timeout=POLL + 10, what="lfp to leave")
    gone = client.post("/predict/electrode", json={"chemistry": "lfp", "rows": _rows(LFP_X)})
    assert gone.status_code == 400
    assert "'lfp'" in gone.text and "served electrode datasets: graphite, si_gra, nmc" in gone.text
    assert client.get("/models").json()["datasets"]["electrode"] == ["graphite", "si_gra", "nmc"]
    assert metrics.sample(metrics.MODEL_INFO, model="density_lfp_onnx", version="1") == 0
    assert client.get("/readyz").status_code == 200
    assert _originals_answer(client) == expected


def _rewrite_contract(bundle: Path, name: str, text: str) -> None:
    """Replace a bundle entry's contract file with `text`, keeping the manifest's checksum consistent (a broken
    contract, not a tampered file)."""
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    entry = next(e for e in manifest["models"] if e["name"] == name)
    (bundle / entry["contract"]).write_text(text)
    entry["contract_sha256"] = sha256_bytes(text.encode())
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest))


@pytest.mark.parametrize("breakage", ["schema-invalid contract", "unusable contract", "corrupt onnx"])
def test_a_broken_new_model_is_refused_and_counted_while_the_rest_keeps_serving(
        client: TestClient, bundle: Path, breakage: str) -> None:
    density, mass = lfp_models()
    if breakage == "corrupt onnx":
        density = corrupt_onnx(density)
    elif breakage == "unusable contract":
        density = invalid_contract(density)
    write_bundle([*ORIGINAL, density, mass], bundle)
    if breakage == "schema-invalid contract":
        _rewrite_contract(bundle, "density_lfp_onnx", json.dumps({"schema_version": 2, "name": "density_lfp_onnx"}))
    failures = metrics.sample(metrics.MODEL_RELOAD_FAILURES, model="density_lfp_onnx")
    wait_for(lambda: "mass_loading_lfp_onnx" in _served(client), timeout=POLL + 10, what="the good newcomer")
    wait_for(lambda: metrics.sample(metrics.MODEL_RELOAD_FAILURES, model="density_lfp_onnx") == failures + 1,
             timeout=POLL + 10, what="the broken newcomer to be refused")
    time.sleep(POLL * 4)  # refused once per revision, not at every poll
    assert metrics.sample(metrics.MODEL_RELOAD_FAILURES, model="density_lfp_onnx") == failures + 1
    assert "density_lfp_onnx" not in _served(client)

    described = client.get("/models").json()
    reason = {"schema-invalid contract": "does not match schema", "unusable contract": "physical range",
              "corrupt onnx": "onnxruntime cannot load"}[breakage]
    assert reason in described["missing"]["density_lfp_onnx"], described["missing"]
    assert described["ready"] is True, "a newcomer that fails must not make the service unready"
    assert metrics.sample(metrics.CATALOGUE_MODELS, state="missing") == 1
    assert metrics.sample(metrics.CATALOGUE_MODELS, state="served") == len(ORIGINAL) + 1
    assert client.get("/readyz").status_code == 200
    response = client.post("/predict/electrode", json={"chemistry": "lfp", "rows": _rows(LFP_X)})
    assert response.status_code == 503 and "density_lfp_onnx" in response.text
    single = client.post("/predict/mass_loading_lfp_onnx", json={"rows": _rows(LFP_X)})
    assert single.status_code == 200, single.text
    assert _originals_answer(client) == _expected_originals()


def test_readiness_is_every_model_present_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("CELLMFG_BUNDLE", str(tmp_path))
    monkeypatch.setenv("CELLMFG_POLL_SECONDS", str(POLL))
    broken = corrupt_onnx(next(m for m in ORIGINAL if m.name == "density_si_gra_onnx"))
    write_bundle([m if m.name != broken.name else broken for m in ORIGINAL], tmp_path)
    with TestClient(in_process_app()) as client:
        assert client.get("/readyz").status_code == 503, "a model present at start and not loaded: not ready"
        assert "density_si_gra_onnx" in client.get("/models").json()["missing"]
        response = client.post("/predict/electrode", json={"chemistry": "si_gra",
                                                           "rows": example_rows("electrode", "si_gra", 1)})
        assert response.status_code == 503 and "density_si_gra_onnx" in response.text
        write_bundle([m for m in ORIGINAL if m.name != broken.name], tmp_path)  # retired: no longer expected
        wait_for(lambda: client.get("/readyz").status_code == 200, timeout=POLL + 10, what="ready after retiring")
        # The chemistry keeps its other model: answered with the targets it has, the answer says which.
        answer = client.post("/predict/electrode", json={"chemistry": "si_gra",
                                                         "rows": example_rows("electrode", "si_gra", 2)}).json()
        assert set(answer["models"]) == {"mass_loading"}
        assert set(answer["predictions"][0]) == {"mass_loading_mg_cm2", "in_domain", "out_of_domain", "prediction_id"}

    monkeypatch.setenv("CELLMFG_REQUIRED_MODELS", "density_si_gra_onnx")
    with TestClient(in_process_app()) as client:
        assert client.get("/readyz").status_code == 503, "a required model is missing"
        assert "not offered by bundle" in client.get("/models").json()["missing"]["density_si_gra_onnx"]
    empty = tmp_path / "empty"
    write_bundle([custom_model("density", "lfp", LFP_RANGES)], empty)
    store = ModelStore(BundleSource(empty))
    assert not store.ready, "nothing read yet"
    store.load_all()
    assert store.ready


def test_a_model_with_its_own_features_and_target_is_served_by_name(client: TestClient, bundle: Path) -> None:
    ranges = {"am_wt_pct": (88.0, 95.0), "calender_temperature_c": (20.0, 90.0)}
    porosity = custom_model("porosity", "lfp", ranges, units={"calender_temperature_c": "°C"}, level=0.35,
                            relative_quantile=5.0)
    write_bundle([*ORIGINAL, porosity], bundle)
    wait_for(lambda: "porosity_lfp_onnx" in _served(client), timeout=POLL + 10, what="porosity_lfp_onnx")
    x = np.array([[90.0, 30.0], [94.0, 85.0]])
    rows = [{"am_wt_pct": 90.0, "calender_temperature_c": 30.0}, {"am_wt_pct": 94.0, "calender_temperature_c": 85.0}]
    response = client.post("/predict/porosity_lfp_onnx", json={"rows": rows, "interval": True})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["models"] == {"porosity": {"name": "porosity_lfp_onnx", "version": "1", "alias": "champion"}}
    assert [row["porosity"] for row in answer["predictions"]] == onnx_predict(porosity, x).tolist()
    # a lab's own target has no physical range in the contract: the interval is not clipped
    low, high = answer["predictions"][0]["interval"]["porosity"]
    assert low < 0 < high
    assert answer["intervals"]["porosity"]["relative_quantile"] == 5.0
    described = next(m for m in client.get("/models").json()["models"] if m["name"] == "porosity_lfp_onnx")
    assert described["endpoints"] == ["POST /predict/porosity_lfp_onnx"]

    bad = client.post("/predict/porosity_lfp_onnx",
                      json={"rows": [{"am_wt_pct": 101.0, "roll_gap_um": 3.0}]})
    assert bad.status_code == 400
    messages = [d["msg"] for d in bad.json()["detail"]]
    assert any("am_wt_pct = 101.0" in m and "[0, 100] wt%" in m for m in messages), messages
    assert any("'calender_temperature_c' is missing" in m for m in messages), messages
    assert any("unknown feature 'roll_gap_um'" in m for m in messages), messages
    unknown = client.post("/predict/porosity_nmc_onnx", json={"rows": rows})
    assert unknown.status_code == 404 and "porosity_lfp_onnx" in unknown.text and "density_nmc_onnx" in unknown.text
    # the paper's models are served by name too
    one = client.post("/predict/density_nmc_onnx", json={"rows": example_rows("electrode", "nmc", 3)})
    nmc = next(m for m in ORIGINAL if m.name == "density_nmc_onnx")
    expected = onnx_predict(nmc, in_range_rows("nmc", 3)).tolist()
    assert [r["density_g_cm3"] for r in one.json()["predictions"]] == expected


def test_intervals_are_clipped_to_the_targets_physical_range(bundle: Path) -> None:
    wide = [custom_model("mass_loading", "lfp", LFP_RANGES, relative_quantile=3.0),
            custom_model("tortuosity", "wide", DATASETS["gdl200"].ranges, kind="gdl", relative_quantile=3.0)]
    write_bundle([*ORIGINAL, *wide], bundle)
    store = ModelStore(BundleSource(bundle))
    store.load_all()
    predictor = Predictor(store, Explainers(), Settings(bundle=bundle))
    loading = predictor.predict("electrode", "lfp", _rows(LFP_X), interval=True)
    for row in loading["predictions"]:
        low, high = row["interval"]["mass_loading_mg_cm2"]
        assert low == 0.0 and high == pytest.approx(row["mass_loading_mg_cm2"] * 4)
    gdl_x = in_range_rows("gdl200", 4)
    tortuosity = predictor.predict("gdl", "wide", _rows(gdl_x, "gdl"), interval=True)
    for row in tortuosity["predictions"]:
        assert row["interval"]["tortuosity"][0] == 1.0, "a tortuosity is never below 1"
    with pytest.raises(RequestRejectedError) as error:
        predictor.predict("gdl", "gdl500", _rows(gdl_x, "gdl"))
    assert error.value.status == 400 and "gdl200, gdl1000, wide" in error.value.message


def test_the_registry_catalogue_is_every_onnx_model_holding_the_alias(tmp_path: Path) -> None:
    uri = sqlite_tracking_uri(tmp_path)
    artifacts = tmp_path / "artifacts"
    density, mass = lfp_models()
    register_model(uri, density, artifact_root=artifacts)
    version = register_model(uri, mass, alias="challenger", artifact_root=artifacts)
    keras = LoadedModel(name="density_lfp", version="1", alias="champion", contract=density.contract,
                        onnx_bytes=density.onnx_bytes)  # a Keras-named model holding champion is not served
    register_model(uri, keras, artifact_root=artifacts)
    source = RegistrySource(uri, "champion")
    assert source.catalogue() == {"density_lfp_onnx": "1"}
    assert RegistrySource(uri, "challenger").catalogue() == {"mass_loading_lfp_onnx": version}
    store = ModelStore(source)
    store.load_all()
    assert [m.name for m in store.models()] == ["density_lfp_onnx"] and store.ready
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=uri, registry_uri=uri).delete_registered_model_alias("density_lfp_onnx", "champion")
    store.poll_once()
    assert store.models() == [] and store.catalogue.datasets("electrode") == []


def test_pinned_names_keep_the_closed_catalogue(bundle: Path) -> None:
    write_bundle([*ORIGINAL, *lfp_models()], bundle)
    store = ModelStore(BundleSource(bundle), SERVED_MODEL_NAMES)
    store.load_all()
    assert sorted(m.name for m in store.models()) == sorted(SERVED_MODEL_NAMES) and store.ready
