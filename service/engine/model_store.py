"""Loading, verifying and hot-swapping the served ONNX models.

A `service.engine.sources.ModelSource` (the MLflow registry by alias, or a bundle directory) says which revision of each
model is current and fetches it as a `cellmfg.contract.LoadedModel`, whose checksums the contract module has
already verified.
`build_served` then checks that the ONNX graph matches its contract and predicts finite values on the contract's
own background rows before anything is served. The `ModelStore` keeps one `ServedModel` (with its own
onnxruntime session) per name. Which names it serves is the source's catalogue (every ONNX model holding the
alias, or every model in the bundle), read again at each poll: a new model is loaded, a retired one dropped, and a
moved revision swapped in. A swap replaces one dict reference, so a request that already took its models finishes
on them, and a candidate that fails is refused and counted while everything else keeps serving.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from cellmfg.contract import Contract, ContractError, FeatureSpec, LoadedModel, now_iso
from cellmfg.domain import DATASETS, TARGETS, Kind, Quantity, Target, feature_columns, targets_for
from service.engine import metrics
from service.engine.config import served_name
from service.engine.sources import ModelSource

log = logging.getLogger("cellmfg.service")


class ModelLoadError(RuntimeError):
    """A model that cannot be served; the message names the model, the version and the problem."""


@dataclass(frozen=True)
class Slot:
    """Where a model answers on the kind's endpoint: `chemistry`/`dataset` value and target task."""

    kind: Kind
    dataset: str
    task: str


def endpoint_slot(contract: Contract) -> Slot | None:
    """The endpoint slot of a model named {task}_{dataset}_onnx whose features are the domain's own (in order) and
    whose target is one of the kind's; other models (other features or targets) are served at /predict/{name}."""
    kind = contract.kind
    tasks = {t.task: t for t in targets_for(kind)}
    target = tasks.get(contract.task)
    if (target is None or contract.target.column != target.column or contract.feature_names != feature_columns(kind)
            or contract.name != served_name(contract.task, contract.dataset)):
        return None
    return Slot(kind, contract.dataset, contract.task)


def slot_from_name(name: str) -> Slot | None:
    """The slot a model not loaded (yet) would take, from its name alone: so a request for its dataset gets a 503
    naming it rather than "unknown dataset"."""
    stem = name.removesuffix("_onnx")
    for task in sorted(TARGETS, key=len, reverse=True):  # mass_loading before a shorter task that prefixes it
        if stem.startswith(f"{task}_") and len(stem) > len(task) + 1 and name.endswith("_onnx"):
            kind: Kind = "electrode" if TARGETS[task] in targets_for("electrode") else "gdl"
            return Slot(kind, stem[len(task) + 1:], task)
    return None


def target_of(contract: Contract) -> Target:
    """The target a model predicts, with its physical range: the contract's own range when it states one, else the
    domain's for the paper's targets, else unbounded (a lab's own target without a stated range)."""
    spec = contract.target
    known = TARGETS.get(spec.task)
    if known is not None and known.column != spec.column:
        known = None
    low = spec.physical_min if spec.physical_min is not None else (known.quantity.physical_min if known else -math.inf)
    high = spec.physical_max if spec.physical_max is not None else (known.quantity.physical_max if known else math.inf)
    if known is not None and (low, high) == (known.quantity.physical_min, known.quantity.physical_max):
        return known
    description = known.quantity.description if known else f"{spec.task} ({contract.dataset})"
    return Target(spec.task, Quantity(spec.column, spec.unit, description, low, high))


def contract_problem(contract: Contract) -> str | None:
    """What makes a contract unusable beyond its schema (which `cellmfg.contract` checks), or None."""
    names = contract.feature_names
    if not names:
        return "the contract lists no features"
    if len(set(names)) != len(names):
        return f"the contract lists a feature twice: {names}"
    for f in contract.features:
        if not (np.isfinite([f.train_min, f.train_max, f.physical_min, f.physical_max]).all()
                and f.physical_min <= f.train_min <= f.train_max <= f.physical_max):
            return (f"feature {f.name}: training range [{f.train_min:g}, {f.train_max:g}] is not inside its "
                    f"physical range [{f.physical_min:g}, {f.physical_max:g}]")
    return None


