"""Champion against challenger on the line's own measurements: the paired comparison and the promotion verdict.

Both models predicted the same request rows (the service shadow-scores the challenger beside the champion), and the
QC lab measured some of them. Each measured row gives a pair of absolute percentage errors, so the comparison is
paired: the difference challenger - champion of the mean APE over the same rows, with a percentile bootstrap
interval that resamples whole groups (a coated sheet's replicates share its error; resampling rows would pretend to
more evidence than there is), as the service's live accuracy does.

Pure functions on arrays (the service computes the figure for `GET /models/{name}/challenge`, the registry's
`promote --challenger` gates on it); no stage imports here.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

DEFAULT_RESAMPLES = 2000
DEFAULT_LEVEL = 0.95
# The gate judges only from this many independent groups (sheets) on: a percentile bootstrap over a handful of
# groups spans little more than their own means (over two, exactly the two), so it would "exclude 0" on the first
# two sheets that happen to agree.
MIN_GROUPS = 10


class LiveComparison(BaseModel):
    """The paired live comparison of a challenger with the champion on rows both scored and the lab measured."""

    model_config = ConfigDict(frozen=True)

    n: int = Field(description="measured (row, target) pairs both models scored")
    n_groups: int = Field(description="independent groups among them (client group ids; a row without one is its own)")
    champion_mape_pct: float | None
    challenger_mape_pct: float | None
    difference_pct: float | None = Field(description="challenger MAPE - champion MAPE, percentage points: below 0 "
                                                      "the challenger is better")
    interval_pct: tuple[float, float] | None = Field(description="percentile bootstrap interval of the difference, "
                                                                 "resampling groups")
    level: float = DEFAULT_LEVEL

    def text(self) -> str:
        """One line for a refusal or a report: n, the difference and its interval."""
        if self.n == 0 or self.difference_pct is None:
            return "n = 0 measured rows scored by both models"
        interval = (f"[{self.interval_pct[0]:+.3f}, {self.interval_pct[1]:+.3f}]" if self.interval_pct is not None
                    else "none (fewer than 2 groups)")
        return (f"n = {self.n} measured rows in {self.n_groups} groups; MAPE challenger "
                f"{self.challenger_mape_pct:.3f}% vs champion {self.champion_mape_pct:.3f}%: difference "
                f"{self.difference_pct:+.3f} points, "
                f"{100 * self.level:g} % interval {interval}")


def _ape(measured: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """|measured - predicted| / |measured| in %, as training.evaluate.mape_pct and the live accuracy compute it."""
    return 100.0 * np.abs((measured - predicted) / np.maximum(np.abs(measured), 1e-12))


def _group_codes(groups: np.ndarray | None, n: int) -> np.ndarray:
    if groups is None:
        return np.arange(n)
    labels = [f"row-{i}" if g is None or g == "" else f"group-{g}" for i, g in enumerate(groups.tolist())]
    return np.unique(np.asarray(labels, dtype=object), return_inverse=True)[1].reshape(-1)


def paired_comparison(measured: np.ndarray, champion: np.ndarray, challenger: np.ndarray,
                      groups: np.ndarray | None = None, resamples: int = DEFAULT_RESAMPLES,
                      level: float = DEFAULT_LEVEL, seed: int = 0) -> LiveComparison:
    """Paired MAPE difference (challenger - champion) over the rows, with a grouped percentile bootstrap interval.

    Deterministic for a given seed. With fewer than two groups there is no interval (one group resampled is itself).
    """
    measured, champion, challenger = (np.asarray(a, dtype=float).reshape(-1) for a in (measured, champion, challenger))
    if not len(measured) == len(champion) == len(challenger) or (groups is not None and len(groups) != len(measured)):
        raise ValueError(f"paired comparison: {len(measured)} measured, {len(champion)} champion and "
                         f"{len(challenger)} challenger values (and groups) must be as many")
    n = len(measured)
    if n == 0:
        return LiveComparison(n=0, n_groups=0, champion_mape_pct=None, challenger_mape_pct=None, difference_pct=None,
                              interval_pct=None, level=level)
    champion_ape, challenger_ape = _ape(measured, champion), _ape(measured, challenger)
    codes = _group_codes(None if groups is None else np.asarray(groups, dtype=object), n)
    sums = np.bincount(codes, weights=challenger_ape - champion_ape)
    counts = np.bincount(codes).astype(float)
    interval = None
    if sums.size >= 2:
        picks = np.random.default_rng(seed).integers(0, sums.size, size=(resamples, sums.size))
        # A resample's difference is over its rows: the picked groups' summed differences over their row count.
        estimates = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
        tail = (1.0 - level) / 2.0
        low, high = np.quantile(estimates, [tail, 1.0 - tail])
        interval = (float(low), float(high))
    return LiveComparison(n=n, n_groups=int(sums.size), champion_mape_pct=float(champion_ape.mean()),
                          challenger_mape_pct=float(challenger_ape.mean()),
                          difference_pct=float((challenger_ape - champion_ape).mean()), interval_pct=interval,
                          level=level)


def promotion_verdict(comparison: LiveComparison) -> tuple[bool, str]:
    """(promote?, why): only a challenger better on the line's rows with the interval excluding 0, judged on at least
    MIN_GROUPS groups, is promoted."""
    if comparison.n == 0:
        return False, "no outcomes yet for rows both models scored: post measurements (POST /outcomes) first"
    if comparison.interval_pct is None or comparison.n_groups < MIN_GROUPS:
        return False, (f"too few groups to judge: {comparison.n_groups} (the gate needs {MIN_GROUPS} independent "
                       f"groups) ({comparison.text()})")
    low, high = comparison.interval_pct
    if high < 0:
        return True, f"the challenger is better: {comparison.text()}"
    if low > 0:
        return False, f"the challenger is worse: {comparison.text()}"
    return False, f"the interval includes 0, the challenger is not shown better: {comparison.text()}"
