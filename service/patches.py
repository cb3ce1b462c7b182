"""A fix for BentoML's request-timeout middleware (bentoml 1.4.40), applied when the service starts.

BentoML wraps every request in `bentoml._internal.server.http.traffic.TimeoutMiddleware`, which schedules
`loop.call_later(timeout, ...)` per request and never cancels it. Each finished request therefore leaves a timer
handle, a future and a copy of the request's context vars on the event loop for the whole `traffic.timeout` (600 s
at the time). `scripts/soak.py` measured what that does: at ~350 requests/s the worker's resident memory grew by 21 % in
five minutes (by 30 % in two minutes with 10,001-row bodies, whose parse results share memory arenas with the
pinned timers, so the arenas are never returned to the OS). Also, a request whose app fails before sending
anything waits out the whole timeout before its error is raised.

`patch_bentoml_timeout` replaces the middleware's `__call__` with one that keeps the behaviour (a 504 when no
response has started within the timeout) but cancels its timer when the request ends, schedules it in an empty
context, and stops waiting as soon as the app returns or fails. Only the class's method is replaced, so it applies
to middleware instances BentoML has already built.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

_PATCHED = "_cellmfg_timer_cancelled"
# Source hashes of the bentoml 1.4.40 code this fix replaces and relies on (cellmfg.patch_guard).
TIMEOUT_CALL_SHA256 = "71bdcd16506b917e18dd67d0067a6aeae8d94e69486c64bc1bb37d3925ea907e"
SET_TIMER_OUT_SHA256 = "203d9aea7eca47e5fd15e10d00e114c6ee24c7467b5f451a8821d8a6142d8651"


async def _call_with_cancelled_timer(self: Any, scope: Any, receive: Any, send: Any) -> None:
    from starlette.responses import JSONResponse

    if scope["type"] not in ("http", "websocket"):
        await self.app(scope, receive, send)
        return
    loop = asyncio.get_running_loop()
    started: asyncio.Future[None] = loop.create_future()
    # An empty context: the timer must not keep the request's context vars alive.
    timer = loop.call_later(self.timeout, self._set_timer_out, started, context=contextvars.Context())

    async def send_and_mark(message: Any) -> None:
        if not started.done():
            started.set_result(None)
        await send(message)

    handler = asyncio.ensure_future(self.app(scope, receive, send_and_mark))

    def app_returned(_: asyncio.Future[None]) -> None:
        if not started.done():
            started.set_result(None)  # returned or failed without a response: `await handler` re-raises

    handler.add_done_callback(app_returned)
    try:
        try:
            await started
        except TimeoutError:
            if handler.cancel():
                response = JSONResponse(
                    {"error": f"Not able to process the request in {self.timeout} seconds"}, status_code=504)
                await response(scope, receive, send)
            return
        await handler
    except asyncio.CancelledError:
        handler.cancel()  # the client went away or the server is stopping: do not leave the app running
        raise
    finally:
        timer.cancel()


def patch_bentoml_timeout() -> bool:
    """Install the fix (idempotent); True if this call installed it. Fails loudly (PatchedCodeChangedError) when
    BentoML's middleware is not the code this fix was written for."""
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    from cellmfg.patch_guard import expect_source

    if getattr(TimeoutMiddleware, _PATCHED, False):
        return False
    expect_source(TimeoutMiddleware.__call__, TIMEOUT_CALL_SHA256, "service/patches.py (request timer fix)")
    expect_source(TimeoutMiddleware._set_timer_out, SET_TIMER_OUT_SHA256, "service/patches.py (request timer fix)")
    TimeoutMiddleware.__call__ = _call_with_cancelled_timer  # type: ignore[method-assign]
    setattr(TimeoutMiddleware, _PATCHED, True)
    return True
