"""Fixes for BentoML's request-timeout and request-metrics middleware (bentoml 1.4.40), applied when the service
starts.

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

`patch_bentoml_metric_labels` bounds the `endpoint` label of BentoML's request metrics to the service's routes:
BentoML labels them with the raw request path, 401s and 404s included, so anyone could grow the open /metrics
without bound (200 random paths added ~4,000 series; a 10 s flood grew it from 1.5 MB to 29 MB) and publish any
path, a token included, in a label.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
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
    expect_source(TimeoutMiddleware.__call__, TIMEOUT_CALL_SHA256, "service/web/patches.py (request timer fix)")
    expect_source(TimeoutMiddleware._set_timer_out, SET_TIMER_OUT_SHA256, "service/web/patches.py (request timer fix)")
    TimeoutMiddleware.__call__ = _call_with_cancelled_timer  # type: ignore[method-assign]
    setattr(TimeoutMiddleware, _PATCHED, True)
    return True


# -- BentoML's request metrics label requests with their raw path

_LABELLED = "_cellmfg_route_labels"
_REAL_PATH = "cellmfg.real_path"
# Source hash of the bentoml 1.4.40 code this fix relies on: RunnerTrafficMetricsMiddleware.__call__ takes the
# `endpoint` label of every series it writes from scope["path"] (and from nothing else) and passes the scope on.
METRICS_CALL_SHA256 = "505cd887186e59b0d6521d021eafc5688edb247dd454ff5a254626dbb6f0e061"


class _RealPath:
    """Hands the app the request's real path again, below BentoML's metrics middleware."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        real = scope.get(_REAL_PATH)
        if real is not None:
            scope = {key: value for key, value in scope.items() if key != _REAL_PATH}
            scope["path"] = real
        await self.app(scope, receive, send)


