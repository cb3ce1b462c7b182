"""Ensemble fakes: served models whose ONNX graph runs K small nets on one input and outputs their mean and their
standard deviation (the graph shape `training` exports for an adapter ensemble), so service features that rank by
the spread (`/suggest`) can be tested without TensorFlow. Members differ in their random weights only, so they agree
where their inputs are typical and drift apart away from the training range, as trained members do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cellmfg.contract import ONNX_SPREAD_NAME, Conformal, LoadedModel, sha256_bytes, write_bundle
from cellmfg.domain import DATASETS, TASKS, Task
from testkit.fakes import HIDDEN, OPSET, OUTPUT_NAME, _seed, fake_contract, fake_models

MEMBERS = 5
_TARGET_LEVEL = {"density": 2.0, "mass_loading": 15.0, "tortuosity": 1.5}


def build_ensemble(n_features: int, mean: np.ndarray, scale: np.ndarray, level: float, seed: int,
                   members: int = MEMBERS) -> bytes:
    """ONNX bytes: input `features` [N, F]; outputs `prediction` (members' mean) and `spread` (their standard
    deviation), each [N, 1]; every member is level · (1 + MLP((x − mean) / scale)) with its own weights."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(mean.astype(np.float32), "mean"),
             numpy_helper.from_array(scale.astype(np.float32), "scale"),
             numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1")]
    nodes = [helper.make_node("Sub", ["features", "mean"], ["centred"]),
             helper.make_node("Div", ["centred", "scale"], ["z"])]
    outputs = []
    for m in range(members):
        w1 = rng.normal(0, 1 / np.sqrt(n_features), (n_features, HIDDEN)).astype(np.float32)
        b1 = rng.normal(0, 0.1, HIDDEN).astype(np.float32)
        w2 = (rng.normal(0, 0.15 / np.sqrt(HIDDEN), (HIDDEN, 1)) * level).astype(np.float32)
        b2 = np.array([level], dtype=np.float32)
        inits += [numpy_helper.from_array(w1, f"w1_{m}"), numpy_helper.from_array(b1, f"b1_{m}"),
                  numpy_helper.from_array(w2, f"w2_{m}"), numpy_helper.from_array(b2, f"b2_{m}")]
        nodes += [helper.make_node("MatMul", ["z", f"w1_{m}"], [f"h_{m}m"]),
                  helper.make_node("Add", [f"h_{m}m", f"b1_{m}"], [f"h_{m}a"]),
                  helper.make_node("Relu", [f"h_{m}a"], [f"h_{m}"]),
                  helper.make_node("MatMul", [f"h_{m}", f"w2_{m}"], [f"y_{m}m"]),
                  helper.make_node("Add", [f"y_{m}m", f"b2_{m}"], [f"y_{m}"])]
        outputs.append(f"y_{m}")
    nodes += [helper.make_node("Concat", outputs, ["members"], axis=1),
              helper.make_node("ReduceMean", ["members"], [OUTPUT_NAME], axes=[1], keepdims=1),
              helper.make_node("Sub", ["members", OUTPUT_NAME], ["deviation"]),
              helper.make_node("Mul", ["deviation", "deviation"], ["squared"]),
              helper.make_node("ReduceMean", ["squared"], ["variance"], axes=[1], keepdims=1),
              helper.make_node("Sqrt", ["variance"], [ONNX_SPREAD_NAME])]
    graph = helper.make_graph(
        nodes, "fake_ensemble", [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", n_features])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", 1]),
         helper.make_tensor_value_info(ONNX_SPREAD_NAME, TensorProto.FLOAT, ["batch", 1])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="cellmfg-fakes")
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def fake_ensemble_model(task: Task, version: str = "1", alias: str = "champion", salt: int = 0,
                        members: int = MEMBERS) -> LoadedModel:
    """One served ensemble whose contract scales its intervals by the spread."""
    spec = DATASETS[task.dataset]
    lows = np.array([spec.ranges[q.column][0] for q in spec.features])
    highs = np.array([spec.ranges[q.column][1] for q in spec.features])
    scale = np.where(highs > lows, (highs - lows) / 2, 1.0)
    name = f"{task.model_name}_onnx"
    onnx_bytes = build_ensemble(len(spec.features), (lows + highs) / 2, scale, _TARGET_LEVEL[task.target.task],
                                _seed(name, salt + 7919), members)
    contract = fake_contract(task, onnx_bytes)
    conformal = Conformal(relative_quantile=0.08, n_calibration=20, scale="spread", ensemble_members=members,
                          spread_quantile=1.645, spread_offset=0.01,
                          scale_reason="fake: the spread is informative by construction")
    contract = contract.model_copy(update={"spread_output_name": ONNX_SPREAD_NAME, "conformal": conformal,
                                           "onnx_sha256": sha256_bytes(onnx_bytes)})
    return LoadedModel(name=name, version=version, alias=alias, contract=contract, onnx_bytes=onnx_bytes)


def write_fake_ensemble_bundle(out: Path, datasets: tuple[str, ...] = ("nmc", "gdl1000"), version: str = "1") -> Path:
    """A valid bundle of all eight fakes in which the models of `datasets` are ensembles; returns `out`."""
    ensembles = {f"{t.model_name}_onnx": fake_ensemble_model(t, version) for t in TASKS if t.dataset in datasets}
    write_bundle([ensembles.get(m.name, m) for m in fake_models(version=version)], out)
    return out


def served_model(task: Task, onnx_bytes: bytes, members: int = 1, version: str = "1") -> LoadedModel:
    """A served model around given ONNX bytes (e.g. a graph training exported): a single net (`members` 1, constant
    width interval) or an ensemble answering `spread` beside `prediction` (interval scaled by the spread), with the
    fakes' contract otherwise, so the same task can be served both ways and compared."""
    contract = fake_contract(task, onnx_bytes)
    if members > 1:
        conformal = Conformal(relative_quantile=0.08, n_calibration=20, scale="spread", ensemble_members=members,
                              spread_quantile=1.645, spread_offset=0.01,
                              scale_reason="benchmark: the spread-scaled interval, as a served ensemble answers")
        contract = contract.model_copy(update={"spread_output_name": ONNX_SPREAD_NAME, "conformal": conformal})
    return LoadedModel(name=f"{task.model_name}_onnx", version=version, alias="champion", contract=contract,
                       onnx_bytes=onnx_bytes)


def write_bundle_with(out: Path, replacements: list[LoadedModel], version: str = "1") -> Path:
    """A valid bundle of all eight fakes with the models named in `replacements` replaced; returns `out`."""
    by_name = {m.name: m for m in replacements}
    write_bundle([by_name.get(m.name, m) for m in fake_models(version=version)], out)
    return out
