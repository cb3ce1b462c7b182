"""The cellmfg prediction service (BentoML 1.4): electrode and GDL predictions with domain checks, conformal
intervals and exact SHAP explanations, from ONNX models that hot-reload when their registry alias moves.

Run it with `cellmfg serve` or `bentoml serve service.service:CellMfgService` from the project root; configuration
is by environment variables (see `service.config.Settings`). Routes:
  POST /predict/electrode, POST /predict/gdl   predictions for any served dataset (BentoML APIs, examples at /);
                                               JSON in, JSON or CSV out (`Accept: text/csv`)
  POST /predict/{model_name}                   any one served model (a mounted FastAPI route: JSON or CSV)
  GET  /models                                 what is loaded (a mounted FastAPI app, since BentoML APIs are POST)
  GET  /livez, /readyz, /metrics               BentoML's probes (ready once every model of the catalogue at start
                                               is loaded) and metrics
CSV bodies (`Content-Type: text/csv`) for the two kind endpoints are routed by `service.guards.RequestGuard` to
FastAPI routes of their own, which read the raw body (a BentoML API parses it as JSON first).
The models served are the source's catalogue (every ONNX model holding the alias, or every model in the bundle),
re-read at each poll: promoted models appear and retired ones disappear without a restart.
"""

from __future__ import annotations

import gc
import inspect
import logging
from typing import Any

import anyio.to_thread
import bentoml
from fastapi import FastAPI, Request
from pydantic import ValidationError
from pydantic_core import to_json
from starlette.responses import Response

from cellmfg.contract import contract_summary
from cellmfg.domain import Kind, feature_columns
from service.config import Settings
from service.csvio import (
    CSV_MEDIA_TYPE,
    CSV_MEDIA_TYPES,
    CsvInputError,
    Scored,
    media_type,
    models_header,
    score_csv,
    scored_json,
    wants_csv,
)
from service.design import Designer  # design
from service.design_schemas import (  # design
    DesignBound,
    DesignTarget,
    ElectrodeDesignRequest,
    ElectrodeDesignResponse,
    GdlDesignRequest,
    GdlDesignResponse,
    design_problem,
)
from service.explain import Explainers
from service.guards import CSV_ROUTES, RequestGuard
from service.logs import quiet_client_errors, show_service_logs
from service.model_store import ModelStore, ServedModel
from service.openapi import OpenAPIErrorDocs
from service.patches import patch_bentoml_timeout
from service.predict import Predictor, RequestRejectedError
from service.schemas import (
    ElectrodeRequest,
    ElectrodeResponse,
    GdlRequest,
    GdlResponse,
    ModelRequest,
    ModelsResponse,
    use_dataset_provider,
    use_model_provider,
)
from service.security import SecurityMiddleware
from service.sources import open_source
from service.ui import mount_ui  # page

log = logging.getLogger("cellmfg.service")

# Up to this many rows (without explain) are answered on the event loop: a thread hop would cost more than the
# prediction. Larger batches and every explanation run in a worker thread so probes and small requests go on.
INLINE_ROWS = 256

