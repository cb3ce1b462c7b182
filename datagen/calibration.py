"""How hard the electrode data is: a random forest scored on grouped splits (no sheet on both sides).

The calibration target is the paper's own source-net error on graphite (density 4.5 %, mass loading 13.9 % MAPE).
The scatter constants were set from documented magnitudes, not fitted to this number; this module only measures
where a strong off-the-shelf model lands, for the data card and `scripts/calibrate_electrodes.py`. The project's own
source net, in-domain and zero-shot on the targets, is measured by `scripts/electrode_difficulty.py` (it needs the
training stack, which datagen does not import).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from datagen.electrode_process import FEATURES, GROUP_ID, TARGET_COLUMNS

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
