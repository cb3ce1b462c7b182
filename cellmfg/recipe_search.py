"""How recipes are picked from a box of manufacturing settings: shared by the service's /design and /suggest
(`service.design`) and by training's simulated campaign (`training.campaign`), which replays /suggest's choice
round after round without importing the service.

Pure numpy; scipy's Sobol generator is imported on the first design, not when this module is.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping

import numpy as np

# Parameters set on the line from a few fixed settings rather than a dial, taking the values the training data
# holds. The contract does not list a feature's levels; the paper's data holds exactly two roll speeds, the two ends
# of the training range (0.27 and 0.54 m/min on every dataset), so the levels are read from the contract's range.
DISCRETE_FEATURES: frozenset[str] = frozenset({"roll_speed_m_min"})

SOBOL_LOG2 = 11  # 2,048 design points per combination of discrete settings: well under 1 ms through the tiny nets
SOBOL_SEED = 20250101  # fixed, so a design is reproducible
MAX_DESIGN_ROWS = 65_536  # bounds memory and time when many discrete combinations multiply the design
MIN_SEPARATION = 0.1  # in box units: a recipe differs from every other kept in some free parameter by this much
ROUND_DIGITS_OF_RANGE = 3  # settings rounded to 1/1000 of their range: what a lab can dial in


def settings_decimals(span: np.ndarray) -> np.ndarray:
    """Per parameter, the decimals its settings are rounded to: a thousandth of its searched range (0 where the
    range is a single value)."""
    return np.array([ROUND_DIGITS_OF_RANGE - math.floor(math.log10(s)) if s > 0 else 0 for s in span.tolist()])


def setting_combinations(discrete: Mapping[int, np.ndarray]) -> list[tuple[float, ...]]:
    """Every combination of the discrete parameters' settings (one empty combination when there are none)."""
    return list(itertools.product(*(levels.tolist() for levels in discrete.values())))


def round_settings(x: np.ndarray, continuous: np.ndarray, decimals: np.ndarray, low: np.ndarray, high: np.ndarray
                   ) -> np.ndarray:
    """A copy of rows `x` with the `continuous` columns rounded to their `decimals` (what a lab can dial in) and
    kept inside [low, high]; other columns untouched."""
    out = x.copy()
    for j in continuous.tolist():
        out[:, j] = np.clip(np.round(x[:, j], int(decimals[j])), low[j], high[j])
    return out


def design_units(dimensions: int, combinations: int) -> np.ndarray:
    """Sobol points of the unit box plus its corners (extremes of monotone responses sit there), fewer points when
    `combinations` of discrete settings would multiply the design past MAX_DESIGN_ROWS."""
    if dimensions == 0:
        return np.zeros((1, 0))
    log2 = SOBOL_LOG2
    while log2 > 6 and (2**log2 + 2**dimensions) * combinations > MAX_DESIGN_ROWS:
        log2 -= 1
    from scipy.stats import qmc  # ~1.5 s to import: paid by the first design, not by every service start

    sobol = qmc.Sobol(dimensions, scramble=True, rng=SOBOL_SEED).random_base2(log2)
    if dimensions > 10:  # 2^d corners would outnumber the design
        return np.asarray(sobol)
    corners = np.array(list(itertools.product((0.0, 1.0), repeat=dimensions)))
    return np.concatenate([sobol, corners])


def keep_apart(order: np.ndarray, normalised: np.ndarray, k: int) -> list[int]:
    """Greedy: walk `order` (best first) and keep a row unless it lies within MIN_SEPARATION (Chebyshev, box units)
    of one already kept; at most `k`. `normalised[i]` is row `order[i]`'s free parameters in box units."""
    chosen: list[int] = []
    kept: list[np.ndarray] = []
    for i, z in zip(order.tolist(), normalised, strict=True):
        if all(np.max(np.abs(z - other)) >= MIN_SEPARATION for other in kept):
            chosen.append(i)
            kept.append(z)
            if len(chosen) == k:
                break
    return chosen


def distinct_answers(order: np.ndarray, answers: np.ndarray) -> np.ndarray:
    """`order` without the rows whose `answers` [n, m] repeat an earlier row's exactly: recipes that differ only in
    a parameter the nets ignore (coating speed where the source data held it constant) are one experiment twice."""
    _, first = np.unique(answers[order], axis=0, return_index=True)
    return np.asarray(order[np.sort(first)])
