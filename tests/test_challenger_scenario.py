"""Scenario (issue 26) on real processes: a `cellmfg serve` following an SQLite MLflow registry answers NMC recipes
with its champion while it scores a challenger in shadow; the QC lab's measurements arrive in small posts, and
after each one `cellmfg registry promote --challenger density_nmc` (a separate process, reading the service's
`GET /models/density_nmc/challenge`) judges. On a drifted batch (+6 % density, a new binder lot) the gate refuses
while its interval does not exclude 0 and promotes the challenger once it does; the service swaps it in without a
restart and the live MAPE of the new champion is back inside its test band. On a steady line the same challenger
is worse, and the gate refuses, saying n, the difference and the interval.

The nets are the fake ONNX models of testkit (the generator's physics unknown to them), so the line's measurements
are made relative to the champion, as in tests/test_ledger_scenario.py: measured = the champion's prediction x the
generator's measured / noise-free density for the recipe (the line's scatter) x 1.06 when drifted. The challenger is
the champion x 1.06: the model a retrain on the drifted line would give. What it does not run is the retraining
itself (`cellmfg train from-ledger`, Keras): tests/test_challenger_training.py runs that, with the same CLI gate.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from cellmfg.contract import LoadedModel, sha256_bytes
from cellmfg.domain import TASKS, feature_columns
from testkit.fakes import fake_model
from testkit.processes import PROJECT_ROOT, ServerProcess, cellmfg_server, clean_env, wait_for
from testkit.registry import register_model, sqlite_tracking_uri

pytestmark = pytest.mark.integration

DRIFT = 1.06
MODEL = "density_nmc_onnx"
CLI = str(PROJECT_ROOT / ".venv" / "bin" / "cellmfg")
NMC = [task for task in TASKS if task.dataset == "nmc"]
DENSITY = next(task for task in NMC if task.target.task == "density")


def _scaled(model: LoadedModel, factor: float, version: str) -> LoadedModel:
    """`model` whose output is multiplied by `factor` (one Mul node after its graph), with its own checksum."""
    import onnx
    from onnx import helper, numpy_helper

    graph_model = onnx.load_from_string(model.onnx_bytes)
    graph = graph_model.graph
    output = graph.output[0].name
    for node in graph.node:
        node.output[:] = [f"{name}_unscaled" if name == output else name for name in node.output]
    graph.initializer.append(numpy_helper.from_array(np.array([factor], dtype=np.float32), "drift_factor"))
    graph.node.append(helper.make_node("Mul", [f"{output}_unscaled", "drift_factor"], [output]))
    onnx_bytes = graph_model.SerializeToString()
    contract = model.contract.model_copy(update={"onnx_sha256": sha256_bytes(onnx_bytes)})
    return LoadedModel(name=model.name, version=version, alias="challenger", contract=contract,
                       onnx_bytes=onnx_bytes)


def _scatter(seed: int, n: int) -> tuple[list[dict[str, Any]], np.ndarray]:
    """`n` generated NMC recipes (with their sheet as group id; a generated dataset has 63 rows, so as many
    datasets as needed, seeds from `seed` on) and the line's measured / noise-free density for each."""
    import pandas as pd

    from datagen.electrode_process import generate_electrode, process_model

    frames: list[pd.DataFrame] = []
    while sum(len(f) for f in frames) < n:
        frame = generate_electrode("nmc", seed + len(frames))
        frames.append(frame.assign(group_id=f"{seed + len(frames)}/" + frame["group_id"].astype(str)))
    frame = pd.concat(frames, ignore_index=True).head(n)
    ratio = frame["density_g_cm3"].to_numpy() / process_model(frame, "nmc")["density_g_cm3"].to_numpy()
    features = frame[feature_columns("electrode")].to_numpy(dtype=float).tolist()
    groups = frame["group_id"].astype(str).tolist()
    rows = [{**dict(zip(feature_columns("electrode"), values, strict=True)), "group_id": group,
             "sample_id": f"{seed}/{i}"} for i, (values, group) in enumerate(zip(features, groups, strict=True))]
    assert len(rows) == n
    return rows, ratio


def _predict(server: ServerProcess, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    answer = httpx.post(f"{server.url}/predict/electrode?shadow=true", json={"chemistry": "nmc", "rows": rows},
                        timeout=60)
    assert answer.status_code == 200, answer.text
    return list(answer.json()["predictions"])


def _post(server: ServerProcess, predictions: list[dict[str, Any]], measured: np.ndarray) -> None:
    body = "prediction_id,density_g_cm3\n" + "".join(
        f"{p['prediction_id']},{float(v)!r}\n" for p, v in zip(predictions, measured, strict=True))
    posted = httpx.post(f"{server.url}/outcomes", content=body, headers={"content-type": "text/csv"}, timeout=60)
    assert posted.status_code == 200, posted.text


def _gate(server: ServerProcess, uri: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, "registry", "promote", "--challenger", "density_nmc", "--ledger-url", server.url],
                          env=clean_env(MLFLOW_TRACKING_URI=uri), cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=300, check=False)


