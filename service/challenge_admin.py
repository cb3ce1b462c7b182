"""`POST /models/{name}/challenge/promote`: the live gate of `cellmfg registry promote --challenger`, from the page.

The same decision, by the same function (`cellmfg.challenge_gate.promote_challenger`): the service computes the
paired comparison of the champion and challenger it serves (as `GET /models/{name}/challenge` shows it), and the
gate checks the registry the service follows, logs the comparison as metrics on the challenger's version, and moves
the aliases only when the interval lies below 0, or with `{"override": true, "reason": "…"}` (the reason recorded as
a tag). The service then swaps the new champion in at its next poll, as after the CLI.

Promotion changes what the line is answered with, so it needs the API token: a service without one
(CELLMFG_API_TOKEN unset, anyone on the port can call it) answers 403, and the token is checked here as well as in
the security middleware, so a path opened with CELLMFG_OPEN_PATHS does not open promotion. Answers: 200 with what
moved; 400 a bad body; 401 no or a wrong token; 403 no token configured; 404 a model not served, no challenger loaded
or the ledger off; 409 the gate refuses (the reason and the comparison), no outcomes yet, the registry moved since
the service's last poll, or a bundle source (no registry to promote in); 503 the registry unreachable.

Imported by `service.service` at start (the route's documentation): numpy, MLflow and the ledger load on first use.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import to_json
from starlette.requests import Request
from starlette.responses import Response

from service.engine.config import ConfigError

if TYPE_CHECKING:
    from service.answers import Answers

ONNX_SUFFIX = "_onnx"
_ERROR_REF = {"$ref": "#/components/schemas/CellMfgError"}
_BODY_SHAPES = '{"override": false} or {"override": true, "reason": "why"}'


class PromoteChallengerRequest(BaseModel):
    """The body of POST /models/{name}/challenge/promote."""

    model_config = ConfigDict(extra="forbid")

    override: bool = Field(False, description="promote even when the live comparison does not show the challenger "
                                              "better; needs `reason`")
    reason: str | None = Field(None, max_length=1000, description="why the override (recorded as the MLflow tag "
                                                                  "promotion_override_reason on the version)")


class PromoteChallengerResponse(BaseModel):
    """What moved in the registry: the challenger is champion, the former champion `previous`."""

    model: str = Field(description="the ONNX model, e.g. density_nmc_onnx")
    champion_version: str = Field(description="the version now holding `champion` (the former challenger)")
    previous_version: str = Field(description="the former champion, now `previous` (cellmfg registry rollback)")
    promoted_by: str = Field(description="live_comparison, or override")
    reason: str = Field(description="the gate's verdict: n, the difference and its interval")
    override_reason: str | None = None
    comparison: dict[str, Any] = Field(description="the live comparison the gate judged (as GET …/challenge)")
    served: str = Field(description="when the service answers with the new champion")


PROMOTE_DOCS: dict[str, Any] = {
    # No request example: the documented examples are posted as they are by tests/test_openapi_examples.py, and a
    # promotion changes the registry. The shapes are in the schema's description.
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        **PromoteChallengerRequest.model_json_schema(),
        "description": f'{_BODY_SHAPES}, e.g. {{"override": true, "reason": "binder lot 7 is the new normal"}}'}}}},
    "responses": {
        "200": {"description": "Promoted: the challenger is champion (served from the next poll)",
                "content": {"application/json": {"schema": PromoteChallengerResponse.model_json_schema()}}},
        # 401 (no or a wrong token) is documented by service.web.openapi when the server has a token, as for every path.
        "403": {"description": "The service has no API token (CELLMFG_API_TOKEN): promotion over HTTP is off",
                "content": {"application/json": {"schema": _ERROR_REF}}},
        "404": {"description": "No served model of that name, no challenger loaded, or the ledger is off",
                "content": {"application/json": {"schema": _ERROR_REF}}},
        "409": {"description": "Not promoted: the gate refuses (its reason; `comparison` and `overridable` "
                               "beside it), no outcomes yet, the registry moved since the service's last poll, or "
                               "the service serves a bundle (no registry)",
                "content": {"application/json": {"schema": _ERROR_REF}}},
        "503": {"description": "The MLflow registry is unreachable; nothing changed",
                "content": {"application/json": {"schema": _ERROR_REF}}}}}


class RefusedError(Exception):
    """A promotion request answered with an error: `status`, the message, and extra fields of the body."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.headers, self.extra = status, message, headers or {}, extra

    def response(self) -> Response:
        return _json({"error": self.message, "detail": [], **self.extra}, self.status, self.headers)


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(to_json(body), status_code=status, media_type="application/json", headers=headers)


