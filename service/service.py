"""The cellmfg prediction service (BentoML 1.4): electrode and GDL predictions with domain checks, conformal
intervals and exact SHAP explanations, from ONNX models that hot-reload when their registry alias moves.

Run it with `cellmfg serve` or `bentoml serve service.service:CellMfgService` from the project root; configuration
is by environment variables (see `service.engine.config.Settings`). Routes:
  POST /predict/electrode, POST /predict/gdl   predictions for any served dataset (BentoML APIs, examples at /);
                                               JSON in, JSON or CSV out (`Accept: text/csv`)
  POST /predict/{model_name}                   any one served model (a mounted FastAPI route: JSON or CSV)
  GET  /models                                 what is loaded (a mounted FastAPI app, since BentoML APIs are POST)
  GET  /livez, /readyz, /metrics               BentoML's probes (ready once every model of the catalogue at start
                                               is loaded) and metrics
CSV bodies (`Content-Type: text/csv`) for the two kind endpoints are routed by `service.web.guards.RequestGuard` to
FastAPI routes of their own, which read the raw body (a BentoML API parses it as JSON first).
The models served are the source's catalogue (every ONNX model holding the alias, or every model in the bundle),
re-read at each poll: promoted models appear and retired ones disappear without a restart.
"""

from __future__ import annotations

import inspect
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

import bentoml
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.responses import Response

from service import hotpath
from service.challenge_admin import PROMOTE_DOCS
from service.design.schemas import (
    DesignBound,
    DesignTarget,
    ElectrodeDesignRequest,
    ElectrodeDesignResponse,
    GdlDesignRequest,
    GdlDesignResponse,
)
from service.design.suggest_schemas import (
    ElectrodeSuggestRequest,
    ElectrodeSuggestResponse,
    GdlSuggestRequest,
    GdlSuggestResponse,
    WindowBound,
)
from service.engine.config import Settings
from service.engine.metrics import RouteLabels
from service.formats.schemas import (
    ElectrodeRequest,
    ElectrodeResponse,
    GdlRequest,
    GdlResponse,
    ModelRequest,
    ModelsResponse,
)
from service.ui import DocsPage, mount_ui  # page
from service.web.guards import CSV_ROUTES, RequestGuard, invalid_parameters
from service.web.logs import quiet_client_errors, show_service_logs
from service.web.openapi import OpenAPIErrorDocs
from service.web.patches import (
    patch_bentoml_metric_labels,
    patch_bentoml_timeout,
    patch_uvicorn_connection_limits,
    patch_uvicorn_single_write,
)
from service.web.security import SecurityMiddleware

if TYPE_CHECKING:
    from service.answers import Answers

log = logging.getLogger("cellmfg.service")

models_app = FastAPI(title="cellmfg models", docs_url=None, redoc_url=None, openapi_url=None)
# A bad query parameter (`?explain=maybe`) is answered 400 in the service's error shape, not FastAPI's 422.
models_app.add_exception_handler(RequestValidationError, invalid_parameters)
_MODEL_ROUTE_DOCS: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": ModelRequest.model_json_schema()}}},
    "responses": {"404": {"description": "No served model of that name; the answer lists the served ones",
                          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CellMfgError"}}}}}}
_OUTCOMES_DOCS: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "required": ["outcomes"], "properties": {"outcomes": {
        "type": "array", "items": {"type": "object"}}},
        "description": 'e.g. {"outcomes": [{"prediction_id": "<an answered id>", "values": {"density_g_cm3": 3.05}, '
                       '"units": {"density_g_cm3": "g/cm3"}, "measured_at": "2026-01-05T10:00:00Z"}]}'}},
    "text/csv": {"schema": {"type": "string", "description": "prediction_id,density_g_cm3,note\\n<an answered id>,"
                            "3.05,sheet 7"}}}}}
# The static page at /ui/, and /docs -> the API docs at / (service.ui).
mount_ui(models_app)


