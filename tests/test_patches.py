"""The fix for BentoML's request-timeout middleware (service.patches), on BentoML's own class."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from bentoml._internal.server.http.traffic import TimeoutMiddleware

from service.patches import patch_bentoml_timeout
from testkit.fakes import write_fake_bundle
from testkit.processes import clean_env

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

PROJECT_ROOT = Path(__file__).resolve().parents[1]


async def fast_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def slow_app(scope: Any, receive: Any, send: Any) -> None:
    await asyncio.sleep(5)
    await fast_app(scope, receive, send)


async def failing_app(scope: Any, receive: Any, send: Any) -> None:
    raise RuntimeError("the app failed before answering")


def _client(app: Any, timeout: float) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=TimeoutMiddleware(app, timeout=timeout))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


def live_timers() -> int:
    loop: Any = asyncio.get_running_loop()
    return sum(not handle.cancelled() for handle in loop._scheduled)


def test_finished_requests_leave_no_timer_on_the_loop() -> None:
    patch_bentoml_timeout()

    async def run() -> int:
        async with _client(fast_app, timeout=600) as client:
            before = live_timers()
            for _ in range(200):
                assert (await client.get("/")).text == "ok"
            return live_timers() - before

    assert asyncio.run(run()) == 0, "each request left its 600 s timer scheduled"


def test_a_request_still_times_out_with_a_504() -> None:
    patch_bentoml_timeout()

    async def run() -> httpx.Response:
        async with _client(slow_app, timeout=0.2) as client:
            return await client.get("/")

    started = time.monotonic()
    response = asyncio.run(run())
    assert response.status_code == 504 and "0.2 seconds" in response.json()["error"]
    assert time.monotonic() - started < 3


def test_an_app_that_fails_before_answering_is_not_held_until_the_timeout() -> None:
    patch_bentoml_timeout()

    async def run() -> None:
        async with _client(failing_app, timeout=600) as client:
            await client.get("/")

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="failed before answering"):
        asyncio.run(run())
    assert time.monotonic() - started < 3


def test_the_patch_is_installed_once() -> None:
    patch_bentoml_timeout()
    assert patch_bentoml_timeout() is False
    assert TimeoutMiddleware.__call__.__module__ == "service.patches"


def test_the_service_installs_the_patch_when_it_starts(tmp_path: Path) -> None:
    """In a fresh interpreter (this one may have patched already): not at import, but once the service starts."""
    bundle = write_fake_bundle(tmp_path / "bundle")
    script = (
        "from bentoml._internal.server.http.traffic import TimeoutMiddleware\n"
        "from starlette.testclient import TestClient\n"
        "from service.service import CellMfgService\n"
        "at_import = TimeoutMiddleware.__call__.__module__\n"
        "with TestClient(CellMfgService.to_asgi()) as client:\n"
        "    assert client.get('/readyz').status_code == 200\n"
        "    print(at_import, TimeoutMiddleware.__call__.__module__)\n"
    )
    env = clean_env(CELLMFG_BUNDLE=str(bundle), CELLMFG_POLL_SECONDS="0", BENTOML_HOME=str(tmp_path / "home"))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                            cwd=PROJECT_ROOT, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-2:] == ["bentoml._internal.server.http.traffic", "service.patches"], result.stdout
