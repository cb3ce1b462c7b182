"""Explanations: the service's exact Shapley values against `shap.explainers.Exact`, and the array machinery.

shap is the reference here (it is in the training lock, not in the serving one): the service must give the numbers
shap's Exact explainer with an Independent masker over the contract's whole background gives, on the same ONNX
model, for every served model kind.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from cellmfg.domain import TASKS, feature_columns
from service.engine import metrics
from service.engine.config import SERVED_MODEL_NAMES
from service.engine.explain import Explainers
from service.engine.model_store import ModelStore, ServedModel, build_served
from service.engine.shapley import coalition_masks, make_plan, shapley_values, shapley_weights
from service.engine.sources import BundleSource
from testkit.fakes import example_rows, fake_model, in_range_rows, write_fake_bundle
from testkit.processes import PROJECT_ROOT, ServerProcess, cellmfg_server, clean_env, wait_for

TASK_BY_NAME = {f"{t.model_name}_onnx": t for t in TASKS}
# One served model per kind: an electrode net (6 features) and a GDL net (5 features).
KINDS = {"electrode": ("density_nmc_onnx", "nmc"), "gdl": ("tortuosity_gdl1000_onnx", "gdl1000")}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    store = ModelStore(BundleSource(write_fake_bundle(tmp_path_factory.mktemp("bundle"))), SERVED_MODEL_NAMES)
    store.load_all()
    assert store.ready
    return store


def _served(store: ModelStore, kind: str) -> tuple[ServedModel, str]:
    name, dataset = KINDS[kind]
    model = store.get(name)
    assert model is not None
    return model, dataset


def _rows_seen(dataset: str, n: int, seed: int) -> np.ndarray:
    """Rows as the service explains them: float64 holding float32 values; the last one outside the training range."""
    x = in_range_rows(dataset, n, seed=seed)
    if n > 1:
        x[-1, 0] *= 1.7
    return x.astype(np.float32).astype(np.float64)


def _shap_exact(model: ServedModel, x: np.ndarray, background: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    import shap

    def predict(rows: np.ndarray) -> np.ndarray:
        return model.predict(np.asarray(rows, dtype=np.float32))

    background = model.background if background is None else background
    masker = shap.maskers.Independent(background, max_samples=len(background))
    result = shap.explainers.Exact(predict, masker)(x, silent=True)
    base = np.asarray(result.base_values, dtype=np.float64).reshape(-1)
    assert np.all(base == base[0])
    return float(base[0]), np.asarray(result.values, dtype=np.float64).reshape(x.shape)


# ---------------------------------------------------------------------------------------------------------------
# Against shap


@pytest.mark.parametrize("n", [1, 9])
@pytest.mark.parametrize("kind", ["electrode", "gdl"])
def test_values_equal_shap_exact_and_add_up_to_the_prediction(store: ModelStore, kind: str, n: int) -> None:
    model, dataset = _served(store, kind)
    x = _rows_seen(dataset, n, seed=5)
    base, values = Explainers().explain(model, x)
    shap_base, shap_values = _shap_exact(model, x)

    predictions = model.predict(x.astype(np.float32))
    scale = float(np.mean(np.abs(predictions)))  # the prediction scale: tolerances are relative to it
    assert values.shape == (n, len(feature_columns(kind)))  # type: ignore[arg-type]
    assert np.max(np.abs(shap_values)) > 1e-3 * scale  # the comparison is not between zeros
    assert abs(base - shap_base) <= 1e-6 * scale
    np.testing.assert_allclose(values, shap_values, rtol=0, atol=1e-6 * scale)
    # Additivity: base value plus contributions is the prediction, row by row.
    np.testing.assert_allclose(base + values.sum(axis=1), predictions, rtol=1e-5, atol=0)
    assert base == pytest.approx(float(model.predict(model.background.astype(np.float32)).mean()), rel=1e-12)


def test_a_background_with_repeated_values_is_evaluated_once_per_distinct_part(store: ModelStore) -> None:
    # Replicates of a recipe share most features; here pairs of rows share everything but the last two features
    # and one feature is constant. Fewer model rows, the same values as shap's mean over all background rows.
    model, dataset = _served(store, "electrode")
    background = model.background[:24].astype(np.float32).astype(np.float64)
    background[1::2, :4] = background[0::2, :4]
    background[:, 2] = background[0, 2]
    plan = make_plan(model.predict, background)
    assert plan.model_rows_per_row < (2**6 - 2) * len(background) + 1
    x = _rows_seen(dataset, 3, seed=9)
    values = shapley_values(model.predict, plan, x)
    shap_base, shap_values = _shap_exact(model, x, background)
    scale = float(np.mean(np.abs(model.predict(x.astype(np.float32)))))
    assert abs(plan.base_value - shap_base) <= 1e-6 * scale
    np.testing.assert_allclose(values, shap_values, rtol=0, atol=1e-6 * scale)


# ---------------------------------------------------------------------------------------------------------------
# The machinery


@pytest.mark.parametrize("m", [1, 2, 3, 5, 6, 8, 12])
def test_weight_matrix_is_the_shapley_formula(m: int) -> None:
    masks = coalition_masks(m)
    weights = shapley_weights(masks)
    assert masks.shape == (2**m, m) and len({tuple(row) for row in masks}) == 2**m
    for t, mask in enumerate(masks):
        size = int(mask.sum())
        for i in range(m):
            if mask[i]:  # T = S ∪ {i}: weight of S, |S| = size - 1
                expected = math.factorial(size - 1) * math.factorial(m - size) / math.factorial(m)
            else:  # T = S: minus the weight of S, |S| = size
                expected = -math.factorial(size) * math.factorial(m - size - 1) / math.factorial(m)
            assert weights[t, i] == pytest.approx(expected, rel=1e-15)
    # What makes explanations add up: the coalition sums are -1 (empty), +1 (full) and 0 otherwise.
    sums = weights.sum(axis=1)
    assert sums[0] == pytest.approx(-1) and sums[-1] == pytest.approx(1)
    np.testing.assert_allclose(sums[1:-1], 0, atol=1e-12)


def test_a_linear_model_gets_its_textbook_shapley_values() -> None:
    # For f(x) = a·x + c with independent features, phi_i = a_i (x_i - mean of the background's feature i).
    rng = np.random.default_rng(3)
    a = rng.normal(size=6)
    background = rng.normal(size=(40, 6)).astype(np.float32)
    x = rng.normal(size=(7, 6)).astype(np.float32)

    def predict(rows: np.ndarray) -> np.ndarray:
        return rows.astype(np.float64) @ a + 2.5

    plan = make_plan(predict, background)
    values = shapley_values(predict, plan, x)
    expected = a * (x.astype(np.float64) - background.astype(np.float64).mean(axis=0))
    np.testing.assert_allclose(values, expected, rtol=1e-10, atol=1e-12)
    assert plan.base_value == pytest.approx(float(predict(background).mean()), rel=1e-15)


def test_chunking_and_threads_do_not_change_the_values(store: ModelStore) -> None:
    model, dataset = _served(store, "electrode")
    x = _rows_seen(dataset, 23, seed=8)
    plan = make_plan(model.predict, model.background)
    reference = shapley_values(model.predict, plan, x, chunk_model_rows=1 << 30)  # one call for everything
    calls = []

    def counted(rows: np.ndarray) -> np.ndarray:
        calls.append(len(rows))
        return model.predict(rows)

    for chunk, threads in [(1, 1), (plan.model_rows_per_row * 4, 1), (plan.model_rows_per_row * 3, 3)]:
        calls.clear()
        values = shapley_values(counted, plan, x, chunk_model_rows=chunk, threads=threads)
        rows_per_call = max(1, chunk // plan.model_rows_per_row)
        assert len(calls) == math.ceil(len(x) / rows_per_call)  # one model call per chunk of rows
        assert sum(calls) == len(x) * plan.model_rows_per_row
        np.testing.assert_allclose(values, reference, rtol=0, atol=1e-9 * float(np.abs(reference).max()))


def test_concurrent_requests_get_their_own_answers(store: ModelStore) -> None:
    explainers = Explainers(threads=2)
    models = [_served(store, kind) for kind in KINDS]
    jobs = [(model, _rows_seen(dataset, n, seed=n)) for model, dataset in models for n in (1, 3, 40, 120)]
    expected = [explainers.explain(model, x) for model, x in jobs]
    results: dict[int, tuple[float, np.ndarray]] = {}
    start = threading.Barrier(len(jobs))

    def run(i: int) -> None:
        start.wait(timeout=30)
        for _ in range(3):
            results[i] = explainers.explain(*jobs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(results) == list(range(len(jobs)))
    for i, (base, values) in enumerate(expected):
        assert results[i][0] == base
        np.testing.assert_allclose(results[i][1], values, rtol=0, atol=1e-12)


def test_a_swapped_in_model_is_explained_against_its_own_background() -> None:
    task = TASK_BY_NAME["density_nmc_onnx"]
    old, new = (build_served(fake_model(task, version=v, salt=s), "density_nmc_onnx", 1, "test", v)
                for v, s in (("1", 0), ("2", 1)))
    explainers = Explainers()
    x = _rows_seen("nmc", 2, seed=1)
    base_old, _ = explainers.explain(old, x)
    base_new, values_new = explainers.explain(new, x)
    assert base_old != base_new
    assert base_new == pytest.approx(float(new.predict(new.background.astype(np.float32)).mean()), rel=1e-12)
    np.testing.assert_allclose(base_new + values_new.sum(axis=1), new.predict(x.astype(np.float32)), rtol=1e-5)


def test_rows_that_cannot_be_explained_are_refused(store: ModelStore) -> None:
    model, _ = _served(store, "gdl")
    plan = make_plan(model.predict, model.background)
    with pytest.raises(ValueError, match="shape"):
        shapley_values(model.predict, plan, np.zeros((2, 6)))
    with pytest.raises(ValueError, match="finite"):
        shapley_values(model.predict, plan, np.full((1, 5), np.inf))
    with pytest.raises(ValueError, match="background"):
        make_plan(model.predict, np.zeros((0, 5)))


def test_explanations_are_counted_and_timed_per_model(store: ModelStore) -> None:
    model, dataset = _served(store, "gdl")
    before = metrics.sample(metrics.EXPLAINED_ROWS, model=model.name)
    Explainers().explain(model, _rows_seen(dataset, 4, seed=2))
    assert metrics.sample(metrics.EXPLAINED_ROWS, model=model.name) == before + 4
    counted = [s for f in metrics.EXPLANATION_SECONDS.collect() for s in f.samples
               if s.name.endswith("_count") and s.labels.get("model") == model.name]
    assert counted and counted[0].value >= 1


def test_the_service_does_not_import_shap() -> None:
    # shap (with numba and llvmlite) is not in the serving lock: the service must start without it.
    code = "import sys, service.service, service.answers; sys.exit(1 if 'shap' in sys.modules else 0)"
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_service_definition_loads_no_runtime_library() -> None:
    """`bentoml serve` imports service.service twice: in its supervisor, only to read the definition, and in the
    worker. Only the worker, in the service's __init__ (service.answers), loads numpy, onnxruntime and MLflow."""
    code = ("import json, sys, service.service; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'numpy', 'onnxruntime', 'mlflow', 'scipy'} or m in {'service.answers', 'service.engine.predict'})))")
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout) == []


