"""Checks made on a request before BentoML reads its body.

`RequestGuard` is an ASGI middleware inside BentoML's metrics and tracing middleware (so refused requests are
still counted) and outside its router. It insists on JSON or CSV for the prediction routes (BentoML would otherwise
hand a multipart or form body to its multipart parser, whose errors surface as 500s) and sends CSV bodies for the
kind endpoints to the routes that read them.

A JSON body is read here once and checked for what the JSON parsers downstream would pass over silently or
misname: a UTF-8 byte-order mark is dropped (as the CSV reader does), a key repeated in one object is refused
naming it (the parsers keep the last one without a word), and a `Content-Encoding` is refused with 415 (nothing
here decompresses, so a gzip body used to be answered "Invalid JSON"). A design request is a few hundred bytes: a
body over `MAX_DESIGN_BODY_BYTES` is refused with 413 before anything parses it.

Bearer-token authentication and the body-size limit (`service.web.security`) are middleware of the same kind,
registered before this one in `service.service` so they wrap it: an unauthenticated or over-size request is
refused before anything else looks at it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio.to_thread
from pydantic_core import to_json

from service.formats.media import CSV_MEDIA_TYPES, media_type

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_ROUTES = frozenset({"/predict/electrode", "/predict/gdl"})
# CSV bodies for the kind endpoints go to FastAPI routes that read the raw body (service.service): BentoML's API
# would parse any body as JSON first.
CSV_ROUTES = {"/predict/electrode": "/_csv/predict/electrode", "/predict/gdl": "/_csv/predict/gdl"}
UTF8_BOM = b"\xef\xbb\xbf"
# The largest design request is 2 targets and 11 parameters (~1 KiB); 64 KiB leaves room for any formatting.
MAX_DESIGN_BODY_BYTES = 64 * 1024
# Routes that search the models (recipe design, experiment suggestions): small JSON requests only.
SEARCH_ROUTES = ("/design/", "/suggest/")
# Bodies up to this size are checked for repeated keys on the event loop (<1 ms); larger ones (a 10,000-row batch,
# ~30 ms) in a worker thread, so other requests go on meanwhile.
INLINE_CHECK_BYTES = 64 * 1024


async def send_json(send: Send, status: int, body: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = to_json(body)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": payload})


async def send_error(send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """An error in the service's shape: {"error": message, "detail": []}."""
    await send_json(send, status, {"error": message, "detail": []}, headers)


def header_values(scope: Scope, name: bytes) -> list[bytes]:
    """Every value of the request header `name` (lower case)."""
    return [value for key, value in scope.get("headers", ()) if key.lower() == name]


class DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKeyError(key)
            seen.add(key)
    return result


def repeated_key(body: bytes) -> str | None:
    """The first key that appears twice in one object of the JSON `body`, or None (also for a body that is not
    JSON at all: the request's own parser names that problem)."""
    try:
        json.loads(body, object_pairs_hook=_unique_keys)
    except DuplicateKeyError as error:
        return error.key
    except (ValueError, RecursionError):
        return None
    return None


async def read_body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(parts)


def _content_length(scope: Scope, size: int) -> Scope:
    headers = [(k, v) for k, v in scope.get("headers", ()) if k.lower() != b"content-length"]
    return {**scope, "headers": [*headers, (b"content-length", str(size).encode())]}


