"""Exact Shapley values of a black-box model against a background set, as batched array work.

The definition is the one of `shap.explainers.Exact` with a `shap.maskers.Independent` masker over the whole
background: the value of a coalition S of features for a row x is the model's mean prediction over the background
rows b with the features in S taken from x and the others from b,

    v(S) = mean_b f(x_S, b_~S),

the base value is v(∅) (the mean prediction over the background, the same for every row) and

    phi_i = sum over S not containing i of |S|! (M - |S| - 1)! / M! * (v(S ∪ {i}) - v(S)).

Written as a matrix: phi = v @ W, with one row of W per coalition T and one column per feature,
W[T, i] = +w(|T| - 1) if i is in T and -w(|T|) otherwise, w(s) = s! (M - s - 1)! / M!. W's row for the full
coalition sums to +1, the empty one's to -1 and every other to 0, so base value + sum(phi) = f(x) exactly, up to
float64 rounding.

Evaluation: v(∅) is computed once per model; v(full) = f(x) needs one model row per request row; the 2^M - 2 other
coalitions need one model row per (request row, coalition, distinct background values outside the coalition):
at most K x B with K = 2^M - 2, fewer when background rows share values. All of them, for a chunk of request
rows, go to the model in ONE call (a float32 array built with one broadcasting multiply and add), the outputs are
averaged over the background, and the weights are applied as one matrix product. Chunks bound the memory: the
model's intermediate activations for a chunk are (rows in the chunk) x (hidden width) floats.

Pure numpy: nothing here knows onnxruntime; the caller passes the prediction function. Nothing is shared between
calls except read-only arrays, so concurrent calls are safe as long as the prediction function is.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache

import numpy as np

# float32 rows [n, M] -> predictions [n] (any float dtype)
PredictFn = Callable[[np.ndarray], np.ndarray]

# Model rows per call: large enough that the per-call overhead (~20 µs) is noise beside the ~1.5 ms these nets take
# for 2^14 rows, small enough that the model's activations (rows x hidden width x 4 bytes per layer) stay in cache;
# 2^14 was the fastest of 2^10-2^18 for the 32-unit nets on one core.
DEFAULT_CHUNK_MODEL_ROWS = 1 << 14


# Exact values cost 2^M x (background rows) model rows per explained row: ~3,200 for the paper's 6 features and
# 50 background rows, ~200,000 (some 20 ms per row) at 12 features. Beyond that they are not a per-request job.
MAX_FEATURES = 12


def coalition_masks(n_features: int) -> np.ndarray:
    """Every coalition as a boolean row: [2^M, M], row k holds the binary digits of k (feature j = bit j)."""
    if not 1 <= n_features <= MAX_FEATURES:
        raise ValueError(f"exact Shapley values need 1-{MAX_FEATURES} features, got {n_features}")
    codes = np.arange(1 << n_features)
    return ((codes[:, None] >> np.arange(n_features)[None, :]) & 1).astype(bool)


def shapley_weights(masks: np.ndarray) -> np.ndarray:
    """The float64 matrix W [coalitions, M] with phi = v @ W for coalition values v [n, coalitions]."""
    n_features = masks.shape[1]
    sizes = masks.sum(axis=1)
    factorial = np.array([math.factorial(s) for s in range(n_features + 1)], dtype=np.float64)
    total = factorial[n_features]

    def w(s: np.ndarray) -> np.ndarray:  # s! (M - s - 1)! / M!, defined for 0 <= s <= M - 1
        s = np.clip(s, 0, n_features - 1)
        return factorial[s] * factorial[n_features - s - 1] / total

    gain = w(sizes - 1)[:, None]  # T contains i: T = S ∪ {i} with |S| = |T| - 1
    loss = w(sizes)[:, None]  # T does not contain i: T = S with |S| = |T|
    return np.where(masks, gain, -loss)


@dataclass(frozen=True)
class ShapleyPlan:
    """What explaining rows against one background needs, computed once per (model, background)."""

    background: np.ndarray  # float32 [B, M]
    base_value: float  # v(∅): mean prediction over the background
    # float64 [K, M]: W's rows for the K = 2^M - 2 coalitions evaluated per row (every one but ∅ and the full set)
    weights_inner: np.ndarray
    weight_full: np.ndarray  # float64 [M]: W's row for the full coalition (1/M each)
    weight_empty: np.ndarray  # float64 [M]: W's row for ∅ (-1/M each)
    # The masked rows of one request row x, coalition after coalition, are x * take + fill: `take` is 1 where the
    # coalition takes the feature from x (else 0), `fill` the background's value where it does not (else 0). Both
    # terms are exact in float32 (a product with 1 or 0, a sum with 0), so the rows equal the masked values bit for
    # bit. Per coalition S only the distinct background parts b_~S are kept, each weighted by how often it occurs
    # / B: the same mean over the background, with fewer model rows when background rows share values (replicates
    # of one recipe share everything but the calendering settings, a constant feature repeats in every row).
    take: np.ndarray  # float32 [T, M], T = sum over S of the distinct b_~S (at most K x B)
    fill: np.ndarray  # float32 [T, M]
    share: np.ndarray  # float64 [T]: occurrences of the row's b_~S in the background / B
    starts: np.ndarray  # int [K]: where each coalition's rows start in take/fill

    @property
    def n_features(self) -> int:
        return int(self.background.shape[1])

    @property
    def model_rows_per_row(self) -> int:
        return len(self.take) + 1


@cache
def _weights(n_features: int) -> tuple[np.ndarray, np.ndarray]:
    masks = coalition_masks(n_features)
    weights = shapley_weights(masks)
    for array in (masks, weights):
        array.setflags(write=False)
    return masks, weights


def make_plan(predict: PredictFn, background: np.ndarray) -> ShapleyPlan:
    """The plan for `background` [B, M] (float32 is what the model sees; float64 is rounded to it)."""
    bg = np.ascontiguousarray(background, dtype=np.float32)
    if bg.ndim != 2 or len(bg) == 0 or not np.all(np.isfinite(bg)):
        raise ValueError(f"the background needs finite values in shape [rows, features], got shape {bg.shape}")
    masks, weights = _weights(bg.shape[1])
    inner = masks[1:-1]
    b = len(bg)
    takes, fills, shares, starts = [], [], [], []
    offset = 0
    for mask in inner:
        distinct, counts = np.unique(np.where(mask, np.float32(0), bg), axis=0, return_counts=True)
        takes.append(np.broadcast_to(mask.astype(np.float32), distinct.shape))
        fills.append(distinct)
        shares.append(counts / b)
        starts.append(offset)
        offset += len(distinct)
    take, fill = np.concatenate(takes).astype(np.float32), np.concatenate(fills).astype(np.float32)
    share, start = np.concatenate(shares).astype(np.float64), np.array(starts, dtype=np.intp)
    base = float(np.asarray(predict(bg), dtype=np.float64).reshape(b).mean())
    for array in (bg, take, fill, share, start):
        array.setflags(write=False)
    return ShapleyPlan(background=bg, base_value=base, weights_inner=weights[1:-1],
                       weight_full=weights[-1], weight_empty=weights[0], take=take, fill=fill, share=share,
                       starts=start)


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def _evaluate(predict: PredictFn, plan: ShapleyPlan, x32: np.ndarray, parts: list[slice], values: np.ndarray,
              rows_per_chunk: int) -> None:
    """Shapley values of the chunks `parts` of `x32`, written into the same rows of `values`."""
    kb, m = plan.take.shape
    # One input buffer per caller (never shared between threads), reused by its chunks.
    buffer = np.empty((rows_per_chunk * (kb + 1), m), dtype=np.float32)
    for part in parts:
        rows = x32[part]
        c = len(rows)
        masked_size = c * kb
        masked = buffer[:masked_size].reshape(c, kb, m)
        np.multiply(rows[:, None, :], plan.take[None, :, :], out=masked)
        np.add(masked, plan.fill[None, :, :], out=masked)
        buffer[masked_size:masked_size + c] = rows  # the full coalition: the rows themselves
        out = np.asarray(predict(buffer[:masked_size + c]), dtype=np.float64).reshape(-1)
        # v(S) for the inner coalitions: the mean over the background rows (float64, like shap)
        coalition_values = np.add.reduceat(out[:masked_size].reshape(c, kb) * plan.share, plan.starts, axis=1)
        full = out[masked_size:]  # v(full) = f(x)
        values[part] = (coalition_values @ plan.weights_inner + full[:, None] * plan.weight_full[None, :]
                        + plan.base_value * plan.weight_empty[None, :])


def shapley_values(predict: PredictFn, plan: ShapleyPlan, x: np.ndarray,
                   chunk_model_rows: int = DEFAULT_CHUNK_MODEL_ROWS, threads: int = 1) -> np.ndarray:
    """Exact Shapley values [n, M] (float64) of the rows `x` [n, M] (rounded to float32, as the model sees them).

    One call of `predict` per chunk of request rows; each call gets, for every row of the chunk, its masked rows
    (at most K x B, coalition-major) followed by the chunk's own rows (the full coalition). With
    `threads` > 1 and several chunks, the chunks are split into that many contiguous runs evaluated at the same
    time (`predict` must then be thread-safe, as an onnxruntime session is).
    """
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    if x32.ndim != 2 or x32.shape[1] != plan.n_features:
        raise ValueError(f"rows need shape [n, {plan.n_features}], got {x32.shape}")
    if not np.all(np.isfinite(x32)):  # x * 0 would be NaN, not the background value
        raise ValueError("rows to explain must be finite in float32")
    n = len(x32)
    rows_per_chunk = min(max(1, n), max(1, chunk_model_rows // plan.model_rows_per_row))
    values = np.empty((n, plan.n_features), dtype=np.float64)
    chunks = _chunks(n, rows_per_chunk)
    runs = min(threads, len(chunks))
    if runs <= 1:
        _evaluate(predict, plan, x32, chunks, values, rows_per_chunk)
        return values
    bounds = np.linspace(0, len(chunks), runs + 1).round().astype(int)
    groups = [chunks[lo:hi] for lo, hi in itertools.pairwise(bounds.tolist())]
    with ThreadPoolExecutor(max_workers=runs - 1, thread_name_prefix="cellmfg-shapley") as pool:
        helpers = [pool.submit(_evaluate, predict, plan, x32, group, values, rows_per_chunk) for group in groups[1:]]
        _evaluate(predict, plan, x32, groups[0], values, rows_per_chunk)
        for helper in helpers:
            helper.result()  # re-raises a helper's exception here
    return values