# ---------------------------------------------------------------------------------------------------------------
# Real models, real server


def _cellmfg(args: list[str], env: dict[str, str]) -> None:
    command = [str(Path(sys.executable).parent / "cellmfg"), *args]
    result = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=3600)
    # `promote --all` exits 1 when a gate refuses some model; the electrode NMC models are checked below.
    assert result.returncode in ((0, 1) if "promote" in args else (0,)), result.stdout[-2000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def real_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Quick-preset models trained and promoted through the CLI, exported as a bundle (CELLMFG_TEST_REAL_BUNDLE
    names an existing export-bundle directory to skip the training)."""
    given = os.environ.get("CELLMFG_TEST_REAL_BUNDLE")
    if given:
        return Path(given)
    folder = tmp_path_factory.mktemp("real")
    env = clean_env(MLFLOW_TRACKING_URI=f"sqlite:///{folder / 'mlflow.db'}", MLFLOW_DISABLE_TELEMETRY="true",
                    TF_CPP_MIN_LOG_LEVEL="3")
    _cellmfg(["train", "all", "--preset", "quick", "--no-docs", "--json"], env)
    _cellmfg(["registry", "promote", "--all", "--json"], env)
    _cellmfg(["registry", "export-bundle", "--alias", "champion", "--out", str(folder / "bundle")], env)
    return folder / "bundle"


@pytest.fixture(scope="module")
def real_server(real_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("bentoml-home")
    env = clean_env(BENTOML_HOME=str(home), CELLMFG_POLL_SECONDS="0")
    with cellmfg_server(env, home / "server.log", bundle=real_bundle) as server:
        # Not /readyz: a quick-preset transfer may miss its promotion gate; the NMC electrode models are needed.
        wait_for(lambda: {"density_nmc_onnx", "mass_loading_nmc_onnx"} <= {
            m["name"] for m in httpx.get(f"{server.url}/models", timeout=5).json()["models"]}, timeout=180,
            what="the NMC electrode models", on_timeout=server.log_tail)
        yield server


@pytest.mark.integration
@pytest.mark.trains
@pytest.mark.timeout(3600)
def test_a_10000_row_explained_request_on_real_models(real_server: ServerProcess) -> None:
    n = 10_000
    body = {"chemistry": "nmc", "rows": example_rows("electrode", "nmc", n, seed=4), "explain": True}
    started = time.perf_counter()
    response = httpx.post(f"{real_server.url}/predict/electrode", json=body, timeout=120)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.text[:2000]
    answer: dict[str, Any] = response.json()
    assert len(answer["predictions"]) == n
    columns = feature_columns("electrode")
    for column in ("density_g_cm3", "mass_loading_mg_cm2"):
        predictions = np.array([row[column] for row in answer["predictions"]])
        base = np.array([row["explanation"][column]["base_value"] for row in answer["predictions"]])
        values = np.array([[row["explanation"][column]["contributions"][c] for c in columns]
                           for row in answer["predictions"]])
        assert np.all(base == base[0])
        np.testing.assert_allclose(base + values.sum(axis=1), predictions, rtol=1e-5, atol=0)
        assert np.max(np.abs(values)) > 0
    print(f"\n10,000-row explained electrode request on real (quick-preset) models: {elapsed:.2f} s end to end")
