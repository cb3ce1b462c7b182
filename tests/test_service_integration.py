"""A real `bentoml serve` (started through `cellmfg serve`, two workers) on models in an MLflow SQLite registry.

Checks what only a real server shows: predictions over HTTP, errors through BentoML's real stack, custom metrics
aggregated across two worker processes, and hot reload when `champion` moves, while requests keep succeeding.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cellmfg.domain import TASKS
from service.formats.schemas import EXAMPLE_INPUT
from testkit.fakes import example_rows, fake_model, fake_models, in_range_rows, onnx_predict, tampered
from testkit.processes import ServerProcess, cellmfg_server
from testkit.registry import move_alias, register_fakes, register_model, sqlite_tracking_uri

pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")]

POLL_SECONDS = 1.0
WORKERS = 2


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("registry")
    uri = sqlite_tracking_uri(folder)
    versions = register_fakes(uri, artifact_root=folder / "artifacts")
    return {"uri": uri, "folder": folder, "versions": versions}


@pytest.fixture(scope="module")
def server(registry: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("bentoml-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELLMFG_", "BENTOML_", "PROMETHEUS_"))}
    env.update({
        "MLFLOW_TRACKING_URI": registry["uri"],
        # Other tests may have exported another registry URI (mlflow.set_registry_uri does); models:/ URIs
        # resolve against it, so pin it to this registry.
        "MLFLOW_REGISTRY_URI": registry["uri"],
        "CELLMFG_POLL_SECONDS": str(POLL_SECONDS),
        # Our own BentoML home: BentoML empties its Prometheus directory at start, which must not be anyone else's.
        "BENTOML_HOME": str(home),
    })
    process = cellmfg_server(env, home / "server.log", workers=WORKERS)
    with process:
        process.wait_ready(timeout=180)
        yield process


def _post(url: str, body: Any, timeout: float = 120) -> httpx.Response:
    # A fresh connection per request, so the kernel spreads requests over both workers.
    return httpx.post(url, json=body, timeout=timeout)


def _metrics(server: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and all((k, labels[k]) in ls for k in labels))


def test_real_server_predictions_equal_the_onnx_models_own(server: ServerProcess) -> None:
    assert httpx.get(f"{server.url}/livez").status_code == 200
    for dataset, kind, field in (("si_gra", "electrode", "chemistry"), ("gdl200", "gdl", "dataset")):
        response = _post(f"{server.url}/predict/{kind}", {field: dataset, "rows": example_rows(kind, dataset, 40)})
        assert response.status_code == 200, response.text
        answer = response.json()
        x = in_range_rows(dataset, 40)
        for task, ref in answer["models"].items():
            assert ref["version"] == "1" and ref["alias"] == "champion"
            model = next(m for m in fake_models() if m.name == ref["name"])
            column = next(t.target.column for t in TASKS if t.target.task == task)
            got = np.array([row[column] for row in answer["predictions"]])
            np.testing.assert_array_equal(got, onnx_predict(model, x))


@pytest.mark.parametrize(("body", "fragments"), [
    ('{"chemistry": "nmc", "rows": [{"am_wt_pct": NaN}]}', ["row 0", "am_wt_pct", "finite"]),
    ('{"chemistry": "lfp", "rows": []}', ["'lfp'", "graphite, si_gra, nmc", "at least one row"]),
    ("not json", ["Invalid JSON"]),
])
def test_real_server_answers_bad_input_with_a_useful_4xx(server: ServerProcess, body: str,
                                                        fragments: list[str]) -> None:
    response = httpx.post(f"{server.url}/predict/electrode", content=body,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    for fragment in fragments:
        assert fragment in response.text


def test_real_server_refuses_oversized_batches_with_the_limit(server: ServerProcess) -> None:
    response = _post(f"{server.url}/predict/gdl", {"dataset": "gdl200", "rows": example_rows("gdl", "gdl200", 10_001)})
    assert response.status_code == 413 and "the limit is 10000 rows per request" in response.text


def test_custom_metrics_are_aggregated_across_both_workers(server: ServerProcess) -> None:
    model, version = "density_si_gra_onnx", "1"
    before = _metrics(server)
    body = {"chemistry": "si_gra", "rows": example_rows("electrode", "si_gra", 3)}
    body["rows"][0]["roll_gap_um"] = 300.0  # outside si_gra's 15-102 µm
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: _post(f"{server.url}/predict/electrode", body).status_code, range(40)))
    assert statuses == [200] * 40
    after = _metrics(server)
    assert _value(after, "cellmfg_predictions_total", model=model, version=version) == \
        _value(before, "cellmfg_predictions_total", model=model, version=version) + 40
    assert _value(after, "cellmfg_predicted_rows_total", model=model, version=version) == \
        _value(before, "cellmfg_predicted_rows_total", model=model, version=version) + 120
    assert _value(after, "cellmfg_out_of_domain_rows_total", model=model, feature="roll_gap_um") == \
        _value(before, "cellmfg_out_of_domain_rows_total", model=model, feature="roll_gap_um") + 40
    names = {name for name, _ in after}
    assert {"cellmfg_model_info", "cellmfg_model_reloads_total", "cellmfg_model_reload_failures_total",
            "cellmfg_explained_rows_total", "cellmfg_explanation_seconds_count",
            "bentoml_service_request_total"} <= names
    assert _value(after, "cellmfg_model_info", model=model, version="1", alias="champion") == 1
    # Both workers wrote samples: the totals above are sums over two processes, not one worker's view.
    import psutil

    # The server's own metrics directory (service.cli.bentoml_serve), as its workers were told.
    assert server.process is not None
    told = {p.environ().get("PROMETHEUS_MULTIPROC_DIR") for p in psutil.Process(server.process.pid).children()}
    directory = Path(next(d for d in told if d))
    writers = {p.stem.rsplit("_", 1)[-1] for p in directory.glob("counter_*.db")}
    assert len(writers) >= WORKERS, writers


def _version_stream(url: str, stop: threading.Event, seen: list[tuple[float, int, str]]) -> None:
    while not stop.is_set():
        try:
            response = _post(url, EXAMPLE_INPUT, timeout=30)
            version = response.json()["models"]["density"]["version"] if response.status_code == 200 else ""
            seen.append((time.monotonic(), response.status_code, version))
        except httpx.HTTPError as error:
            seen.append((time.monotonic(), 0, repr(error)))


def test_moving_champion_swaps_within_the_poll_interval_and_a_bad_version_is_refused(
        server: ServerProcess, registry: dict[str, Any]) -> None:
    uri, name = registry["uri"], "density_nmc_onnx"
    task = next(t for t in TASKS if f"{t.model_name}_onnx" == name)
    new = fake_model(task, version="2", salt=5)
    v2 = register_model(uri, new, alias=None, artifact_root=registry["folder"] / "artifacts")
    bad = register_model(uri, tampered(fake_model(task, salt=9)), alias=None,
                         artifact_root=registry["folder"] / "artifacts")
    failures_before = _value(_metrics(server), "cellmfg_model_reload_failures_total", model=name)

    seen: list[tuple[float, int, str]] = []
    stop = threading.Event()
    clients = [threading.Thread(target=_version_stream, args=(f"{server.url}/predict/electrode", stop, seen))
               for _ in range(3)]
    for client in clients:
        client.start()
    try:
        time.sleep(1.0)
        assert {v for _, _, v in seen} == {"1"}
        moved = time.monotonic()
        move_alias(uri, name, "champion", v2)
        # Switched once a run of answers (spread over both workers) all come from the new version.
        while time.monotonic() - moved < POLL_SECONDS + 15:
            recent = [v for t, _, v in seen if t > moved][-12:]
            if len(recent) == 12 and set(recent) == {v2}:
                break
            time.sleep(0.05)
        first_new = min(t for t, _, v in seen if t > moved and v == v2)
        last_old = max((t for t, _, v in seen if t > moved and v == "1"), default=moved)

        move_alias(uri, name, "champion", bad)  # a version whose contract does not match its ONNX bytes
        time.sleep(POLL_SECONDS * 4)
    finally:
        stop.set()
        for client in clients:
            client.join()

    statuses = {status for _, status, _ in seen}
    assert statuses == {200}, f"requests failed during the swaps: {[s for s in seen if s[1] != 200][:5]}"
    # Each worker polls every POLL_SECONDS; allow for fetching and verifying the new version on a busy machine.
    assert first_new - moved < POLL_SECONDS + 3, f"first answer from v{v2} after {first_new - moved:.1f} s"
    assert last_old - moved < POLL_SECONDS + 6, f"v1 still answered {last_old - moved:.1f} s after the move"
    after_bad = [v for t, _, v in seen if t > last_old + 0.5]
    assert after_bad and set(after_bad) == {v2}, "the refused version must not answer; the old one keeps serving"

    samples = _metrics(server)
    assert _value(samples, "cellmfg_model_reloads_total", model=name) == WORKERS
    assert _value(samples, "cellmfg_model_reload_failures_total", model=name) >= failures_before + WORKERS
    assert _value(samples, "cellmfg_model_info", model=name, version=v2, alias="champion") == 1
    assert _value(samples, "cellmfg_model_info", model=name, version="1", alias="champion") == 0

    answer = _post(f"{server.url}/predict/electrode", EXAMPLE_INPUT).json()
    x = np.array([list(row.values()) for row in EXAMPLE_INPUT["rows"]])
    assert [row["density_g_cm3"] for row in answer["predictions"]] == onnx_predict(new, x).tolist()
    listed = httpx.get(f"{server.url}/models").json()
    assert next(m for m in listed["models"] if m["name"] == name)["version"] == v2
    move_alias(uri, name, "champion", v2)


def test_real_server_explanations_add_up(server: ServerProcess) -> None:
    body = {"dataset": "gdl1000", "rows": example_rows("gdl", "gdl1000", 10), "explain": True}
    for _ in range(2 * WORKERS):
        response = _post(f"{server.url}/predict/gdl", body, timeout=180)
        assert response.status_code == 200, response.text
        for row in response.json()["predictions"]:
            explanation = row["explanation"]["tortuosity"]
            total = explanation["base_value"] + sum(explanation["contributions"].values())
            assert abs(total - row["tortuosity"]) <= 1e-4 * abs(row["tortuosity"])


def test_swagger_ui_and_schema_are_served(server: ServerProcess) -> None:
    assert httpx.get(f"{server.url}/").status_code == 200
    paths = httpx.get(f"{server.url}/docs.json").json()["paths"]
    assert {"/predict/electrode", "/predict/gdl", "/models"} <= set(paths)