def _aliases(uri: str) -> dict[str, str]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return {alias: str(version) for alias, version in client.get_registered_model(MODEL).aliases.items()}


@pytest.mark.parametrize("drifted", [True, False], ids=["drifted", "steady"])
def test_the_gate_promotes_a_better_challenger_only_once_its_interval_excludes_0(tmp_path: Path,
                                                                                 drifted: bool) -> None:
    uri = sqlite_tracking_uri(tmp_path)
    champions = {task.model_name: fake_model(task) for task in NMC}
    for model in champions.values():
        register_model(uri, model, "champion", tmp_path / "artifacts")
    challenger_version = register_model(uri, _scaled(champions["density_nmc"], DRIFT, "2"), "challenger",
                                        tmp_path / "artifacts")
    shift = DRIFT if drifted else 1.0
    env = clean_env(MLFLOW_TRACKING_URI=uri, BENTOML_HOME=str(tmp_path / "bentoml"), CELLMFG_POLL_SECONDS="1",
                    CELLMFG_LEDGER_DIR=str(tmp_path / "ledger"), CELLMFG_LEDGER_REFRESH_SECONDS="1")
    with cellmfg_server(env, tmp_path / "server.log") as server:
        server.wait_ready(timeout=240)
        pid = server.process.pid if server.process is not None else None
        # The next 100 recipes of the line: answered by the champion, the challenger scored in shadow.
        rows, ratio = _scatter(seed=11, n=100)
        predictions = _predict(server, rows)
        assert all(set(p["shadow"]) == {"density_g_cm3"} for p in predictions)
        champion = np.array([p["density_g_cm3"] for p in predictions])
        shadow = np.array([p["shadow"]["density_g_cm3"] for p in predictions])
        assert np.allclose(shadow, champion * DRIFT, rtol=1e-5)
        measured = champion * ratio * shift
        verdicts: list[tuple[int, int, dict[str, Any]]] = []
        posted = 0
        for size in (1, 1, 2, 4, 8, 16, 68):  # the QC lab's posts, first a punch at a time
            _post(server, predictions[posted:posted + size], measured[posted:posted + size])
            posted += size
            comparison = httpx.get(f"{server.url}/models/density_nmc/challenge", timeout=30).json()
            assert comparison["n"] == posted, comparison
            gate = _gate(server, uri)
            verdicts.append((posted, gate.returncode, comparison))
            if gate.returncode == 0:
                assert drifted, gate.stdout
                break
            assert gate.returncode == 1 and f"n = {posted} measured rows" in gate.stderr, gate.stderr
            assert _aliases(uri)["champion"] == "1"
        print("gate:", [(n, code, c["interval_pct"]) for n, code, c in verdicts])
        if not drifted:
            assert all(code == 1 for _, code, _ in verdicts) and len(verdicts) == 7
            last = verdicts[-1][2]
            assert last["difference_pct"] > 0 and last["interval_pct"][0] > 0, last
            assert _aliases(uri) == {"champion": "1", "challenger": challenger_version}
            return
        # Refused exactly while the interval did not exclude 0; promoted at the first post where it did.
        *refused, (n_promoted, code, promoted) = verdicts
        assert code == 0 and promoted["interval_pct"][1] < 0, promoted
        assert refused and all(c["interval_pct"] is None or c["interval_pct"][1] >= 0 for _, _, c in refused)
        assert _aliases(uri) == {"champion": challenger_version, "previous": "1"}
        # The service follows the alias without a restart; the former challenger answers and is not shadowed.
        wait_for(lambda: _served_version(server) == challenger_version, timeout=30, what="the swap")
        assert server.process is not None and server.process.pid == pid and server.process.poll() is None
        # The line goes on drifted: the new champion's live MAPE is back inside its test band.
        more, more_ratio = _scatter(seed=21, n=60)
        answered = _predict(server, more)
        assert all("shadow" not in p or not p["shadow"] for p in answered)
        # The new champion is the old one x 1.06, so the drifted line measures its prediction x the scatter.
        _post(server, answered, np.array([p["density_g_cm3"] for p in answered]) * more_ratio)
        live = wait_for(lambda: _live(server, challenger_version), timeout=30, what="the new champion's live block")
        print(f"promoted at n = {n_promoted}; live MAPE {live['mape_last_n']['mape_pct']:.2f} % against the band "
              f"{live['test_mape_upper_pct']:.2f} %")
        assert live["mape_last_n"]["mape_pct"] < live["test_mape_upper_pct"]


def _served_version(server: ServerProcess) -> str | None:
    models = httpx.get(f"{server.url}/models", timeout=10).json()["models"]
    return next((str(m["version"]) for m in models if m["name"] == MODEL), None)


def _live(server: ServerProcess, version: str) -> dict[str, Any] | None:
    models = httpx.get(f"{server.url}/models", timeout=10).json()["models"]
    live = next((m["live"] for m in models if m["name"] == MODEL), None)
    if live is None or live["version"] != version or live["n_outcomes"] < 60:
        return None
    return dict(live)

