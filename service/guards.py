"""Checks made on a request before BentoML reads its body.

`RequestGuard` is an ASGI middleware inside BentoML's metrics and tracing middleware (so refused requests are
still counted) and outside its router. Today it only insists on JSON for the prediction routes: BentoML would
otherwise hand a multipart or form body to its multipart parser, whose errors surface as 500s.

Bearer-token authentication and the body-size limit (`service.security`) are middleware of the same kind,
registered before this one in `service.service` so they wrap it: an unauthenticated or over-size request is
refused before anything else looks at it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from pydantic_core import to_json

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_ROUTES = frozenset({"/predict/electrode", "/predict/gdl"})


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


class RequestGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in JSON_ROUTES and scope["method"] == "POST":
            content_types = header_values(scope, b"content-type")
            media_type = content_types[0].decode("latin-1").split(";")[0].strip().lower() if content_types else ""
            # No Content-Type is read as JSON, as BentoML does.
            if media_type not in ("", "application/json"):
                await send_error(send, 415, f"Content-Type {media_type!r} is not accepted: send the request body "
                                            "as application/json")
                return
        await self.app(scope, receive, send)
