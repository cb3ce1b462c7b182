"""The prediction ledger wired into the answers: every answered row gets a prediction id and is committed to the
ledger (service.ledger) before its answer is sent; outcomes posted by a QC lab are checked and stored; the live
accuracy and input drift of every served model are computed from the two and exported as gauges.

Runs in BentoML's worker process only (imported by service.answers).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import numpy as np

from cellmfg.contract import FeatureSpec
from cellmfg.domain import TARGETS, Kind, Target, targets_for
from service.engine import metrics
from service.engine.config import ConfigError, Settings
from service.engine.model_store import ServedModel
from service.engine.predict import Computed, conformal_interval, physical
from service.ledger.ids import new_prediction_id, new_prediction_ids
from service.ledger.live import DEFAULT_LAST_N, FeatureReference, LiveReport
from service.ledger.records import LedgerStats, ModelOutputs, PredictionBatch, PredictionOutput, PredictionRecord

if TYPE_CHECKING:  # the store and its SQLAlchemy are imported where the ledger opens (Recorder._open)
    from service.ledger.store import Ledger
    from service.ledger.tenure import TenureTracker

log = logging.getLogger("cellmfg.ledger")

# Answers of at most this many rows are committed on the event loop when the ledger can do so without waiting,
# the answers of one turn of the loop in one transaction (service.ledger.Ledger.record_grouped): ~0.2 ms, less
# than the hop to the writer thread and back.
INLINE_LEDGER_ROWS = 16
# How long GET /models waits for the ledger's first open before it answers without live figures.
OPEN_WAIT_SECONDS: float = 5.0

# While the ledger cannot be opened (e.g. its database is not up yet), it is tried again this often.
LEDGER_OPEN_RETRY_SECONDS = 2.0
# Inputs of this many recent rows per model are compared with the training data for drift.
DRIFT_ROWS = 500


class LedgerUnavailableError(RuntimeError):
    """The ledger could not commit an answer's rows: the answer is not sent (503)."""


def test_mape_upper_pct(model: ServedModel) -> float:
    """The upper end of the test MAPE a model's contract promises: mean + 2 standard deviations over the repeated
    grouped splits when the contract has them (the spread a new split would show), else the one split's MAPE."""
    m = model.contract.metrics
    if m.test_mape_pct_mean is not None and m.test_mape_pct_std is not None:
        return m.test_mape_pct_mean + 2.0 * m.test_mape_pct_std
    return m.test_mape_pct


def feature_references(model: ServedModel) -> dict[str, FeatureReference]:
    """Training range and quantile edges per feature from the contract; without quantiles in the contract the
    edges are the range alone (one bin: PSI says nothing and is reported as None, see `has_quantiles`)."""
    return {f.name: FeatureReference(training_min=f.train_min, training_max=f.train_max,
                                     quantile_edges=tuple(f.train_quantiles or ()) if has_quantiles(f)
                                     else (f.train_min, max(f.train_min, f.train_max)))
            for f in model.contract.features}


def has_quantiles(feature: FeatureSpec) -> bool:
    return feature.train_quantiles is not None and len(feature.train_quantiles) >= 3


def client_column(rows: Sequence[Any], field: str) -> list[str | None] | None:
    """A client field (sample_id, group_id) of JSON rows, or None when no row has it."""
    values = [row.get(field) if isinstance(row, dict) else None for row in rows]
    return values if any(v is not None for v in values) else None


def batch_of(computed: Computed, ids: list[uuid.UUID], *, endpoint: str, dataset: str, operator: str | None,
             sample_ids: list[str | None] | None = None, group_ids: list[str | None] | None = None,
             ) -> PredictionBatch:
    """The ledger rows of one answer. Built unvalidated (model_construct): every column comes from arrays this
    service computed, and a 10,000-row request would otherwise pay for checking 60,000 floats again."""
    outputs = []
    for a in computed.answering:
        values = computed.predictions[a.target.column]
        low, high = conformal_interval(a.model, a.target, values,  # always: coverage is measured on every row
                                       computed.spreads.get(a.target.column))
        outputs.append(ModelOutputs.model_construct(
            target=a.target.column, unit=a.target.unit, model_name=a.model.name, model_version=a.model.version,
            model_alias=a.model.alias, values=values.tolist(), interval_low=low.tolist(), interval_high=high.tolist()))
    return PredictionBatch.model_construct(
        created_at=datetime.now(UTC), dataset=dataset, endpoint=endpoint, operator=operator, prediction_ids=ids,
        sample_ids=sample_ids, group_ids=group_ids, feature_columns=list(computed.answering[0].model.feature_names),
        inputs=computed.x.tolist(), in_domain=computed.in_domain.tolist(), outputs=outputs, shadow_of=None,
        shadow=None)


