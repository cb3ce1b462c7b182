"""Small but real ONNX models with valid contracts, so the service can be tested before training exists.

Each fake is an MLP built with `onnx.helper` (standardise, two ReLU layers, linear head), deterministic from a
fixed seed, taking raw physical units like the real exported nets. `fake_models` gives all eight served models;
`write_fake_bundle` writes them as a bundle; `custom_model` and `lfp_models` stand for a lab's own datasets and
targets (the open catalogue); `corrupt_onnx`, `invalid_contract`, `tampered` and `nan_model` are the bad versions a
source can offer.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cellmfg.contract import (
    BaseModelRef,
    Conformal,
    Contract,
    FeatureSpec,
    Lineage,
    LoadedModel,
    Metrics,
    TargetSpec,
    now_iso,
    sha256_bytes,
    write_bundle,
)
from cellmfg.domain import DATASETS, TARGETS, TASKS, Kind, Task, feature_columns, model_name

OPSET = 17
OUTPUT_NAME = "prediction"
HIDDEN = 32
BACKGROUND_ROWS = 50
MADE_BY = "testkit/fakes.py"

# Typical target values, so fake predictions look like the quantity they stand for (and stay positive).
_TARGET_LEVEL = {"density": 2.0, "mass_loading": 15.0, "tortuosity": 1.5}


def _seed(name: str, salt: int) -> int:
    return int(sha256_bytes(f"{name}:{salt}".encode())[:8], 16)


def build_mlp(n_features: int, mean: np.ndarray, scale: np.ndarray, level: float, seed: int) -> bytes:
    """ONNX bytes of y = level + MLP((x - mean) / scale): input `features` [N, F], output `prediction` [N, 1]."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 1 / np.sqrt(n_features), (n_features, HIDDEN)).astype(np.float32)
    b1 = rng.normal(0, 0.1, HIDDEN).astype(np.float32)
    w2 = rng.normal(0, 1 / np.sqrt(HIDDEN), (HIDDEN, HIDDEN)).astype(np.float32)
    b2 = rng.normal(0, 0.1, HIDDEN).astype(np.float32)
    # A small head keeps the output within roughly ±40 % of `level`: positive, like every target here.
    w3 = (rng.normal(0, 0.25 / np.sqrt(HIDDEN), (HIDDEN, 1)) * level).astype(np.float32)
    b3 = np.array([level], dtype=np.float32)
    inits = [
        numpy_helper.from_array(mean.astype(np.float32), "mean"),
        numpy_helper.from_array(scale.astype(np.float32), "scale"),
        numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b2, "b2"),
        numpy_helper.from_array(w3, "w3"), numpy_helper.from_array(b3, "b3"),
    ]
    nodes = [
        helper.make_node("Sub", ["features", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "scale"], ["z"]),
        helper.make_node("MatMul", ["z", "w1"], ["h1m"]), helper.make_node("Add", ["h1m", "b1"], ["h1a"]),
        helper.make_node("Relu", ["h1a"], ["h1"]),
        helper.make_node("MatMul", ["h1", "w2"], ["h2m"]), helper.make_node("Add", ["h2m", "b2"], ["h2a"]),
        helper.make_node("Relu", ["h2a"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w3"], ["ym"]), helper.make_node("Add", ["ym", "b3"], [OUTPUT_NAME]),
    ]
    graph = helper.make_graph(
        nodes, "fake_mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", n_features])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", 1])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="cellmfg-fakes")
    model.ir_version = 9  # what onnxruntime releases of the last years all read
    onnx.checker.check_model(model)
    return model.SerializeToString()


def in_range_rows(dataset: str, n: int, seed: int = 0) -> np.ndarray:
    """`n` rows uniformly inside the dataset's training range, in feature order (float64)."""
    spec = DATASETS[dataset]
    rng = np.random.default_rng(seed)
    lows = np.array([spec.ranges[q.column][0] for q in spec.features])
    highs = np.array([spec.ranges[q.column][1] for q in spec.features])
    return lows + rng.random((n, len(lows))) * (highs - lows)


def fake_contract(task: Task, onnx_bytes: bytes, relative_quantile: float = 0.08) -> Contract:
    spec = DATASETS[task.dataset]
    features = [
        FeatureSpec(name=q.column, unit=q.unit, train_min=spec.ranges[q.column][0],
                    train_max=spec.ranges[q.column][1], physical_min=q.physical_min, physical_max=q.physical_max)
        for q in spec.features
    ]
    base = None
    if task.source is not None:
        base = BaseModelRef(name=model_name(task.target.task, task.source), version="1")
    name = f"{task.model_name}_onnx"
    return Contract(
        name=name, task=task.target.task, dataset=task.dataset, kind=spec.kind, role=task.role,
        target=TargetSpec(task=task.target.task, column=task.target.column, unit=task.target.unit),
        output_name=OUTPUT_NAME, features=features,
        metrics=Metrics(test_mape_pct=4.2, test_mape_pct_mean=4.5, test_mape_pct_std=0.7, n_splits=10),
        conformal=Conformal(relative_quantile=relative_quantile, n_calibration=20),
        shap_background=in_range_rows(task.dataset, BACKGROUND_ROWS, seed=_seed(name, 2)).round(4).tolist(),
        lineage=Lineage(keras_model_name=task.model_name, keras_model_version="1", run_id="fake-run",
                        base_model=base, data_sha256="0" * 64, data_rows=spec.paper_rows, git_commit="fake"),
        opset=OPSET, versions={"onnx": onnx.__version__, "fake": MADE_BY},
        onnx_sha256=sha256_bytes(onnx_bytes), created_at=now_iso(),
    )


def fake_model(task: Task, version: str = "1", alias: str = "champion", salt: int = 0) -> LoadedModel:
    """One served model; a different `salt` gives different weights (a "retrained" version)."""
    spec = DATASETS[task.dataset]
    lows = np.array([spec.ranges[q.column][0] for q in spec.features])
    highs = np.array([spec.ranges[q.column][1] for q in spec.features])
    # Constant columns (coating speed on graphite) would divide by zero: scale by 1 there, as a scaler does.
    scale = np.where(highs > lows, (highs - lows) / 2, 1.0)
    name = f"{task.model_name}_onnx"
    onnx_bytes = build_mlp(len(spec.features), (lows + highs) / 2, scale, _TARGET_LEVEL[task.target.task],
                           _seed(name, salt))
    return LoadedModel(name=name, version=version, alias=alias, contract=fake_contract(task, onnx_bytes),
                       onnx_bytes=onnx_bytes)


def nan_model(task: Task, version: str = "1", alias: str = "champion") -> LoadedModel:
    """A well-formed model with a valid checksum whose predictions are NaN: it must fail verification on load."""
    spec = DATASETS[task.dataset]
    n = len(spec.features)
    onnx_bytes = build_mlp(n, np.zeros(n), np.ones(n), float("nan"), seed=1)
    return LoadedModel(name=f"{task.model_name}_onnx", version=version, alias=alias,
                       contract=fake_contract(task, onnx_bytes), onnx_bytes=onnx_bytes)


def fake_models(version: str = "1", alias: str = "champion", salt: int = 0) -> list[LoadedModel]:
    return [fake_model(task, version, alias, salt) for task in TASKS]


def write_fake_bundle(out: Path, version: str = "1", salt: int = 0) -> Path:
    """A complete, valid bundle of all eight fakes in `out`; returns `out`."""
    write_bundle(fake_models(version=version, salt=salt), out)
    return out


@functools.cache
def in_process_app() -> Any:
    """The service's ASGI app, built once per process: BentoML registers its Prometheus metrics when the app is
    built, so a second build would register them twice. Each TestClient context runs the lifespan and so gets a
    fresh service instance reading the environment of that moment; only one context may be open at a time."""
    from service.service import CellMfgService

    service: Any = CellMfgService  # bentoml.service returns a Service object; its stubs say the class
    return service.to_asgi()


@contextlib.contextmanager
def service_client(bundle: Path, poll_seconds: float = 0, wrap: Callable[[Any], Any] = lambda app: app,
                   headers: dict[str, str] | None = None, env: dict[str, str] | None = None,
                   ledger: bool = False) -> Iterator[Any]:
    """A Starlette TestClient on the in-process service (`wrap`ped in middleware if wanted) serving `bundle` alone:
    no registry and no cellmfg setting from outside, hot reload every `poll_seconds` (0: off), plus `env`; its
    lifespan runs on entering, so the models are loaded. The prediction ledger is off (answers without
    prediction ids, comparable across requests) unless `ledger`: then an SQLite file in a folder beside the bundle."""
    import pytest
    from starlette.testclient import TestClient

    with pytest.MonkeyPatch.context() as monkeypatch:
        for key in [k for k in os.environ if k.startswith("CELLMFG_") or k == "MLFLOW_TRACKING_URI"]:
            monkeypatch.delenv(key)
        monkeypatch.setenv("CELLMFG_BUNDLE", str(bundle))
        monkeypatch.setenv("CELLMFG_POLL_SECONDS", str(poll_seconds))
        if ledger:
            monkeypatch.setenv("CELLMFG_LEDGER_DIR", str(bundle.parent / f"{bundle.name}-ledger"))
        else:
            monkeypatch.setenv("CELLMFG_LEDGER_URL", "off")
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        with TestClient(wrap(in_process_app()), headers=headers) as client:
            yield client


class OnnxReference:
    """The models' own answers from onnxruntime in this process (default session options), independent of the
    service code: the reference the tests and the soak compare the service's answers to."""

    def __init__(self, models: list[LoadedModel]) -> None:
        import onnxruntime as ort

        self.models = {m.name: m for m in models}
        self.sessions = {m.name: ort.InferenceSession(m.onnx_bytes, providers=["CPUExecutionProvider"])
                         for m in models}

    def predict(self, name: str, x: np.ndarray) -> np.ndarray:
        contract = self.models[name].contract
        out = self.sessions[name].run([contract.output_name], {contract.input_name: x.astype(np.float32)})[0]
        return np.asarray(out, dtype=np.float64).reshape(-1)


def onnx_predict(model: LoadedModel, rows: np.ndarray) -> np.ndarray:
    """`model`'s own prediction for `rows` (see `OnnxReference`)."""
    return OnnxReference([model]).predict(model.name, rows)


def served_prediction(model: LoadedModel, rows: np.ndarray) -> np.ndarray:
    """What the service answers for `rows`: the model's own prediction held to its target's physical range (a
    quick-trained net may step just past a bound, e.g. a tortuosity of 0.996; the answer then says 1)."""
    quantity = TARGETS[model.contract.target.task].quantity
    return np.clip(onnx_predict(model, rows), quantity.physical_min, quantity.physical_max)


def tampered(model: LoadedModel) -> LoadedModel:
    """The same model whose contract claims other ONNX bytes: `fetch_registered` / `load_bundle` must refuse it."""
    contract = model.contract.model_copy(update={"onnx_sha256": "0" * 64})
    return model.model_copy(update={"contract": contract})


def example_rows(kind: Kind, dataset: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """JSON-ready request rows inside the dataset's range."""
    columns = feature_columns(kind)
    return [dict(zip(columns, map(float, row), strict=True)) for row in in_range_rows(dataset, n, seed)]


# ---------------------------------------------------------------------------------------------------------------
# A lab's own datasets and targets (the open catalogue)

# An LFP-like cathode: a fourth electrode chemistry, inside the domain's physical bounds.
LFP_RANGES: dict[str, tuple[float, float]] = {
    "am_wt_pct": (88.0, 95.0), "solid_content_pct": (40.0, 55.0), "coating_speed_m_min": (0.2, 0.8),
    "comma_gap_um": (100.0, 350.0), "roll_speed_m_min": (0.3, 0.5), "roll_gap_um": (30.0, 180.0),
}


def custom_model(task: str, dataset: str, ranges: dict[str, tuple[float, float]], version: str = "1",
                 alias: str = "champion", salt: int = 0, kind: Kind = "electrode", level: float | None = None,
                 units: dict[str, str] | None = None, target_column: str | None = None,
                 relative_quantile: float = 0.08) -> LoadedModel:
    """A served model for any dataset and target: features are `ranges`' keys in order (physical bounds from the
    domain when the feature is one of ours, else [0, 10 × max]); the domain target when `task` is one."""
    from cellmfg.domain import TARGETS, all_quantities

    quantities = all_quantities(kind)
    names = list(ranges)
    lows = np.array([ranges[n][0] for n in names])
    highs = np.array([ranges[n][1] for n in names])
    scale = np.where(highs > lows, (highs - lows) / 2, 1.0)
    name = f"{task}_{dataset}_onnx"
    known = TARGETS.get(task)
    onnx_bytes = build_mlp(len(names), (lows + highs) / 2, scale,
                           level if level is not None else _TARGET_LEVEL.get(task, 1.0), _seed(name, salt))
    features = []
    for n, low, high in zip(names, lows, highs, strict=True):
        q = quantities.get(n)
        features.append(FeatureSpec(name=n, unit=q.unit if q else (units or {}).get(n, "1"), train_min=float(low),
                                    train_max=float(high), physical_min=q.physical_min if q else 0.0,
                                    physical_max=q.physical_max if q else float(10 * high)))
    rng = np.random.default_rng(_seed(name, 2))
    background = (lows + rng.random((BACKGROUND_ROWS, len(names))) * (highs - lows)).round(4).tolist()
    column = target_column or (known.column if known else task)
    contract = Contract(
        name=name, task=task, dataset=dataset, kind=kind, role="transfer",
        target=TargetSpec(task=task, column=column, unit=known.unit if known else "1"),
        output_name=OUTPUT_NAME, features=features,
        metrics=Metrics(test_mape_pct=5.0, n_splits=3),
        conformal=Conformal(relative_quantile=relative_quantile, n_calibration=20),
        shap_background=background,
        lineage=Lineage(keras_model_name=f"{task}_{dataset}", keras_model_version=version, run_id="fake-run",
                        base_model=BaseModelRef(name=f"{task}_graphite", version="1"), data_sha256="0" * 64,
                        data_rows=40, git_commit="fake"),
        opset=OPSET, versions={"onnx": onnx.__version__, "fake": MADE_BY},
        onnx_sha256=sha256_bytes(onnx_bytes), created_at=now_iso())
    return LoadedModel(name=name, version=version, alias=alias, contract=contract, onnx_bytes=onnx_bytes)


def lfp_models(version: str = "1", salt: int = 0) -> list[LoadedModel]:
    """density_lfp_onnx and mass_loading_lfp_onnx."""
    return [custom_model(task, "lfp", LFP_RANGES, version=version, salt=salt) for task in ("density", "mass_loading")]


def corrupt_onnx(model: LoadedModel) -> LoadedModel:
    """The model with ONNX bytes onnxruntime cannot read, under a contract whose checksum matches them."""
    broken = model.onnx_bytes[: len(model.onnx_bytes) // 3] + b"\x00garbage"
    contract = model.contract.model_copy(update={"onnx_sha256": sha256_bytes(broken)})
    return model.model_copy(update={"onnx_bytes": broken, "contract": contract})


def invalid_contract(model: LoadedModel) -> LoadedModel:
    """The model under a contract that parses but cannot be used: a training range outside the physical range."""
    first = model.contract.features[0]
    bad = first.model_copy(update={"train_max": first.physical_max + 1.0})
    contract = model.contract.model_copy(update={"features": [bad, *model.contract.features[1:]]})
    return model.model_copy(update={"contract": contract})