def replaying(body: bytes, receive: Receive) -> Receive:
    """`receive` that first hands out the already-read `body`, then the rest of the conversation."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# Paths served by routes for several methods. BentoML's router answers another method (405) with the first route's
# methods alone in `Allow`; every method of the path belongs there (tests/test_hardening_io.py checks this table
# against the routes).
METHODS_BY_PATH: dict[str, tuple[str, ...]] = {"/outcomes": ("GET", "HEAD", "POST")}


def _allow_all_methods(path: str, send: Send) -> Send:
    allowed = ", ".join(METHODS_BY_PATH[path]).encode()

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] == 405:
            headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"allow"]
            message = {**message, "headers": [*headers, (b"allow", allowed)]}
        await send(message)

    return sending


class RequestGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path in METHODS_BY_PATH and scope["method"] not in METHODS_BY_PATH[path]:
            send = _allow_all_methods(path, send)
        if scope["type"] == "http" and scope["method"] == "POST":
            content_types = header_values(scope, b"content-type")
            body_type = media_type(content_types[0].decode("latin-1") if content_types else None)
            encodings = [e.decode("latin-1").strip().lower() for e in header_values(scope, b"content-encoding")]
            encoding = next((e for e in encodings if e not in ("", "identity")), None)
            if encoding is not None and (path.startswith("/predict/") or path.startswith(SEARCH_ROUTES)):
                await send_error(send, 415, f"Content-Encoding {encoding!r} is not accepted: send the request body "
                                            "uncompressed (no Content-Encoding)")
                return
            if path.startswith("/predict/"):
                if body_type in CSV_MEDIA_TYPES:
                    if path in CSV_ROUTES:
                        target = CSV_ROUTES[path]
                        scope = {**scope, "path": target, "raw_path": target.encode()}
                # No Content-Type is read as JSON, as BentoML does.
                elif body_type not in ("", "application/json"):
                    await send_error(send, 415, f"Content-Type {body_type!r} is not accepted: send the request "
                                                "body as application/json (or text/csv: a header line, then one "
                                                "row per line)")
                    return
            # The recipe-design and suggestion routes take JSON only (their requests have no CSV form).
            elif path.startswith(SEARCH_ROUTES) and body_type not in ("", "application/json"):
                await send_error(send, 415, f"Content-Type {body_type!r} is not accepted: send the "
                                            f"{_search_noun(path)} request as application/json")
                return
            if body_type not in CSV_MEDIA_TYPES and (path.startswith("/predict/") or path.startswith(SEARCH_ROUTES)):
                await self._json_body(scope, receive, send, path)
                return
        await self.app(scope, receive, send)

    async def _json_body(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        """Read a JSON body, refuse what its parsers would misread, and pass it on without a byte-order mark."""
        body = await read_body(receive)
        if path.startswith(SEARCH_ROUTES) and len(body) > MAX_DESIGN_BODY_BYTES:
            noun = _search_noun(path)
            await send_error(send, 413, f"a {noun} request of {len(body)} bytes; the limit is "
                                        f"{MAX_DESIGN_BODY_BYTES} bytes (a {noun} request names at most a few "
                                        "targets and parameters)")
            return
        if body.startswith(UTF8_BOM):
            body = body[len(UTF8_BOM):]
            scope = _content_length(scope, len(body))
        if len(body) <= INLINE_CHECK_BYTES:
            key = repeated_key(body)
        else:
            key = await anyio.to_thread.run_sync(repeated_key, body)
        if key is not None:
            message = (f"the key {key!r} appears twice in one JSON object; send each key once (JSON parsers "
                       "disagree on which one counts)")
            await send_json(send, 400, {"error": message, "detail": [
                {"type": "duplicate_key", "loc": [key], "msg": message}]})
            return
        await self.app(scope, replaying(body, receive), send)


def _search_noun(path: str) -> str:
    return "design" if path.startswith("/design/") else "suggestion"


async def invalid_parameters(request: Any, exc: Any) -> Any:
    """FastAPI's answer to a bad query or path parameter of the mounted routes (e.g. `?explain=maybe`), in the
    service's error shape and status (400) instead of FastAPI's bare 422 `detail` list; registered by
    `service.service` as the handler of `fastapi.exceptions.RequestValidationError`."""
    from starlette.responses import Response

    detail = []
    for error in list(exc.errors())[:20]:
        loc = [part if isinstance(part, int) else str(part) for part in error.get("loc", ())]
        where = ".".join(str(part) for part in loc[1:]) or "request"
        allowed = "; allowed: true or false" if error.get("type") == "bool_parsing" else ""
        sent = error.get("input")
        detail.append({"type": str(error.get("type", "invalid")), "loc": loc,
                       "msg": f"{where} = {sent!r:.80}: {error.get('msg', 'invalid')}{allowed}"})
    message = detail[0]["msg"] if detail else "invalid request parameters"
    return Response(to_json({"error": message, "detail": detail}), status_code=400, media_type="application/json")

