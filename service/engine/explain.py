"""Exact SHAP explanations of the served ONNX models, computed by the service itself (`service.engine.shapley`).

The values are those of `shap.explainers.Exact` with a `shap.maskers.Independent` masker over the contract's whole
background (tests/test_explain.py checks them against shap): with 5-6 features every coalition (2^6 = 64) is
evaluated against every background row (~50), the base value is the mean prediction over the background, and
base value + contributions equals the prediction to float32 precision. The work is plain array work through the
model's own onnxruntime session, so explanations are ready as soon as a model is: the first explanation of a model
costs one extra prediction on its background (the base value), nothing is imported or compiled.
"""

from __future__ import annotations

import os
import threading
import time
import weakref

import numpy as np

from service.engine import metrics
from service.engine.model_store import ServedModel
from service.engine.shapley import DEFAULT_CHUNK_MODEL_ROWS, ShapleyPlan, make_plan, shapley_values

# Large explained batches are split over this many threads at most (onnxruntime releases the GIL, so they run on
# separate cores); more would only queue on the small machines this runs on.
MAX_THREADS = 4


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Explainers:
    """Shapley values for any served model; safe to call from concurrent requests.

    `threads` bounds how many cores one large request uses (default: the CPUs this process may run on, at most
    MAX_THREADS); a single row or a small batch always runs in the calling thread.
    """

    def __init__(self, threads: int | None = None, chunk_model_rows: int = DEFAULT_CHUNK_MODEL_ROWS) -> None:
        self.threads = max(1, threads if threads is not None else min(MAX_THREADS, available_cpus()))
        self.chunk_model_rows = chunk_model_rows
        self._lock = threading.Lock()
        # Keyed by the ServedModel object: a swapped-in version gets its own plan, the old one goes with it.
        self._plans: weakref.WeakKeyDictionary[ServedModel, ShapleyPlan] = weakref.WeakKeyDictionary()

    def plan(self, model: ServedModel) -> ShapleyPlan:
        plan = self._plans.get(model)
        if plan is None:
            # Built outside the lock (it runs the model); two threads racing build equal plans, one is kept.
            built = make_plan(model.predict, model.background)
            with self._lock:
                plan = self._plans.setdefault(model, built)
        return plan

    def model_rows_per_row(self, model: ServedModel) -> int:
        """Model rows one explained row costs: the plan's count once it is built, else its upper bound 2^M x B."""
        plan = self._plans.get(model)
        if plan is not None:
            return plan.model_rows_per_row
        return (1 << len(model.feature_names)) * len(model.background)

    def explain(self, model: ServedModel, x: np.ndarray) -> tuple[float, np.ndarray]:
        """(base value, Shapley values [n, n_features]) for rows `x`, rounded to float32 as the model sees them."""
        started = time.perf_counter()
        plan = self.plan(model)
        values = shapley_values(model.predict, plan, x, self.chunk_model_rows, self.threads)
        metrics.EXPLANATION_SECONDS.labels(model=model.name).observe(time.perf_counter() - started)
        metrics.EXPLAINED_ROWS.labels(model=model.name).inc(len(x))
        return plan.base_value, values
