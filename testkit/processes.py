"""Servers in subprocesses for tests and scripts: `cellmfg serve` (through the CLI's own code path), `mlflow server`
and anything else that answers HTTP on a loopback port, each started in a session of its own and stopped by its
PID together with whatever it forked; plus the small waits and looks the tests make at them.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
CLI_LAUNCHER = "import typer; from service.cli import serve; typer.run(serve)"
LOOPBACK_PREFIXES = ("http://127.0.0.1", "http://localhost", "http://[::1]")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any cellmfg, BentoML, Prometheus or MLflow setting, plus `extra`: a
    server started with it sees only what the test gives it."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CELLMFG_", "BENTOML_", "PROMETHEUS_", "MLFLOW_"))}
    env.update(extra)
    return env


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.25,
             on_timeout: Callable[[], str] = lambda: "") -> Any:
    """Poll `check` until it returns something truthy (returned) or `timeout` seconds pass (the test fails)."""
    import httpx
    import pytest

    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (httpx.HTTPError, OSError, ValueError, KeyError) as error:
            last_error = error
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last_error!r}) {on_timeout()}")


@contextlib.contextmanager
def docker_container(name: str, run_args: list[str]) -> Iterator[str]:
    """`docker run -d --name NAME --network host RUN_ARGS` (image and command in RUN_ARGS), yielding the name; the
    container is removed (`docker rm -f`) on leaving, whatever happened."""
    subprocess.run(["docker", "run", "-d", "--name", name, "--network", "host", *run_args], check=True,
                   capture_output=True, timeout=120)
    try:
        yield name
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=120, check=False)


def metric(url: str, name: str, **labels: str) -> float:
    """Sum of the samples `name` with these labels on the server's /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(path: Path, n: int = 4000) -> str:
    """The last `n` characters of a log file ('' if there is none yet)."""
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def stop_process_tree(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM to `process` (SIGKILL if it outlives `timeout`), then SIGKILL to any of its descendants still alive,
    each by PID: BentoML and uvicorn workers run in process groups of their own, so a group kill would miss them."""
    import psutil

    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    for child in descendants:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


class ServerProcess:
    """`args` in a subprocess answering HTTP on 127.0.0.1:`port`, output to `log_path`; ready when `ready_path`
    answers 200. It runs in a session of its own, so a Ctrl-C meant for pytest does not reach it twice; `stop`
    ends it and whatever it forked (see `stop_process_tree`)."""

    def __init__(self, name: str, args: list[str], log_path: Path, port: int, env: dict[str, str] | None = None,
                 cwd: Path | None = None, ready_path: str = "/readyz", stop_timeout: float = 30) -> None:
        self.name, self.args, self.log_path, self.port = name, args, log_path, port
        self.env, self.cwd, self.ready_path, self.stop_timeout = env, cwd, ready_path, stop_timeout
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> ServerProcess:
        self.started_at = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.args, env=self.env, cwd=self.cwd, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait_ready(self, timeout: float = 120.0, interval: float = 0.02) -> float:
        """Seconds from start until `ready_path` answered 200; RuntimeError if the process exits first,
        TimeoutError after `timeout` seconds of waiting (both with the log's tail)."""
        import httpx

        assert self.process is not None, f"{self.name} was not started"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; log: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}{self.ready_path}", timeout=2).status_code == 200:
                    return time.monotonic() - self.started_at
            except httpx.HTTPError:
                pass
            time.sleep(interval)
        raise TimeoutError(f"{self.name} not ready after {timeout} s; log: {self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        return tail(self.log_path, n)

    def stop(self) -> None:
        if self.process is not None:
            stop_process_tree(self.process, timeout=self.stop_timeout)
        self.process = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def cellmfg_server(env: dict[str, str], log_path: Path, workers: int = 1, bundle: Path | None = None,
                   port: int | None = None) -> ServerProcess:
    """`cellmfg serve` (it execs `bentoml serve`, keeping the PID) on `port` or a free one; SIGTERM reaches
    BentoML's supervisor, which stops its workers."""
    port = port or free_port()
    args = [sys.executable, "-c", CLI_LAUNCHER, "--port", str(port), "--workers", str(workers)]
    if bundle is not None:
        args += ["--bundle", str(bundle)]
    return ServerProcess("cellmfg serve", args, log_path, port, env=env, cwd=PROJECT_ROOT, stop_timeout=20)


def mlflow_server(folder: Path, backend_store_uri: str, artifacts: list[str], port: int | None = None) -> ServerProcess:
    """`mlflow server` on `backend_store_uri` with the artefact options `artifacts`, working in `folder` (its log
    is folder/mlflow-server.log); ready when /health answers."""
    port = port or free_port()
    args = [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", backend_store_uri, *artifacts,
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = clean_env(MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    return ServerProcess("mlflow server", args, folder / "mlflow-server.log", port, env=env, cwd=folder,
                         ready_path="/health")


def start_local_server(folder: Path, bundle: Path, token: str = "", workers: int = 1) -> tuple[ServerProcess, float]:
    """`cellmfg serve` on a free loopback port serving `bundle` with hot reload off, requiring `token` as bearer
    token when one is given; returns the ready server and its seconds to ready. If it does not come up it is
    stopped and RuntimeError or TimeoutError (with its log) is raised."""
    env = clean_env(BENTOML_HOME=str(folder / "bentoml"), CELLMFG_POLL_SECONDS="0")
    if token:
        env["CELLMFG_API_TOKEN"] = token
    server = cellmfg_server(env, folder / "server.log", workers=workers, bundle=bundle).start()
    try:
        return server, server.wait_ready(timeout=240)
    except (RuntimeError, TimeoutError):
        server.stop()
        raise
