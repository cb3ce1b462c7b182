"""Service internals without HTTP: settings, schemas, model loading and hot swap, the prediction path, SHAP."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from cellmfg.contract import LoadedModel, write_bundle
from cellmfg.domain import DATASETS, TASKS, feature_columns
from service.cli import serve, server_environment
from service.engine import metrics
from service.engine.config import SERVED_MODEL_NAMES, ConfigError, Settings, served_name
from service.engine.errors import RequestRejectedError
from service.engine.explain import Explainers
from service.engine.model_store import ModelLoadError, ModelStore, build_served
from service.engine.predict import Predictor
from service.engine.sources import BundleSource, SourceUnavailableError, open_source
from service.formats.schemas import PAPER_CHEMISTRIES, PAPER_GDL_DATASETS, ElectrodeRow, GdlRow
from testkit.fakes import fake_model, fake_models, in_range_rows, nan_model, onnx_predict, write_fake_bundle

TASK_BY_NAME = {f"{t.model_name}_onnx": t for t in TASKS}


@pytest.fixture(scope="module")
def store(bundle: Path) -> ModelStore:
    store = ModelStore(BundleSource(bundle), SERVED_MODEL_NAMES)
    store.load_all()
    return store


@pytest.fixture(scope="module")
def explainers(store: ModelStore) -> Explainers:
    return Explainers()


@pytest.fixture(scope="module")
def predictor(store: ModelStore) -> Predictor:
    return Predictor(store, Explainers(), Settings(bundle=Path("unused")))


def _rows(dataset: str, x: np.ndarray) -> list[dict[str, float]]:
    columns = feature_columns(DATASETS[dataset].kind)
    return [dict(zip(columns, map(float, row), strict=True)) for row in x]


# ---------------------------------------------------------------------------------------------------------------
# Settings, schemas, names


def test_settings_need_a_model_source() -> None:
    with pytest.raises(ConfigError, match=r"CELLMFG_BUNDLE.*MLFLOW_TRACKING_URI"):
        Settings.from_env({})


@pytest.mark.parametrize(("key", "value", "fragment"), [
    ("CELLMFG_POLL_SECONDS", "soon", "not a valid float"),
    ("CELLMFG_POLL_SECONDS", "-1", "at least 0"),
    ("CELLMFG_ORT_THREADS", "0", "at least 1"),
    ("CELLMFG_MAX_ROWS", "1.5", "not a valid int"),
])
def test_settings_name_the_bad_variable(tmp_path: Path, key: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=key) as error:
        Settings.from_env({"CELLMFG_BUNDLE": str(tmp_path), key: value})
    assert fragment in str(error.value)


def test_settings_defaults(tmp_path: Path) -> None:
    settings = Settings.from_env({"CELLMFG_BUNDLE": str(tmp_path)})
    assert (settings.alias, settings.poll_seconds, settings.ort_threads, settings.max_rows) == (
        "champion", 30.0, 1, 10_000)


def test_request_schemas_follow_the_domain() -> None:
    # The service validates rows against these and feeds them to the nets in this order.
    # (plus the client's optional sample_id and group_id, which the prediction ledger stores and no net sees)
    assert list(ElectrodeRow.__annotations__) == [*feature_columns("electrode"), "sample_id", "group_id"]
    assert list(GdlRow.__annotations__) == [*feature_columns("gdl"), "sample_id", "group_id"]
    # Any served dataset is accepted (the open catalogue); the paper's are the examples.
    assert set(PAPER_CHEMISTRIES) == {n for n, s in DATASETS.items() if s.kind == "electrode"}
    assert set(PAPER_GDL_DATASETS) == {n for n, s in DATASETS.items() if s.kind == "gdl"}
    assert sorted(SERVED_MODEL_NAMES) == sorted(TASK_BY_NAME)
    assert served_name("density", "nmc") == "density_nmc_onnx"


# ---------------------------------------------------------------------------------------------------------------
# Loading and verification


def test_every_model_loads_with_explicit_threads(store: ModelStore) -> None:
    assert store.ready and store.problems() == {}
    for model in store.models():
        assert model.session.get_session_options().intra_op_num_threads == 1
        assert model.version == "1" and model.alias == "champion"


def test_a_model_that_predicts_nan_is_refused() -> None:
    model = nan_model(TASKS[0])
    with pytest.raises(ModelLoadError, match="non-finite predictions"):
        build_served(model, model.name, 1, "test", "1")


def test_a_graph_that_does_not_match_its_contract_is_refused() -> None:
    electrode, gdl = fake_model(TASKS[0]), fake_model(TASKS[2])
    # A 5-input GDL graph under a 6-feature electrode contract whose checksum matches the bytes.
    contract = electrode.contract.model_copy(update={"onnx_sha256": gdl.contract.onnx_sha256})
    swapped = LoadedModel(name=electrode.name, version="1", alias="champion", contract=contract,
                          onnx_bytes=gdl.onnx_bytes)
    with pytest.raises(ModelLoadError, match="input shape"):
        build_served(swapped, electrode.name, 1, "test", "1")


def test_a_model_under_the_wrong_name_is_refused() -> None:
    model = fake_model(TASKS[0])
    with pytest.raises(ModelLoadError, match="expected model 'density_nmc_onnx'"):
        build_served(model, "density_nmc_onnx", 1, "test", "1")


def test_registry_is_preferred_and_an_unreachable_one_falls_back_to_the_bundle(
        bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)  # open_source pins it; restored after the test
    dead = "http://127.0.0.1:9"  # the discard port: connection refused at once
    source = open_source(Settings(bundle=bundle, tracking_uri=dead))
    assert isinstance(source, BundleSource)
    with pytest.raises(SourceUnavailableError, match=r"127\.0\.0\.1:9.*CELLMFG_BUNDLE"):
        open_source(Settings(tracking_uri=dead))


def _served_versions(store: ModelStore) -> dict[str, str]:
    return {m.name: m.version for m in store.models()}


def test_bundle_rewrite_is_hot_swapped_and_a_bad_candidate_is_not(tmp_path: Path) -> None:
    write_fake_bundle(tmp_path)
    store = ModelStore(BundleSource(tmp_path), SERVED_MODEL_NAMES)
    store.load_all()
    assert store.poll_once() == []
    name = "density_si_gra_onnx"
    reloads = metrics.sample(metrics.MODEL_RELOADS, model=name)
    failures = metrics.sample(metrics.MODEL_RELOAD_FAILURES, model=name)

    task = TASK_BY_NAME[name]
    others = [m for m in fake_models() if m.name != name]
    write_bundle([*others, fake_model(task, version="2", salt=1)], tmp_path)
    old = store.get(name)
    assert store.poll_once() == [name]
    new = store.get(name)
    assert old is not None and new is not None and new.version == "2"
    assert metrics.sample(metrics.MODEL_RELOADS, model=name) == reloads + 1
    assert metrics.sample(metrics.MODEL_INFO, model=name, version="1") == 0
    assert metrics.sample(metrics.MODEL_INFO, model=name, version="2") == 1
    # The replaced model still answers for whoever holds it (a request in flight).
    assert np.isfinite(old.predict(old.background.astype(np.float32))).all()

    write_bundle([*others, nan_model(task, version="3")], tmp_path)
    assert store.poll_once() == []
    assert store.get(name) is new, "a candidate that fails verification must not replace the served model"
    assert metrics.sample(metrics.MODEL_RELOAD_FAILURES, model=name) == failures + 1
    store.poll_once()
    assert metrics.sample(metrics.MODEL_RELOAD_FAILURES, model=name) == failures + 1, "rejected once per revision"
    assert _served_versions(store)[name] == "2" and store.ready


def test_poller_thread_swaps_within_the_interval(tmp_path: Path) -> None:
    import time

    write_fake_bundle(tmp_path)
    store = ModelStore(BundleSource(tmp_path), SERVED_MODEL_NAMES)
    store.load_all()
    store.start_polling(0.2)
    try:
        write_fake_bundle(tmp_path, version="7", salt=3)
        deadline = time.monotonic() + 5
        while set(_served_versions(store).values()) != {"7"} and time.monotonic() < deadline:
            time.sleep(0.05)
        assert set(_served_versions(store).values()) == {"7"}
    finally:
        store.stop()


# ---------------------------------------------------------------------------------------------------------------
# The prediction path


@pytest.mark.parametrize("name", SERVED_MODEL_NAMES)
def test_predictions_equal_the_onnx_models_own(predictor: Predictor, name: str) -> None:
    task = TASK_BY_NAME[name]
    x = in_range_rows(task.dataset, 64, seed=11)
    answer = predictor.predict(DATASETS[task.dataset].kind, task.dataset, _rows(task.dataset, x))
    model = next(m for m in fake_models() if m.name == name)
    expected = onnx_predict(model, x)
    got = np.array([row[task.target.column] for row in answer["predictions"]])
    np.testing.assert_array_equal(got, expected)
    assert answer["models"][task.target.task] == {"name": name, "version": "1", "alias": "champion"}


def test_in_domain_flags_and_ranges(predictor: Predictor) -> None:
    spec = DATASETS["nmc"]
    columns = feature_columns("electrode")
    low = {c: spec.ranges[c][0] for c in columns}
    high = {c: spec.ranges[c][1] for c in columns}
    rows = [
        dict(low),  # the training minimum itself is inside (0.27 is not exact in float32: compared in float64)
        dict(high),
        {**low, "roll_gap_um": 250.0},
        {**high, "am_wt_pct": 80.0, "comma_gap_um": 401.0},
    ]
    answer = predictor.predict("electrode", "nmc", rows)["predictions"]
    assert [r["in_domain"] for r in answer] == [True, True, False, False]
    assert answer[0]["out_of_domain"] == [] and answer[1]["out_of_domain"] == []
    assert answer[2]["out_of_domain"] == [{"feature": "roll_gap_um", "value": 250.0, "min": 20.0, "max": 206.0}]
    assert [(o["feature"], o["value"], o["min"], o["max"]) for o in answer[3]["out_of_domain"]] == [
        ("am_wt_pct", 80.0, 85.0, 97.5), ("comma_gap_um", 401.0, 50.0, 400.0)]


def test_out_of_domain_rows_are_counted_per_model_and_feature(predictor: Predictor) -> None:
    row = {c: DATASETS["si_gra"].ranges[c][0] for c in feature_columns("electrode")}
    before = metrics.sample(metrics.OUT_OF_DOMAIN_ROWS, model="mass_loading_si_gra_onnx", feature="roll_gap_um")
    rows_before = metrics.sample(metrics.PREDICTED_ROWS, model="mass_loading_si_gra_onnx", version="1")
    predictor.predict("electrode", "si_gra", [{**row, "roll_gap_um": 500.0}] * 3 + [row])
    after = metrics.sample(metrics.OUT_OF_DOMAIN_ROWS, model="mass_loading_si_gra_onnx", feature="roll_gap_um")
    assert after == before + 3
    assert metrics.sample(metrics.PREDICTED_ROWS, model="mass_loading_si_gra_onnx", version="1") == rows_before + 4


def test_intervals_contain_the_prediction_and_follow_the_conformal_quantile(predictor: Predictor,
                                                                          store: ModelStore) -> None:
    x = in_range_rows("gdl1000", 20, seed=3)
    answer = predictor.predict("gdl", "gdl1000", _rows("gdl1000", x), interval=True)["predictions"]
    q = store.get("tortuosity_gdl1000_onnx").contract.conformal.relative_quantile  # type: ignore[union-attr]
    for row in answer:
        low, high = row["interval"]["tortuosity"]
        assert low < row["tortuosity"] < high
        assert math.isclose((high - low) / 2, abs(row["tortuosity"]) * q, rel_tol=1e-12)
    plain = predictor.predict("gdl", "gdl1000", _rows("gdl1000", x))["predictions"]
    assert all("interval" not in row and "explanation" not in row for row in plain)


def test_batches_over_the_limit_are_refused_with_the_limit(store: ModelStore) -> None:
    predictor = Predictor(store, Explainers(), Settings(bundle=Path("unused"), max_rows=5))
    rows = _rows("gdl200", in_range_rows("gdl200", 6))
    with pytest.raises(RequestRejectedError) as error:
        predictor.predict("gdl", "gdl200", rows)
    assert error.value.status == 413 and "the limit is 5 rows per request" in error.value.message
    assert len(predictor.predict("gdl", "gdl200", rows[:5])["predictions"]) == 5


def test_a_missing_model_is_a_503_naming_it(tmp_path: Path) -> None:
    # Pinned to the paper's eight, from a bundle without one of them: a required model not loaded.
    write_bundle([m for m in fake_models() if m.name != "tortuosity_gdl1000_onnx"], tmp_path)
    store = ModelStore(BundleSource(tmp_path), SERVED_MODEL_NAMES)
    store.load_all()
    assert not store.ready and "not offered by bundle" in store.problems()["tortuosity_gdl1000_onnx"]
    predictor = Predictor(store, Explainers(), Settings(bundle=tmp_path))
    with pytest.raises(RequestRejectedError) as error:
        predictor.predict("gdl", "gdl1000", _rows("gdl1000", in_range_rows("gdl1000", 1)))
    assert error.value.status == 503 and "tortuosity_gdl1000_onnx" in error.value.message


# ---------------------------------------------------------------------------------------------------------------
# SHAP


def _brute_force_shapley(model: LoadedModel, x: np.ndarray, background: np.ndarray) -> tuple[float, np.ndarray]:
    """Interventional Shapley values by enumerating every coalition, independent of shap."""
    m = len(x)

    def value(coalition: tuple[int, ...]) -> float:
        z = background.copy()
        z[:, list(coalition)] = x[list(coalition)]
        return float(onnx_predict(model, z).mean())

    phi = np.zeros(m)
    for i in range(m):
        others = [j for j in range(m) if j != i]
        for size in range(m):
            weight = math.factorial(size) * math.factorial(m - size - 1) / math.factorial(m)
            for subset in itertools.combinations(others, size):
                phi[i] += weight * (value((*subset, i)) - value(subset))
    return value(()), phi


@pytest.mark.parametrize(("dataset", "kind"), [("nmc", "electrode"), ("gdl200", "gdl")])
def test_explanations_add_up_and_are_exact_shapley_values(store: ModelStore, explainers: Explainers,
                                                          dataset: str, kind: Any) -> None:
    predictor = Predictor(store, explainers, Settings(bundle=Path("unused")))
    x = in_range_rows(dataset, 5, seed=21)
    x[0, -1] *= 1.6  # one row outside the training range: explanations still add up there
    answer = predictor.predict(kind, dataset, _rows(dataset, x), explain=True)
    for target_task, ref in answer["models"].items():
        model = next(m for m in fake_models() if m.name == ref["name"])
        background = np.asarray(model.contract.shap_background, dtype=np.float32).astype(np.float64)
        column = TASK_BY_NAME[ref["name"]].target.column
        for i, row in enumerate(answer["predictions"]):
            explanation = row["explanation"][column]
            total = explanation["base_value"] + sum(explanation["contributions"].values())
            assert abs(total - row[column]) <= 1e-4 * abs(row[column]), (target_task, i)
            assert list(explanation["contributions"]) == feature_columns(kind)
        # Base value: the mean prediction over the background; values: exact Shapley (checked on one row).
        assert math.isclose(answer["predictions"][0]["explanation"][column]["base_value"],
                            float(onnx_predict(model, background).mean()), rel_tol=1e-6)
        x_seen = x[1].astype(np.float32).astype(np.float64)
        base, phi = _brute_force_shapley(model, x_seen, background)
        got = np.array(list(answer["predictions"][1]["explanation"][column]["contributions"].values()))
        np.testing.assert_allclose(got, phi, rtol=1e-4, atol=1e-6 * abs(base))


def test_explanations_are_timed_per_model(store: ModelStore, explainers: Explainers) -> None:
    model = store.get("density_graphite_onnx")
    assert model is not None
    before = metrics.sample(metrics.EXPLAINED_ROWS, model=model.name)
    explainers.explain(model, model.background[:3])
    assert metrics.sample(metrics.EXPLAINED_ROWS, model=model.name) == before + 3
    counted = [s for f in metrics.EXPLANATION_SECONDS.collect() for s in f.samples
               if s.name.endswith("_count") and s.labels.get("model") == model.name]
    assert counted and counted[0].value >= 1


# ---------------------------------------------------------------------------------------------------------------
# cellmfg serve


def test_server_environment_sets_workers_bundle_and_alias(tmp_path: Path) -> None:
    env = server_environment(bundle=tmp_path, workers=3, alias="challenger",
                             base={"BENTOML_CONFIG_OVERRIDES": '{"api_server": {"metrics": {"enabled": true}}}'})
    assert env["CELLMFG_BUNDLE"] == str(tmp_path.resolve()) and env["CELLMFG_ALIAS"] == "challenger"
    assert '"workers": 3' in env["BENTOML_CONFIG_OVERRIDES"] and '"metrics"' in env["BENTOML_CONFIG_OVERRIDES"]


def test_cellmfg_serve_fails_fast_with_a_clear_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    app = typer.Typer()
    app.command()(serve)
    result = CliRunner().invoke(app, ["--bundle", str(tmp_path / "missing"), "--port", "1"])
    assert result.exit_code == 2
    assert "cannot start" in result.output and "missing" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(app, ["--bundle", str(empty)])
    assert result.exit_code == 2 and "no readable manifest.json" in result.output
