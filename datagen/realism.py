"""How hard each shipped dataset is, measured one way, beside the paper: `docs/realism.md`.

A reviewer's first question of generated data is whether it can assess transfer at all: a target a straight line
predicts, or one that is the source with relabelled columns, cannot. Per dataset and target this measures the spread
(range, coefficient of variation, skew), the test MAPE of the training mean, a linear model and a random forest over
grouped repeated 70/30 splits, their out-of-fold R² over grouped folds (the protocol of `shared/tools/realism.py`),
and the noise-free R² (the generator's own nominal model against the shipped targets: the best any model of the
inputs can do). The graphite net's in-domain and zero-shot errors come from a results table of `cellmfg train all`.

Heavy imports (scikit-learn) happen inside the functions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellmfg.dataio import GROUP_ID
from cellmfg.domain import DATASETS, TARGETS, feature_columns
from cellmfg.paper import PAPER_MAPE, PAPER_TORTUOSITY

__all__ = ["DifficultyRow", "Goal", "TargetRealism", "difficulty_rows", "goals", "markdown", "measure", "measure_all"]

REPEATS = 20
FOLDS = 5
TEST_FRACTION = 0.3
FOREST_TREES = 200

# The yardsticks for data that can assess transfer (issue 23, "Must show").
MIN_GDL_MEAN_PREDICTOR_MAPE_PCT = 2.0
MIN_DENSITY_NOISE_FREE_R2 = 0.6
ZERO_SHOT_BAND_PCT = (30.0, 120.0)
PAPER_FACTOR = 1.5


@dataclass(frozen=True)
class TargetRealism:
    """One dataset's target: its spread and what simple models make of it on grouped splits."""

    dataset: str
    target: str
    rows: int
    groups: int
    minimum: float
    maximum: float
    mean: float
    cv_pct: float
    skew: float
    mean_predictor_mape_pct: float
    linear_mape_pct: float
    forest_mape_pct: float
    linear_r2: float
    forest_r2: float
    noise_free_r2: float | None  # None where the generator has no noise-free model (GDL: the structure is the draw)


@dataclass(frozen=True)
class DifficultyRow:
    """A net's test MAPE from a results table beside the paper's figure for the same (task, dataset, method)."""

    task: str
    dataset: str
    method: str
    ours_pct: float
    paper_pct: float

    @property
    def ratio(self) -> float:
        return self.ours_pct / self.paper_pct


@dataclass(frozen=True)
class Goal:
    """One yardstick of the science issue and whether the shipped data meets it."""

    text: str
    measured: str
    met: bool


def _mape_pct(y: np.ndarray, prediction: np.ndarray) -> float:
    return float(np.mean(np.abs((prediction - y) / y)) * 100.0)


def _groups(frame: pd.DataFrame) -> np.ndarray:
    return frame[GROUP_ID].to_numpy() if GROUP_ID in frame.columns else np.arange(len(frame))


def _noise_free_r2(frame: pd.DataFrame, dataset: str, target: str) -> float | None:
    if DATASETS[dataset].kind != "electrode":
        return None
    from datagen.electrode_process import nominal_r2

    return nominal_r2(frame, dataset)[target]


