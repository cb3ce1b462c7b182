"""Faults: the model source unreachable at start-up and while serving, corrupt or mismatched models behind a moved
alias, and SIGTERM under load.

Fast tier: the `ModelStore` on a bundle directory, in-process. Integration tier: real `bentoml serve` processes
(started through `cellmfg serve`) and a real `mlflow server` on a free 127.0.0.1 port with its own SQLite store and
artifact folder, stopped and restarted by its PID to make the registry unreachable and bring it back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from cellmfg.contract import LoadedModel, sha256_bytes, write_bundle
from cellmfg.domain import TASKS
from service.engine import metrics
from service.engine.model_store import ModelStore
from service.formats.schemas import EXAMPLE_INPUT
from testkit.fakes import (
    example_rows,
    fake_model,
    fake_models,
    in_range_rows,
    onnx_predict,
    tampered,
    write_fake_bundle,
)
from testkit.processes import (
    ServerProcess,
    cellmfg_server,
    clean_env,
    free_port,
    metric,
    mlflow_server,
    wait_for,
)
from testkit.registry import move_alias, register_fakes, register_model

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

NAME = "density_nmc_onnx"
TASK = next(t for t in TASKS if f"{t.model_name}_onnx" == NAME)


def corrupt(model: LoadedModel, version: str) -> LoadedModel:
    """Bytes that are no ONNX graph at all, under a contract whose checksum matches them (so only loading fails)."""
    garbage = b"\x08\x07this is not an ONNX graph\x00" * 64
    contract = model.contract.model_copy(update={"onnx_sha256": sha256_bytes(garbage)})
    return model.model_copy(update={"version": version, "contract": contract, "onnx_bytes": garbage})


def mismatched(model: LoadedModel, version: str) -> LoadedModel:
    """A valid ONNX graph for another domain (5 GDL features) under this model's 6-feature contract, checksum
    matching: what a mix-up in an export pipeline looks like."""
    gdl = fake_model(next(t for t in TASKS if t.dataset == "gdl1000"))
    contract = model.contract.model_copy(update={"onnx_sha256": sha256_bytes(gdl.onnx_bytes)})
    return model.model_copy(update={"version": version, "contract": contract, "onnx_bytes": gdl.onnx_bytes})


def _bundle_with(folder: Path, replacement: LoadedModel) -> None:
    write_bundle([*(m for m in fake_models() if m.name != replacement.name), replacement], folder)


# ---------------------------------------------------------------------------------------------------------------
# In-process, on a bundle


def _version(store: ModelStore) -> str | None:
    served = store.get(NAME)
    return served.version if served is not None else None


@pytest.fixture
def bundle_store(tmp_path: Path) -> Iterator[tuple[ModelStore, Path]]:
    from service.engine.sources import BundleSource

    write_fake_bundle(tmp_path / "bundle")
    store = ModelStore(BundleSource(tmp_path / "bundle"), [NAME])
    store.load_all()
    assert store.get(NAME) is not None
    yield store, tmp_path / "bundle"
    store.stop()


@pytest.mark.parametrize(("candidate", "reason"), [
    (corrupt, "onnxruntime cannot load the ONNX graph"),
    (mismatched, "input shape"),
    (lambda m, v: tampered(m.model_copy(update={"version": v})), "does not match the contract"),
], ids=["corrupt-onnx", "mismatched-graph", "tampered-file"])
def test_a_bad_candidate_is_refused_and_the_old_model_keeps_serving(
        bundle_store: tuple[ModelStore, Path], caplog: pytest.LogCaptureFixture,
        candidate: Callable[[LoadedModel, str], LoadedModel], reason: str) -> None:
    store, folder = bundle_store
    good = fake_model(TASK)
    served = store.get(NAME)
    failures = metrics.sample(metrics.MODEL_RELOAD_FAILURES, model=NAME)
    x = in_range_rows("nmc", 20, seed=3)
    caplog.set_level(logging.INFO, logger="cellmfg")

    _bundle_with(folder, candidate(good, "2"))
    assert store.poll_once() == []
    assert store.get(NAME) is served, "the refused candidate must not replace the served model"
    assert metrics.sample(metrics.MODEL_RELOAD_FAILURES, model=NAME) == failures + 1
    refusal = next(r.getMessage() for r in caplog.records if "rejected" in r.getMessage())
    assert NAME in refusal and reason in refusal and "keeping" in refusal, refusal
    np.testing.assert_array_equal(served.predict(x.astype(np.float32)), onnx_predict(good, x))
    assert store.ready and store.problems() == {}

    _bundle_with(folder, fake_model(TASK, version="3", salt=4))  # the next good version is taken again
    assert store.poll_once() == [NAME]
    assert _version(store) == "3"


def test_an_unreachable_source_during_a_poll_keeps_serving_counts_and_recovers(
        bundle_store: tuple[ModelStore, Path], caplog: pytest.LogCaptureFixture) -> None:
    """Needs patch P2 (cellmfg_model_poll_failures_total; the outage logged once, and its end)."""
    store, folder = bundle_store
    caplog.set_level(logging.INFO, logger="cellmfg")
    served = store.get(NAME)
    polls = metrics.sample(metrics.MODEL_POLL_FAILURES, model=NAME)
    away = folder.with_name("unmounted")
    folder.rename(away)  # the bundle's volume is gone
    try:
        assert store.poll_once() == [] and store.poll_once() == []
        assert store.get(NAME) is served and store.ready
        assert metrics.sample(metrics.MODEL_POLL_FAILURES, model=NAME) == polls + 2
        assert store.last_poll_error and NAME in store.last_poll_error
        warnings = [r for r in caplog.records if "could not read" in r.getMessage()]
        assert len(warnings) == 1, "logged once when the source goes away, not at every poll"
    finally:
        away.rename(folder)
    _bundle_with(folder, fake_model(TASK, version="2", salt=2))
    assert store.poll_once() == [NAME] and _version(store) == "2"
    assert store.last_poll_error is None
    assert any("reads every revision again" in r.getMessage() for r in caplog.records)


def test_a_failed_download_is_retried_at_the_next_poll(bundle_store: tuple[ModelStore, Path]) -> None:
    """Needs patch P2: a network error while fetching says nothing about the candidate; before the patch the
    revision was refused for good and the new version was never served until the alias moved again."""
    store, folder = bundle_store
    source = store.source
    real_fetch = source.fetch
    calls = {"n": 0}

    def flaky_fetch(name: str) -> LoadedModel:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("artifact store unreachable")
        return real_fetch(name)

    source.fetch = flaky_fetch  # type: ignore[method-assign]  # this instance only
    _bundle_with(folder, fake_model(TASK, version="2", salt=6))
    assert store.poll_once() == [] and _version(store) == "1"
    assert store.poll_once() == [NAME] and _version(store) == "2", "the download is retried"


# ---------------------------------------------------------------------------------------------------------------
# Real servers: helpers


def _density(url: str) -> tuple[str, list[float]]:
    response = httpx.post(f"{url}/predict/electrode", json=EXAMPLE_INPUT, timeout=60)
    assert response.status_code == 200, response.text
    answer = response.json()
    return answer["models"]["density"]["version"], [row["density_g_cm3"] for row in answer["predictions"]]


def _reference(model: LoadedModel) -> list[float]:
    x = np.array([list(row.values()) for row in EXAMPLE_INPUT["rows"]])
    return onnx_predict(model, x).tolist()


class Link:
    """A TCP forwarder 127.0.0.1:`port` -> `upstream_port`: the network path to the registry, cut (connections
    refused, open ones reset) and restored at will, while the registry itself keeps running."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()

    def up(self) -> Link:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def down(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            connections, self._connections = self._connections, []
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked in the other thread
            listener.close()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset
                connection.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by down()
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # cut while this one was being accepted
                    client.close()
                    upstream.close()
                    return
                self._connections += [client, upstream]
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                target.sendall(data)
        for end in (source, target):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)


