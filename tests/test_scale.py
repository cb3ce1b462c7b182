"""Replicas behind a load balancer (issue 27): the compose stack's HAProxy configuration in front of real
`cellmfg serve` processes, under wrk load while replicas die and drain, and an alias move rolled out to every replica
from an MLflow server that proxies the artefacts (replicas fetch models over HTTP, never from a shared disk).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from cellmfg.domain import TASKS
from testkit.bad_inputs import electrode_row
from testkit.fakes import fake_model, tampered, write_fake_bundle
from testkit.loadbalancer import HAPROXY_CONFIG, haproxy_binary, haproxy_server, local_config, start_wrk, wrk_result
from testkit.processes import ServerProcess, cellmfg_server, clean_env, free_port, mlflow_server, wait_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

REPLICAS = 3
LOAD_SECONDS = 60
CONNECTIONS = 32
POLL_SECONDS = 2
NAME = "density_nmc_onnx"
TASK = next(t for t in TASKS if f"{t.model_name}_onnx" == NAME)


def _require_haproxy() -> str:
    binary = haproxy_binary()
    if binary is None:
        pytest.skip("haproxy is not installed (scripts/integration_deps.sh installs Debian's package)")
    return binary


def test_the_compose_haproxy_config_is_valid_and_runs_locally_with_only_its_servers_replaced(tmp_path: Path) -> None:
    binary = _require_haproxy()
    template = HAPROXY_CONFIG.read_text()
    local = local_config(template, [3301, 3302])
    for text, name in ((template, "compose.cfg"), (local, "local.cfg")):
        path = tmp_path / name
        path.write_text(text)
        checked = subprocess.run([binary, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30,
                                 check=False)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "server replica0 127.0.0.1:3301 check" in local and "server replica1 127.0.0.1:3302 check" in local
    directives = [line.split()[0] for line in local.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert "server-template" not in directives and "resolvers" not in directives
    # Everything but the servers is the compose stack's own configuration: health checks, retries, timeouts.
    for line in ("http-check send meth GET uri /readyz", "retry-on conn-failure empty-response", "option redispatch",
                 "option http-buffer-request", "timeout http-request 10s"):
        assert line in template and line in local, line


def _replica_env(folder: Path, index: int, **extra: str) -> dict[str, str]:
    return clean_env(BENTOML_HOME=str(folder / f"bentoml-{index}"), **extra)


@pytest.fixture
def replicas_behind_haproxy(tmp_path: Path) -> Iterator[tuple[list[ServerProcess], ServerProcess]]:
    _require_haproxy()
    bundle = write_fake_bundle(tmp_path / "bundle")
    replicas = [cellmfg_server(_replica_env(tmp_path, i, CELLMFG_POLL_SECONDS="0"), tmp_path / f"replica-{i}.log",
                               bundle=bundle) for i in range(REPLICAS)]
    balancer: ServerProcess | None = None
    try:
        for replica in replicas:
            replica.start()
        for replica in replicas:
            replica.wait_ready(timeout=240)
        balancer = haproxy_server(tmp_path, [r.port for r in replicas], free_port()).start()
        balancer.wait_ready(timeout=30)
        # Every replica in rotation (HAProxy's checks need `rise` successes) before the load starts.
        time.sleep(3)
        yield replicas, balancer
    finally:
        if balancer is not None:
            balancer.stop()
        for replica in replicas:
            replica.stop()


def _kill_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL to a replica and every process it forked: the whole replica dies at once, as in a crash (one killpg
    to its session's process group, so no worker outlives its arbiter for a moment and answers on its own)."""
    members = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    os.killpg(process.pid, signal.SIGKILL)
    for member in members:  # a member that left the group (none does today) still dies
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()


