"""The HTTP API in-process: BentoML's ASGI app with its lifespan (no server process), on fake ONNX models."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from cellmfg.domain import DATASETS
from service.engine import metrics
from service.formats.schemas import EXAMPLE_INPUT, GDL_EXAMPLE_INPUT, MAX_ERRORS_REPORTED
from testkit.fakes import example_rows, fake_models, in_process_app, in_range_rows, onnx_predict, write_fake_bundle

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::PendingDeprecationWarning")


def _client(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("CELLMFG_BUNDLE", str(bundle))
    monkeypatch.setenv("CELLMFG_POLL_SECONDS", "0")
    return TestClient(in_process_app())


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    bundle = write_fake_bundle(tmp_path_factory.mktemp("bundle"))
    with pytest.MonkeyPatch.context() as monkeypatch, _client(bundle, monkeypatch) as client:
        yield client


def _post(client: TestClient, path: str, body: Any) -> Any:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


# ---------------------------------------------------------------------------------------------------------------
# Answers


def test_the_documented_example_is_answered_in_the_documented_shape(client: TestClient) -> None:
    answer = _post(client, "/predict/electrode", EXAMPLE_INPUT)
    assert answer["models"] == {
        "density": {"name": "density_nmc_onnx", "version": "1", "alias": "champion"},
        "mass_loading": {"name": "mass_loading_nmc_onnx", "version": "1", "alias": "champion"},
    }
    first, second = answer["predictions"]
    assert set(first) == {"density_g_cm3", "mass_loading_mg_cm2", "in_domain", "out_of_domain", "interval",
                          "prediction_id"}
    assert first["in_domain"] is True and first["out_of_domain"] == []
    assert second["in_domain"] is False
    assert second["out_of_domain"] == [{"feature": "roll_gap_um", "value": 250.0, "min": 20.0, "max": 206.0}]
    for row in answer["predictions"]:
        for column in ("density_g_cm3", "mass_loading_mg_cm2"):
            low, high = row["interval"][column]
            assert low < row[column] < high

    gdl = _post(client, "/predict/gdl", GDL_EXAMPLE_INPUT)
    assert gdl["models"] == {"tortuosity": {"name": "tortuosity_gdl1000_onnx", "version": "1", "alias": "champion"}}
    assert set(gdl["predictions"][0]) == {"tortuosity", "in_domain", "out_of_domain", "interval", "prediction_id"}


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_predictions_over_http_equal_the_onnx_models_own(client: TestClient, dataset: str) -> None:
    spec = DATASETS[dataset]
    x = in_range_rows(dataset, 300, seed=5)  # above the inline limit: the threaded path
    rows = example_rows(spec.kind, dataset, 300, seed=5)
    field = "chemistry" if spec.kind == "electrode" else "dataset"
    answer = _post(client, f"/predict/{spec.kind}", {field: dataset, "rows": rows})
    for target in spec.targets:
        model = next(m for m in fake_models() if m.name == f"{target.task}_{dataset}_onnx")
        got = np.array([row[target.column] for row in answer["predictions"]])
        np.testing.assert_array_equal(got, onnx_predict(model, x))


def test_explanations_over_http_add_up(client: TestClient) -> None:
    body = {**EXAMPLE_INPUT, "explain": True, "interval": False}
    response = client.post("/predict/electrode", json=body)
    assert response.status_code == 200, response.text
    for row in response.json()["predictions"]:
        assert "interval" not in row
        for column in ("density_g_cm3", "mass_loading_mg_cm2"):
            explanation = row["explanation"][column]
            assert set(explanation["contributions"]) == set(EXAMPLE_INPUT["rows"][0])
            total = explanation["base_value"] + sum(explanation["contributions"].values())
            assert abs(total - row[column]) <= 1e-4 * abs(row[column])


def test_small_explained_requests_run_on_the_event_loop_large_ones_in_a_thread(
        client: TestClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """One explained row is ~0.2 ms of work, less than a thread hop: it is answered inline, with the same values
    the threaded path gives that row inside a larger batch."""
    import anyio.to_thread

    import service.answers as module
    from service.engine.config import Settings
    from service.engine.explain import Explainers
    from service.engine.model_store import ModelStore
    from service.engine.predict import Predictor
    from service.engine.sources import BundleSource

    hops: list[str] = []
    real_run_sync = anyio.to_thread.run_sync

    async def counting_run_sync(function: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(getattr(function, "__self__", None), Predictor):  # BentoML and Starlette hop for their own
            hops.append(function.__name__)
        return await real_run_sync(function, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting_run_sync)
    # How many explained NMC rows the threshold admits, from the same estimate the service uses (the fake bundle
    # is the client's: the same models).
    bundle = write_fake_bundle(tmp_path)
    predictor = Predictor(ModelStore(BundleSource(bundle)), Explainers(), Settings(bundle=bundle))
    predictor.store.load_all()
    per_row = predictor.model_rows(predictor.answering("electrode", "nmc"), 1, True)
    assert 0 < per_row <= module.INLINE_MODEL_ROWS
    n_large = module.INLINE_MODEL_ROWS // per_row + 1
    rows = example_rows("electrode", "nmc", n_large, seed=11)
    assert predictor.model_rows(predictor.model_answering("density_nmc_onnx"), 2 * n_large,
                                True) > module.INLINE_MODEL_ROWS

    single = _post(client, "/predict/electrode", {"chemistry": "nmc", "rows": rows[:1], "explain": True})
    assert hops == []
    batch = _post(client, "/predict/electrode", {"chemistry": "nmc", "rows": rows, "explain": True})
    assert hops == ["compute_rows"]
    plain = _post(client, "/predict/electrode", {"chemistry": "nmc", "rows": rows})
    assert hops == ["compute_rows"] and len(plain["predictions"]) == n_large  # plain rows this few stay inline
    _post(client, "/predict/density_nmc_onnx", {"rows": rows[:1], "explain": True})
    _post(client, "/predict/density_nmc_onnx", {"rows": rows * 2, "explain": True})
    assert hops == ["compute_rows", "compute_model_rows"]
    for column in ("density_g_cm3", "mass_loading_mg_cm2"):
        inline, threaded = (answer["predictions"][0]["explanation"][column] for answer in (single, batch))
        assert inline["base_value"] == threaded["base_value"]
        np.testing.assert_allclose(list(inline["contributions"].values()),
                                   list(threaded["contributions"].values()), rtol=1e-12, atol=1e-15)


def test_models_lists_versions_metrics_lineage_and_ranges(client: TestClient) -> None:
    answer = client.get("/models").json()
    assert answer["ready"] is True and answer["missing"] == {}
    assert len(answer["models"]) == 8
    nmc = next(m for m in answer["models"] if m["name"] == "density_nmc_onnx")
    assert (nmc["version"], nmc["alias"], nmc["role"]) == ("1", "champion", "transfer")
    assert nmc["test_mape_pct"] == 4.2
    assert nmc["lineage"]["base_model"] == {"name": "density_graphite", "version": "1"}
    ranges = {f["name"]: (f["train_min"], f["train_max"]) for f in nmc["features"]}
    assert ranges == DATASETS["nmc"].ranges


def test_probes(client: TestClient) -> None:
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_openapi_documents_both_endpoints_with_the_shared_examples(client: TestClient) -> None:
    spec = client.get("/docs.json").json()
    assert {"/predict/electrode", "/predict/gdl", "/models", "/readyz", "/metrics"} <= set(spec["paths"])
    electrode = spec["paths"]["/predict/electrode"]["post"]
    assert electrode["requestBody"]["content"]["application/json"]["schema"]["example"] == EXAMPLE_INPUT
    gdl = spec["paths"]["/predict/gdl"]["post"]
    assert gdl["requestBody"]["content"]["application/json"]["schema"]["example"] == GDL_EXAMPLE_INPUT
    prediction = spec["components"]["schemas"]["ElectrodePrediction"]["properties"]
    assert {"density_g_cm3", "mass_loading_mg_cm2", "in_domain", "out_of_domain", "interval",
            "explanation"} <= set(prediction)
    row = spec["components"]["schemas"]["ElectrodeRow"]["properties"]["roll_gap_um"]
    assert (row["minimum"], row["maximum"]) == (0.0, 5000.0)


def test_metrics_counters_move(client: TestClient) -> None:
    labels = {"model": "tortuosity_gdl200_onnx", "version": "1"}
    requests, rows = metrics.sample(metrics.PREDICTIONS, **labels), metrics.sample(metrics.PREDICTED_ROWS, **labels)
    ood = metrics.sample(metrics.OUT_OF_DOMAIN_ROWS, model="tortuosity_gdl200_onnx", feature="thickness_um")
    body = {"dataset": "gdl200", "rows": example_rows("gdl", "gdl200", 4)}
    body["rows"][0]["thickness_um"] = 400.0
    _post(client, "/predict/gdl", body)
    _post(client, "/predict/gdl", body)
    assert metrics.sample(metrics.PREDICTIONS, **labels) == requests + 2
    assert metrics.sample(metrics.PREDICTED_ROWS, **labels) == rows + 8
    assert metrics.sample(metrics.OUT_OF_DOMAIN_ROWS, model="tortuosity_gdl200_onnx",
                          feature="thickness_um") == ood + 2
    assert metrics.sample(metrics.MODEL_INFO, model="tortuosity_gdl200_onnx", version="1", alias="champion") == 1


# ---------------------------------------------------------------------------------------------------------------
# Bad input: always a 4xx that names row, field, value and what is allowed; never a 500


def _row(**changes: Any) -> dict[str, Any]:
    return {**EXAMPLE_INPUT["rows"][0], **changes}


def _without(feature: str) -> dict[str, Any]:
    """The example row without `feature`, to append it as a raw JSON token (a repeated key is refused on its own)."""
    return {k: v for k, v in _row().items() if k != feature}


BAD_INPUTS: list[tuple[str, str | dict[str, Any], list[str]]] = [
    ("unknown chemistry", {"chemistry": "lfp", "rows": [_row()]}, ["chemistry", "'lfp'", "graphite, si_gra, nmc"]),
    ("missing chemistry", {"rows": [_row()]}, ["chemistry is missing", "graphite, si_gra, nmc"]),
    ("empty rows", {"chemistry": "nmc", "rows": []}, ["at least one row"]),
    ("rows not a list", {"chemistry": "nmc", "rows": {"a": 1}}, ["rows", "list"]),
    ("row not an object", {"chemistry": "nmc", "rows": [_row(), 5]}, ["row 1", "got 5"]),
    ("missing feature", {"chemistry": "nmc", "rows": [{k: v for k, v in _row().items() if k != "comma_gap_um"}]},
     ["row 0", "'comma_gap_um' is missing"]),
    ("unknown feature", {"chemistry": "nmc", "rows": [_row(porosity=0.3)]},
     ["row 0", "unknown feature 'porosity'", "0.3", "allowed features"]),
    ("string value", {"chemistry": "nmc", "rows": [_row(), _row(am_wt_pct="94")]},
     ["row 1", "am_wt_pct", "'94'", "[0, 100] wt%"]),
    ("boolean value", {"chemistry": "nmc", "rows": [_row(roll_speed_m_min=True)]},
     ["row 0", "roll_speed_m_min", "True", "[0, 100] m/min"]),
    ("null value", {"chemistry": "nmc", "rows": [_row(roll_gap_um=None)]}, ["row 0", "roll_gap_um", "None"]),
    ("below physical bound", {"chemistry": "nmc", "rows": [_row(roll_gap_um=-5.0)]},
     ["row 0", "roll_gap_um", "-5.0", "[0, 5000] µm"]),
    ("above physical bound", {"chemistry": "nmc", "rows": [_row(), _row(), _row(solid_content_pct=101)]},
     ["row 2", "solid_content_pct", "101", "[0, 100] %"]),
    ("NaN", '{"chemistry": "nmc", "rows": [' + json.dumps(_without("am_wt_pct"))[:-1] + ', "am_wt_pct": NaN}]}',
     ["row 0", "am_wt_pct", "nan", "finite"]),
    ("Infinity", '{"chemistry": "nmc", "rows": ['
     + json.dumps(_without("comma_gap_um"))[:-1] + ', "comma_gap_um": Infinity}]}',
     ["row 0", "comma_gap_um", "inf", "finite"]),
    ("overflowing number", '{"chemistry": "nmc", "rows": ['
     + json.dumps(_without("comma_gap_um"))[:-1] + ', "comma_gap_um": 1e400}]}',
     ["row 0", "comma_gap_um", "inf"]),
    ("explain not a boolean", {"chemistry": "nmc", "rows": [_row()], "explain": "maybe"}, ["explain", "'maybe'"]),
    ("unknown top-level field", {"chemistry": "nmc", "rows": [_row()], "model": "x"},
     ["unknown field 'model'", "chemistry, rows, explain, interval"]),
    ("not JSON", "{chemistry: nmc", ["Invalid JSON"]),
    ("JSON list", "[1, 2]", ["expected a JSON object"]),
    ("empty body", "", ["chemistry is missing"]),
]


@pytest.mark.parametrize(("case", "body", "fragments"), BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_electrode_input_is_a_4xx_that_says_what_is_wrong(client: TestClient, case: str,
                                                               body: str | dict[str, Any],
                                                               fragments: list[str]) -> None:
    if isinstance(body, str):
        response = client.post("/predict/electrode", content=body, headers={"Content-Type": "application/json"})
    else:
        response = client.post("/predict/electrode", json=body)
    assert 400 <= response.status_code < 500, (case, response.status_code, response.text)
    text = response.text.replace("\\u00b5", "µ")
    for fragment in fragments:
        assert fragment in text, (case, fragment, text)


def test_bad_gdl_input_names_dataset_and_bounds(client: TestClient) -> None:
    row = {**GDL_EXAMPLE_INPUT["rows"][0], "compression_factor": 0.99}
    response = client.post("/predict/gdl", json={"dataset": "gdl500", "rows": [row]})
    assert response.status_code == 400
    text = response.text
    assert "'gdl500'" in text and "gdl200, gdl1000" in text
    assert "row 0, compression_factor = 0.99" in text and "[0, 0.95]" in text


def test_many_problems_are_capped_but_counted(client: TestClient) -> None:
    rows = [_row(am_wt_pct=-1.0) for _ in range(50)]
    response = client.post("/predict/electrode", json={"chemistry": "nmc", "rows": rows})
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert len(detail) == MAX_ERRORS_REPORTED + 1
    assert "30 more problems" in detail[-1]["msg"]


@pytest.mark.parametrize("content_type", ["multipart/form-data; boundary=xyz", "application/x-www-form-urlencoded",
                                          "text/plain", "application/vnd.bentoml+pickle"])
def test_bodies_other_than_json_are_a_415(client: TestClient, content_type: str) -> None:
    # A malformed multipart body used to reach BentoML's multipart parser and come back as a 500.
    response = client.post("/predict/electrode", content=b"chemistry=nmc", headers={"Content-Type": content_type})
    assert response.status_code == 415, response.text
    assert "send the request body as application/json" in response.json()["error"]


def test_a_body_without_content_type_is_read_as_json(client: TestClient) -> None:
    unlabelled = client.post("/predict/gdl", content=json.dumps(GDL_EXAMPLE_INPUT).encode(), headers={})
    assert unlabelled.status_code == 200, "a body without Content-Type is read as JSON"


def test_more_rows_than_the_limit_is_a_413_naming_the_limit(client: TestClient) -> None:
    rows = example_rows("electrode", "nmc", 10_001)
    response = client.post("/predict/electrode", json={"chemistry": "nmc", "rows": rows})
    assert response.status_code == 413
    assert "10001 rows" in response.text and "the limit is 10000 rows per request" in response.text
    assert client.post("/predict/electrode", json={"chemistry": "nmc", "rows": rows[:10_000]}).status_code == 200