def measure(frame: pd.DataFrame, dataset: str, target: str, repeats: int = REPEATS, folds: int = FOLDS,
            trees: int = FOREST_TREES, seed: int = 0) -> TargetRealism:
    """Spread and grouped-split scores of one target (features constant in the file are left out)."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import r2_score
    from sklearn.model_selection import GroupKFold, GroupShuffleSplit, cross_val_predict

    kind = DATASETS[dataset].kind
    features = [c for c in feature_columns(kind) if frame[c].std() > 0]
    x = frame[features].to_numpy(dtype=float)
    y = frame[target].to_numpy(dtype=float)
    groups = _groups(frame)
    makers: dict[str, Callable[[], Any]] = {
        "linear": LinearRegression,
        "forest": lambda: RandomForestRegressor(n_estimators=trees, random_state=seed, n_jobs=1),
    }
    scores: dict[str, list[float]] = {"mean": [], "linear": [], "forest": []}
    splitter = GroupShuffleSplit(n_splits=repeats, test_size=TEST_FRACTION, random_state=seed)
    for train, test in splitter.split(x, y, groups):
        scores["mean"].append(_mape_pct(y[test], np.full(len(test), y[train].mean())))
        for name, make in makers.items():
            model = make()
            model.fit(x[train], y[train])
            scores[name].append(_mape_pct(y[test], model.predict(x[test])))
    grouped_folds = GroupKFold(n_splits=min(folds, len(np.unique(groups))))
    r2 = {name: float(r2_score(y, cross_val_predict(make(), x, y, groups=groups, cv=grouped_folds)))
          for name, make in makers.items()}
    skew = float(np.asarray(pd.Series(y).skew()))
    return TargetRealism(
        dataset=dataset, target=target, rows=len(frame), groups=len(np.unique(groups)),
        minimum=float(y.min()), maximum=float(y.max()), mean=float(y.mean()),
        cv_pct=float(y.std(ddof=1) / y.mean() * 100.0), skew=skew,
        mean_predictor_mape_pct=float(np.mean(scores["mean"])), linear_mape_pct=float(np.mean(scores["linear"])),
        forest_mape_pct=float(np.mean(scores["forest"])), linear_r2=r2["linear"], forest_r2=r2["forest"],
        noise_free_r2=_noise_free_r2(frame, dataset, target),
    )


def measure_all(data_dir: Path, repeats: int = REPEATS, trees: int = FOREST_TREES) -> list[TargetRealism]:
    """Every shipped dataset and each of its targets, in the paper's order."""
    out = []
    for name in DATASETS:
        path = data_dir / f"{name}.csv"
        if not path.exists():
            continue
        frame = pd.read_csv(path)
        # A target belongs to a dataset when its column is in the file (electrode sets have two, GDL sets one).
        for target in TARGETS.values():
            if target.column in frame.columns:
                out.append(measure(frame, name, target.column, repeats=repeats, trees=trees))
    return out


def difficulty_rows(results_csv: Path) -> list[DifficultyRow]:
    """The nets' figures of a `cellmfg train all` results table that the paper also reports."""
    table = pd.read_csv(results_csv)
    rows = []
    for record in table.itertuples(index=False):
        key = (str(record.task), str(record.dataset), str(record.method))
        if key in PAPER_MAPE and key[2] in ("pretrained", "zero_shot"):
            ours = float(str(record.test_mape_pct_mean))
            rows.append(DifficultyRow(*key, ours_pct=ours, paper_pct=PAPER_MAPE[key]))
    return rows


def goals(measured: list[TargetRealism], difficulty: list[DifficultyRow]) -> list[Goal]:
    """The issue's yardsticks, each with what was measured."""
    out = []
    for item in measured:
        if DATASETS[item.dataset].kind == "gdl":
            out.append(Goal(f"{item.dataset}: mean-predictor MAPE ≥ {MIN_GDL_MEAN_PREDICTOR_MAPE_PCT:g} %",
                            f"{item.mean_predictor_mape_pct:.2f} %",
                            item.mean_predictor_mape_pct >= MIN_GDL_MEAN_PREDICTOR_MAPE_PCT))
        elif item.target == "density_g_cm3" and item.noise_free_r2 is not None:
            out.append(Goal(f"{item.dataset} density: noise-free R² ≥ {MIN_DENSITY_NOISE_FREE_R2:g}",
                            f"{item.noise_free_r2:.2f}", item.noise_free_r2 >= MIN_DENSITY_NOISE_FREE_R2))
    low, high = ZERO_SHOT_BAND_PCT
    for row in difficulty:
        if row.method == "zero_shot" and row.task in ("density", "mass_loading"):
            out.append(Goal(f"graphite net zero-shot on {row.dataset} {row.task}: {low:g}–{high:g} %",
                            f"{row.ours_pct:.1f} % (paper {row.paper_pct:g} %)", low <= row.ours_pct <= high))
        elif row.method == "pretrained" and row.dataset == "graphite":
            out.append(Goal(f"graphite net in-domain {row.task}: within ×{PAPER_FACTOR:g} of the paper",
                            f"{row.ours_pct:.1f} % (paper {row.paper_pct:g} %, ratio {row.ratio:.2f})",
                            1.0 / PAPER_FACTOR <= row.ratio <= PAPER_FACTOR))
    return out