@bentoml.service(
    name="cellmfg",
    workers=1,
    # The slowest answer, a 10,000-row batch with explain=true, takes a few seconds (scripts/bench_service.py);
    # BentoML's default of 60 s leaves ten times that for a busy machine.
    traffic={"timeout": 60},
    # Two BentoML extras cost more per request than a single-row prediction (scripts/bench_service.py): the
    # access-log line and an OpenTelemetry span that, with no exporter configured, goes nowhere. Request counts
    # and latencies stay in BentoML's Prometheus metrics. Turn them back on with BENTOML_CONFIG_OVERRIDES=
    # '{"services": {"cellmfg": {"logging": {"access": {"enabled": true}}, "tracing": {"excluded_urls": []}}}}'
    logging={"access": {"enabled": False}},
    tracing={"excluded_urls": ["/predict/electrode", "/predict/gdl"]},
)
@bentoml.asgi_app(models_app, path="/")
class CellMfgService:
    """Predicts electrode density and mass loading, and GDL tortuosity, from manufacturing parameters."""

    def __init__(self) -> None:
        show_service_logs()
        quiet_client_errors()
        patch_bentoml_timeout()  # BentoML's request timeout keeps every request's timer alive (service.web.patches)
        patch_bentoml_metric_labels(RouteLabels(route_templates()))  # and its metrics label raw paths
        # Imported here, in the worker: BentoML's supervisor imports this module only to read the service's
        # definition, and needs neither numpy, onnxruntime nor the models (service.answers).
        from service.answers import Answers

        self.settings = Settings.from_env()
        # uvicorn never times out a connection that has not sent a whole request, nor limits connections
        patch_uvicorn_connection_limits(self.settings.header_timeout_seconds, self.settings.max_connections)
        patch_uvicorn_single_write()  # and writes an answer's headers and body apart: a crash could tear it
        self.answers: Answers = Answers(self.settings)
        hotpath.serve(self.answers)  # small JSON predictions skip BentoML's dispatch (service.hotpath)
        store = self.answers.store
        log.info("cellmfg service: %d/%d models from %s, polling every %g s", len(store.models()), len(store.names),
                 store.source.description, self.settings.poll_seconds)

    def __is_ready__(self) -> bool:
        return self.answers.ready

    @bentoml.on_shutdown
    def stop_polling(self) -> None:
        hotpath.serve(None)
        self.answers.stop()

    @bentoml.api(route="/predict/electrode", input_spec=ElectrodeRequest, output_spec=ElectrodeResponse)
    async def predict_electrode(self, chemistry: str, rows: list[dict[str, float]], explain: bool = False,
                                interval: bool = False, operator: str | None = None, *,
                                ctx: bentoml.Context) -> Response:
        """Electrode density [g/cm³] and mass loading [mg/cm²] per row, from the chemistry's models.

        `chemistry` is any served electrode dataset (GET /models lists them under `datasets`): the paper's and a
        lab's own once promoted. Each row says whether it lies inside the training range of every feature
        (`in_domain`) and lists the features outside it. `explain` adds exact SHAP values, `interval` a conformal
        prediction interval. Bad input is answered 400 with one entry per problem naming row, field, value and what
        is allowed.

        CSV: send `Content-Type: text/csv` (a header with the feature columns, units in the names as in
        data/*.csv; other columns such as sample_id are echoed) with `?chemistry=nmc&explain=false&interval=true`,
        and/or `Accept: text/csv` to get the rows back with the predictions as columns. CSV errors name line and
        column.
        """
        return _with_status(await self.answers.predict("electrode", chemistry, rows, explain, interval,
                                                       ctx.request.headers.get("accept"), operator,
                                                       _shadow_asked(ctx)), ctx)

    @bentoml.api(route="/predict/gdl", input_spec=GdlRequest, output_spec=GdlResponse)
    async def predict_gdl(self, dataset: str, rows: list[dict[str, float]], explain: bool = False,
                          interval: bool = False, operator: str | None = None, *, ctx: bentoml.Context) -> Response:
        """Gas-diffusion-layer tortuosity per row, from the dataset's model; the same extras as the electrodes."""
        return _with_status(await self.answers.predict("gdl", dataset, rows, explain, interval,
                                                       ctx.request.headers.get("accept"), operator,
                                                       _shadow_asked(ctx)), ctx)

    # Recipe design, the inverse of /predict (service.design.search), and experiment suggestions
    # (service.design.suggest).
    @bentoml.api(route="/design/electrode", input_spec=ElectrodeDesignRequest, output_spec=ElectrodeDesignResponse)
    async def design_electrode(self, chemistry: str, targets: dict[str, DesignTarget],
                               fixed: dict[str, float] | None = None, bounds: dict[str, DesignBound] | None = None,
                               k: int = 5, explain: bool = True, operator: str | None = None) -> Response:
        """Electrode recipes that give the wanted density and/or mass loading, with the parameters you fix.

        `chemistry` is any served electrode dataset, as at /predict/electrode. The free parameters are searched
        inside the models' training range (or the narrower `bounds`), so every recipe is in domain; roll speed
        takes only the settings the data holds. Up to `k` diverse recipes meeting every target within its
        tolerance, closest first, each with the row /predict answers for it (prediction, 90 % interval, domain
        check, SHAP), and the reachable range of every target. Bad input is answered 400 naming the field; a target
        nothing reaches 422 with the reachable range and the closest recipe found.
        """
        return await self.answers.design("electrode", chemistry, targets, fixed or {}, bounds or {}, k, explain,
                                         operator)

    @bentoml.api(route="/design/gdl", input_spec=GdlDesignRequest, output_spec=GdlDesignResponse)
    async def design_gdl(self, dataset: str, targets: dict[str, DesignTarget], fixed: dict[str, float] | None = None,
                         bounds: dict[str, DesignBound] | None = None, k: int = 5, explain: bool = True,
                         operator: str | None = None) -> Response:
        """GDL structures that give the wanted tortuosity; the same search and answer as /design/electrode."""
        return await self.answers.design("gdl", dataset, targets, fixed or {}, bounds or {}, k, explain, operator)

    @bentoml.api(route="/suggest/electrode", input_spec=ElectrodeSuggestRequest,
                 output_spec=ElectrodeSuggestResponse)
    async def suggest_electrode(self, chemistry: str, k: int = 4, fixed: dict[str, float] | None = None,
                                bounds: dict[str, DesignBound] | None = None,
                                window: dict[str, WindowBound] | None = None, explain: bool = False,
                                operator: str | None = None) -> Response:
        """Which electrode recipes to measure next: k diverse recipes where the models' ensemble disagrees most, or,
        with a wanted `window` per target, the largest chance that the measurement lands inside it.

        Each suggestion comes with the row /predict answers for it (prediction, 90 % interval, ensemble spread,
        domain check), its score and why it was chosen, and a prediction_id to post its measurement against
        (POST /outcomes). Models without an ensemble spread answer space-filling recipes and say so. Bad input is
        answered 400 naming the field; a window no recipe reaches 422 with the reachable range.
        """
        return await self.answers.suggest("electrode", chemistry, k, fixed or {}, bounds or {}, window or {},
                                          explain, operator)

    @bentoml.api(route="/suggest/gdl", input_spec=GdlSuggestRequest, output_spec=GdlSuggestResponse)
    async def suggest_gdl(self, dataset: str, k: int = 4, fixed: dict[str, float] | None = None,
                          bounds: dict[str, DesignBound] | None = None, window: dict[str, WindowBound] | None = None,
                          explain: bool = False, operator: str | None = None) -> Response:
        """GDL structures to measure next; the same search and answer as /suggest/electrode."""
        return await self.answers.suggest("gdl", dataset, k, fixed or {}, bounds or {}, window or {}, explain,
                                          operator)

    @models_app.get("/models", response_model=ModelsResponse, tags=["Service APIs"],
                    summary="Loaded models: version, alias, test MAPE, lineage and feature ranges")
    def list_models(self) -> dict[str, Any]:
        return self.answers.describe_models()

    # -- CSV bodies and single models: FastAPI routes on the mounted app, since they read the raw body

    @models_app.post("/predict/{model_name}", tags=["Service APIs"], response_model=None,
                     summary="Any one served model, with the rows its contract names (JSON or CSV)",
                     openapi_extra=_MODEL_ROUTE_DOCS)
    async def predict_model(self, model_name: str, request: Request, explain: bool = False,
                            interval: bool = False, shadow: bool = False) -> Response:
        """One served model by name (GET /models lists them with their features), for targets and feature sets
        beyond the kind endpoints. JSON body {"rows": [...], "explain": false, "interval": false}, or a CSV body
        with `?explain=&interval=`; `Accept: text/csv` answers CSV. `?shadow=true` adds the challenger's
        prediction to a JSON answer."""
        return await self.answers.predict_model(model_name, request, explain, interval, shadow)

    @models_app.post(CSV_ROUTES["/predict/electrode"], include_in_schema=False)
    async def predict_electrode_csv(self, request: Request, chemistry: str = "", explain: bool = False,
                                    interval: bool = False, operator: str = "", shadow: bool = False) -> Response:
        return await self.answers.answer_csv(request, kind="electrode", dataset=chemistry, field="chemistry",
                                             explain=explain, interval=interval, operator=operator[:200] or None,
                                             shadow=shadow)

    @models_app.post(CSV_ROUTES["/predict/gdl"], include_in_schema=False)
    async def predict_gdl_csv(self, request: Request, dataset: str = "", explain: bool = False,
                              interval: bool = False, operator: str = "", shadow: bool = False) -> Response:
        return await self.answers.answer_csv(request, kind="gdl", dataset=dataset, field="dataset", explain=explain,
                                             interval=interval, operator=operator[:200] or None, shadow=shadow)

    # -- champion and challenger (service.answers.Answers.challenge)

    @models_app.get("/models/{model_name}/challenge", tags=["Service APIs"], response_model=None,
                    summary="The champion against its shadow-scored challenger on the line's measured rows",
                    openapi_extra={"responses": {"404": {
                        "description": "No served model of that name, no challenger loaded, or the ledger is off",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CellMfgError"}}}}}})
    async def model_challenge(self, model_name: str) -> Response:
        """Rows both the champion and its challenger (the version holding the `challenger` alias, scored in
        shadow beside every request) predicted and the QC lab measured: n, each MAPE, the paired difference
        challenger - champion (points; below 0 the challenger is better) with its 95 % bootstrap interval over
        groups, and whether `cellmfg registry promote --challenger` would promote it (and why)."""
        return await self.answers.challenge(model_name)

    @models_app.post("/models/{model_name}/challenge/promote", tags=["Service APIs"], response_model=None,
                     summary="Make the challenger champion if the live comparison shows it better (API token)",
                     openapi_extra=PROMOTE_DOCS)
    async def promote_challenger(self, model_name: str, request: Request) -> Response:
        """The gate of `cellmfg registry promote --challenger` (service.challenge_admin): promotes only when the
        paired difference's interval lies below 0, or with {"override": true, "reason": "…"} (recorded as a tag);
        logs the comparison on the version; 409 with the reason when it refuses. Needs the API token."""
        from service.challenge_admin import promote_challenger

        return await promote_challenger(self.answers, model_name, request)

    # -- the prediction ledger's outcomes (service.ledger.outcomes_http)

    @models_app.post("/outcomes", tags=["Service APIs"], response_model=None, openapi_extra=_OUTCOMES_DOCS,
                     summary="Measured values of answered predictions (JSON or CSV), all stored or none")
    async def post_outcomes(self, request: Request) -> Response:
        """A QC lab's measurements: per row the prediction_id the service answered (or sample_id with dataset) and
        the measured target values in the contract's units; optional `<target>_unit`, measured_at and note. One bad
        row (unknown id, unknown target, NaN, outside physical bounds, wrong unit, a target twice) gets a 400
        listing every problem, and nothing is written. The same value posted again adds nothing; a different one is
        a correction (history kept, the latest counts)."""
        return await self.answers.post_outcomes(request)

    @models_app.get("/outcomes", tags=["Service APIs"], response_model=None,
                    openapi_extra={"responses": {"404": {
                        "description": "No served model of that name; the answer lists the served ones",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CellMfgError"}}}}}},
                    summary="A model's measured predictions in the dataset CSV schema (for cellmfg train --data)")
    async def get_outcomes(self, model: str, since: datetime | None = None) -> Response:
        """Rows the model predicted whose target has been measured: sample_id (the prediction_id), group_id, the
        inputs and the latest measured targets; `since` (ISO 8601) keeps rows measured at or after it."""
        return await self.answers.get_outcomes(model, since)


def _shadow_asked(ctx: bentoml.Context) -> bool:
    """`?shadow=true` on a kind endpoint: show the challengers' predictions in the JSON answer. A query parameter,
    not a body field, so the documented request bodies stay as they are; an unreadable value shows nothing."""
    return hotpath.shadow_asked(ctx.request.scope.get("query_string", b""))


# Routes BentoML itself serves (probes, metrics, the docs page and its assets) beside the service's APIs.
BENTOML_ROUTES = ("/", "/docs.json", "/schema.json", "/livez", "/healthz", "/readyz", "/metrics",
                  "/static_content/{asset}")


def route_templates() -> list[str]:
    """Every route the service answers, as templates: the `endpoint` labels of BentoML's request metrics."""
    mounted = [path for route in models_app.router.routes if isinstance(path := getattr(route, "path", None), str)]
    return [*BENTOML_ROUTES, *(api.route for api in _service.apis.values()), *models_app.openapi()["paths"],
            *mounted, *CSV_ROUTES.values()]


def _with_status(response: Response, ctx: bentoml.Context | None) -> Response:
    """BentoML gives an API that takes a context the context's status code, whatever the returned response says:
    make them agree, or every error would go out as 200."""
    if ctx is not None:
        ctx.response.status_code = response.status_code
    return response


_service: Any = CellMfgService  # bentoml.service returns a Service object; its stubs say the class
# Checks that run before BentoML reads a body, outermost first (the first one added wraps the others): bearer-token
# auth and the body-size limit (service.web.security), the API docs page (service.ui), the completed OpenAPI document
# (service.web.openapi), the JSON-only guard, then the hot path of small JSON predictions (service.hotpath).
_service.add_asgi_middleware(SecurityMiddleware)
_service.add_asgi_middleware(DocsPage)
_service.add_asgi_middleware(OpenAPIErrorDocs)
_service.add_asgi_middleware(RequestGuard)
_service.add_asgi_middleware(hotpath.HotPredict)
# BentoML shows the raw docstrings in the OpenAPI description; dedent them so Swagger renders paragraphs.
for _api in _service.apis.values():
    _api.doc = inspect.cleandoc(_api.doc or "")
