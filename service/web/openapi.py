"""The OpenAPI document at /docs.json, completed with the error responses the service really sends.

BentoML generates the document from the service's APIs, but documents a 400 whose `detail` is a string, while the
service answers with a list of problems, and does not know the 401, 413, 415, 422 and 503 answers of the security
middleware, the request guard, the designer and the predictor at all. `OpenAPIErrorDocs` rewrites the document on
its way out: error schemas generated from the pydantic models of the error body
(`service.formats.schemas.CellMfgError`), the error answers of every operation, the bearer-token scheme when
authentication is on, and the catalogue served now. Clients and schema-driven fuzzers (schemathesis) then see a
schema that every response matches.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from service.engine.config import ConfigError
from service.formats.schemas import CellMfgError
from service.web.guards import ASGIApp, Message, Receive, Scope, Send
from service.web.security import SecuritySettings

log = logging.getLogger("cellmfg.service")

ERROR_SCHEMA_NAME = CellMfgError.__name__
_REF_TEMPLATE = "#/components/schemas/{model}"
_ERROR_REF = {"$ref": _REF_TEMPLATE.format(model=ERROR_SCHEMA_NAME)}


def error_schemas() -> dict[str, Any]:
    """The error body's JSON schema and those it refers to, by component name, generated from the pydantic models."""
    schema = CellMfgError.model_json_schema(ref_template=_REF_TEMPLATE)
    referenced = schema.pop("$defs", {})
    return {ERROR_SCHEMA_NAME: schema, **referenced}


_BODY_ERRORS = {
    "400": "Invalid request: one entry per problem, naming row, field, value and what is allowed",
    "413": "Too many rows, or a body larger than CELLMFG_MAX_BODY_BYTES",
    "415": "A body that is not application/json",
    "503": "A model this request needs is not loaded",
}
_QUERY_ERROR = "A missing or invalid query parameter: one entry per problem, naming the parameter and the value"
_AUTH_ERROR = "Missing or invalid bearer token (only when the server sets CELLMFG_API_TOKEN)"
_INFEASIBLE_DESIGN = ("No recipe meets every target within its tolerance: the error names each target's reachable "
                      "range; `reachable` and `closest` (the recipe found closest) come with it")
_UNREACHABLE_WINDOW = ("No recipe in the searched box can reach a wanted window: the error names each such window and "
                       "its target's reachable range (`reachable`)")


def document_errors(spec: dict[str, Any], settings: SecuritySettings) -> dict[str, Any]:
    """`spec` (BentoML's OpenAPI document, changed in place and returned) with the service's real error answers."""
    components = spec.setdefault("components", {})
    components.setdefault("schemas", {}).update(error_schemas())
    if settings.auth_enabled:
        components.setdefault("securitySchemes", {})["bearerAuth"] = {
            "type": "http", "scheme": "bearer", "description": "the server's CELLMFG_API_TOKEN"}
    _document_catalogue(spec)
    for path, item in spec.get("paths", {}).items():
        for method, operation in item.items():
            if method not in {"get", "put", "post", "delete", "patch", "head", "options"}:
                continue
            responses = operation.setdefault("responses", {})
            if "requestBody" in operation:
                # BentoML leaves `required` out, yet an empty body is refused (400): the body is required.
                operation["requestBody"]["required"] = True
                for status, description in _BODY_ERRORS.items():
                    responses[status] = {"description": description,
                                         "content": {"application/json": {"schema": _ERROR_REF}}}
                # A design whose targets no recipe meets, or a suggestion window none reaches, is a 422
                # (service.design.search, service.design.suggest), documented beside the 400s.
                if path.startswith("/design/"):
                    responses["422"] = {"description": _INFEASIBLE_DESIGN,
                                        "content": {"application/json": {"schema": _ERROR_REF}}}
                elif path.startswith("/suggest/"):
                    responses["422"] = {"description": _UNREACHABLE_WINDOW,
                                        "content": {"application/json": {"schema": _ERROR_REF}}}
            if any(parameter.get("in") == "query" for parameter in operation.get("parameters", [])):
                # A bad or missing query parameter is answered 400 in the service's shape
                # (service.web.guards.invalid_parameters), never with FastAPI's 422 list.
                if "HTTPValidationError" in str(responses.get("422", "")):
                    responses.pop("422")
                responses["400"] = {"description": _QUERY_ERROR,
                                    "content": {"application/json": {"schema": _ERROR_REF}}}
            if settings.auth_enabled:
                if path in settings.open_paths:
                    operation["security"] = []
                else:
                    operation["security"] = [{"bearerAuth": []}]
                    responses["401"] = {"description": _AUTH_ERROR,
                                        "content": {"application/json": {"schema": _ERROR_REF}}}
    return spec


