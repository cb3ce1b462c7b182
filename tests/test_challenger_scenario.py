"""Scenario (issue 26) on real processes and real nets: a `cellmfg serve` follows an SQLite MLflow registry whose
density_nmc champion is a Keras transfer (quick preset, from a quickly pretrained graphite net), exported to ONNX
by `registry promote`. A drifted batch (+6 % density, a new binder lot, as in the ledger issue) is answered and
measured; `cellmfg train from-ledger --model density_nmc` reads those measurements from the service (GET /outcomes)
and trains a challenger, `registry promote --alias challenger` exports it, and the service, without a restart,
scores it in shadow on the next 100 recipes. The QC lab's measurements arrive in posts; after each one
`cellmfg registry promote --challenger density_nmc` (a separate process, reading GET /models/density_nmc/challenge)
judges: it refuses while the interval does not exclude 0 (or too few sheets are measured) and promotes once it
does; the service swaps the new champion in and its live MAPE on the drifted line is inside its test band, back at
the level the old champion had on the steady line. On a steady line a challenger that is no better is refused,
the gate saying n, the difference and its interval.

The line's measurements are the champion's prediction x the line's scatter (the generator's measured / noise-free
density for the recipe, datagen.electrode_process) x 1.06 when drifted. A quick-preset net learns NMC density only
to ~12 % test MAPE (docs/results.md: the paper preset's transfer too, 11 %), so a line measuring the generator's
physics would bury a 6 % shift in the nets' own error; measured relative to the champion, the steady line is what
the champion learned up to the line's scatter, and the drift is the one thing a retrain on the ledger can learn.
Everything is seeded (training seed, generated recipes), so the timeline is the same on every run of one machine.

The steady opposite uses the champion's own ONNX x 1.06 as the challenger (no training): on a steady line a
challenger trained from the ledger learns the champion back (it is fitted to the champion's own predictions), and a
second from-ledger run would double the cost of this module for a refusal the gate already shows here.

Cost, measured on 2 cores shared with other work: the registry fixture (pretrain + transfer + ONNX export) 48 s,
the drifted test 48 s (from-ledger, export, 3 gate runs), the steady one 25 s: 122 s for the module (the stand-in
version it replaces, on fake models with 14 gate runs, took 168 s on the same machine).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from cellmfg.domain import TARGETS, feature_columns
from testkit.processes import PROJECT_ROOT, ServerProcess, cellmfg_server, clean_env, wait_for
from testkit.registry import register_model, sqlite_tracking_uri

pytestmark = [pytest.mark.integration, pytest.mark.trains,
              pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")]

SEED = 7
DRIFT = 1.06
MODEL = "density_nmc_onnx"
CLI = str(PROJECT_ROOT / ".venv" / "bin" / "cellmfg")
BATCH = 100  # the drifted batch whose measurements train the challenger
NEXT = 100  # the next recipes, answered by the champion and scored by both
AFTER = 60  # recipes answered by the new champion
# The QC lab's posts of the next 100 measurements (n = 4, 32, 72, 100), the gate judging after each: on the drifted
# line it refuses at 4 (2 sheets, the interval includes 0) and 32 (9 sheets, fewer than it judges from) and promotes
# at 72; on the steady line it refuses at 12 and 100 (a gate run is a process start, ~5 s).
POSTS = {True: (4, 28, 40, 28), False: (12, 88)}
PORTS = {True: 3900, False: 3901}  # this file's servers (drifted, steady)


# ---------------------------------------------------------------------------------------------------------------
# The registry: a pretrained graphite net, its NMC transfer as champion


@contextmanager
def _mlflow_at(uri: str) -> Iterator[None]:
    """MLflow's process-wide state (tracking and registry URI, active experiment, and what MLflow exports to the
    environment) pointed at `uri` for in-process training, and restored after: later tests read their own stores."""
    import mlflow.tracking._model_registry.utils as registry_state
    import mlflow.tracking._tracking_service.utils as tracking_state
    import mlflow.tracking.fluent as fluent_state

    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_REGISTRY_URI")
    saved = (tracking_state._tracking_uri, registry_state._registry_uri, fluent_state._active_experiment_id,
             {k: os.environ.get(k) for k in keys})
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        yield
    finally:
        tracking_state._tracking_uri, registry_state._registry_uri, fluent_state._active_experiment_id = saved[:3]
        for key, value in saved[3].items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def champion_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow database holding density_graphite v1 (pretrained, quick preset with 2 splits and no learning curve:
    only its features matter here) and density_nmc v1, its transfer (`train transfer --preset quick`), promoted:
    density_nmc_onnx v1 @champion. Each test works on a copy of the database (the artifacts, beside it, are
    shared)."""
    import mlflow

    from cellmfg.dataio import load_shipped
    from registry import promote
    from training import jobs, nets, tracking
    from training.config import load_config

    folder = tmp_path_factory.mktemp("scenario-registry")
    uri = sqlite_tracking_uri(folder)
    density = TARGETS["density"]
    with _mlflow_at(uri):
        nets.single_threaded()
        tracking.configure()
        mlflow.set_experiment("challenger-scenario")
        source = jobs.prepare(load_shipped("graphite"), density, "graphite")
        with tracking.run("pretrain"):
            base = jobs.run_source(source, dataclasses.replace(load_config("quick", SEED), repeats=2,
                                                               learning_curve_fractions=(1.0,)), "density_graphite")
        target = jobs.prepare(load_shipped("nmc"), density, "nmc")
        with tracking.run("transfer"):
            jobs.run_target(target, jobs.BaseRef(base.model, "density_graphite", "1", "graphite", source),
                            load_config("quick", SEED), "density_nmc")
        promote.promote("density_nmc")  # the transfer beats its zero-shot base by far (~12 % vs ~60 % MAPE)
    return folder / "mlflow.db"


