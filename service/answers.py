"""What the prediction service answers with: the models, the predictions, explanations, designs and CSV.

Everything here runs in BentoML's worker process only. `service.service` imports this module inside the service's
`__init__`, so the supervisor process that `bentoml serve` starts first (it imports `service.service` only to read
the service's definition) loads neither numpy nor onnxruntime nor the models: in the image it holds 90 MB instead
of 124 MB and is ready for the worker ~0.1 s sooner.
"""

from __future__ import annotations

import gc
from datetime import datetime
from typing import Any

import anyio.to_thread
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from cellmfg.contract import contract_summary
from cellmfg.domain import Kind, feature_columns
from service.design.schemas import DesignBound, DesignTarget, design_problem
from service.design.search import Designer
from service.design.suggest import Suggester
from service.design.suggest_schemas import WindowBound, suggest_problem
from service.engine.config import Settings
from service.engine.errors import RequestRejectedError
from service.engine.explain import Explainers
from service.engine.model_store import ModelStore, ServedModel
from service.engine.predict import Predictor
from service.engine.sources import ModelSource, RegistrySource, open_source, redact_strings
from service.formats.csvio import Scored, models_header, score_csv, scored_json, wants_csv
from service.formats.jsonresp import json_response
from service.formats.media import CSV_MEDIA_TYPE, CSV_MEDIA_TYPES, media_type
from service.formats.schemas import ModelRequest, use_dataset_provider, use_model_provider
from service.ledger import LedgerUnreachableError, OutcomesRejectedError
from service.ledger.ids import new_prediction_ids
from service.ledger.outcomes_http import outcomes_csv, parse_outcomes, rejected_body
from service.ledger.recording import (
    LedgerUnavailableError,
    Recorder,
    ShadowScore,
    attach_ids,
    attach_shadow,
    batch_of,
    client_column,
    design_records,
    live_block,
    shadow_batch,
    shadow_scores,
)

# The registry alias a challenger holds (`cellmfg train from-ledger`, then `cellmfg registry promote --alias
# challenger`): the service shadow-scores it beside the champion and records both in the ledger.
CHALLENGER_ALIAS = "challenger"

# Requests up to this many rows and this many model rows (explanations included) are answered on the event loop:
# a thread hop (~0.5-1.5 ms with a busy loop) would cost more than the work, which stays under ~0.5 ms (one row
# explained by the paper's two NMC nets is ~1,700 model rows, ~0.2 ms). Larger ones run in a worker thread so
# probes and small requests go on meanwhile.
INLINE_ROWS = 256
INLINE_MODEL_ROWS = 8192


def _inline(n_rows: int, model_rows: int) -> bool:
    return n_rows <= INLINE_ROWS and model_rows <= INLINE_MODEL_ROWS


def _json(body: Any, status: int = 200) -> Response:
    return json_response(body, status)  # orjson where it writes what to_json would (service.formats.jsonresp)