def _document_catalogue(spec: dict[str, Any]) -> None:
    """What the service serves now (the catalogue changes while it runs): the datasets `chemistry` and `dataset`
    accept, and one operation per served model with the rows its contract names. CSV bodies are described in the
    operations' text, not as a schema: no JSON Schema says which strings are a valid CSV, and a schema that
    accepted any string would promise what the service refuses."""
    from service.formats.schemas import catalogue_is_live, served_datasets, served_models

    schemas = spec.get("components", {}).get("schemas", {})
    for schema_name, path, param, kind in (("ElectrodeRequest", "/predict/electrode", "chemistry", "electrode"),
                                           ("GdlRequest", "/predict/gdl", "dataset", "gdl")):
        served = list(served_datasets(kind))
        body = spec.get("paths", {}).get(path, {}).get("post", {}).get("requestBody", {})
        inline = body.get("content", {}).get("application/json", {}).get("schema", {})
        for holder in (schemas.get(schema_name, {}), inline):  # BentoML writes the schema in both places
            prop = holder.get("properties", {}).get(param)
            if prop is None:
                continue
            prop["examples"] = served
            if catalogue_is_live() and served:
                for constraint in ("pattern", "minLength", "maxLength"):  # the enum says it all
                    prop.pop(constraint, None)
                prop["enum"] = served
            prop["description"] = (f"{kind} dataset whose models answer; served now: {', '.join(served) or 'none'} "
                                   "(GET /models, `datasets`)")
    paths = spec.get("paths", {})
    template = paths.get("/predict/{model_name}")
    models = served_models()
    if template is None or not models:
        return
    # One documented operation per served model, each with its own features, instead of the template.
    del paths["/predict/{model_name}"]
    for name, features in sorted(models.items()):
        operation = json.loads(json.dumps(template))
        post = operation["post"]
        post["parameters"] = [p for p in post.get("parameters", []) if p.get("in") != "path"]
        post["summary"] = f"Model {name}: rows with {', '.join(f.name for f in features)}"
        post["operationId"] = f"predict_{name}"
        row = {"type": "object", "additionalProperties": False, "required": [f.name for f in features],
               "properties": {f.name: {"type": "number", "minimum": f.physical_min, "maximum": f.physical_max,
                                       "description": f"[{f.unit}]"} for f in features}}
        body = post["requestBody"]["content"]["application/json"]
        body["schema"] = {"type": "object", "additionalProperties": False, "required": ["rows"], "properties": {
            "rows": {"type": "array", "minItems": 1, "items": row},
            "explain": {"type": "boolean", "default": False}, "interval": {"type": "boolean", "default": False}}}
        body.pop("example", None)
        post["requestBody"]["content"] = {"application/json": body}
        paths[f"/predict/{name}"] = operation


class OpenAPIErrorDocs:
    """Rewrites the OpenAPI document at `path` (BentoML's /docs.json) with `document_errors`."""

    def __init__(self, app: ASGIApp, path: str = "/docs.json", settings: SecuritySettings | None = None) -> None:
        self.app = app
        self.path = path
        self._settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != self.path or scope.get("method") != "GET":
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        parts: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        if start is None:
            return
        body = b"".join(parts)
        if start.get("status") == 200:
            try:
                settings = self._settings or SecuritySettings.from_env()
                body = json.dumps(document_errors(json.loads(body), settings)).encode()
            except (ValueError, ConfigError, AttributeError, TypeError):
                log.exception("could not complete the OpenAPI document; serving BentoML's as it is")
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})
