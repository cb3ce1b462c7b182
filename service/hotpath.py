"""The kind endpoints' small JSON requests answered straight from ASGI, beside BentoML's API dispatch.

BentoML's dispatch of an API call (building the request object and the context, inspecting the method's signature,
dependency injection, the response wrapping) costs ~0.2-0.4 ms per request in process, more than a one-row
prediction itself (~0.07 ms; measured with the service's ASGI app called directly, issue 28). `HotPredict`,
the innermost middleware, answers POST /predict/electrode and /predict/gdl itself when the JSON body is small and
valid: the same request model validates it
(`ElectrodeRequest` / `GdlRequest`, exactly as BentoML does: `model_validate_json`), the same
`Answers.predict` computes, records and encodes the answer, and the answer carries BentoML's `server` header. So
the answer is the same bytes; everything outside it stays: the guards and the token check before it, BentoML's
request metrics and timeout around it, the service's own metrics and ledger inside `Answers.predict`.

Everything else takes BentoML's path unchanged: a body that fails validation (BentoML's 400 names each problem, as
documented), a body over `HOT_BODY_BYTES` (large requests run in worker threads; the dispatch is nothing there),
and any request before the service instance has started (`serve` is called by `CellMfgService.__init__`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from starlette.datastructures import QueryParams
from starlette.types import ASGIApp, Receive, Scope, Send

from cellmfg.domain import Kind
from service.formats.jsonresp import json_response
from service.formats.schemas import ElectrodeRequest, GdlRequest
from service.web.guards import header_values, read_body, replaying

if TYPE_CHECKING:
    from service.answers import Answers

log = logging.getLogger("cellmfg.service")

# Bodies up to this size (~250 electrode rows) are answered here: the requests Answers.predict runs on the event
# loop anyway (service.answers.INLINE_ROWS). Larger ones go through BentoML.
HOT_BODY_BYTES = 64 * 1024
# What BentoML's API answers carry (`_bentoml_impl.server.app._add_response_headers`, service name "cellmfg").
SERVER_HEADER = "BentoML Service/cellmfg"
# BentoML's answer when an API method raises (the error is in the log).
UNEXPECTED_ERROR = "An unexpected error has occurred, please check the server log."
_TRUE = ("1", "true", "yes", "on")

_ROUTES: dict[str, tuple[Kind, Any, str]] = {
    "/predict/electrode": ("electrode", ElectrodeRequest, "chemistry"),
    "/predict/gdl": ("gdl", GdlRequest, "dataset"),
}

_answers: Answers | None = None


def serve(answers: Answers | None) -> None:
    """The answers the hot path uses (the running service instance's), or None: every request goes to BentoML."""
    global _answers
    _answers = answers


def shadow_asked(query_string: bytes | str) -> bool:
    """`?shadow=true` on a kind endpoint: show the challengers' predictions in the JSON answer. A query parameter,
    not a body field, so the documented request bodies stay as they are; an unreadable value shows nothing."""
    if not query_string:
        return False
    return QueryParams(query_string).get("shadow", "").strip().lower() in _TRUE


def _first_header(scope: Scope, name: bytes) -> str | None:
    values = header_values(scope, name)
    return values[0].decode("latin-1") if values else None


class HotPredict:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answers = _answers
        route = _ROUTES.get(scope.get("path", "")) if scope["type"] == "http" and scope["method"] == "POST" else None
        if route is None or answers is None:
            await self.app(scope, receive, send)
            return
        # The guards before this have read the body already (it is replayed from memory) and sent CSV bodies to
        # their own routes: what arrives here is JSON.
        body = await read_body(receive)
        kind, request_model, dataset_field = route
        if len(body) > HOT_BODY_BYTES:
            await self.app(scope, replaying(body, receive), send)
            return
        try:
            request = request_model.model_validate_json(body or b"{}")
        except Exception:  # BentoML validates again and answers the problems in the documented shape
            await self.app(scope, replaying(body, receive), send)
            return
        try:
            response = await answers.predict(kind, getattr(request, dataset_field), request.rows, request.explain,
                                             request.interval, _first_header(scope, b"accept"), request.operator,
                                             shadow_asked(scope.get("query_string", b"")))
        except Exception:
            log.exception("POST %s failed", scope.get("path"))
            response = json_response({"error": UNEXPECTED_ERROR}, 500)
        response.headers["server"] = SERVER_HEADER
        await response(scope, receive, send)