# ---------------------------------------------------------------------------------------------------------------
# Served models


def feature_quantity(spec: FeatureSpec) -> Quantity:
    """A contract's feature as the domain's quantity (name, unit, physical bounds, scale), which checks values."""
    return Quantity(spec.name, spec.unit, "", spec.physical_min, spec.physical_max, spec.scale_centre,
                    spec.scale_width)


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
    target: Target = field(repr=False)  # with the physical range its intervals are clipped to
    # (kind, dataset, task) when /predict/electrode or /predict/gdl can answer with it, else None (generic only)
    slot: Slot | None = None

    @property
    def feature_names(self) -> list[str]:
        return self.contract.feature_names

    @property
    def quantities(self) -> list[Quantity]:
        """The contract's features as domain quantities, in input order: each checks its own values
        (`Quantity.problem`), so a lab's own model is held to the bounds its contract recorded."""
        return [feature_quantity(f) for f in self.contract.features]

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
    problem = contract_problem(contract)
    if problem:
        raise ModelLoadError(f"{where}: {problem}")
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
        background=background,
        slot=endpoint_slot(contract), target=target_of(contract))
    try:
        smoke = served.predict(background.astype(np.float32))
    except Exception as error:
        raise ModelLoadError(f"{where}: prediction on the contract's background rows failed: {error}") from error
    if not np.all(np.isfinite(smoke)):
        raise ModelLoadError(f"{where}: non-finite predictions on the contract's own background rows")
    return served


# ---------------------------------------------------------------------------------------------------------------
# The store


@dataclass(frozen=True)
class Catalogue:
    """Which datasets the kind endpoints answer, and with which model names; rebuilt whenever a model arrives,
    leaves or fails, and replaced as a whole (requests read it without a lock)."""

    names: tuple[str, ...] = ()
    # kind -> dataset -> task -> model name, for every catalogue name with a slot (loaded or not)
    endpoints: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)

    def datasets(self, kind: str) -> list[str]:
        """The kind's served datasets: the paper's in their usual order, then the others alphabetically."""
        found = self.endpoints.get(kind, {})
        paper = [name for name in DATASETS if name in found]
        return paper + sorted(name for name in found if name not in DATASETS)


