"""Exact SHAP explanations of the served ONNX models with the `shap` library.

With 5-6 features, `shap.explainers.Exact` evaluates every coalition (2^6 = 64) against the contract's whole
background (~50 rows): one onnxruntime call of ~3,200 rows per explained row, and exact Shapley values, so
base value + contributions equals the prediction to float32 precision. The base value is the mean prediction over
the background.

`import shap` takes ~8 s here (it pulls in sklearn, pandas, matplotlib and numba) and the first explanation
another ~8 s of numba compilation per feature count. Doing that before /readyz would blow the cold-start budget,
so it happens in a background thread after the models are loaded; an `explain` request that arrives earlier
waits for it (up to `wait` seconds) and then gets a 503 that says so.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import weakref
from collections.abc import Iterable
from typing import Any

import numpy as np

from service import metrics
from service.model_store import ServedModel

log = logging.getLogger("cellmfg.service")


class ExplanationsUnavailableError(RuntimeError):
    """shap is not loaded (yet, or at all); the message says which."""


class Explainers:
    """One shap Exact explainer per served model, built on first use."""

    def __init__(self) -> None:
        self._shap: Any = None
        self._ready = threading.Event()
        self._failure: str | None = None
        self._lock = threading.Lock()
        # Keyed by the ServedModel object: a swapped-in version gets its own explainer, the old one goes with it.
        self._explainers: weakref.WeakKeyDictionary[ServedModel, tuple[Any, threading.Lock]] = (
            weakref.WeakKeyDictionary())
        self.warm_up_seconds: float | None = None

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._failure is None

    @property
    def status(self) -> str:
        if not self._ready.is_set():
            return "warming up"
        return self._failure or "ready"

    def warm_up(self, models: Iterable[ServedModel]) -> None:
        """Import shap and compile its kernels by explaining one background row per feature count."""
        started = time.perf_counter()
        try:
            import shap

            self._shap = shap
            # The first explanation per feature count compiles shap's numba kernels; later ones per model only
            # build the explainer, so do both now rather than in the first requests.
            for model in models:
                self._compute(model, model.background[:1])
            # shap drags ~10^6 long-lived objects into the heap; freezing them keeps full garbage collections
            # (otherwise ~200 ms pauses under allocation-heavy 10,000-row requests) to what requests allocate.
            gc.freeze()
        except Exception as error:
            self._failure = f"explanations unavailable: shap failed to load: {type(error).__name__}: {error}"
            log.exception("shap warm-up failed")
        finally:
            self.warm_up_seconds = time.perf_counter() - started
            self._ready.set()
        log.info("explanations ready after %.1f s", self.warm_up_seconds)

    def warm_up_in_background(self, models: Iterable[ServedModel]) -> threading.Thread:
        thread = threading.Thread(target=self.warm_up, args=(list(models),), name="cellmfg-shap-warm-up",
                                  daemon=True)
        thread.start()
        return thread

    def _explainer(self, model: ServedModel) -> tuple[Any, threading.Lock]:
        with self._lock:
            entry = self._explainers.get(model)
            if entry is None:
                shap = self._shap
                background = model.background

                def predict(x: np.ndarray) -> np.ndarray:
                    return model.predict(np.asarray(x, dtype=np.float32))

                masker = shap.maskers.Independent(background, max_samples=len(background))
                entry = (shap.explainers.Exact(predict, masker), threading.Lock())
                self._explainers[model] = entry
            return entry

    def _compute(self, model: ServedModel, x: np.ndarray) -> tuple[float, np.ndarray]:
        explainer, lock = self._explainer(model)
        # shap explainers keep per-call state (cached masks); one call at a time per explainer.
        with lock:
            result = explainer(x, silent=True)
        values = np.asarray(result.values, dtype=np.float64).reshape(len(x), x.shape[1])
        base = float(np.asarray(result.base_values, dtype=np.float64).reshape(-1)[0])
        return base, values

    def explain(self, model: ServedModel, x: np.ndarray, wait: float = 60.0) -> tuple[float, np.ndarray]:
        """(base value, Shapley values [n, n_features]) for float64 rows `x` exactly as the model sees them."""
        if not self._ready.wait(wait):
            raise ExplanationsUnavailableError(
                "explanations are not available yet: shap is still loading after start-up (about 15-20 s); "
                "retry shortly or send explain=false")
        if self._failure is not None:
            raise ExplanationsUnavailableError(self._failure)
        started = time.perf_counter()
        base, values = self._compute(model, x)
        metrics.EXPLANATION_SECONDS.labels(model=model.name).observe(time.perf_counter() - started)
        metrics.EXPLAINED_ROWS.labels(model=model.name).inc(len(x))
        return base, values