@dataclass(frozen=True)
class ShadowScore:
    """A challenger's predictions of an answer's rows for one target, beside the champion's (never answered unless
    the client asks for them)."""

    target: Target
    model: ServedModel
    values: np.ndarray  # float64 [n], clipped to the physical range as the champion's answer is


def shadow_scores(computed: Computed, challenger_of: Callable[[str], ServedModel | None]) -> list[ShadowScore]:
    """The challenger's prediction for every answered target whose model has a challenger loaded that reads the
    same features in the same order (another contract cannot be fed the champion's rows, and is not shadowed)."""
    scores = []
    x32: np.ndarray | None = None
    for a in computed.answering:
        challenger = challenger_of(a.model.name)
        if challenger is None or challenger.version == a.model.version \
                or challenger.feature_names != a.model.feature_names:
            continue
        if x32 is None:
            x32 = computed.x.astype(np.float32)
        scores.append(ShadowScore(a.target, challenger, physical(challenger.predict(x32), a.target, {})))
    return scores


def shadow_batch(batch: PredictionBatch, scores: list[ShadowScore]) -> PredictionBatch | None:
    """The ledger rows of the challengers' shadow predictions of `batch`'s rows: new ids, each row linked to the
    champion's row it shadows, the same time, inputs and domain flags, no client fields (an outcome posted by
    sample id must find the answered row only)."""
    if not scores:
        return None
    outputs = []
    for score in scores:
        low, high = conformal_interval(score.model, score.target, score.values)
        outputs.append(ModelOutputs.model_construct(
            target=score.target.column, unit=score.target.unit, model_name=score.model.name,
            model_version=score.model.version, model_alias=score.model.alias, values=score.values.tolist(),
            interval_low=low.tolist(), interval_high=high.tolist()))
    return PredictionBatch.model_construct(
        created_at=batch.created_at, dataset=batch.dataset, endpoint=batch.endpoint, operator=None,
        prediction_ids=new_prediction_ids(len(batch)), sample_ids=None, group_ids=None,
        feature_columns=batch.feature_columns, inputs=batch.inputs, in_domain=batch.in_domain, outputs=outputs,
        shadow_of=batch.prediction_ids, shadow=None)


def attach_shadow(payload: dict[str, Any], scores: list[ShadowScore]) -> None:
    """Show the challengers' predictions in the answer (asked for with ?shadow=true): `challengers` names the
    versions per task, and each row's `shadow` gives the challenger's value per target."""
    payload["challengers"] = {score.target.task: score.model.ref() for score in scores}
    rows = payload["predictions"]
    for score in scores:
        for row, value in zip(rows, score.values.tolist(), strict=True):
            row.setdefault("shadow", {})[score.target.column] = value


def design_records(kind: Kind, dataset: str, payload: dict[str, Any], operator: str | None,
                   entries: str = "recipes", endpoint: str = "design") -> list[PredictionRecord]:
    """One ledger row per recipe a design answer returns (its settings and its /predict row), or per suggestion of a
    suggestion answer (`entries` "suggestions", `endpoint` "suggest"); each gets its prediction_id in place, so the
    lab can post the measurement against it."""
    now = datetime.now(UTC)
    by_task = {t.task: t for t in targets_for(kind)}
    records = []
    for recipe in payload.get(entries, []):
        row = recipe["prediction"]
        prediction_id = new_prediction_id()
        outputs = []
        for task, ref in payload["models"].items():
            target = by_task.get(task) or TARGETS[task]
            interval = row.get("interval", {}).get(target.column)
            outputs.append(PredictionOutput(
                target=target.column, unit=target.unit, model_name=ref["name"], model_version=ref["version"],
                model_alias=ref.get("alias"), value=row[target.column],
                interval_low=interval[0] if interval else None, interval_high=interval[1] if interval else None))
        records.append(PredictionRecord(
            prediction_id=prediction_id, created_at=now, dataset=dataset, endpoint=endpoint, operator=operator,
            sample_id=None, group_id=None,
            inputs={k: float(v) for k, v in recipe["settings"].items()}, in_domain=bool(row["in_domain"]),
            outputs=tuple(outputs)))
        recipe["prediction_id"] = str(prediction_id)
    return records


def attach_ids(rows: list[dict[str, Any]], ids: list[uuid.UUID]) -> None:
    for row, prediction_id in zip(rows, ids, strict=True):
        row["prediction_id"] = str(prediction_id)


@dataclass(frozen=True)
class _LiveEntry:
    version: str
    report: LiveReport
    test_mape_upper_pct: float
    psi_known: bool


