"""Champion and challenger (issue 26): a promotion (the aliases `cellmfg registry promote --challenger` moves) is
followed by a running service without a restart: the former challenger answers and is no longer shadow-scored. A
challenger with another contract than the champion's is never fed the champion's rows. In process, on fake ONNX
models in an SQLite MLflow registry polled every 0.3 s. (Its own module: one in-process service at a time.)"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from cellmfg.domain import TASKS, feature_columns
from testkit.fakes import example_rows, fake_model, served_prediction, service_client
from testkit.registry import register_model, sqlite_tracking_uri

NMC = [task for task in TASKS if task.dataset == "nmc"]
DENSITY = next(task for task in NMC if task.target.task == "density")
CHAMPIONS = {task.model_name: fake_model(task, version="1") for task in NMC}
CHALLENGER = fake_model(DENSITY, version="2", alias="challenger", salt=7)


def _rows(n: int, seed: int) -> list[dict[str, Any]]:
    return [{**row, "group_id": f"sheet-{seed}-{i // 2}"} for i, row in enumerate(example_rows("electrode", "nmc", n,
                                                                                               seed=seed))]


def _x(rows: list[dict[str, Any]]) -> np.ndarray:
    return np.array([[row[c] for c in feature_columns("electrode")] for row in rows])


def _wait(check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the service did not follow the registry in time"
        time.sleep(0.2)


def test_promotion_swaps_the_champion_and_drops_the_shadow_without_restart(tmp_path: Path) -> None:
    uri = sqlite_tracking_uri(tmp_path)
    for model in CHAMPIONS.values():
        register_model(uri, model, "champion", tmp_path / "artifacts")
    version = register_model(uri, CHALLENGER, "challenger", tmp_path / "artifacts")
    # Another contract under the same name would not read the champion's rows: never shadow-scored.
    gdl = fake_model(next(task for task in TASKS if task.dataset == "gdl1000"), version="3")
    other = gdl.model_copy(update={"name": "mass_loading_nmc_onnx",
                                   "contract": gdl.contract.model_copy(update={"name": "mass_loading_nmc_onnx"})})
    register_model(uri, other, "challenger", tmp_path / "artifacts")
    rows = _rows(2, seed=5)
    bundle = tmp_path / "unused-bundle"
    bundle.mkdir()
    with service_client(bundle, poll_seconds=0.3, env={"MLFLOW_TRACKING_URI": uri}, ledger=True) as client:
        shown = client.post("/predict/electrode?shadow=true", json={"chemistry": "nmc", "rows": rows}).json()
        assert set(shown["challengers"]) == {"density"}  # the GDL-featured challenger is not fed NMC rows
        # What `cellmfg registry promote --challenger` does to the aliases.
        from mlflow import MlflowClient

        registry = MlflowClient(tracking_uri=uri, registry_uri=uri)
        registry.set_registered_model_alias("density_nmc_onnx", "previous", "1")
        registry.set_registered_model_alias("density_nmc_onnx", "champion", version)
        registry.delete_registered_model_alias("density_nmc_onnx", "challenger")

        def swapped() -> bool:
            answer = client.post("/predict/electrode?shadow=true", json={"chemistry": "nmc", "rows": rows}).json()
            return answer["models"]["density"]["version"] == version and "density" not in answer["challengers"]

        _wait(swapped)
        answer = client.post("/predict/electrode", json={"chemistry": "nmc", "rows": rows}).json()
        assert np.allclose([row["density_g_cm3"] for row in answer["predictions"]],
                           served_prediction(CHALLENGER, _x(rows)), rtol=1e-6)
        assert client.get("/models/density_nmc/challenge").status_code == 404