@pytest.mark.integration
@pytest.mark.timeout(400)
def test_no_request_fails_while_one_replica_is_killed_and_another_drains(
        replicas_behind_haproxy: tuple[list[ServerProcess], ServerProcess], tmp_path: Path) -> None:
    """wrk for 60 s at c = 32 through HAProxy; kill -9 of one replica at 20 s and SIGTERM to another at 40 s:
    no request may fail (no non-2xx answer, no transport error)."""
    replicas, balancer = replicas_behind_haproxy
    body = {"chemistry": "nmc", "rows": [electrode_row()]}
    load = start_wrk(f"{balancer.url}/predict/electrode", body, LOAD_SECONDS, CONNECTIONS, 2, tmp_path)
    started = time.monotonic()
    time.sleep(LOAD_SECONDS / 3)
    killed = replicas[0].process
    assert killed is not None
    _kill_tree(killed)
    killed_at = time.monotonic() - started
    time.sleep(max(0.0, 2 * LOAD_SECONDS / 3 - (time.monotonic() - started)))
    drained = replicas[1].process
    assert drained is not None
    drained.send_signal(signal.SIGTERM)
    terminated_at = time.monotonic() - started
    result = wrk_result(load, timeout=LOAD_SECONDS + 60)
    print(f"\n{REPLICAS} replicas behind HAProxy, wrk {LOAD_SECONDS} s at c={CONNECTIONS}: kill -9 at "
          f"{killed_at:.1f} s, SIGTERM at {terminated_at:.1f} s; {result.requests} requests "
          f"({result.requests_per_second:.0f}/s), {result.failures} failed; latency p50 {result.p50_ms:.1f} ms, "
          f"p99 {result.p99_ms:.1f} ms, max {result.max_ms:.0f} ms")
    assert result.failures == 0, (result, balancer.log_tail())
    assert result.requests > 1000, result
    # The drained replica exited by itself on SIGTERM (it was not killed), and the survivor still answers.
    assert drained.wait(timeout=60) is not None
    assert httpx.get(f"{replicas[2].url}/readyz", timeout=10).status_code == 200


def _served_version(url: str) -> str | None:
    models = httpx.get(f"{url}/models", timeout=10).json()["models"]
    return next((m["version"] for m in models if m["name"] == NAME), None)


def _serves(url: str, version: str) -> bool:
    return _served_version(url) == version


def _refused(replica: ServerProcess, version: str) -> bool:
    return f"candidate {version} rejected" in replica.log_tail(200_000)


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_an_alias_move_reaches_every_replica_and_a_version_that_fails_verification_reaches_none(
        tmp_path: Path) -> None:
    """Replicas polling an MLflow server over HTTP (artefacts proxied by the server, so no replica reads the
    artefact store's disk): a moved alias is served by every replica within the poll interval + 5 s, each answer
    names the version; then a version whose checksum does not verify is refused by every replica, which keep the
    last good one."""
    from mlflow import MlflowClient

    from testkit.registry import EXPERIMENT, move_alias, register_fakes, register_model

    artifacts = tmp_path / "artifacts"
    tracking = mlflow_server(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}",
                             ["--serve-artifacts", "--artifacts-destination", str(artifacts)])
    replicas: list[ServerProcess] = []
    with tracking:
        tracking.wait_ready(timeout=120)
        uri = tracking.url
        # The experiment's artefacts live behind the server (mlflow-artifacts:/), so they travel over HTTP.
        MlflowClient(tracking_uri=uri).create_experiment(EXPERIMENT)
        register_fakes(uri)
        try:
            for i in range(REPLICAS):
                env = _replica_env(tmp_path, i, MLFLOW_TRACKING_URI=uri, CELLMFG_POLL_SECONDS=str(POLL_SECONDS),
                                   MLFLOW_DISABLE_TELEMETRY="true")
                replicas.append(cellmfg_server(env, tmp_path / f"replica-{i}.log").start())
            for replica in replicas:
                replica.wait_ready(timeout=240)
            assert {_served_version(r.url) for r in replicas} == {"1"}

            new = register_model(uri, fake_model(TASK, version="2", salt=7), alias=None)
            move_alias(uri, NAME, "champion", new)
            moved = time.monotonic()
            for replica in replicas:
                wait_for(functools.partial(_serves, replica.url, new), timeout=POLL_SECONDS + 5,
                         what=f"{replica.url} to serve {NAME} version {new}", interval=0.1,
                         on_timeout=replica.log_tail)
            reached_all = time.monotonic() - moved
            for replica in replicas:
                answer = httpx.post(f"{replica.url}/predict/electrode",
                                    json={"chemistry": "nmc", "rows": [electrode_row()]}, timeout=30)
                assert answer.status_code == 200, answer.text
                assert answer.json()["models"]["density"] == {"name": NAME, "version": new, "alias": "champion"}

            # Its contract claims other ONNX bytes than the registered file: verification must refuse it.
            bad = register_model(uri, tampered(fake_model(TASK, version="3", salt=8)), alias=None, raw=True)
            move_alias(uri, NAME, "champion", bad)
            for replica in replicas:
                wait_for(functools.partial(_refused, replica, bad),
                         timeout=POLL_SECONDS + 30, what=f"{replica.url} to refuse version {bad}",
                         on_timeout=replica.log_tail)
            assert [_served_version(r.url) for r in replicas] == [new] * REPLICAS
            print(f"\nalias move reached all {REPLICAS} replicas in {reached_all:.1f} s (poll {POLL_SECONDS} s); "
                  f"unverifiable version {bad} refused by every replica")
        finally:
            for replica in replicas:
                replica.stop()
