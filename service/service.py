"""The cellmfg prediction service (BentoML 1.4): electrode and GDL predictions with ___domain checks, conformal
intervals and exact SHAP explanations, from ONNX models that hot-reload when their registry alias moves.

Run it with `cellmfg serve` or `bentoml serve service.service:CellMfgService` from the project root; configuration
is by environment variables (see `service.config.Settings`). Routes:
  POST /predict/electrode, POST /predict/gdl   predictions (BentoML APIs, documented with examples at /)
  GET  /models                                 what is loaded (a mounted FastAPI app, since BentoML APIs are POST)
  GET  /livez, /readyz, /metrics               BentoML's probes (ready once every model is loaded) and metrics
"""

from __future__ import annotations

import gc
import inspect
import logging
from typing import Any

import anyio.to_thread
import bentoml
from fastapi import FastAPI
from pydantic_core import to_json
from starlette.responses import Response

from cellmfg.___domain import Kind
from cellmfg.contract import contract_summary
from service.config import SERVED_MODEL_NAMES, Settings
from service.explain import Explainers
from service.guards import RequestGuard
from service.logs import quiet_client_errors, show_service_logs
from service.model_store import ModelStore
from service.patches import patch_bentoml_timeout
from service.predict import Predictor, RequestRejectedError
from service.schemas import ElectrodeRequest, ElectrodeResponse, GdlRequest, GdlResponse, ModelsResponse
from service.security import OpenAPIErrorDocs, SecurityMiddleware
from service.sources import open_source

log = logging.getLogger("cellmfg.service")

# Up to this many rows (without explain) are answered on the event loop: a thread hop would cost more than the
# prediction. Larger batches and every explanation run in a worker thread so probes and small requests go on.
INLINE_ROWS = 256

models_app = FastAPI(title="cellmfg models", docs_url=None, redoc_url=None, openapi_url=None)


def _json(body: Any, status: int = 200) -> Response:
    return Response(to_json(body), status_code=status, media_type="application/json")


@bentoml.service(
    name="cellmfg",
    workers=1,
    traffic={"timeout": 600},  # a 10,000-row batch with explain=true takes ~15 s; leave room on a busy machine
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
        self.store = ModelStore(open_source(self.settings), SERVED_MODEL_NAMES, self.settings.ort_threads)
        self.store.load_all()
        gc.freeze()  # start-up objects live forever: keep them out of every full collection (see service.explain)
        self.explainers = Explainers()
        self.explainers.warm_up_in_background(self.store.models())
        self.predictor = Predictor(self.store, self.explainers, self.settings)
        self.store.start_polling(self.settings.poll_seconds)
        log.info("cellmfg service: %d/%d models from %s, polling every %g s", len(self.store.models()),
                 len(self.store.names), self.store.source.description, self.settings.poll_seconds)

    def __is_ready__(self) -> bool:
        return self.store.ready

    @bentoml.on_shutdown
    def stop_polling(self) -> None:
        self.store.stop()

    async def _answer(self, kind: Kind, dataset: str, rows: list[dict[str, float]], explain: bool,
                      interval: bool) -> Response:
        try:
            if explain or len(rows) > INLINE_ROWS:
                payload = await anyio.to_thread.run_sync(self.predictor.predict, kind, dataset, rows, explain,
                                                         interval)
            else:
                payload = self.predictor.predict(kind, dataset, rows, explain, interval)
        except RequestRejectedError as rejected:
            return _json(rejected.body(), rejected.status)
        return _json(payload)

    @bentoml.api(route="/predict/electrode", input_spec=ElectrodeRequest, output_spec=ElectrodeResponse)
    async def predict_electrode(self, chemistry: str, rows: list[dict[str, float]], explain: bool = False,
                                interval: bool = False) -> Response:
        """Electrode density [g/cm³] and mass loading [mg/cm²] per row, from the chemistry's models.

        Each row says whether it lies inside the training range of every feature (`in_domain`) and lists the
        features outside it. `explain` adds exact SHAP values, `interval` a 90 % conformal prediction interval.
        Bad input is answered 400 with one entry per problem naming row, field, value and what is allowed.
        """
        return await self._answer("electrode", chemistry, rows, explain, interval)

    @bentoml.api(route="/predict/gdl", input_spec=GdlRequest, output_spec=GdlResponse)
    async def predict_gdl(self, dataset: str, rows: list[dict[str, float]], explain: bool = False,
                          interval: bool = False) -> Response:
        """Gas-diffusion-layer tortuosity per row, from the dataset's model; the same extras as the electrodes."""
        return await self._answer("gdl", dataset, rows, explain, interval)

    @models_app.get("/models", response_model=ModelsResponse, tags=["Service APIs"],
                    summary="Loaded models: version, alias, test MAPE, lineage and feature ranges")
    def list_models(self) -> dict[str, Any]:
        return self.describe_models()

    def describe_models(self) -> dict[str, Any]:
        models = []
        for model in self.store.models():
            summary = contract_summary(model.contract)
            models.append({
                "name": model.name, "version": model.version, "alias": model.alias, "source": model.source,
                "loaded_at": model.loaded_at, "task": summary["task"], "dataset": summary["dataset"],
                "role": summary["role"], "target": summary["target"],
                "test_mape_pct": model.contract.metrics.test_mape_pct, "metrics": summary["metrics"],
                "conformal": model.contract.conformal.model_dump(), "lineage": summary["lineage"],
                "features": summary["features"],
            })
        return {
            "ready": self.store.ready, "explanations_ready": self.explainers.ready,
            "source": self.store.source.description, "alias": self.settings.alias,
            "poll_seconds": self.settings.poll_seconds, "models": models, "missing": self.store.problems(),
        }


_service: Any = CellMfgService  # bentoml.service returns a Service object; its stubs say the class
# Checks that run before BentoML reads a body, outermost first (the first one added wraps the others): bearer-token
# auth and the body-size limit (service.security), the completed OpenAPI document, then the JSON-only guard.
_service.add_asgi_middleware(SecurityMiddleware)
_service.add_asgi_middleware(OpenAPIErrorDocs)
_service.add_asgi_middleware(RequestGuard)
# BentoML shows the raw docstrings in the OpenAPI description; dedent them so Swagger renders paragraphs.
for _api in _service.apis.values():
    _api.doc = inspect.cleandoc(_api.doc or "")
