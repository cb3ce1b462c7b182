"""Issue 24, item 1: uncertainty that depends on the recipe.

An ensemble of adapters on one frozen base as one graph (mean and spread), its ONNX export and parity, the spread's
behaviour in and out of the training domain, normalised split-conformal intervals (coverage on synthetic noise, the
rule that keeps constant width where the spread says nothing) and the service answering the spread beside the
interval.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cellmfg.contract import Conformal, Contract, LoadedModel, sha256_bytes, write_bundle
from cellmfg.domain import DATASETS, TASKS
from training import evaluate, fit

GDL_TASK = next(t for t in TASKS if t.model_name == "tortuosity_gdl1000")
MEMBERS = 5


# ---------------------------------------------------------------------------------------------------------------
# Normalised conformal intervals (pure numpy)


def _heteroscedastic(rng: np.random.Generator, groups: int, per_group: int, informative: bool
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """y, prediction, spread and group of rows whose noise sd varies tenfold between recipes. With `informative` the
    spread is that sd (up to a constant); otherwise it is drawn independently of it."""
    sd = np.repeat(rng.uniform(0.01, 0.1, groups), per_group)  # relative sd, one per group (a recipe)
    prediction = np.repeat(rng.uniform(1.0, 3.0, groups), per_group)
    y = prediction * (1.0 + sd * rng.standard_normal(len(sd)))
    spread = 0.5 * sd * prediction if informative else \
        np.repeat(rng.uniform(0.005, 0.05, groups), per_group) * prediction
    labels = np.repeat(np.arange(groups), per_group).astype(str)
    return y, prediction, spread, labels


def test_normalised_conformal_covers_synthetic_noise_within_five_points_and_is_narrower() -> None:
    rng = np.random.default_rng(0)
    y, p, spread, groups = _heteroscedastic(rng, 4000, 1, informative=True)
    calibration = evaluate.calibrate_spread(y[:400], p[:400], spread[:400], groups[:400], 0.9)
    assert calibration is not None and calibration.uses_spread
    held_out = evaluate.held_out_spread_coverage(y[400:], p[400:], spread[400:], groups[400:], calibration.quantile,
                                                 calibration.offset, 0.0, None)
    constant = evaluate.held_out_coverage(y[400:], p[400:], groups[400:], calibration.constant_quantile, 0.0, None)
    assert abs(held_out.coverage - 0.9) <= 0.05
    assert abs(constant.coverage - 0.9) <= 0.05
    assert held_out.mean_relative_width < 0.9 * constant.mean_relative_width


def test_normalised_conformal_at_group_level_covers_whole_groups() -> None:
    """Replicates share their recipe's noise level: one score per group, and every row of a new group is covered
    at (at least) the nominal rate."""
    rng = np.random.default_rng(1)
    y, p, spread, groups = _heteroscedastic(rng, 3000, 4, informative=True)
    calibration_rows = np.isin(groups, np.arange(300).astype(str))
    calibration = evaluate.calibrate_spread(y[calibration_rows], p[calibration_rows], spread[calibration_rows],
                                            groups[calibration_rows], 0.9)
    assert calibration is not None
    test = ~calibration_rows
    held_out = evaluate.held_out_spread_coverage(y[test], p[test], spread[test], groups[test], calibration.quantile,
                                                 calibration.offset, None, None)
    assert held_out.group_coverage >= 0.85 and held_out.coverage >= 0.9


def test_a_spread_unrelated_to_the_errors_keeps_constant_width_and_says_why() -> None:
    rng = np.random.default_rng(2)
    y, p, spread, groups = _heteroscedastic(rng, 400, 1, informative=False)
    calibration = evaluate.calibrate_spread(y, p, spread, groups, 0.9)
    assert calibration is not None and not calibration.uses_spread
    assert "constant width kept" in calibration.reason()


def test_a_zero_spread_cannot_scale_an_interval() -> None:
    y = np.array([1.0, 2.0, 3.0, 4.0])
    assert evaluate.calibrate_spread(y, y * 1.1, np.zeros(4), np.arange(4).astype(str), 0.9) is None


def test_old_contracts_without_the_spread_fields_still_parse_as_constant_width() -> None:
    conformal = Conformal.model_validate_json('{"coverage": 0.9, "relative_quantile": 0.1, "n_calibration": 12}')
    assert conformal.scale == "constant" and not conformal.uses_spread()
    assert "spread_output_name" in Contract.model_fields and Contract.model_fields["spread_output_name"].default is None


# ---------------------------------------------------------------------------------------------------------------
# The ensemble graph: Keras and ONNX


def _members(rng: np.random.Generator, hidden: int, width: int) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    return [[(rng.normal(0, 0.5, (hidden, width)), rng.normal(0, 0.1, width)),
             (rng.normal(0, 0.3, (width, 1)), rng.normal(1.0, 0.1, 1))] for _ in range(MEMBERS)]


@pytest.fixture(scope="module")
def base() -> Any:
    from training import nets

    rng = np.random.default_rng(3)
    spec = DATASETS["gdl200"]
    centre = np.array([(spec.ranges[q.column][0] + spec.ranges[q.column][1]) / 2 for q in spec.features])
    width = np.array([(spec.ranges[q.column][1] - spec.ranges[q.column][0]) / 2 for q in spec.features])
    layers = [(rng.normal(0, 0.5, (len(centre), 8)), rng.normal(0, 0.1, 8)),
              (rng.normal(0, 0.3, (8, 8)), rng.normal(0, 0.1, 8)), (rng.normal(0, 0.1, (8, 1)), np.array([1.05]))]
    return nets.mlp_model(centre, width, np.ones(len(centre)), layers, "base")


def _gdl_rows(n: int, seed: int) -> np.ndarray:
    from testkit.fakes import in_range_rows

    return in_range_rows("gdl200", n, seed=seed).astype("float32")


@pytest.mark.parametrize("adapter", ["paper", "residual"])
def test_the_ensemble_graph_answers_the_members_mean_and_spread(base: Any, adapter: str) -> None:
    from training import nets

    rng = np.random.default_rng(4)
    weights_before = nets.weights_snapshot(base)
    members = _members(rng, 8, 6)
    skips = rng.uniform(0.5, 1.5, MEMBERS).tolist()
    ensemble = nets.transfer_ensemble_model(base, adapter, members, skips, "ensemble")  # type: ignore[arg-type]
    x = _gdl_rows(64, 5)
    singles = np.stack([nets.predict(nets.transfer_model(base, adapter, m, s, f"m{i}"), x)  # type: ignore[arg-type]
                        for i, (m, s) in enumerate(zip(members, skips, strict=True))])
    prediction, spread = nets.predict_with_spread(ensemble, x)
    assert spread is not None
    np.testing.assert_allclose(prediction, singles.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(spread, np.std(singles, axis=0, ddof=1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(nets.predict(ensemble, x), prediction)  # SHAP and reports read the mean
    for before, after in zip(weights_before, nets.weights_snapshot(base), strict=True):
        np.testing.assert_array_equal(before, after)  # the caller's base net is never touched


@pytest.fixture(scope="module")
def ensemble_onnx(base: Any) -> tuple[Any, bytes]:
    from registry.promote import export_onnx
    from training import nets

    members = _members(np.random.default_rng(6), 8, 6)
    ensemble = nets.transfer_ensemble_model(base, "residual", members, [1.0] * MEMBERS, "ensemble")
    return ensemble, export_onnx(ensemble, 5).SerializeToString()


def test_the_ensemble_onnx_runs_the_base_once_and_passes_the_parity_gate(ensemble_onnx: tuple[Any, bytes]) -> None:
    from registry.promote import PARITY_RTOL, parity_error

    ensemble, onnx_bytes = ensemble_onnx
    graph = onnx.load_from_string(onnx_bytes).graph
    assert [o.name for o in graph.output] == ["prediction", "spread"]
    assert parity_error(ensemble, onnx_bytes, _gdl_rows(300, 7)) <= PARITY_RTOL
    # One MatMul per base layer and two for all heads together (not one pair per member), plus the mean/spread ones.
    matmuls = sum(node.op_type in ("MatMul", "Gemm") for node in graph.node)
    assert matmuls <= 4 + 2 + 3


def test_a_broken_spread_output_fails_the_parity_gate(ensemble_onnx: tuple[Any, bytes]) -> None:
    from registry.promote import PARITY_RTOL, parity_error

    ensemble, onnx_bytes = ensemble_onnx
    model = onnx.load_from_string(onnx_bytes)
    spread_node = next(n for n in model.graph.node if "spread" in list(n.output))
    doubled = helper.make_node("Add", [spread_node.output[0] + "_pre", spread_node.output[0] + "_pre"], ["spread"])
    spread_node.output[0] = spread_node.output[0] + "_pre"
    model.graph.node.append(doubled)
    assert not parity_error(ensemble, model.SerializeToString(), _gdl_rows(50, 8)) <= PARITY_RTOL


# ---------------------------------------------------------------------------------------------------------------
# Trained ensembles: spread in and out of the domain


@pytest.mark.trains
def test_a_trained_ensemble_spreads_more_out_of_domain_than_in_it() -> None:
    from training import nets

    nets.make_deterministic(0)
    rng = np.random.default_rng(0)
    inside = rng.uniform(-1.0, 1.0, (80, 2))
    outside = rng.uniform(3.0, 4.0, (40, 2)) * rng.choice([-1.0, 1.0], (40, 2))
    x = np.vstack([inside, outside])
    y = 2.0 + np.sin(2 * x[:, 0]) + 0.5 * x[:, 1] + 0.05 * rng.standard_normal(len(x))
    y[80:] = 2.0  # never trained on (no split holds these rows); only their predictions are read
    groups = np.arange(80).astype(str)
    split = evaluate.grouped_split(groups, 0, 0.3, 2)
    run = fit.nested_nets(x, y, [split], {"scratch": [fit.Choice("scratch", 1e-2, 16)]}, 2, 150, 16, 0,
                          members=MEMBERS, ensemble_families=("scratch",))["scratch"]
    assert run.members == MEMBERS and run.spread is not None and run.out_of_fold_spread is not None
    assert run.member_layers is not None and len(run.member_layers) == MEMBERS
    spread = run.spread[0]
    assert np.all(spread[:80] > 0.0)
    assert np.median(spread[80:]) > 2.0 * np.median(spread[:80])
    # Out-of-fold spreads exist exactly where out-of-fold predictions do (the training part).
    assert np.array_equal(np.isfinite(run.out_of_fold_spread[0]), np.isin(np.arange(len(y)), split.train))


# ---------------------------------------------------------------------------------------------------------------
# The service: spread beside the interval, interval scaled by it


def _ensemble_graph(n_features: int, mean: np.ndarray, scale: np.ndarray, seed: int) -> bytes:
    """ONNX of K linear heads 1.5 + 0.05·z·W_k with outputs `prediction` (their mean) and `spread` (their sd)."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(0, 0.05, (n_features, MEMBERS)).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in [
        (mean.astype(np.float32), "mean"), (scale.astype(np.float32), "scale"), (weights, "w"),
        (np.full(MEMBERS, 1.5, np.float32), "b"), (np.full((MEMBERS, 1), 1 / MEMBERS, np.float32), "average"),
        (np.full((MEMBERS, 1), 1 / (MEMBERS - 1), np.float32), "sample")]]
    nodes = [helper.make_node("Sub", ["features", "mean"], ["centred"]),
             helper.make_node("Div", ["centred", "scale"], ["z"]),
             helper.make_node("MatMul", ["z", "w"], ["zw"]), helper.make_node("Add", ["zw", "b"], ["heads"]),
             helper.make_node("MatMul", ["heads", "average"], ["prediction"]),
             helper.make_node("Sub", ["heads", "prediction"], ["deviation"]),
             helper.make_node("Mul", ["deviation", "deviation"], ["squared"]),
             helper.make_node("MatMul", ["squared", "sample"], ["variance"]),
             helper.make_node("Sqrt", ["variance"], ["spread"])]
    graph = helper.make_graph(nodes, "fake_ensemble",
                              [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", n_features])],
                              [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["batch", 1]),
                               helper.make_tensor_value_info("spread", TensorProto.FLOAT, ["batch", 1])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="test_ensemble")
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


SPREAD_QUANTILE, SPREAD_OFFSET = 2.0, 0.01


def _ensemble_model() -> LoadedModel:
    from testkit.fakes import fake_contract

    spec = DATASETS[GDL_TASK.dataset]
    lows = np.array([spec.ranges[q.column][0] for q in spec.features])
    highs = np.array([spec.ranges[q.column][1] for q in spec.features])
    onnx_bytes = _ensemble_graph(len(lows), (lows + highs) / 2, (highs - lows) / 2, 9)
    contract = fake_contract(GDL_TASK, onnx_bytes)
    conformal = contract.conformal.model_copy(update={
        "scale": "spread", "spread_quantile": SPREAD_QUANTILE, "spread_offset": SPREAD_OFFSET, "ensemble_members": 5,
        "scale_reason": "rule: test", "constant_mean_relative_width": 0.16, "constant_measured_coverage": 0.91})
    contract = contract.model_copy(update={"spread_output_name": "spread", "conformal": conformal})
    return LoadedModel(name=contract.name, version="1", alias="champion", contract=contract, onnx_bytes=onnx_bytes)


@pytest.fixture(scope="module")
def ensemble_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from testkit.fakes import fake_models

    folder = tmp_path_factory.mktemp("ensemble_bundle")
    models = [m for m in fake_models() if m.name != f"{GDL_TASK.model_name}_onnx"] + [_ensemble_model()]
    write_bundle(models, folder)
    return folder


@pytest.fixture(scope="module")
def predictor(ensemble_bundle: Path) -> Any:
    from service.engine.config import SERVED_MODEL_NAMES, Settings
    from service.engine.explain import Explainers
    from service.engine.model_store import ModelStore
    from service.engine.predict import Predictor
    from service.engine.sources import BundleSource

    store = ModelStore(BundleSource(ensemble_bundle), SERVED_MODEL_NAMES)
    store.load_all()
    return Predictor(store, Explainers(), Settings(bundle=Path("unused")))


def _gdl1000_rows(n: int) -> tuple[np.ndarray, list[dict[str, float]]]:
    from testkit.fakes import in_range_rows

    spec = DATASETS["gdl1000"]
    x = in_range_rows("gdl1000", n, seed=11)
    return x, [dict(zip([q.column for q in spec.features], map(float, row), strict=True)) for row in x]


def test_the_service_answers_the_spread_and_scales_the_interval_by_it(predictor: Any) -> None:
    import onnxruntime as ort

    x, rows = _gdl1000_rows(30)
    answer = predictor.predict("gdl", "gdl1000", rows, interval=True)
    session = ort.InferenceSession(_ensemble_model().onnx_bytes, providers=["CPUExecutionProvider"])
    mean, spread = (a.reshape(-1).astype(float) for a in session.run(None, {"features": x.astype(np.float32)}))
    widths = []
    for row, p, s in zip(answer["predictions"], mean, spread, strict=True):
        low, high = row["interval"]["tortuosity"]
        assert row["tortuosity"] == pytest.approx(p, rel=1e-6) and row["spread"]["tortuosity"] == pytest.approx(s)
        assert row["spread"]["tortuosity"] > 0.0
        assert (high - low) / 2 == pytest.approx(SPREAD_QUANTILE * (s + SPREAD_OFFSET * abs(p)), rel=1e-9)
        widths.append((high - low) / abs(p))
    assert max(widths) > 1.5 * min(widths)  # the width follows the recipe, unlike a constant share
    summary = answer["intervals"]["tortuosity"]
    assert summary["scale"] == "spread" and summary["ensemble_members"] == 5
    assert summary["constant_mean_relative_width"] == 0.16 and summary["relative_quantile"] == 0.08
    plain = predictor.predict("gdl", "gdl1000", rows)["predictions"]
    assert all("spread" not in row and "interval" not in row for row in plain)
    explained = predictor.predict("gdl", "gdl1000", rows[:2], explain=True)["predictions"]
    for row in explained:  # SHAP explains the served mean
        explanation = row["explanation"]["tortuosity"]
        total = explanation["base_value"] + sum(explanation["contributions"].values())
        assert math.isclose(total, row["tortuosity"], rel_tol=1e-5)


def test_single_nets_keep_their_constant_interval_and_answer_no_spread(predictor: Any) -> None:
    from testkit.fakes import in_range_rows

    spec = DATASETS["nmc"]
    x = in_range_rows("nmc", 5, seed=2)
    rows = [dict(zip([q.column for q in spec.features], map(float, row), strict=True)) for row in x]
    answer = predictor.predict("electrode", "nmc", rows, interval=True)
    assert all("spread" not in row for row in answer["predictions"])
    for row in answer["predictions"]:
        low, high = row["interval"]["density_g_cm3"]
        assert (high - low) / 2 == pytest.approx(0.08 * abs(row["density_g_cm3"]), rel=1e-9)
    assert answer["intervals"]["density_g_cm3"]["scale"] == "constant"


def test_the_ledger_records_the_spread_scaled_interval_the_answer_gave(predictor: Any) -> None:
    import uuid

    from service.ledger.recording import batch_of

    x, _ = _gdl1000_rows(4)
    answer, computed = predictor.compute(predictor.answering("gdl", "gdl1000"), x, interval=True)
    batch = batch_of(computed, [uuid.uuid4() for _ in x], endpoint="/predict/gdl", dataset="gdl1000", operator=None)
    recorded = batch.outputs[0]
    assert recorded.interval_low is not None and recorded.interval_high is not None
    assert [list(pair) for pair in zip(recorded.interval_low, recorded.interval_high, strict=True)] == \
        [row["interval"]["tortuosity"] for row in answer["predictions"]]


@pytest.fixture(scope="module")
def client(ensemble_bundle: Path) -> Iterator[Any]:
    from testkit.fakes import service_client

    with service_client(ensemble_bundle) as test_client:
        yield test_client


def test_http_json_and_csv_answers_with_an_ensemble(client: Any) -> None:
    _, rows = _gdl1000_rows(3)
    body = {"dataset": "gdl1000", "rows": rows, "interval": True}
    response = client.post("/predict/gdl", json=body)
    assert response.status_code == 200, response.text
    first = response.json()["predictions"][0]
    assert set(first["spread"]) == {"tortuosity"} and first["spread"]["tortuosity"] > 0
    as_csv = client.post("/predict/gdl", json=body, headers={"Accept": "text/csv"})
    assert as_csv.status_code == 200, as_csv.text
    table = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert "tortuosity_low" in table[0] and "spread" not in table[0] and "spread_predicted" not in table[0]
    # the CSV answer carries the spread beside the interval, the same numbers as the JSON answer
    assert [float(row["tortuosity_spread"]) for row in table] == \
        [row["spread"]["tortuosity"] for row in response.json()["predictions"]]
    without_interval = client.post("/predict/gdl", json={**body, "interval": False}, headers={"Accept": "text/csv"})
    assert "tortuosity_spread" not in next(io.StringIO(without_interval.text))


def test_the_fake_ensemble_contract_checksum_matches() -> None:
    model = _ensemble_model()
    assert model.contract.onnx_sha256 == sha256_bytes(model.onnx_bytes)


# ---------------------------------------------------------------------------------------------------------------
# The protocol end to end (quick preset, no MLflow): ensembles, both intervals, the contract's figures, the export


@pytest.mark.trains
def test_a_transfer_task_trains_ensembles_and_its_contract_states_both_intervals() -> None:
    from cellmfg.dataio import load_shipped
    from cellmfg.domain import TASKS
    from registry.promote import PARITY_RTOL, export_onnx, parity_error
    from training import nets
    from training.config import load_config
    from training.jobs import input_mask_of
    from training.mlflow_log import conformal, spread_metrics

    nets.single_threaded()
    config = load_config("quick", ensemble_members=3)
    task = next(t for t in TASKS if t.model_name == "density_si_gra")
    source = fit.prepare(load_shipped("graphite"), task.target, "graphite")
    base = fit.source_task(source, config, "density_graphite").model
    data = fit.prepare(load_shipped("si_gra"), task.target, "si_gra")
    outcome = fit.target_task(data, base, source, input_mask_of(base), config, "density_si_gra")
    for method in ("transfer", "scratch", "pooled"):
        run, measured = outcome.runs[method], outcome.measured[method]
        assert run.members == 3 and run.spread is not None and np.all(run.spread >= 0.0), method
        assert measured.spread_coverage is not None and measured.chosen_coverage is not None, method
        # The chosen interval is, per split, one of the two measured ones.
        for chosen, constant, spread in zip(measured.chosen_coverage, measured.coverage, measured.spread_coverage,
                                            strict=True):
            assert chosen in (constant, spread) or (np.isnan(spread) and chosen == constant)
    single = outcome.runs["transfer_paper"]
    assert single.members == 1 and single.spread is None and outcome.measured["transfer_paper"].calibration is None
    served = conformal(outcome, "transfer", 0.9)
    assert served.ensemble_members == 3 and served.scale_reason and "rule:" in served.scale_reason
    assert served.constant_mean_relative_width == pytest.approx(float(np.mean(outcome.measured["transfer"]
                                                                              .relative_width)))
    assert served.uses_spread() == (served.scale == "spread")
    assert {"interval_spread_coverage", "interval_chosen_mean_relative_width"} <= set(
        spread_metrics(outcome.measured["transfer"], 3))
    # The registered net is the ensemble the figures describe: its mean is the first split's refit prediction.
    prediction, spread = nets.predict_with_spread(outcome.model, data.x)
    assert spread is not None and np.all(spread > 0.0)
    np.testing.assert_allclose(prediction, outcome.runs["transfer"].predictions[0], rtol=1e-4)
    np.testing.assert_allclose(spread, outcome.runs["transfer"].spread[0], rtol=1e-3, atol=1e-6)  # type: ignore[index]
    onnx_bytes = export_onnx(outcome.model, data.x.shape[1]).SerializeToString()
    assert parity_error(outcome.model, onnx_bytes, data.x.astype("float32")) <= PARITY_RTOL
