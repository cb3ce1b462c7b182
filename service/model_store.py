"""Loading, verifying and hot-swapping the served ONNX models.

A `service.sources.ModelSource` (the MLflow registry by alias, or a bundle directory) says which revision of each
model is current and fetches it as a `cellmfg.contract.LoadedModel`, whose checksums the contract module has
already verified.
`build_served` then checks that the ONNX graph matches its contract and predicts finite values on the contract's
own background rows before anything is served. The `ModelStore` keeps one `ServedModel` (with its own
onnxruntime session) per name, and a poller thread swaps in a new one when the source's revision moves: the swap
replaces one dict reference, so a request that already took its models finishes on them, and a candidate that
fails is dropped while the old model keeps serving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from cellmfg.___domain import feature_columns, model_name
from cellmfg.contract import Contract, ContractError, LoadedModel, now_iso
from service import metrics
from service.sources import ModelSource

log = logging.getLogger("cellmfg.service")


class ModelLoadError(RuntimeError):
    """A model that cannot be served; the message names the model, the version and the problem."""


# ---------------------------------------------------------------------------------------------------------------
# Served models


@dataclass(eq=False)
class ServedModel:
    """A verified model with its session; immutable once built, replaced as a whole on reload."""

    name: str
    version: str
    alias: str
    revision: str
    source: str
    contract: Contract
    session: ort.InferenceSession
    loaded_at: str
    train_min: np.ndarray = field(repr=False)
    train_max: np.ndarray = field(repr=False)
    background: np.ndarray = field(repr=False)

    @property
    def feature_names(self) -> list[str]:
        return self.contract.feature_names

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predictions for float32 rows [n, n_features] in contract order, as float64 [n]."""
        out = self.session.run([self.contract.output_name], {self.contract.input_name: x})[0]
        return np.asarray(out, dtype=np.float64).reshape(len(x))

    def ref(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "alias": self.alias}