def _number(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _paper_net(item: TargetRealism) -> str:
    task = next(t.task for t in TARGETS.values() if t.column == item.target)
    keys = [(task, item.dataset, method) for method in ("pretrained", "transfer_paper", "zero_shot")]
    figures = [f"{key[2].replace('_', ' ')} {PAPER_MAPE[key]:g} %" for key in keys if key in PAPER_MAPE]
    return "; ".join(figures) or "–"


def markdown(measured: list[TargetRealism], difficulty: list[DifficultyRow], results_csv: str | None,
             repeats: int = REPEATS) -> str:
    """The realism report: spread and simple-model scores, the GDL distributions beside the paper's, the yardsticks."""
    lines = [
        "# How hard the shipped data is",
        "",
        "Generated by `cellmfg data realism`; do not edit by hand.",
        "",
        f"Test MAPE over {repeats} grouped 70/30 splits (no group on both sides), R² out of fold over {FOLDS} grouped "
        "folds; features constant in a file are left out. Noise-free R²: the generator's nominal process model "
        "(no sheet effects, no measurement scatter) against the shipped targets, the best any model of the inputs "
        "can do on average; GDL rows have none (the random structure is the draw). The paper's figures come from its "
        "own private data and one random split.",
        "",
        "| set | target | rows (groups) | range | mean | CV | skew | mean-predictor MAPE | linear MAPE | RF MAPE "
        "| linear R² | RF R² | noise-free R² | paper (net test MAPE) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for item in measured:
        lines.append(
            f"| {item.dataset} | {item.target} | {item.rows} ({item.groups}) | {item.minimum:.4g}–{item.maximum:.4g} "
            f"| {item.mean:.4g} | {item.cv_pct:.1f} % | {item.skew:.2f} | {item.mean_predictor_mape_pct:.2f} % "
            f"| {item.linear_mape_pct:.2f} % | {item.forest_mape_pct:.2f} % | {_number(item.linear_r2)} "
            f"| {_number(item.forest_r2)} | {_number(item.noise_free_r2)} | {_paper_net(item)} |")
    gdl = [item for item in measured if item.dataset in PAPER_TORTUOSITY]
    if gdl:
        lines += ["", "## GDL tortuosity beside the paper's", "",
                  "| set | ours: mean | min | max | skew | paper: mean | min | max | shape |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for item in gdl:
            paper = PAPER_TORTUOSITY[item.dataset]
            lines.append(f"| {item.dataset} | {item.mean:.3f} | {item.minimum:.3f} | {item.maximum:.3f} | "
                         f"{item.skew:.2f} | {paper.mean:.2f} | {paper.minimum:.2f} | {paper.maximum:.2f} | "
                         f"{paper.shape} |")
    if difficulty:
        lines += ["", f"## The source nets beside the paper (from `{results_csv}`)", "",
                  "| task | dataset | net | ours, test MAPE | paper | ours / paper |", "|---|---|---|---|---|---|"]
        for row in difficulty:
            lines.append(f"| {row.task} | {row.dataset} | {row.method.replace('_', ' ')} | {row.ours_pct:.1f} % "
                         f"| {row.paper_pct:g} % | {row.ratio:.2f} |")
    lines += ["", "## Yardsticks (issue 23)", "", "| yardstick | measured | met |", "|---|---|---|"]
    for goal in goals(measured, difficulty):
        lines.append(f"| {goal.text} | {goal.measured} | {'yes' if goal.met else '**no**'} |")
    return "\n".join(lines) + "\n"
