"""Checks made on a request before BentoML reads its body.

`RequestGuard` is an ASGI middleware inside BentoML's metrics and tracing middleware (so refused requests are
still counted) and outside its router. It insists on JSON or CSV for the prediction routes (BentoML would otherwise
hand a multipart or form body to its multipart parser, whose errors surface as 500s) and sends CSV bodies for the
kind endpoints to the routes that read them.

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
# CSV bodies for the kind endpoints go to FastAPI routes that read the raw body (service.service): BentoML's API
# would parse any body as JSON first.
CSV_ROUTES = {"/predict/electrode": "/_csv/predict/electrode", "/predict/gdl": "/_csv/predict/gdl"}
CSV_MEDIA_TYPES = frozenset({"text/csv", "application/csv"})


def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type header value, lower case, without parameters ("" when absent)."""
    return (content_type or "").split(";")[0].strip().lower()


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
        path = scope.get("path", "")
        if scope["type"] == "http" and scope["method"] == "POST":
            content_types = header_values(scope, b"content-type")
            body_type = media_type(content_types[0].decode("latin-1") if content_types else None)
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
            # --- design: the recipe-design routes take JSON only, refused here like the others (service.design) ---
            elif path.startswith("/design/") and body_type not in ("", "application/json"):
                await send_error(send, 415, f"Content-Type {body_type!r} is not accepted: send the design request "
                                            "as application/json")
                return
        # --- end design ---
        await self.app(scope, receive, send)