def patch_bentoml_metric_labels(labels: Callable[[str], str]) -> bool:
    """Make BentoML's request metrics label each request with `labels(path)` (a route template or a fixed
    'other', service.engine.metrics.RouteLabels) instead of its raw path; idempotent, True if this call installed it (a
    later call only replaces the mapping). Fails loudly (PatchedCodeChangedError) when BentoML's middleware is not
    the code this fix was written for.

    How: BentoML's `__call__` reads the path only to label its series, so it is given a copy of the scope whose
    path is the label, and the app below it (wrapped once per middleware instance) gets the real path back."""
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware as Middleware

    from cellmfg.patch_guard import expect_source

    installed = getattr(Middleware, _LABELLED, None) is not None
    setattr(Middleware, _LABELLED, labels)
    if installed:
        return False
    expect_source(Middleware.__call__, METRICS_CALL_SHA256, "service/web/patches.py (bounded metric labels)")
    original = Middleware.__call__

    async def call_with_route_label(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await original(self, scope, receive, send)
            return
        if not isinstance(self.app, _RealPath):
            self.app = _RealPath(self.app)
        real = scope["path"]
        labelled = {**scope, "path": getattr(Middleware, _LABELLED)(real), _REAL_PATH: real}
        await original(self, labelled, receive, send)

    Middleware.__call__ = call_with_route_label  # type: ignore[method-assign]
    return True


# -- uvicorn never times out a connection that has not sent a whole request

_LIMITED = "_cellmfg_connection_limits"
# Source hashes of the uvicorn 0.54.0 code this fix wraps (H11Protocol; httptools is not installed, so uvicorn's
# "auto" protocol is h11): the wrapped methods, and handle_events, which starts a request's cycle once its headers
# are complete (the timer below relies on that).
H11_SOURCE_SHA256 = {
    "connection_made": "ba1915817ccf6c1b7d6d9982ca74b6fb9e43eebbd3f588fff1e1f8f17af5e161",
    "connection_lost": "4401bc3dceba5dc79fcd2665a1c21d31526baef11a49f5f1fb6aa2bee5d2f7c6",
    "on_response_complete": "f3922ff1678fe187b1c810b27b3b92ff9dd3f2bb89dc07256cfcf4e73639999b",
    "handle_events": "1fba7774f4201d2e2b9fe488e753c99085565775648c6400ebe06a2fdbf09be6",
}


def _waiting_for_headers(protocol: Any) -> bool:
    """True while the connection has no request in progress: none yet, or the last one answered."""
    cycle = protocol.cycle
    return cycle is None or bool(cycle.response_complete)


def _close_if_waiting(protocol: Any) -> None:
    if not protocol.transport.is_closing() and _waiting_for_headers(protocol):
        protocol.transport.close()


def _arm_header_timer(protocol: Any, seconds: float) -> None:
    previous = getattr(protocol, "_cellmfg_header_timer", None)
    if previous is not None:
        previous.cancel()
    protocol._cellmfg_header_timer = protocol.loop.call_later(seconds, _close_if_waiting, protocol)


def patch_uvicorn_connection_limits(header_timeout_seconds: float, max_connections: int) -> bool:
    """Close a connection that has not sent a complete request's headers within `header_timeout_seconds` of
    opening or of its last answer, and refuse (close at once) connections beyond `max_connections` per worker;
    idempotent, True if this call installed it (a later call only changes the limits).

    uvicorn (0.54) arms its keep-alive timeout only after an answer and cancels it at the first byte received, and
    has no header timeout: idle and half-sent-header connections stayed open for good (300 were held, issue 22),
    and `bentoml serve` passes no connection limit through. A request whose headers arrived is not affected: its
    body and answer are bounded by BentoML's request timeout (`traffic.timeout`). Returns False, logging a warning,
    when uvicorn does not use its h11 protocol (httptools installed): a reverse proxy must then bound these."""
    import logging

    from uvicorn.protocols.http.auto import AutoHTTPProtocol
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from cellmfg.patch_guard import expect_source

    installed = getattr(H11Protocol, _LIMITED, None) is not None
    setattr(H11Protocol, _LIMITED, (header_timeout_seconds, max_connections))
    if installed:
        return False
    if AutoHTTPProtocol is not H11Protocol:
        setattr(H11Protocol, _LIMITED, None)
        logging.getLogger("cellmfg.service").warning(
            "uvicorn uses %s, not h11: no header timeout or connection limit set (use a reverse proxy)",
            AutoHTTPProtocol.__name__)
        return False
    for name, sha256 in H11_SOURCE_SHA256.items():
        expect_source(getattr(H11Protocol, name), sha256, "service/web/patches.py (header timeout, connection limit)")
    connection_made, connection_lost = H11Protocol.connection_made, H11Protocol.connection_lost
    on_response_complete = H11Protocol.on_response_complete

    def limits() -> tuple[float, int]:
        return getattr(H11Protocol, _LIMITED)

    def made(self: Any, transport: Any) -> None:
        connection_made(self, transport)
        timeout, most = limits()
        if len(self.connections) > most:
            transport.close()  # connection_lost follows and takes it out of the server's set
            return
        _arm_header_timer(self, timeout)

    def lost(self: Any, exc: Exception | None) -> None:
        timer = getattr(self, "_cellmfg_header_timer", None)
        if timer is not None:
            timer.cancel()
        connection_lost(self, exc)

    def answered(self: Any) -> None:
        on_response_complete(self)
        if not self.transport.is_closing():
            _arm_header_timer(self, limits()[0])  # the next request's headers are due in time too

    H11Protocol.connection_made = made  # type: ignore[method-assign]
    H11Protocol.connection_lost = lost  # type: ignore[method-assign]
    H11Protocol.on_response_complete = answered  # type: ignore[method-assign]
    return True


# -- uvicorn writes an answer's headers and its body in separate writes

_SINGLE_WRITE = "_cellmfg_single_write"
# Source hash of the uvicorn 0.54.0 code this fix wraps: RequestResponseCycle.send (h11) writes the status line and
# headers to the transport at `http.response.start`, and the body, the end of the message and a close at the body.
H11_SEND_SHA256 = "2c614ef72da05d8260c1c25967c61de767dc56c03d9203074737dca472e06117"


class _OneWriteTransport:
    """Stands in for the connection's transport while an answer is sent: its writes (the held head, the body, the
    end of the message) are joined and leave as one write when the answer is complete, before a close, or before
    uvicorn turns to the connection's next request; everything else is the real transport's."""

    def __init__(self, transport: Any, head: bytes) -> None:
        self.transport = transport
        self.chunks = [head]

    def write(self, data: bytes) -> None:
        self.chunks.append(bytes(data))

    def flush(self) -> None:
        data = b"".join(self.chunks)
        self.chunks = []
        if data:
            self.transport.write(data)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class _CollectingTransport:
    """Stands in for the connection's transport while the held start is turned into bytes: writes are collected."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(bytes(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


def patch_uvicorn_single_write() -> bool:
    """Send an answer's status line, headers and body (its first chunk, if streamed) in one write; idempotent, True
    if this call installed it.

    uvicorn (0.54, h11) writes the headers when the app sends `http.response.start`, and the body when it sends
    the body, after every middleware between the two has run. A replica killed between them (kill -9, the OOM
    killer) leaves a torn answer: headers without a body, which no proxy may retry, so the client sees a broken
    connection (1 of 57,233 requests in issue 27's failover test). Holding the start until the body makes the
    answer one write: the kernel then has all of it or none of it, and a proxy retries the none (HAProxy's
    `retry-on empty-response`). An app that fails after its start now answers a plain 500 instead of a torn one."""
    from uvicorn.protocols.http.h11_impl import RequestResponseCycle

    from cellmfg.patch_guard import expect_source

    if getattr(RequestResponseCycle, _SINGLE_WRITE, False):
        return False
    expect_source(RequestResponseCycle.send, H11_SEND_SHA256, "service/web/patches.py (one write per answer)")
    send = RequestResponseCycle.send

    async def send_in_one_write(self: Any, message: Any) -> None:
        if message["type"] == "http.response.start" and not self.response_started:
            self._cellmfg_held_start = message
            return
        held = getattr(self, "_cellmfg_held_start", None)
        if held is None:
            await send(self, message)
            return
        self._cellmfg_held_start = None
        transport = self.transport
        collecting = _CollectingTransport(transport)
        self.transport = collecting
        try:
            await send(self, held)
        finally:
            self.transport = transport
        if self.disconnected:
            return
        one_write = _OneWriteTransport(transport, b"".join(collecting.chunks))
        on_response = self.on_response

        def flush_then_on_response() -> None:
            one_write.flush()  # before uvicorn handles a pipelined request, which may write an answer of its own
            on_response()

        self.transport, self.on_response = one_write, flush_then_on_response
        try:
            await send(self, message)
        finally:
            self.transport, self.on_response = transport, on_response
            one_write.flush()

    RequestResponseCycle.send = send_in_one_write  # type: ignore[method-assign]
    setattr(RequestResponseCycle, _SINGLE_WRITE, True)
    return True