def _registry_copy(template: Path, folder: Path) -> str:
    shutil.copyfile(template, folder / "mlflow.db")
    return sqlite_tracking_uri(folder)


# ---------------------------------------------------------------------------------------------------------------
# The line


def _recipes(seed: int, n: int) -> tuple[list[dict[str, Any]], np.ndarray]:
    """`n` generated NMC recipes, each with its sheet as group id (a generated dataset has 63 rows in ~17 sheets, so
    as many datasets as needed, seeds from `seed` on), and the line's measured / noise-free density for each."""
    import pandas as pd

    from datagen.electrode_process import generate_electrode, process_model

    frames: list[pd.DataFrame] = []
    while sum(len(f) for f in frames) < n:
        frame = generate_electrode("nmc", seed + len(frames))
        frames.append(frame.assign(group_id=f"{seed + len(frames)}/" + frame["group_id"].astype(str)))
    frame = pd.concat(frames, ignore_index=True).head(n)
    ratio = frame["density_g_cm3"].to_numpy() / process_model(frame, "nmc")["density_g_cm3"].to_numpy()
    features = frame[feature_columns("electrode")].to_numpy(dtype=float).tolist()
    rows = [{**dict(zip(feature_columns("electrode"), values, strict=True)), "group_id": group}
            for values, group in zip(features, frame["group_id"].astype(str), strict=True)]
    return rows, ratio