models_app = FastAPI(title="cellmfg models", docs_url=None, redoc_url=None, openapi_url=None)
_MODEL_ROUTE_DOCS: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": ModelRequest.model_json_schema()}}},
    "responses": {"404": {"description": "No served model of that name; the answer lists the served ones",
                          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CellMfgError"}}}}}}
# --- page: the static page at /ui/ and /docs -> the API docs at / (service.ui) ---
mount_ui(models_app)
# --- end page ---


def _json(body: Any, status: int = 200) -> Response:
    return Response(to_json(body), status_code=status, media_type="application/json")


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
        patch_bentoml_timeout()  # BentoML's request timeout keeps every request's timer alive (service.patches)
        self.settings = Settings.from_env()
        # The open catalogue: every model the source offers (registry alias or bundle), re-read at each poll.
        self.store = ModelStore(open_source(self.settings), None, self.settings.ort_threads,
                                required=self.settings.required_models)
        self.store.load_all()
        # Validation messages name what is served now (the catalogue object is replaced on every change).
        use_dataset_provider(lambda kind: self.store.catalogue.datasets(kind))
        use_model_provider(lambda: {m.name: list(m.contract.features) for m in self.store.models()})
        gc.freeze()  # start-up objects live forever: keep them out of every full collection
        self.explainers = Explainers()
        self.predictor = Predictor(self.store, self.explainers, self.settings)
        self.designer = Designer(self.predictor)  # design
        self.store.start_polling(self.settings.poll_seconds)
        log.info("cellmfg service: %d/%d models from %s, polling every %g s", len(self.store.models()),
                 len(self.store.names), self.store.source.description, self.settings.poll_seconds)

    def __is_ready__(self) -> bool:
        return self.store.ready

    @bentoml.on_shutdown
    def stop_polling(self) -> None:
        self.store.stop()
        # A stopped service names no served models or datasets any more (documents and messages built later in
        # this process, e.g. by the next service instance of a test run, must not see its catalogue).
        use_dataset_provider(None)
        use_model_provider(None)

    async def _answer(self, kind: Kind, dataset: str, rows: list[dict[str, float]], explain: bool,
                      interval: bool, ctx: bentoml.Context | None = None) -> Response:
        try:
            if explain or len(rows) > INLINE_ROWS:
                payload = await anyio.to_thread.run_sync(self.predictor.predict, kind, dataset, rows, explain,
                                                         interval)
            else:
                payload = self.predictor.predict(kind, dataset, rows, explain, interval)
        except RequestRejectedError as rejected:
            return _with_status(_json(rejected.body(), rejected.status), ctx)
        if ctx is not None and wants_csv(ctx.request.headers.get("accept")):
            features = feature_columns(kind)
            return _with_status(_csv(scored_json(payload, rows, features, interval, explain)), ctx)
        return _with_status(_json(payload), ctx)

    @bentoml.api(route="/predict/electrode", input_spec=ElectrodeRequest, output_spec=ElectrodeResponse)
    async def predict_electrode(self, chemistry: str, rows: list[dict[str, float]], explain: bool = False,
                                interval: bool = False, *, ctx: bentoml.Context) -> Response:
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
        return await self._answer("electrode", chemistry, rows, explain, interval, ctx)

    @bentoml.api(route="/predict/gdl", input_spec=GdlRequest, output_spec=GdlResponse)
    async def predict_gdl(self, dataset: str, rows: list[dict[str, float]], explain: bool = False,
                          interval: bool = False, *, ctx: bentoml.Context) -> Response:
        """Gas-diffusion-layer tortuosity per row, from the dataset's model; the same extras as the electrodes."""
        return await self._answer("gdl", dataset, rows, explain, interval, ctx)

    # --- design: recipe design, the inverse of /predict (service.design) ---
    async def _design(self, kind: Kind, dataset: str, targets: dict[str, DesignTarget], fixed: dict[str, float],
                      bounds: dict[str, DesignBound], k: int, explain: bool) -> Response:
        problem = design_problem(kind, dataset, targets, fixed, bounds, k, explain)
        try:
            # Tens of milliseconds of search: in a worker thread, so probes and predictions go on meanwhile.
            payload = await anyio.to_thread.run_sync(self.designer.design, problem)
        except RequestRejectedError as rejected:
            return _json(rejected.body(), rejected.status)
        return _json(payload)

    @bentoml.api(route="/design/electrode", input_spec=ElectrodeDesignRequest, output_spec=ElectrodeDesignResponse)
    async def design_electrode(self, chemistry: str, targets: dict[str, DesignTarget],
                               fixed: dict[str, float] | None = None, bounds: dict[str, DesignBound] | None = None,
                               k: int = 5, explain: bool = True) -> Response:
        """Electrode recipes that give the wanted density and/or mass loading, with the parameters you fix.

        `chemistry` is any served electrode dataset, as at /predict/electrode. The free parameters are searched
        inside the models' training range (or the narrower `bounds`), so every recipe is in domain; roll speed
        takes only the settings the data holds. Up to `k` diverse recipes meeting every target within its
        tolerance, closest first, each with the row /predict answers for it (prediction, 90 % interval, domain
        check, SHAP), and the reachable range of every target. Bad input is answered 400 naming the field; a target
        nothing reaches 422 with the reachable range and the closest recipe found.
        """
        return await self._design("electrode", chemistry, targets, fixed or {}, bounds or {}, k, explain)

    @bentoml.api(route="/design/gdl", input_spec=GdlDesignRequest, output_spec=GdlDesignResponse)
    async def design_gdl(self, dataset: str, targets: dict[str, DesignTarget], fixed: dict[str, float] | None = None,
                         bounds: dict[str, DesignBound] | None = None, k: int = 5, explain: bool = True) -> Response:
        """GDL structures that give the wanted tortuosity; the same search and answer as /design/electrode."""
        return await self._design("gdl", dataset, targets, fixed or {}, bounds or {}, k, explain)
    # --- end design ---

    @models_app.get("/models", response_model=ModelsResponse, tags=["Service APIs"],
                    summary="Loaded models: version, alias, test MAPE, lineage and feature ranges")
    def list_models(self) -> dict[str, Any]:
        return self.describe_models()

    def describe_models(self) -> dict[str, Any]:
        models = []
        catalogue = self.store.catalogue
        for model in self.store.models():
            summary = contract_summary(model.contract)
            models.append({
                "name": model.name, "version": model.version, "alias": model.alias, "source": model.source,
                "loaded_at": model.loaded_at, "task": summary["task"], "dataset": summary["dataset"],
                "role": summary["role"], "target": summary["target"],
                "test_mape_pct": model.contract.metrics.test_mape_pct, "metrics": summary["metrics"],
                "conformal": model.contract.conformal.model_dump(), "lineage": summary["lineage"],
                "features": summary["features"], "endpoints": _endpoints(model),
            })
        return {
            "ready": self.store.ready,
            "datasets": {kind: catalogue.datasets(kind) for kind in ("electrode", "gdl")},
            "source": self.store.source.description, "alias": self.settings.alias,
            "poll_seconds": self.settings.poll_seconds, "models": models, "missing": self.store.problems(),
        }


    # -- CSV bodies and single models: FastAPI routes on the mounted app, since they read the raw body

    @models_app.post("/predict/{model_name}", tags=["Service APIs"], response_model=None,
                     summary="Any one served model, with the rows its contract names (JSON or CSV)",
                     openapi_extra=_MODEL_ROUTE_DOCS)
    async def predict_model(self, model_name: str, request: Request, explain: bool = False,
                            interval: bool = False) -> Response:
        """One served model by name (GET /models lists them with their features), for targets and feature sets
        beyond the kind endpoints. JSON body {"rows": [...], "explain": false, "interval": false}, or a CSV body
        with `?explain=&interval=`; `Accept: text/csv` answers CSV."""
        if media_type(request.headers.get("content-type")) in CSV_MEDIA_TYPES:
            return await self._answer_csv(request, model=model_name, explain=explain, interval=interval)
        try:
            body = ModelRequest.model_validate_json(await request.body())
        except ValidationError as error:
            return _json({"error": "the body is not a valid request for one model",
                          "detail": [{"type": e["type"], "loc": list(e["loc"]), "msg": e["msg"]}
                                     for e in error.errors(include_url=False)[:20]]}, 400)
        try:
            payload = await anyio.to_thread.run_sync(self.predictor.predict_model, model_name, body.rows,
                                                     body.explain, body.interval)
        except RequestRejectedError as rejected:
            return _json(rejected.body(), rejected.status)
        if wants_csv(request.headers.get("accept")):
            features = self.predictor.model_answering(model_name)[0].model.feature_names
            rows = [{f: row[f] for f in features} for row in body.rows]
            return _csv(scored_json(payload, rows, features, body.interval, body.explain))
        return _json(payload)

    @models_app.post(CSV_ROUTES["/predict/electrode"], include_in_schema=False)
    async def predict_electrode_csv(self, request: Request, chemistry: str = "", explain: bool = False,
                                    interval: bool = False) -> Response:
        return await self._answer_csv(request, kind="electrode", dataset=chemistry, field="chemistry",
                                      explain=explain, interval=interval)

    @models_app.post(CSV_ROUTES["/predict/gdl"], include_in_schema=False)
    async def predict_gdl_csv(self, request: Request, dataset: str = "", explain: bool = False,
                              interval: bool = False) -> Response:
        return await self._answer_csv(request, kind="gdl", dataset=dataset, field="dataset", explain=explain,
                                      interval=interval)

    async def _answer_csv(self, request: Request, *, kind: Kind | None = None, dataset: str = "", field: str = "",
                          model: str | None = None, explain: bool = False, interval: bool = False) -> Response:
        if kind is not None and not dataset:
            served = ", ".join(self.store.catalogue.datasets(kind))
            return _json({"error": f"a CSV body needs ?{field}=NAME in the URL; served: {served}",
                          "detail": [{"type": "missing", "loc": ["query", field],
                                      "msg": f"query parameter {field} is missing; served: {served}"}]}, 400)
        data = await request.body()
        try:
            scored = await anyio.to_thread.run_sync(
                lambda: score_csv(self.predictor, data, kind=kind, dataset=dataset or None, model=model,
                                  explain=explain, interval=interval))
        except CsvInputError as error:
            return _json({"error": error.message, "detail": error.detail}, error.status)
        except RequestRejectedError as rejected:
            return _json(rejected.body(), rejected.status)
        if wants_csv(request.headers.get("accept")):
            return _csv(scored)
        return _json(scored.answer)


def _with_status(response: Response, ctx: bentoml.Context | None) -> Response:
    """BentoML gives an API that takes a context the context's status code, whatever the returned response says:
    make them agree, or every error would go out as 200."""
    if ctx is not None:
        ctx.response.status_code = response.status_code
    return response


def _csv(scored: Scored) -> Response:
    return Response(scored.to_csv(), media_type=CSV_MEDIA_TYPE,
                    headers={"X-Cellmfg-Models": models_header(scored.answer)})


def _endpoints(model: ServedModel) -> list[str]:
    routes = [f"POST /predict/{model.name}"]
    if model.slot is not None:
        field = "chemistry" if model.slot.kind == "electrode" else "dataset"
        routes.insert(0, f"POST /predict/{model.slot.kind} ({field}={model.slot.dataset})")
    return routes


_service: Any = CellMfgService  # bentoml.service returns a Service object; its stubs say the class
# Checks that run before BentoML reads a body, outermost first (the first one added wraps the others): bearer-token
# auth and the body-size limit (service.security), the completed OpenAPI document (service.openapi), then the
# JSON-only guard.
_service.add_asgi_middleware(SecurityMiddleware)
_service.add_asgi_middleware(OpenAPIErrorDocs)
_service.add_asgi_middleware(RequestGuard)
# BentoML shows the raw docstrings in the OpenAPI description; dedent them so Swagger renders paragraphs.
for _api in _service.apis.values():
    _api.doc = inspect.cleandoc(_api.doc or "")