class Answers:
    """The served models (loaded here, then re-read at every poll) and the answers built from them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # The open catalogue: every model the source offers (registry alias or bundle), re-read at each poll.
        self.store = ModelStore(open_source(settings), None, settings.ort_threads, required=settings.required_models)
        self.store.load_all()
        # Validation messages name what is served now (the catalogue object is replaced on every change).
        use_dataset_provider(lambda kind: self.store.catalogue.datasets(kind))
        use_model_provider(lambda: {m.name: list(m.contract.features) for m in self.store.models()})
        gc.freeze()  # start-up objects live forever: keep them out of every full collection
        self.explainers = Explainers()
        self.predictor = Predictor(self.store, self.explainers, settings)
        self.designer = Designer(self.predictor)
        self.suggester = Suggester(self.predictor)
        # The prediction ledger: opens (and migrates) in a thread of its own, off the path to /readyz; an answer
        # waits until it is open, so none goes out unrecorded (service.ledger.recording.Recorder).
        self.recorder = Recorder(settings, self.store.models) if settings.ledger_url is not None else None
        # Challengers, shadow-scored beside the champions: from a registry only (a bundle holds one alias), and
        # never when this service itself follows the challenger alias.
        self.challengers = challenger_store(self.store.source, settings)
        self.store.start_polling(settings.poll_seconds)
        if self.challengers is not None:
            self.challengers.start_polling(settings.poll_seconds)
        if self.recorder is not None:
            self.recorder.start()

    @property
    def ready(self) -> bool:
        """/readyz: every model of the catalogue at start loaded, and the ledger (if any) not failing to open."""
        return self.store.ready and not (self.recorder is not None and self.recorder.failed)

    def stop(self) -> None:
        self.store.stop()
        if self.challengers is not None:
            self.challengers.stop()
        if self.recorder is not None:
            self.recorder.close()  # commits what is queued
        # A stopped service names no served models or datasets any more (documents and messages built later in
        # this process, e.g. by the next service instance of a test run, must not see its catalogue).
        use_dataset_provider(None)
        use_model_provider(None)

    async def predict(self, kind: Kind, dataset: str, rows: list[dict[str, float]], explain: bool, interval: bool,
                      accept: str | None = None, operator: str | None = None, shadow: bool = False) -> Response:
        """The answer of /predict/electrode or /predict/gdl: JSON, or CSV when `accept` asks for it. `shadow` adds
        the challengers' predictions to a JSON answer (they are recorded either way)."""
        try:
            # Resolved once: the size and the models decide where the request runs, and those models answer it.
            self.predictor.check_size(len(rows))
            answering = self.predictor.answering(kind, dataset)
            if _inline(len(rows), self.predictor.model_rows(answering, len(rows), explain)):
                payload, computed = self.predictor.compute_rows(answering, rows, explain, interval)
                scores = self._shadow_scores(computed)
            else:
                payload, computed = await anyio.to_thread.run_sync(self.predictor.compute_rows, answering, rows,
                                                                   explain, interval)
                scores = await anyio.to_thread.run_sync(self._shadow_scores, computed)
            await self._record(payload, computed, "json", dataset, operator, rows, scores)
        except RequestRejectedError as rejected:
            return _json(rejected.body(), rejected.status)
        if shadow:
            attach_shadow(payload, scores)
        if wants_csv(accept):
            features = feature_columns(kind)
            return _csv(scored_json(payload, rows, features, interval, explain))
        return _json(payload)

    # Recipe design, the inverse of /predict (service.design.search), and experiment suggestions
    # (service.design.suggest).
    async def design(self, kind: Kind, dataset: str, targets: dict[str, DesignTarget], fixed: dict[str, float],
                     bounds: dict[str, DesignBound], k: int, explain: bool, operator: str | None = None) -> Response:
        problem = design_problem(kind, dataset, targets, fixed, bounds, k, explain)
        try:
            # Tens of milliseconds of search: in a worker thread, so probes and predictions go on meanwhile.
            payload = await anyio.to_thread.run_sync(self.designer.design, problem)
            if self.recorder is not None and payload.get("recipes"):
                await self._commit(design_records(kind, dataset, payload, operator))
        except RequestRejectedError as rejected:
            return _json(rejected.body(), rejected.status)
        return _json(payload)

    async def suggest(self, kind: Kind, dataset: str, k: int, fixed: dict[str, float],
                      bounds: dict[str, DesignBound], window: dict[str, WindowBound], explain: bool,
                      operator: str | None = None) -> Response:
        """POST /suggest/*: the next experiments (service.design.suggest); each suggestion is recorded in the ledger
        with its prediction_id, so its measurement can be posted back."""
        problem = suggest_problem(kind, dataset, k, fixed, bounds, window, explain)
        try:
            payload = await anyio.to_thread.run_sync(self.suggester.suggest, problem)
            if self.recorder is not None and payload.get("suggestions"):
                await self._commit(design_records(kind, dataset, payload, operator, entries="suggestions",
                                                  endpoint="suggest"))
        except RequestRejectedError as rejected:
            return _json(rejected.body(), rejected.status)
        return _json(payload)

    def describe_models(self) -> dict[str, Any]:
        """GET /models: every loaded model with its contract's summary, the served datasets and what is missing."""
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
                "live": live_block(self.recorder.live(model.name)) if self.recorder is not None else None,
            })
        # Redacted: anyone with the token reads this; server file paths and credentials stay in the log (sources).
        return redact_strings({
            "ready": self.store.ready,
            "datasets": {kind: catalogue.datasets(kind) for kind in ("electrode", "gdl")},
            "source": self.store.source.public_description, "alias": self.settings.alias,
            "poll_seconds": self.settings.poll_seconds, "models": models, "missing": self.store.problems(),
        }, self.store.source.redact)

    async def predict_model(self, model_name: str, request: Request, explain: bool = False,
                            interval: bool = False, shadow: bool = False) -> Response:
        """POST /predict/{model_name}: a JSON body {"rows": [...], "explain": ..., "interval": ...} or a CSV one."""
        if media_type(request.headers.get("content-type")) in CSV_MEDIA_TYPES:
            return await self.answer_csv(request, model=model_name, explain=explain, interval=interval,
                                         shadow=shadow)
        try:
            body = ModelRequest.model_validate_json(await request.body())
        except ValidationError as error:
            return _json({"error": "the body is not a valid request for one model",
                          "detail": [{"type": e["type"], "loc": list(e["loc"]), "msg": e["msg"]}
                                     for e in error.errors(include_url=False)[:20]]}, 400)
        try:
            self.predictor.check_size(len(body.rows))
            answering = self.predictor.model_answering(model_name)
            if _inline(len(body.rows), self.predictor.model_rows(answering, len(body.rows), body.explain)):
                payload, computed = self.predictor.compute_model_rows(answering, body.rows, body.explain,
                                                                      body.interval)
                scores = self._shadow_scores(computed)
            else:
                payload, computed = await anyio.to_thread.run_sync(self.predictor.compute_model_rows, answering,
                                                                   body.rows, body.explain, body.interval)
                scores = await anyio.to_thread.run_sync(self._shadow_scores, computed)
            await self._record(payload, computed, "predict", answering[0].model.contract.dataset, body.operator,
                               body.rows, scores)
        except RequestRejectedError as rejected:
            return _json(rejected.body(), rejected.status)
        if shadow:
            attach_shadow(payload, scores)
        if wants_csv(request.headers.get("accept")):
            features = answering[0].model.feature_names
            rows = [{f: row[f] for f in features} for row in body.rows]
            return _csv(scored_json(payload, rows, features, body.interval, body.explain))
        return _json(payload)

    async def answer_csv(self, request: Request, *, kind: Kind | None = None, dataset: str = "", field: str = "",
                         model: str | None = None, explain: bool = False, interval: bool = False,
                         operator: str | None = None, shadow: bool = False) -> Response:
        """A CSV body for a kind's dataset or for one model; errors name line and column (service.formats.csvio)."""
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
            scores = [] if scored.computed is None else \
                await anyio.to_thread.run_sync(self._shadow_scores, scored.computed)
            if self.recorder is not None and scored.computed is not None:
                computed = scored.computed
                ids = new_prediction_ids(len(computed.x))
                batch = batch_of(computed, ids, endpoint="csv", operator=operator or None,
                                 dataset=dataset or computed.answering[0].model.contract.dataset,
                                 sample_ids=scored.client_column("sample_id"),
                                 group_ids=scored.client_column("group_id"))
                await self._commit(batch.with_shadow(shadow_batch(batch, scores)))
                attach_ids(scored.answer["predictions"], ids)
            if shadow:  # in the JSON answer only: the scored CSV keeps its documented columns
                attach_shadow(scored.answer, scores)
        except RequestRejectedError as rejected:  # a bad CSV (CsvInputError) or a request the catalogue cannot answer
            return _json(rejected.body(), rejected.status)
        if wants_csv(request.headers.get("accept")):
            return _csv(scored)
        return _json(scored.answer)


    # -- the prediction ledger

    def _shadow_scores(self, computed: Any) -> list[ShadowScore]:
        """The challengers' predictions of an answer's rows (none without challengers)."""
        if self.challengers is None:
            return []
        return shadow_scores(computed, self.challengers.get)

    async def _record(self, payload: dict[str, Any], computed: Any, endpoint: str, dataset: str,
                      operator: str | None, rows: list[Any], scores: list[ShadowScore] | None = None) -> None:
        """Commit the answer's rows (and the challengers' shadow rows, in the same transaction) to the ledger,
        then give each answered row its prediction_id."""
        if self.recorder is None:
            return
        ids = new_prediction_ids(len(computed.x))
        batch = batch_of(computed, ids, endpoint=endpoint, dataset=dataset, operator=operator,
                         sample_ids=client_column(rows, "sample_id"), group_ids=client_column(rows, "group_id"))
        await self._commit(batch.with_shadow(shadow_batch(batch, scores or [])))
        attach_ids(payload["predictions"], ids)

    async def _commit(self, rows: Any) -> None:
        assert self.recorder is not None
        try:
            await self.recorder.record(rows)
        except LedgerUnavailableError as error:
            raise RequestRejectedError(503, str(error)) from None

    def _ledger(self) -> Recorder:
        if self.recorder is None:
            raise RequestRejectedError(404, "the prediction ledger is off (CELLMFG_LEDGER_URL=off): no outcomes")
        return self.recorder

    async def post_outcomes(self, request: Request) -> Response:
        """POST /outcomes: measured values (JSON or CSV), all stored or none (400 listing every problem)."""
        data = await request.body()
        try:
            recorder = self._ledger()
            items, lines = parse_outcomes(data, request.headers.get("content-type"))
            receipt = await anyio.to_thread.run_sync(recorder.ledger.post_outcomes, items)
            if receipt.written:
                recorder.outcomes_changed()
        except RequestRejectedError as rejected:  # no ledger, or an unreadable body (OutcomesInputError)
            return _json(rejected.body(), rejected.status)
        except OutcomesRejectedError as rejected:
            return _json(rejected_body(rejected, lines), 400)
        except LedgerUnreachableError as error:  # a remote ledger's outage (service.ledger.spool)
            return _json({"error": str(error)}, 503)
        return _json({"written": receipt.written, "unchanged": receipt.unchanged, "items": len(items)})

    async def get_outcomes(self, model: str, since: datetime | None) -> Response:
        """GET /outcomes: `model`'s measured rows in the dataset CSV schema."""
        try:
            recorder = self._ledger()
            if model not in self.store.names and self.store.get(model) is None:
                served = ", ".join(m.name for m in self.store.models())
                raise RequestRejectedError(404, f"model = {model!r} is not served; served models: {served}")
            table = await anyio.to_thread.run_sync(recorder.ledger.outcomes, model, since)
        except RequestRejectedError as rejected:
            return _json(rejected.body(), rejected.status)
        return Response(outcomes_csv(table), media_type=CSV_MEDIA_TYPE)


    async def challenge(self, model_name: str) -> Response:
        """GET /models/{name}/challenge: the served champion against its shadow-scored challenger on the rows both
        predicted and the lab measured: n, the paired MAPE difference and its grouped bootstrap interval."""
        from cellmfg.challenge import paired_comparison, promotion_verdict
        from service.ledger.shadow import paired_outcomes

        name = model_name if model_name.endswith("_onnx") else f"{model_name}_onnx"
        try:
            recorder = self._ledger()
            champion = self.store.get(name)
            if champion is None:
                served = ", ".join(m.name for m in self.store.models())
                raise RequestRejectedError(404, f"model = {model_name!r} is not served; served models: {served}")
            challenger = self.challengers.get(name) if self.challengers is not None else None
            if challenger is None:
                raise RequestRejectedError(404, f"{name} has no challenger loaded: register one with `cellmfg train "
                                                f"from-ledger --model {name.removesuffix('_onnx')}` and `cellmfg "
                                                "registry promote --alias challenger`")
            pairs = await anyio.to_thread.run_sync(paired_outcomes, recorder.ledger.engine, name, challenger.version,
                                                   champion.version)
        except RequestRejectedError as rejected:
            return _json(rejected.body(), rejected.status)
        comparison = paired_comparison(pairs.measured, pairs.champion, pairs.challenger, pairs.groups)
        promotable, reason = promotion_verdict(comparison)
        return _json({"model": name, "champion": champion.ref(), "challenger": challenger.ref(),
                      **comparison.model_dump(), "promotable": promotable, "reason": reason})


def challenger_store(source: ModelSource, settings: Settings) -> ModelStore | None:
    """The store of challengers (every ONNX model holding the challenger alias) beside a registry's champions;
    loaded now (a failure is logged and retried by its poller, never a reason not to serve)."""
    if not isinstance(source, RegistrySource) or settings.alias == CHALLENGER_ALIAS:
        return None
    store = ModelStore(RegistrySource(source.tracking_uri, CHALLENGER_ALIAS), None, settings.ort_threads,
                       publish_catalogue=False)
    store.load_all()
    return store


def _csv(scored: Scored) -> Response:
    return Response(scored.to_csv(), media_type=CSV_MEDIA_TYPE,
                    headers={"X-Cellmfg-Models": models_header(scored.answer)})


def _endpoints(model: ServedModel) -> list[str]:
    routes = [f"POST /predict/{model.name}"]
    if model.slot is not None:
        field = "chemistry" if model.slot.kind == "electrode" else "dataset"
        routes.insert(0, f"POST /predict/{model.slot.kind} ({field}={model.slot.dataset})")
    return routes