# ---------------------------------------------------------------------------------------------------------------
# Start-up without the registry


@pytest.mark.integration
def test_start_up_without_registry_or_bundle_fails_fast_with_a_clear_message(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    server = cellmfg_server(clean_env(MLFLOW_TRACKING_URI=dead, BENTOML_HOME=str(tmp_path / "home")),
                           tmp_path / "server.log")
    started = time.monotonic()
    with server:
        assert server.process is not None
        code = server.process.wait(timeout=120)
    seconds = time.monotonic() - started
    log = server.log_tail()
    assert code == 2, log
    assert "cannot start" in log and "unreachable" in log and dead in log and "CELLMFG_BUNDLE" in log, log
    assert "Traceback" not in log, "a clear one-line message, not a stack trace"
    print(f"\nno registry, no bundle: exit {code} after {seconds:.1f} s")


@pytest.mark.integration
def test_a_bad_token_setting_fails_start_up_fast_and_is_not_echoed(tmp_path: Path) -> None:
    """Needs patch P5: `cellmfg serve` checks the security settings before starting BentoML, whose workers would
    otherwise fail their start-up one after another."""
    bundle = write_fake_bundle(tmp_path / "bundle")
    secret = "short-secret"
    server = cellmfg_server(clean_env(CELLMFG_API_TOKEN=secret, BENTOML_HOME=str(tmp_path / "home")),
                           tmp_path / "server.log", bundle=bundle)
    with server:
        assert server.process is not None
        try:
            code = server.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running after 60 s with an unusable token:\n{server.log_tail()}")
    log = server.log_tail()
    assert code == 2 and "cannot start" in log and "CELLMFG_API_TOKEN" in log and "at least 16" in log, log
    assert secret not in log


@pytest.fixture(scope="module")
def registry_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The registry of the last test (SQLite store, local artefact folder), started when the fallback server is:
    it boots (15-30 s here) while the start-up and SIGTERM tests run, and is waited for only where it is used."""
    folder = tmp_path_factory.mktemp("mlflow")
    server = mlflow_server(folder, f"sqlite:///{folder / 'mlflow.db'}",
                           ["--default-artifact-root", (folder / "artifacts").as_uri()]).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fallback(tmp_path_factory: pytest.TempPathFactory, registry_server: ServerProcess) -> Iterator[dict[str, Any]]:
    """A server told to use an unreachable registry, with a bundle configured as the fallback."""
    folder = tmp_path_factory.mktemp("fallback")
    bundle = write_fake_bundle(folder / "bundle")
    dead = f"http://127.0.0.1:{free_port()}"
    env = clean_env(MLFLOW_TRACKING_URI=dead, CELLMFG_POLL_SECONDS="1", BENTOML_HOME=str(folder / "home"))
    server = cellmfg_server(env, folder / "server.log", bundle=bundle)
    with server:
        ready = server.wait_ready(timeout=180)
        yield {"server": server, "dead": dead, "bundle": bundle, "ready": ready}


@pytest.mark.integration
def test_start_up_with_the_registry_unreachable_serves_the_bundle(fallback: dict[str, Any]) -> None:
    server = fallback["server"]
    listing = httpx.get(f"{server.url}/models", timeout=30).json()
    assert listing["ready"] is True and listing["source"].startswith("bundle "), listing["source"]
    version, densities = _density(server.url)
    assert version == "1" and densities == _reference(fake_model(TASK))
    log = server.log_tail(20_000)
    assert "unreachable" in log and "falling back to bundle" in log and fallback["dead"] in log
    print(f"\nregistry unreachable at start: served the bundle, ready in {fallback['ready']:.1f} s")


@pytest.mark.integration
def test_sigterm_during_load_completes_in_flight_requests_then_exits_0(fallback: dict[str, Any]) -> None:
    """Runs last in this module: it stops the `fallback` server. The requests ask for explanations of 1,000 rows
    each (~0.7 s of CPU apiece, on one worker), so most of them are still being computed when the signal arrives;
    the test checks that they were, and that every one is answered in full."""
    server = fallback["server"]
    assert server.process is not None
    clients, n_rows = 8, 1000
    rows = example_rows("electrode", "nmc", n_rows, seed=1)
    expected = onnx_predict(fake_model(TASK), in_range_rows("nmc", n_rows, seed=1))
    body = json.dumps({"chemistry": "nmc", "rows": rows, "explain": True}).encode()
    results: list[tuple[float, Any]] = []
    connected = threading.Barrier(clients + 1)

    def call() -> None:
        with httpx.Client(timeout=180) as client:
            client.get(f"{server.url}/livez")  # the connection is open before the signal
            connected.wait(timeout=60)
            try:
                response: Any = client.post(f"{server.url}/predict/electrode", content=body,
                                            headers={"Content-Type": "application/json"})
            except httpx.HTTPError as error:
                response = error
            results.append((time.monotonic(), response))

    threads = [threading.Thread(target=call) for _ in range(clients)]
    for thread in threads:
        thread.start()
    connected.wait(timeout=60)
    time.sleep(0.3)  # the requests are sent and the first ones are being worked on
    signalled = time.monotonic()
    os.kill(server.process.pid, signal.SIGTERM)
    for thread in threads:
        thread.join(timeout=300)
    finished = max(done for done, _ in results) - signalled
    code = server.process.wait(timeout=120)
    exited = time.monotonic() - signalled

    statuses = [r.status_code if isinstance(r, httpx.Response) else repr(r) for _, r in results]
    assert statuses == [200] * clients, statuses
    after_signal = sum(done > signalled for done, _ in results)
    assert after_signal >= clients // 2, f"only {after_signal} of {clients} were still in flight at the signal"
    for _, response in results:
        answer = response.json()
        got = np.array([row["density_g_cm3"] for row in answer["predictions"]])
        np.testing.assert_array_equal(got, expected)
        assert all("density_g_cm3" in row["explanation"] for row in answer["predictions"])
    assert code == 0, server.log_tail()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{server.url}/livez", timeout=5)
    print(f"\nSIGTERM with {clients} explain requests of {n_rows} rows sent: {after_signal} still in flight, all "
          f"200 within {finished:.1f} s, exit {code} after {exited:.1f} s")


# ---------------------------------------------------------------------------------------------------------------
# The registry goes away while serving, comes back, and then offers bad versions


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_registry_outage_and_bad_versions_behind_a_moved_alias(registry_server: ServerProcess,
                                                               tmp_path: Path) -> None:
    """The service reaches the registry through a link this test cuts and restores (the registry keeps running,
    the test registers through its own direct path). Needs patch P2 for the poll-failure metric."""
    artifacts = tmp_path / "registered"
    registry_server.wait_ready(timeout=180, interval=0.25)
    direct = registry_server.url
    link = Link(registry_server.port).up()
    uri = f"http://127.0.0.1:{link.port}"
    server: ServerProcess | None = None
    timings: dict[str, float] = {}
    try:
        register_fakes(direct, artifact_root=artifacts)
        env = clean_env(MLFLOW_TRACKING_URI=uri, CELLMFG_POLL_SECONDS="1", BENTOML_HOME=str(tmp_path / "home"))
        server = cellmfg_server(env, tmp_path / "server.log").start()
        timings["ready"] = server.wait_ready(timeout=180)
        url = server.url
        assert httpx.get(f"{url}/models", timeout=30).json()["source"].startswith("MLflow registry")
        good = fake_model(TASK)
        assert _density(url) == ("1", _reference(good))

        # 1. The registry becomes unreachable: answers go on, unchanged; the failed checks are counted, and logged
        #    once. Meanwhile the alias moves.
        polls_before = metric(url, "cellmfg_model_poll_failures_total", model=NAME)
        link.down()
        outage = time.monotonic()
        v2_model = fake_model(TASK, version="2", salt=5)
        v2 = register_model(direct, v2_model, alias="champion", artifact_root=artifacts)
        while time.monotonic() - outage < 4:
            assert _density(url) == ("1", _reference(good))
            assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
            time.sleep(0.2)
        wait_for(lambda: metric(url, "cellmfg_model_poll_failures_total", model=NAME) >= polls_before + 2, 60,
                 "poll failures to be counted", on_timeout=server.log_tail)
        assert server.log_tail(100_000).count("model poll could not read") == 1

        # 2. It is reachable again: the alias that moved meanwhile is followed.
        link.up()
        back = time.monotonic()
        wait_for(lambda: _density(url)[0] == v2, 60, f"version {v2} after the registry returned",
                 on_timeout=server.log_tail)
        timings["recovered"] = time.monotonic() - back
        assert _density(url)[1] == _reference(v2_model)
        assert "model poll reads every revision again" in server.log_tail(100_000)

        # 3. Bad versions behind the moved alias: refused, v2 keeps serving, metric and log say why.
        for make, reason in ((corrupt, "onnxruntime cannot load the ONNX graph"), (mismatched, "input shape"),
                             (lambda m, v: tampered(m), "sha256")):
            failures = metric(url, "cellmfg_model_reload_failures_total", model=NAME)
            bad = register_model(direct, make(good, "x"), alias=None, artifact_root=artifacts, raw=True)
            moved = time.monotonic()
            move_alias(direct, NAME, "champion", bad)
            wait_for(lambda: metric(url, "cellmfg_model_reload_failures_total", model=NAME) >= failures + 1,  # noqa: B023
                     60, f"version {bad} to be refused", on_timeout=server.log_tail)
            timings[f"refused v{bad}"] = time.monotonic() - moved
            assert _density(url) == (v2, _reference(v2_model))
            log = server.log_tail(200_000)
            line = next((ln for ln in log.splitlines() if f"candidate {bad} rejected" in ln), "")
            assert NAME in line and reason in line and f"version {v2}" in line, (reason, line or log[-3000:])
        listing = httpx.get(f"{url}/models", timeout=30).json()
        assert next(m for m in listing["models"] if m["name"] == NAME)["version"] == v2
        assert metric(url, "cellmfg_model_info", model=NAME, version=v2, alias="champion") == 1
        print("\nregistry faults: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    finally:
        if server is not None:
            server.stop()
        link.down()
        shutil.rmtree(artifacts, ignore_errors=True)