def session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    # Explicit counts: onnxruntime's default is one thread per core for every session, and eight sessions times
    # several workers would oversubscribe a small machine.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads would burn the cores the HTTP workers need between requests.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def build_served(model: LoadedModel, expected_name: str, threads: int, source: str, revision: str) -> ServedModel:
    """A session for `model` after checking its graph against the contract and a smoke prediction."""
    where = f"{model.name} version {model.version} from {source}"
    contract = model.contract
    if model.name != expected_name or contract.name != expected_name:
        raise ModelLoadError(f"{where}: expected model {expected_name!r}, the contract describes {contract.name!r}")
    if f"{model_name(contract.task, contract.dataset)}_onnx" != expected_name:
        raise ModelLoadError(f"{where}: the contract is for task {contract.task!r} on {contract.dataset!r}")
    expected_features = feature_columns(contract.kind)
    if contract.feature_names != expected_features:
        # The API validates rows against the ___domain's feature list and feeds them in this order.
        raise ModelLoadError(f"{where}: contract features {contract.feature_names}, the service sends "
                             f"{expected_features}")
    try:
        session = ort.InferenceSession(model.onnx_bytes, session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises several unrelated types for unreadable graphs
        raise ModelLoadError(f"{where}: onnxruntime cannot load the ONNX graph: {error}") from error
    inputs, outputs = session.get_inputs(), session.get_outputs()
    n_features = len(contract.features)
    if len(inputs) != 1 or inputs[0].name != contract.input_name:
        raise ModelLoadError(f"{where}: graph inputs {[i.name for i in inputs]}, contract expects exactly "
                             f"[{contract.input_name!r}]")
    shape = inputs[0].shape
    if len(shape) != 2 or shape[1] != n_features:
        raise ModelLoadError(f"{where}: input shape {shape}, contract lists {n_features} features")
    if contract.output_name not in [o.name for o in outputs]:
        raise ModelLoadError(f"{where}: no graph output {contract.output_name!r} "
                             f"(has {[o.name for o in outputs]})")
    background = np.asarray(contract.shap_background, dtype=np.float64)
    if background.ndim != 2 or background.shape[1] != n_features or len(background) == 0:
        raise ModelLoadError(f"{where}: SHAP background has shape {background.shape}, needs [rows, {n_features}]")
    served = ServedModel(
        name=model.name, version=model.version, alias=model.alias, revision=revision, source=source,
        contract=contract, session=session, loaded_at=now_iso(),
        train_min=np.array([f.train_min for f in contract.features]),
        train_max=np.array([f.train_max for f in contract.features]),
        background=background)
    try:
        smoke = served.predict(background.astype(np.float32))
    except Exception as error:
        raise ModelLoadError(f"{where}: prediction on the contract's background rows failed: {error}") from error
    if not np.all(np.isfinite(smoke)):
        raise ModelLoadError(f"{where}: non-finite predictions on the contract's own background rows")
    return served


# ---------------------------------------------------------------------------------------------------------------
# The store


class ModelStore:
    """The served models by name, loaded at start and kept current by a poller thread."""

    def __init__(self, source: ModelSource, names: Iterable[str], threads: int = 1) -> None:
        self.source = source
        self.names = tuple(names)
        self.threads = threads
        self._models: dict[str, ServedModel] = {}
        self._problems: dict[str, str] = {name: "not loaded yet" for name in self.names}
        self._rejected: dict[str, str] = {}
        self._swap_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.last_poll: str | None = None
        self.last_poll_error: str | None = None
        self._revisions_failing = False  # the last poll could not read some revision (an outage is logged once)
        for name in self.names:
            metrics.declare(name)

    # -- reading (request path: no locks, one dict lookup)

    def get(self, name: str) -> ServedModel | None:
        return self._models.get(name)

    def models(self) -> list[ServedModel]:
        current = self._models
        return [current[name] for name in self.names if name in current]

    @property
    def ready(self) -> bool:
        current = self._models
        return all(name in current for name in self.names)

    def problems(self) -> dict[str, str]:
        current = self._models
        return {name: self._problems.get(name, "") for name in self.names if name not in current}

    # -- loading

    def _load(self, name: str) -> ServedModel:
        """Fetch and verify `name`. A ContractError or ModelLoadError is a verdict on the candidate; any other
        exception (a network error, an unmounted volume) says nothing about it and is raised as it is."""
        try:
            loaded = self.source.fetch(name)
        except ContractError as error:
            raise ModelLoadError(f"{name}: fetched from {self.source.description} but {error}") from error
        return build_served(loaded, name, self.threads, self.source.origin(loaded), self.source.revision_of(loaded))

    def _install(self, served: ServedModel) -> ServedModel | None:
        with self._swap_lock:
            old = self._models.get(served.name)
            # Copy-on-write: readers holding the old dict (and old model) are never disturbed.
            self._models = {**self._models, served.name: served}
            self._problems.pop(served.name, None)
            self._rejected.pop(served.name, None)
        if old is not None and (old.version, old.alias) != (served.version, served.alias):
            metrics.MODEL_INFO.labels(model=old.name, version=old.version, alias=old.alias).set(0)
        metrics.MODEL_INFO.labels(model=served.name, version=served.version, alias=served.alias).set(1)
        metrics.declare(served.name, served.version, served.feature_names)
        return old

    def load_all(self) -> None:
        """Load every model once; failures are recorded (and retried by the poller), not raised."""
        for name in self.names:
            try:
                self._install(self._load(name))
                log.info("loaded %s version %s from %s", name, self._models[name].version, self.source.description)
            except ModelLoadError as error:
                self._problems[name] = str(error)
                metrics.MODEL_RELOAD_FAILURES.labels(model=name).inc()
                log.error("not serving %s: %s", name, error)
            except Exception as error:  # unreachable source: the poller tries again
                self._problems[name] = f"cannot fetch from {self.source.description}: {_brief(error)}"
                metrics.MODEL_POLL_FAILURES.labels(model=name).inc()
                log.error("not serving %s yet: %s", name, self._problems[name])

    def poll_once(self) -> list[str]:
        """Swap in every model whose revision moved; return the names swapped.

        A source that cannot be read (registry down, volume gone) leaves every served model in place; each model it
        could not check is counted in cellmfg_model_poll_failures_total and the next poll simply tries again. The
        outage is logged when it starts and when it ends, not at every poll.
        """
        # First ask for every revision (cheap), so an outage and its end are logged before anything is swapped.
        errors = []
        revisions: dict[str, str] = {}
        for name in self.names:
            try:
                revisions[name] = self.source.revision(name)
            except Exception as error:
                errors.append(f"{name}: {_brief(error)}")
                metrics.MODEL_POLL_FAILURES.labels(model=name).inc()
        was_failing, self._revisions_failing = self._revisions_failing, bool(errors)
        if errors and not was_failing:
            log.warning("model poll could not read some revisions (still serving the loaded models; retrying every "
                        "poll, logged again when it recovers): %s", "; ".join(errors))
        elif was_failing and not errors:
            log.info("model poll reads every revision again from %s", self.source.description)

        swapped = []
        for name, revision in revisions.items():
            current = self._models.get(name)
            if current is not None and revision == current.revision:
                continue
            if self._rejected.get(name) == revision:
                continue  # already failed verification; wait until the alias moves again
            try:
                served = self._load(name)
            except ModelLoadError as error:
                self._rejected[name] = revision
                metrics.MODEL_RELOAD_FAILURES.labels(model=name).inc()
                if current is None:
                    self._problems[name] = str(error)
                log.error("keeping %s: candidate %s rejected: %s",
                          f"{name} version {current.version}" if current else f"{name} unloaded", revision, error)
                continue
            except Exception as error:  # the download failed: not a verdict on the candidate, retried next poll
                message = f"{name}: cannot fetch revision {revision}: {_brief(error)}"
                errors.append(message)
                metrics.MODEL_POLL_FAILURES.labels(model=name).inc()
                log.warning("model poll: %s (retried next poll)", message)
                continue
            old = self._install(served)
            metrics.MODEL_RELOADS.labels(model=name).inc()
            swapped.append(name)
            log.info("swapped %s: version %s -> %s", name, old.version if old else "none", served.version)
        self.last_poll = now_iso()
        self.last_poll_error = "; ".join(errors) or None
        return swapped

    def start_polling(self, interval: float) -> None:
        if interval <= 0 or self._poller is not None:
            return

        def loop() -> None:
            while not self._stop.wait(interval):
                started = time.monotonic()
                try:
                    self.poll_once()
                except Exception:  # a poller that dies silently would freeze the served versions forever
                    log.exception("model poll failed")
                log.debug("model poll took %.3f s", time.monotonic() - started)

        self._poller = threading.Thread(target=loop, name="cellmfg-model-poller", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=10)
            self._poller = None


def _brief(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error)[:200]}"