class Recorder:
    """One worker's ledger, its cached counts and live reports, and the housekeeping thread (retention, gauges).

    The ledger opens in a thread of its own, started here: importing SQLAlchemy (and Alembic, when the schema needs
    an upgrade) and opening the database take ~0.4 s, which no longer delay /readyz. An answer that comes before the
    ledger is open waits for it (`record`), so none goes out unrecorded; if the ledger cannot be opened, every answer
    that needs it is refused with 503 (LedgerUnavailableError) and /readyz says not ready (`failed`)."""

    def __init__(self, settings: Settings, models: Any) -> None:
        if settings.ledger_url is None:
            raise ValueError("no ledger URL")
        self.settings = settings
        if settings.ledger_url.startswith("sqlite:///"):
            folder = Path(settings.ledger_url.removeprefix("sqlite:///")).parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise ConfigError(f"CELLMFG_LEDGER_DIR={str(folder)!r}: cannot create the ledger's folder: "
                                  f"{error}") from None
        self._ledger: Ledger | None = None
        self._open_error: BaseException | None = None
        self._opened = threading.Event()
        self._models = models  # () -> the served models
        # Live figures and counts are recomputed at most this often (GET /models, the housekeeping thread) and
        # after every post that wrote outcomes: each is a few queries over the measured rows of one model.
        self._refresh_seconds = settings.ledger_refresh_seconds
        self._lock = threading.Lock()
        self._stats: LedgerStats | None = None
        self._live: dict[str, _LiveEntry] = {}
        self._tenure: TenureTracker | None = None  # when each served version was promoted, as the ledger saw it
        self._refreshed = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._opener = threading.Thread(target=self._open, name="ledger-open", daemon=True)
        self._opener.start()

    def _open(self) -> None:
        """Open the ledger (in its own thread); on failure, answers that need it get 503 and /readyz says not ready
        while this tries again every LEDGER_OPEN_RETRY_SECONDS (a database that is not up yet at the start), as a
        worker that failed at start-up and was restarted would."""
        from service.ledger.store import Ledger
        from service.ledger.tenure import TenureTracker

        assert self.settings.ledger_url is not None
        while not self._stop.is_set():
            try:
                self._tenure = TenureTracker()
                self._ledger = Ledger.open(self.settings.ledger_url,
                                           sqlite_synchronous=self.settings.ledger_sqlite_sync,
                                           spool_dir=self.settings.ledger_spool_dir,
                                           on_spooled=metrics.LEDGER_SPOOLED_ROWS.set)
                self._open_error = None
                self._opened.set()
                return
            except Exception as error:
                if self._open_error is None:
                    log.error("ledger: could not be opened (trying again every %g s): %s",
                              LEDGER_OPEN_RETRY_SECONDS, error)
                    metrics.LEDGER_FAILURES.inc()
                self._open_error = error
                self._opened.set()  # answers stop waiting: 503 until it opens
            self._stop.wait(LEDGER_OPEN_RETRY_SECONDS)

    @property
    def failed(self) -> bool:
        """The ledger could not be opened (the service answers 503 where it needs it)."""
        return self._open_error is not None

    @property
    def ledger(self) -> Ledger:
        """The open ledger; waits for it while it opens (a fraction of a second after the start);
        LedgerUnavailableError if it could not be opened."""
        self._opened.wait()
        if self._ledger is None:  # could not be opened (yet)
            raise LedgerUnavailableError(f"the prediction ledger could not be opened "
                                         f"({type(self._open_error).__name__}); see the service log")
        return self._ledger

    def start(self) -> None:
        self._thread = threading.Thread(target=self._housekeeping, name="ledger-housekeeping", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._opener.join(timeout=30)
        if self._ledger is not None:
            self._ledger.close()

    async def record(self, rows: PredictionBatch | list[PredictionRecord]) -> None:
        """Commit `rows`; LedgerUnavailableError when the database refuses (the answer must not go out)."""
        if not self._opened.is_set():  # only in the first moments after the start
            await anyio.to_thread.run_sync(self._opened.wait)
        ledger = self.ledger
        try:
            if len(rows) > INLINE_LEDGER_ROWS:
                await ledger.record_async(rows)
            else:  # committed on the event loop, together with the other answers of this turn of the loop
                await ledger.record_grouped(rows)
        except Exception as error:
            log.error("ledger: could not record %d rows: %s", len(rows), error)
            metrics.LEDGER_FAILURES.inc()
            raise LedgerUnavailableError(f"the prediction ledger could not record the answer ({type(error).__name__})"
                                         "; nothing was answered, retry later") from error

    def outcomes_changed(self) -> None:
        """New measurements: the next read recomputes the live figures."""
        self._refreshed = 0.0

    # -- live figures and counts, cached

    def stats(self) -> LedgerStats | None:
        self._refresh_if_stale()
        return self._stats

    def live(self, name: str) -> _LiveEntry | None:
        self._refresh_if_stale()
        return self._live.get(name)

    def _refresh_if_stale(self) -> None:
        # GET /models right after the start: the background open takes well under a second, so wait for it (as
        # answers do) rather than show a catalogue without live figures; give up after OPEN_WAIT_SECONDS.
        if not self._opened.wait(OPEN_WAIT_SECONDS) or self.failed:
            return
        if time.monotonic() - self._refreshed >= self._refresh_seconds:
            try:
                self.refresh()
            except Exception:  # GET /models still answers, with the figures of the last refresh
                log.exception("ledger: live figures could not be recomputed")

    def refresh(self) -> None:
        """Recompute counts and every served model's live report; set the gauges."""
        with self._lock:
            stats = self.ledger.stats()
            assert self._tenure is not None  # made with the ledger
            live: dict[str, _LiveEntry] = {}
            for model in self._models():
                references = feature_references(model)
                report = self.ledger.live(model.name, model.version, references, last_n=DEFAULT_LAST_N,
                                          drift_rows=DRIFT_ROWS, promoted_at=self._tenure.since(
                                              self.ledger.engine, model.name, model.version, model.alias))
                live[model.name] = _LiveEntry(model.version, report, test_mape_upper_pct(model),
                                              all(has_quantiles(f) for f in model.contract.features))
            self._stats, self._live, self._refreshed = stats, live, time.monotonic()
        set_gauges(stats, live)

    def _housekeeping(self) -> None:
        while not self._stop.wait(self._refresh_seconds):
            try:
                self.housekeeping_round()
            except Exception:  # the next round tries again; serving goes on
                log.exception("ledger housekeeping failed")

    def housekeeping_round(self) -> int:
        """Retention (CELLMFG_LEDGER_RETENTION_DAYS), then fresh figures and gauges; returns the rows deleted."""
        removed = 0
        if self.settings.ledger_retention_days is not None:
            removed = self.ledger.retention(self.settings.ledger_retention_days)
            if removed:
                log.info("ledger retention: %d predictions older than %g days deleted", removed,
                         self.settings.ledger_retention_days)
        self.refresh()
        return removed


def live_block(entry: _LiveEntry | None) -> dict[str, Any] | None:
    """GET /models' `live` block of one model."""
    if entry is None:
        return None
    accuracy = entry.report.accuracy
    return {
        "version": entry.version,
        "n_outcomes": accuracy.n_outcomes,
        "mape_last_n": accuracy.last_n.model_dump(),
        "mape_since_promotion": accuracy.since_promotion.model_dump() if accuracy.since_promotion else None,
        "test_mape_upper_pct": entry.test_mape_upper_pct,
        "interval_coverage": accuracy.interval_coverage,
        "n_with_interval": accuracy.n_with_interval,
        "share_in_domain": accuracy.share_in_domain,
        "error_series": accuracy.recent_errors.model_dump(),
        "drift": {feature: {"n": d.n, "share_outside": d.share_outside, "psi": d.psi if entry.psi_known else None}
                  for feature, d in entry.report.drift.items()},
    }


def set_gauges(stats: LedgerStats, live: dict[str, _LiveEntry]) -> None:
    metrics.LEDGER_ROWS.labels(table="predictions").set(stats.predictions)
    metrics.LEDGER_ROWS.labels(table="outputs").set(stats.outputs)
    metrics.LEDGER_ROWS.labels(table="outcomes").set(stats.outcomes)
    metrics.LEDGER_SIZE_BYTES.set(stats.size_bytes)
    for name, entry in live.items():  # labels: served model names and their features only
        accuracy = entry.report.accuracy
        metrics.LIVE_OUTCOMES.labels(model=name).set(accuracy.n_outcomes)
        metrics.LIVE_MAPE.labels(model=name).set(_or_nan(accuracy.last_n.mape_pct))
        metrics.TEST_MAPE_UPPER.labels(model=name).set(entry.test_mape_upper_pct)
        metrics.LIVE_COVERAGE.labels(model=name).set(_or_nan(accuracy.interval_coverage))
        metrics.LIVE_IN_DOMAIN.labels(model=name).set(_or_nan(accuracy.share_in_domain))
        for feature, drift in entry.report.drift.items():
            metrics.DRIFT_OUTSIDE.labels(model=name, feature=feature).set(_or_nan(drift.share_outside))
            if entry.psi_known:
                metrics.DRIFT_PSI.labels(model=name, feature=feature).set(_or_nan(drift.psi))


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)