class ModelStore:
    """The served models by name: the source's catalogue, loaded at start and kept current by a poller thread.

    `names`, when given, pins the catalogue to those names (each must be served for readiness); otherwise every
    model the source offers is served. `required` names must be served too before the store is ready. Ready means:
    the catalogue could be read, every model that was in it at start (and is still in it) is loaded, every required
    one is, and at least one model is served. A model that appears later and fails verification is refused and
    counted but never makes the store unready.
    """

    def __init__(self, source: ModelSource, names: Iterable[str] | None = None, threads: int = 1,
                 required: Iterable[str] = (), publish_catalogue: bool = True) -> None:
        self.source = source
        # False for the challengers' store (shadow scoring): the catalogue gauges count the served models only.
        self.publish_catalogue = publish_catalogue
        self.pinned = tuple(names) if names is not None else None
        self.required = tuple(dict.fromkeys((*(self.pinned or ()), *required)))
        self.threads = threads
        self._models: dict[str, ServedModel] = {}
        self._listed: dict[str, str] = {}  # the last catalogue read: name -> revision
        self._at_start: set[str] | None = None  # names listed by the first successful read
        self._problems: dict[str, str] = {name: "not loaded yet" for name in self.required}
        self._rejected: dict[str, str] = {}
        self._catalogue = Catalogue()
        self._swap_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.last_poll_error: str | None = None
        self._revisions_failing = False  # the last poll could not read the catalogue (an outage is logged once)
        for name in self.required:
            metrics.declare(name)
        self._rebuild()

    # -- reading (request path: no locks, one attribute read)

    def get(self, name: str) -> ServedModel | None:
        return self._models.get(name)

    @property
    def names(self) -> tuple[str, ...]:
        """Every name served or meant to be: the catalogue plus the required names."""
        return self._catalogue.names

    @property
    def catalogue(self) -> Catalogue:
        return self._catalogue

    def models(self) -> list[ServedModel]:
        current = self._models
        return [current[name] for name in self.names if name in current]

    @property
    def ready(self) -> bool:
        current = self._models
        if self._at_start is None or not current:
            return False
        wanted = (self._at_start & set(self._listed)) | set(self.required)
        return all(name in current for name in wanted)

    def problems(self) -> dict[str, str]:
        current = self._models
        return {name: self._problems.get(name, "not loaded yet") for name in self.names if name not in current}

    def _publish(self) -> None:
        if not self.publish_catalogue:
            return
        missing = len(self.problems())
        metrics.CATALOGUE_MODELS.labels(state="served").set(len(self.names) - missing)
        metrics.CATALOGUE_MODELS.labels(state="missing").set(missing)

    # -- loading

    def _load(self, name: str) -> ServedModel:
        """Fetch and verify `name`. A ContractError or ModelLoadError is a verdict on the candidate; any other
        exception (a network error, an unmounted volume) says nothing about it and is raised as it is."""
        try:
            loaded = self.source.fetch(name)
        except ContractError as error:
            raise ModelLoadError(f"{name}: fetched from {self.source.description} but {error}") from error
        return build_served(loaded, name, self.threads, self.source.origin(loaded), self.source.revision_of(loaded))

    def _rebuild(self) -> None:
        """Recompute the catalogue from the listed names and the loaded models (under the swap lock)."""
        names = tuple(sorted({*self._listed, *self.required}))
        endpoints: dict[str, dict[str, dict[str, str]]] = {}
        for name in names:
            served = self._models.get(name)
            slot = served.slot if served is not None else slot_from_name(name)
            if slot is not None:
                endpoints.setdefault(slot.kind, {}).setdefault(slot.dataset, {})[slot.task] = name
        self._catalogue = Catalogue(names, endpoints)

    def _install(self, served: ServedModel) -> ServedModel | None:
        with self._swap_lock:
            old = self._models.get(served.name)
            # Copy-on-write: readers holding the old dict (and old model) are never disturbed.
            self._models = {**self._models, served.name: served}
            self._problems.pop(served.name, None)
            self._rejected.pop(served.name, None)
            self._rebuild()
        if old is not None and (old.version, old.alias) != (served.version, served.alias):
            metrics.MODEL_INFO.labels(model=old.name, version=old.version, alias=old.alias).set(0)
        metrics.MODEL_INFO.labels(model=served.name, version=served.version, alias=served.alias).set(1)
        metrics.declare(served.name, served.version, served.feature_names)
        return old

    def _remove(self, name: str) -> ServedModel | None:
        """Stop serving `name` (it left the catalogue: retired, or dropped from the bundle)."""
        with self._swap_lock:
            old = self._models.get(name)
            self._models = {k: v for k, v in self._models.items() if k != name}
            self._problems.pop(name, None)
            self._rejected.pop(name, None)
            self._rebuild()
        if old is not None:
            metrics.MODEL_INFO.labels(model=old.name, version=old.version, alias=old.alias).set(0)
        return old

    def _read_catalogue(self) -> dict[str, str]:
        listed = self.source.catalogue()
        if self.pinned is not None:
            listed = {name: revision for name, revision in listed.items() if name in self.pinned}
        for name in self.required:
            if name not in listed:
                self._problems[name] = f"not offered by {self.source.description}"
        return listed

    def _try_load(self, name: str, revision: str, at_start: bool) -> bool:
        current = self._models.get(name)
        try:
            served = self._load(name)
        except ModelLoadError as error:
            self._rejected[name] = revision
            metrics.MODEL_RELOAD_FAILURES.labels(model=name).inc()
            if current is None:
                self._problems[name] = str(error)
            if at_start or current is None:
                log.error("not serving %s: %s", name, error)
            else:
                log.error("keeping %s version %s: candidate %s rejected: %s", name, current.version, revision, error)
            return False
        old = self._install(served)
        if at_start:
            log.info("loaded %s version %s from %s", name, served.version, self.source.description)
        else:
            metrics.MODEL_RELOADS.labels(model=name).inc()
            if old is None:
                log.info("now serving %s version %s", name, served.version)
            else:
                log.info("swapped %s: version %s -> %s", name, old.version, served.version)
        return True

    def load_all(self) -> None:
        """Read the catalogue and load every model once; failures are recorded (and retried by the poller), not
        raised."""
        try:
            listed = self._read_catalogue()
        except Exception as error:  # unreachable source: the poller tries again
            for name in self.required:
                self._problems[name] = f"cannot read the catalogue of {self.source.description}: {_brief(error)}"
                metrics.MODEL_POLL_FAILURES.labels(model=name).inc()
            log.error("not serving yet: cannot read the catalogue of %s: %s", self.source.description, _brief(error))
            return
        with self._swap_lock:
            self._listed = listed
            self._at_start = set(listed)
            self._rebuild()
        for name in listed:
            metrics.declare(name)
        for name, revision in listed.items():
            try:
                self._try_load(name, revision, at_start=True)
            except Exception as error:  # the download failed: retried by the poller
                self._problems[name] = f"cannot fetch from {self.source.description}: {_brief(error)}"
                metrics.MODEL_POLL_FAILURES.labels(model=name).inc()
                log.error("not serving %s yet: %s", name, self._problems[name])
        self._publish()

    def poll_once(self) -> list[str]:
        """Load new models, drop retired ones and swap in every model whose revision moved; return the names
        loaded or swapped.

        A source that cannot be read (registry down, volume gone) leaves every served model in place; each model it
        could not check is counted in cellmfg_model_poll_failures_total and the next poll simply tries again. The
        outage is logged when it starts and when it ends, not at every poll.
        """
        errors: list[str] = []
        try:
            listed: dict[str, str] | None = self._read_catalogue()
        except Exception as error:
            listed = None
            for name in self.names:
                errors.append(f"{name}: {_brief(error)}")
                if self.publish_catalogue:  # the challengers' store would count under the champions' names
                    metrics.MODEL_POLL_FAILURES.labels(model=name).inc()
            if not self.names:
                errors.append(f"catalogue: {_brief(error)}")
        was_failing, self._revisions_failing = self._revisions_failing, bool(errors)
        # The challengers' store polls the same registry: its outage is the champions' outage, said once by them.
        poll = "model poll" if self.publish_catalogue else "challenger poll"
        if errors and not was_failing:
            log.log(logging.WARNING if self.publish_catalogue else logging.INFO,
                    "%s could not read some revisions (still serving the loaded models; retrying every poll, logged "
                    "again when it recovers): %s", poll, "; ".join(errors))
        elif was_failing and not errors:
            log.info("%s reads every revision again from %s", poll, self.source.description)
        swapped: list[str] = []
        if listed is not None:
            with self._swap_lock:
                gone = [name for name in self._listed if name not in listed]
                self._listed = listed
                if self._at_start is None:  # the catalogue could not be read at start: this is the first read
                    self._at_start = set(listed)
                self._rebuild()
            for name in gone:
                old = self._remove(name)
                log.info("%s left the catalogue of %s: no longer served%s", name, self.source.description,
                         f" (was version {old.version})" if old else "")
            for name, revision in listed.items():
                current = self._models.get(name)
                if current is not None and revision == current.revision:
                    continue
                if self._rejected.get(name) == revision:
                    continue  # already failed verification; wait until the alias moves again
                if current is None and name not in self._problems:
                    metrics.declare(name)
                    log.info("%s joined the catalogue of %s (revision %s)", name, self.source.description, revision)
                try:
                    if self._try_load(name, revision, at_start=False):
                        swapped.append(name)
                except Exception as error:  # the download failed: not a verdict on the candidate, retried next poll
                    message = f"{name}: cannot fetch revision {revision}: {_brief(error)}"
                    errors.append(message)
                    metrics.MODEL_POLL_FAILURES.labels(model=name).inc()
                    if current is None:
                        self._problems[name] = message
                    log.warning("model poll: %s (retried next poll)", message)
        self.last_poll_error = "; ".join(errors) or None
        self._publish()
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
