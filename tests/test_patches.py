"""The fix for BentoML's request-timeout middleware (service.web.patches), on BentoML's own class."""

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

from service.web.patches import patch_bentoml_timeout
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
    assert TimeoutMiddleware.__call__.__module__ == "service.web.patches"


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
        "    from uvicorn.protocols.http.h11_impl import RequestResponseCycle\n"
        "    print(at_import, TimeoutMiddleware.__call__.__module__, RequestResponseCycle.send.__module__)\n"
    )
    env = clean_env(CELLMFG_BUNDLE=str(bundle), CELLMFG_POLL_SECONDS="0", BENTOML_HOME=str(tmp_path / "home"))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                            cwd=PROJECT_ROOT, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-3:] == ["bentoml._internal.server.http.traffic", "service.web.patches",
                                          "service.web.patches"], result.stdout


# -- one write per answer (service.web.patches.patch_uvicorn_single_write), on uvicorn's own h11 protocol

class RecordingTransport(asyncio.Transport):
    """What uvicorn writes to a connection, one entry per write call."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 3000), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def app_that_works_between_start_and_body(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"11")]})
    await asyncio.sleep(0.01)  # the middlewares between the two messages, or a preempted worker
    await send({"type": "http.response.body", "body": b"hello world"})


async def app_that_fails_after_its_start(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"11")]})
    raise RuntimeError("failed between the headers and the body")


async def _exchange(app: Any, requests: bytes, answers: int) -> RecordingTransport:
    from uvicorn.config import Config
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.server import ServerState

    from service.web.patches import patch_uvicorn_single_write

    patch_uvicorn_single_write()
    config = Config(app=app, lifespan="off", log_level="critical")
    config.load()
    protocol = H11Protocol(config=config, server_state=ServerState(), app_state={})
    transport = RecordingTransport()
    protocol.connection_made(transport)
    protocol.data_received(requests)
    for _ in range(300):
        if sum(write.startswith(b"HTTP/1.1") for write in transport.writes) >= answers:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    closed_by_the_server = transport.closed
    protocol.connection_lost(None)
    transport.closed = closed_by_the_server
    return transport


def test_an_answer_is_one_write_so_a_crash_cannot_tear_it() -> None:
    """Headers and body leave in one write even when the app does work between them: killed at any moment, the
    replica has sent all of the answer or none of it (none can be retried by the proxy; a torn one cannot)."""
    request = b"GET / HTTP/1.1\r\nHost: cellmfg\r\n\r\n"
    transport = asyncio.run(_exchange(app_that_works_between_start_and_body, request * 2, answers=2))
    answers = [write for write in transport.writes if write]
    assert len(answers) == 2, transport.writes
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\nhello world"), answer
    assert not transport.closed  # keep-alive as before


def test_a_connection_close_still_follows_the_answer() -> None:
    request = b"GET / HTTP/1.1\r\nHost: cellmfg\r\nConnection: close\r\n\r\n"
    transport = asyncio.run(_exchange(app_that_works_between_start_and_body, request, answers=1))
    answers = [write for write in transport.writes if write]
    assert len(answers) == 1 and answers[0].endswith(b"hello world"), transport.writes
    assert transport.closed


def test_an_app_failing_after_its_start_answers_a_whole_500_not_torn_headers() -> None:
    request = b"GET / HTTP/1.1\r\nHost: cellmfg\r\n\r\n"
    transport = asyncio.run(_exchange(app_that_fails_after_its_start, request, answers=1))
    answers = [write for write in transport.writes if write]
    assert len(answers) == 1 and answers[0].startswith(b"HTTP/1.1 500 "), transport.writes
    assert answers[0].endswith(b"Internal Server Error\r\n0\r\n\r\n") and transport.closed  # whole, then closed


def test_the_single_write_patch_is_installed_once() -> None:
    from uvicorn.protocols.http.h11_impl import RequestResponseCycle

    from service.web.patches import patch_uvicorn_single_write

    patch_uvicorn_single_write()
    assert patch_uvicorn_single_write() is False
    assert RequestResponseCycle.send.__module__ == "service.web.patches"