def check_token(authorization: list[str]) -> None:
    """Promotion needs the service's API token: 403 when none is configured, 401 when it is missing or wrong
    (the security middleware's own comparison, `token_verdict`)."""
    from service.web.security import REALM, SecuritySettings, token_verdict

    try:
        settings = SecuritySettings.from_env()
    except ConfigError as error:
        raise RefusedError(500, "the server's security settings are invalid; see the server log") from error
    if settings.token is None:
        raise RefusedError(403, "promotion over HTTP needs the service's API token, and this service has none "
                                "(CELLMFG_API_TOKEN unset); promote with `cellmfg registry promote --challenger NAME`")
    # Starlette decodes header bytes as latin-1, so this gives back the bytes the middleware compares.
    verdict = token_verdict([value.encode("latin-1", "replace") for value in authorization],
                            hashlib.sha256(settings.token).digest())
    if verdict == "missing":
        raise RefusedError(401, "promotion needs the API token: send 'Authorization: Bearer <token>'",
                           {"www-authenticate": f'Bearer realm="{REALM}"'})
    if verdict != "ok":
        raise RefusedError(401, "the bearer token is not valid for this server",
                           {"www-authenticate": f'Bearer realm="{REALM}", error="invalid_token"'})


def parse_body(data: bytes) -> PromoteChallengerRequest:
    """The request body, or 400 naming the problem."""
    if not data.strip():
        raise RefusedError(400, f"empty body: expected {_BODY_SHAPES}")
    try:
        body = PromoteChallengerRequest.model_validate(json.loads(data))
    except (ValueError, ValidationError) as error:
        detail = ([{"type": str(e["type"]), "loc": ["body", *e["loc"]], "msg": f"{e['msg']}"}
                   for e in error.errors()] if isinstance(error, ValidationError) else [])
        problem = detail[0]["msg"] if detail else "not JSON"
        raise RefusedError(400, f"invalid body ({problem}): expected {_BODY_SHAPES}", detail=detail) from error
    if body.override and not (body.reason or "").strip():
        raise RefusedError(400, f"override needs a reason (recorded on the version): {_BODY_SHAPES}")
    if body.reason is not None and not body.override:
        raise RefusedError(400, 'reason goes with override: {"override": true, "reason": "why"}')
    return body


async def promote_challenger(answers: Answers, model_name: str, request: Request) -> Response:
    """POST /models/{name}/challenge/promote (see the module docstring)."""
    try:
        check_token(request.headers.getlist("authorization"))
        body = parse_body(await request.body())
        return _json(await _promote(answers, model_name, body))
    except RefusedError as refused:
        return refused.response()


async def _promote(answers: Answers, model_name: str, body: PromoteChallengerRequest) -> dict[str, Any]:
    from cellmfg import challenge_gate
    from cellmfg.challenge import paired_comparison
    from service.engine.sources import RegistrySource
    from service.ledger.shadow import paired_outcomes

    name = model_name if model_name.endswith(ONNX_SUFFIX) else f"{model_name}{ONNX_SUFFIX}"
    champion = answers.store.get(name)
    if champion is None:
        served = ", ".join(m.name for m in answers.store.models())
        raise RefusedError(404, f"model = {model_name!r} is not served; served models: {served}")
    source = answers.store.source
    if not isinstance(source, RegistrySource):
        raise RefusedError(409, f"this service serves {source.public_description}: there is no registry to promote "
                                "in; promote in the registry (`cellmfg registry promote --challenger NAME`) and "
                                "export a new bundle")
    challenger = answers.challengers.get(name) if answers.challengers is not None else None
    if challenger is None:
        keras = name.removesuffix(ONNX_SUFFIX)
        raise RefusedError(404, f"{name} has no challenger loaded: register one with `cellmfg train from-ledger "
                                f"--model {keras}` and `cellmfg registry promote --alias challenger`")
    if answers.recorder is None:
        raise RefusedError(404, "the prediction ledger is off (CELLMFG_LEDGER_URL=off): no outcomes to judge on")
    pairs = await anyio.to_thread.run_sync(paired_outcomes, answers.recorder.ledger.engine, name,
                                           challenger.version, champion.version)
    comparison = paired_comparison(pairs.measured, pairs.champion, pairs.challenger, pairs.groups)
    reason = body.reason.strip() if body.override and body.reason else None

    def gate() -> challenge_gate.ChallengerPromotion:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=source.tracking_uri, registry_uri=source.tracking_uri)
        return challenge_gate.promote_challenger(client, source.tracking_uri, name, comparison,
                                                 (champion.version, challenger.version), reason)

    try:
        result = await anyio.to_thread.run_sync(gate)
    except challenge_gate.ChallengeGateError as error:
        # `overridable`: the gate judged and refused (an override with a reason would promote); otherwise the
        # challenger cannot be judged as asked (no outcomes yet, the registry moved, another contract).
        raise RefusedError(409, str(error), comparison=comparison.model_dump(),
                           overridable=isinstance(error, challenge_gate.LiveGateError)) from error
    except Exception as error:  # MLflow's store errors: the registry could not be read or written
        problem = f"{type(error).__name__}: {source.redact(str(error))[:300]}"
        raise RefusedError(503, f"{source.public_description} could not be read or updated ({problem}); retry "
                                "when it answers") from error
    promoted_by = "override" if result.override_reason else "live_comparison"
    return PromoteChallengerResponse(
        model=result.onnx_name, champion_version=result.champion_version, previous_version=result.previous_version,
        promoted_by=promoted_by, reason=result.reason, override_reason=result.override_reason,
        comparison=result.comparison,
        served=f"from its next poll (every {answers.settings.poll_seconds:g} s)").model_dump()