def _predict(server: ServerProcess, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    answer = httpx.post(f"{server.url}/predict/electrode?shadow=true", json={"chemistry": "nmc", "rows": rows},
                        timeout=120)
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


def _model(server: ServerProcess) -> dict[str, Any] | None:
    models = httpx.get(f"{server.url}/models", timeout=10).json()["models"]
    return next((m for m in models if m["name"] == MODEL), None)


def _live(server: ServerProcess, version: str, n: int) -> dict[str, Any] | None:
    """The served model's live block once it is `version`'s with `n` outcomes (the ledger refreshes every s)."""
    model = _model(server)
    live = model["live"] if model is not None else None
    if live is None or live["version"] != version or live["n_outcomes"] < n:
        return None
    return dict(live)


def _serve(uri: str, folder: Path, drifted: bool) -> ServerProcess:
    env = clean_env(MLFLOW_TRACKING_URI=uri, BENTOML_HOME=str(folder / "bentoml"), CELLMFG_POLL_SECONDS="1",
                    CELLMFG_LEDGER_DIR=str(folder / "ledger"), CELLMFG_LEDGER_REFRESH_SECONDS="1")
    return cellmfg_server(env, folder / "server.log", port=PORTS[drifted])


def _judge(server: ServerProcess, uri: str, predictions: list[dict[str, Any]], measured: np.ndarray,
           posts: tuple[int, ...]) -> list[tuple[int, int, dict[str, Any], str]]:
    """Post the measurements in the QC lab's posts, the gate judging after each until it promotes:
    [(n posted, the gate's exit code, the service's comparison, what the gate said)]."""
    verdicts: list[tuple[int, int, dict[str, Any], str]] = []
    posted = 0
    for size in posts:
        _post(server, predictions[posted:posted + size], measured[posted:posted + size])
        posted += size
        comparison = httpx.get(f"{server.url}/models/density_nmc/challenge", timeout=30).json()
        assert comparison["n"] == posted, comparison
        gate = _gate(server, uri)
        verdicts.append((posted, gate.returncode, comparison, gate.stdout + gate.stderr))
        if gate.returncode == 0:
            break
        assert gate.returncode == 1 and f"n = {posted} measured rows" in gate.stderr, gate.stderr
    for n, code, c, _ in verdicts:
        interval = "none" if c["interval_pct"] is None else "[{:+.2f}, {:+.2f}]".format(*c["interval_pct"])
        print(f"  n = {n:3d} ({c['n_groups']:2d} sheets): MAPE champion {c['champion_mape_pct']:.2f} %, challenger "
              f"{c['challenger_mape_pct']:.2f} %, difference {c['difference_pct']:+.2f} points, 95 % interval "
              f"{interval}: {'promoted' if code == 0 else 'refused'}")
    return verdicts


# ---------------------------------------------------------------------------------------------------------------
# The scenario


def test_a_challenger_trained_from_the_drifted_ledger_is_promoted_once_its_interval_excludes_0(
        champion_registry: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cellmfg.challenge import MIN_GROUPS
    from cellmfg_cli import build

    uri = _registry_copy(champion_registry, tmp_path)
    with _serve(uri, tmp_path, drifted=True) as server:
        server.wait_ready(timeout=240)
        pid = server.process.pid if server.process is not None else None
        # A drifted batch, answered by the champion and measured.
        rows, ratio = _recipes(seed=11, n=BATCH)
        batch = _predict(server, rows)
        assert all("shadow" not in p for p in batch)  # no challenger yet
        _post(server, batch, np.array([p["density_g_cm3"] for p in batch]) * ratio * DRIFT)
        drifted_live = wait_for(lambda: _live(server, "1", BATCH), timeout=30, what="the champion's live block")

        # A challenger trained from the ledger: the service's measured rows (GET /outcomes) and the original ones.
        runner = CliRunner()
        with _mlflow_at(uri):
            trained = runner.invoke(build(), ["train", "from-ledger", "--model", "density_nmc", "--ledger-url",
                                              server.url, "--preset", "quick", "--seed", str(SEED), "--out-dir",
                                              str(tmp_path / "from-ledger"), "--json"])
            assert trained.exit_code == 0, trained.stderr
            summary = json.loads(trained.stdout.strip().splitlines()[-1])
            exported = runner.invoke(build(), ["registry", "promote", "--model", "models:/density_nmc@challenger",
                                               "--alias", "challenger"])
            assert exported.exit_code == 0, exported.stderr
        lineage = summary["lineage"]
        assert int(lineage["ledger_rows"]) + int(lineage["ledger_exact_duplicates_dropped"]) == BATCH
        assert lineage["parent_champion_onnx_version"] == "1" and lineage["trained_from"] == "ledger"
        assert _aliases(uri) == {"champion": "1", "challenger": "2"}
        # The service follows the alias: the challenger is scored in shadow from its next poll, without a restart.
        wait_for(lambda: httpx.get(f"{server.url}/models/density_nmc/challenge", timeout=10).status_code == 200,
                 timeout=60, what="the challenger loaded")

        # The next 100 recipes of the drifted line: answered by the champion, the challenger scored in shadow.
        rows, ratio = _recipes(seed=31, n=NEXT)
        answered = _predict(server, rows)
        assert all(set(p["shadow"]) == {"density_g_cm3"} for p in answered)
        measured = np.array([p["density_g_cm3"] for p in answered]) * ratio * DRIFT
        print(f"\ndrifted: challenger trained on {lineage['ledger_rows']} ledger rows + {lineage['original_rows']} "
              f"original ones (test MAPE {summary['methods']['transfer']['test_mape_pct_mean']:.2f} %); the gate:")
        verdicts = _judge(server, uri, answered, measured, POSTS[True])
        *refused, (n_promoted, code, promoted, said) = verdicts
        # Refused exactly while the interval did not exclude 0 or too few sheets were measured; promoted then.
        assert code == 0 and promoted["interval_pct"][1] < 0 and promoted["n_groups"] >= MIN_GROUPS, said
        assert refused and all(c["interval_pct"] is None or c["interval_pct"][1] >= 0 or c["n_groups"] < MIN_GROUPS
                               for _, _, c, _ in refused)
        assert _aliases(uri) == {"champion": "2", "previous": "1"}
        # The service swaps without a restart; the former challenger answers and is not shadowed.
        wait_for(lambda: (_model(server) or {}).get("version") == "2", timeout=60, what="the swap")
        assert server.process is not None and server.process.pid == pid and server.process.poll() is None
        more, more_ratio = _recipes(seed=41, n=AFTER)
        after = _predict(server, more)
        assert all(not p.get("shadow") for p in after)
        # Measured as the line measures: the old champion's prediction x the scatter x the drift.
        old = _old_champion(uri, more)
        _post(server, after, old * more_ratio * DRIFT)
        live = wait_for(lambda: _live(server, "2", AFTER), timeout=30, what="the new champion's live block")
    # The old champion on the same recipes, on the steady line and on the drifted one.
    steady_old, drifted_old = (100 * float(np.mean(np.abs(measured - old) / measured))
                               for measured in (old * more_ratio, old * more_ratio * DRIFT))
    mape, band = live["mape_last_n"]["mape_pct"], live["test_mape_upper_pct"]
    print(f"promoted at n = {n_promoted}; live MAPE of v2 {mape:.2f} % against its test band {band:.2f} %; v1 on "
          f"the same recipes: {steady_old:.2f} % steady, {drifted_old:.2f} % drifted (on the drifted batch "
          f"{drifted_live['mape_last_n']['mape_pct']:.2f} % live, against its band "
          f"{drifted_live['test_mape_upper_pct']:.2f} %)")
    assert mape < band
    # The drift is learned: the new champion is back at least half way from the drifted level to the steady one.
    assert drifted_old > steady_old + 2 and mape < steady_old + 0.5 * (drifted_old - steady_old)


def _old_champion(uri: str, rows: list[dict[str, Any]]) -> np.ndarray:
    """density_nmc_onnx v1's predictions of `rows` (what the line is measured relative to), by onnxruntime."""
    from cellmfg.contract import fetch_registered
    from testkit.fakes import served_prediction

    model = fetch_registered(uri, MODEL, "previous")
    x = np.array([[row[c] for c in feature_columns("electrode")] for row in rows])
    return np.asarray(served_prediction(model, x), dtype=float)


def test_on_a_steady_line_a_challenger_no_better_is_refused_and_the_gate_says_why(
        champion_registry: Path, tmp_path: Path) -> None:
    from cellmfg.contract import fetch_registered

    uri = _registry_copy(champion_registry, tmp_path)
    champion = fetch_registered(uri, MODEL, "champion")
    register_model(uri, _scaled(champion, DRIFT, "2"), "challenger", tmp_path / "artifacts")
    with _serve(uri, tmp_path, drifted=False) as server:
        server.wait_ready(timeout=240)
        rows, ratio = _recipes(seed=31, n=NEXT)
        answered = _predict(server, rows)
        champion_answer = np.array([p["density_g_cm3"] for p in answered])
        assert np.allclose([p["shadow"]["density_g_cm3"] for p in answered], champion_answer * DRIFT, rtol=1e-5)
        print("\nsteady: the champion x 1.06 as challenger; the gate:")
        verdicts = _judge(server, uri, answered, champion_answer * ratio, POSTS[False])
    assert all(code == 1 for _, code, _, _ in verdicts) and sum(POSTS[False]) == NEXT == verdicts[-1][0]
    last, said = verdicts[-1][2], verdicts[-1][3]
    assert last["difference_pct"] > 0 and last["interval_pct"][0] > 0, last
    assert "not promoted: the challenger is worse" in said and f"n = {NEXT} measured rows" in said, said
    assert _aliases(uri) == {"champion": "1", "challenger": "2"}  # nothing moved


def _scaled(model: Any, factor: float, version: str) -> Any:
    """`model` whose output is multiplied by `factor` (one Mul node after its graph), with its own checksum."""
    import onnx
    from onnx import helper, numpy_helper

    from cellmfg.contract import LoadedModel, sha256_bytes

    graph_model = onnx.load_from_string(model.onnx_bytes)
    graph = graph_model.graph
    output = graph.output[0].name
    for node in graph.node:
        node.output[:] = [f"{name}_unscaled" if name == output else name for name in node.output]
    graph.initializer.append(numpy_helper.from_array(np.array([factor], dtype=np.float32), "drift_factor"))
    graph.node.append(helper.make_node("Mul", [f"{output}_unscaled", "drift_factor"], [output]))
    onnx_bytes = graph_model.SerializeToString()
    contract = model.contract.model_copy(update={"onnx_sha256": sha256_bytes(onnx_bytes)})
    return LoadedModel(name=model.name, version=version, alias="challenger", contract=contract, onnx_bytes=onnx_bytes)
