"""How hard the electrode data is: a random forest scored on grouped splits (no sheet on both sides).

The calibration target is the paper's own source-net error on graphite (density 4.5 %, mass loading 13.9 % MAPE).
The scatter constants were set from documented magnitudes, not fitted to this number; this module only measures
where a strong off-the-shelf model lands, for the data card and `scripts/calibrate_electrodes.py`. The project's own
source net, in-domain and zero-shot on the targets, is measured by `scripts/electrode_difficulty.py` (it needs the
training stack, which datagen does not import). `line_differences` and `extrapolation_rows` say, without any net, how
far the target lines are from graphite at identical settings and which target inputs leave graphite's ranges (what a
graphite net must extrapolate zero-shot), for the data card.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cellmfg.domain import feature_scaling
from datagen.electrode_process import CHEMISTRIES, FEATURES, GROUP_ID, TARGET_COLUMNS, process_model

# The paper's Table 1, pretrained net on its own (graphite) test split, MAPE %.
PAPER_SOURCE_MAPE_PCT: dict[str, float] = {"density_g_cm3": 4.5, "mass_loading_mg_cm2": 13.9}
REPEATS = 20
TEST_FRACTION = 0.3


@dataclass(frozen=True)
class SplitScore:
    target: str
    split: str  # "grouped" (no sheet on both sides) or "random rows"
    mean_mape_pct: float
    sd_mape_pct: float
    repeats: int


def _mape(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean(np.abs((pred - y) / y)) * 100.0)


def random_forest_scores(frame: pd.DataFrame, repeats: int = REPEATS, seed: int = 0) -> list[SplitScore]:
    """RF test MAPE over `repeats` 70/30 splits, grouped by sheet and (for contrast) by random rows."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.model_selection import GroupShuffleSplit, ShuffleSplit

    x = frame[list(FEATURES)].to_numpy(dtype=float)
    groups = frame[GROUP_ID].to_numpy()
    scores = []
    splitters = {
        "grouped": GroupShuffleSplit(n_splits=repeats, test_size=TEST_FRACTION, random_state=seed),
        "random rows": ShuffleSplit(n_splits=repeats, test_size=TEST_FRACTION, random_state=seed),
    }
    for target in TARGET_COLUMNS:
        y = frame[target].to_numpy(dtype=float)
        for split_name, splitter in splitters.items():
            values = []
            for train, test in splitter.split(x, y, groups if split_name == "grouped" else None):
                if split_name == "grouped" and set(groups[train]) & set(groups[test]):
                    raise AssertionError("a sheet on both sides of a grouped split")
                model = RandomForestRegressor(n_estimators=200, random_state=seed, n_jobs=1)
                model.fit(x[train], y[train])
                values.append(_mape(y[test], model.predict(x[test])))
            scores.append(SplitScore(target, split_name, float(np.mean(values)), float(np.std(values, ddof=1)),
                                     repeats))
    return scores


def markdown(scores: list[SplitScore]) -> str:
    lines = [
        "| target | split | RF test MAPE % (mean ± sd over repeats) | paper source-net MAPE % |",
        "|---|---|---|---|",
    ]
    for s in scores:
        lines.append(f"| {s.target} | {s.split} ({s.repeats}×, 70/30) | {s.mean_mape_pct:.1f} ± {s.sd_mape_pct:.1f} "
                     f"| {PAPER_SOURCE_MAPE_PCT[s.target]:g} |")
    return "\n".join(lines)


SOURCE = "graphite"
ZERO_SHOT_TARGETS = ("si_gra", "nmc")


def as_graphite_reads_it(frame: pd.DataFrame, chemistry: str) -> pd.DataFrame:
    """The target's settings in graphite's meaning of the columns: Si-Gra's `am_wt_pct` (its Si share) becomes the
    composite's active-material fraction (91 wt%); NMC's columns already mean what graphite's do."""
    fixed = CHEMISTRIES[chemistry].fixed_am_wt_pct
    return frame.assign(am_wt_pct=fixed) if CHEMISTRIES[chemistry].am_feature == "si_share" and fixed else frame


@dataclass(frozen=True)
class LineDifference:
    """Graphite's own (nominal, noise-free) process evaluated at a target's settings against the target's measured
    rows: how far apart the lines are, with no net and no extrapolation of a relabelled column."""

    dataset: str
    target: str
    mape_pct: float
    median_ratio: float  # graphite process / measured


def line_differences(frames: dict[str, pd.DataFrame]) -> list[LineDifference]:
    out = []
    for name in ZERO_SHOT_TARGETS:
        if name not in frames:
            continue
        frame = frames[name]
        graphite = process_model(as_graphite_reads_it(frame, name), SOURCE)
        for target in TARGET_COLUMNS:
            y, p = frame[target].to_numpy(dtype=float), graphite[target].to_numpy(dtype=float)
            out.append(LineDifference(name, target, _mape(y, p), float(np.median(p / y))))
    return out


def extrapolation_rows(frames: dict[str, pd.DataFrame]) -> list[str]:
    """Markdown: per target set and feature, its range against graphite's, the share of rows outside, and the
    farthest distance outside in the nets' fixed scaled units (graphite's own width in those units beside it)."""
    _, widths = feature_scaling("electrode")
    width = np.asarray(widths, dtype=float)
    source = frames[SOURCE][list(FEATURES)].to_numpy(dtype=float)
    low, high = source.min(axis=0), source.max(axis=0)
    lines = ["| set | feature | target range | graphite range | rows outside | farthest outside (scaled) | "
             "graphite's width (scaled) |", "|---|---|---|---|---|---|---|"]
    for name in ZERO_SHOT_TARGETS:
        if name not in frames:
            continue
        x = frames[name][list(FEATURES)].to_numpy(dtype=float)
        outside = (x < low) | (x > high)
        distance = (np.maximum(low - x, 0.0) + np.maximum(x - high, 0.0)) / width
        for j, feature in enumerate(FEATURES):
            own = (high[j] - low[j]) / width[j]
            lines.append(f"| {name} | {feature} | {x[:, j].min():g}–{x[:, j].max():g} | {low[j]:g}–{high[j]:g} | "
                         f"{outside[:, j].mean():.0%} | {distance[:, j].max():.2f} | {own:.2f} |")
    return lines
