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


async def send_json(send: Send, status: int, body: Any) -> None:
    payload = to_json(body)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


class RequestGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in JSON_ROUTES and scope["method"] == "POST":
            media_type = ""
            for name, value in scope["headers"]:
                if name == b"content-type":
                    media_type = value.decode("latin-1").split(";")[0].strip().lower()
                    break
            # No Content-Type is read as JSON, as BentoML does.
            if media_type not in ("", "application/json"):
                await send_json(send, 415, {
                    "error": f"Content-Type {media_type!r} is not accepted: send the request body as application/json",
                    "detail": []})
                return
        await self.app(scope, receive, send)
