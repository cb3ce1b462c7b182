"""Learning curves: how many sheets (whole groups) of a target a lab needs, per method.

Protocol. Each repeat draws one grouped outer split (`evaluate.grouped_split`): its test part is fixed for that
repeat and never trains or chooses anything. The repeat's training groups are put in one random order, and the
curve's training set of n groups is the first n of that order, so the sets are nested (the 4-group set holds the
2-group set) and a sheet's rows are never split. Every method sees the same rows for each (size, repeat):

- `transfer`: the frozen base plus an adapter; adapter design (paper or residual), width and learning rate are
  chosen by the grouped inner validation folds of that training set (`fit.nested_nets`, the project's grid), then
  refit on the whole training set;
- `scratch`: the project's from-scratch net, chosen the same way;
- `random_forest`: the project's baseline forest;
- `zero_shot`: the base as it is (it fits nothing, so it is flat along the curve).

Without a base only `scratch` and `random_forest` run: that is the source-size ablation (the pretrained net's own
recipe on growing shares of its source data).

Intervals. Per size, the registered method (transfer, or scratch without a base) minus each other method, over the
repeats, with `evaluate.paired_difference` (bootstrap, Nadeau–Bengio widened) at a Bonferroni level over that
size's comparisons. The words come from `evaluate.verdict`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from training import evaluate, fit
from training.config import TrainConfig

# Default group counts of the curve; the full training part (all available groups) is always added.
DEFAULT_SIZES = (2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
TARGET_METHODS = ("transfer", "scratch", "random_forest", "zero_shot")
SOURCE_METHODS = ("scratch", "random_forest")


class StudyInputError(ValueError):
    """Bad study input; the message names the option."""


@dataclass(frozen=True)
class CurveSplit:
    """One point of one repeat: the first `size` training groups of the repeat, against the repeat's test part."""

    size: int
    repeat: int
    split: evaluate.Split


# -------------------------------------------------------------------------------------------------------------
# Sizes and splits (pure)


def held_out_splits(groups: np.ndarray, seed: int, repeats: int, test_fraction: float, inner_folds: int
                    ) -> list[evaluate.Split]:
    """One grouped outer split per repeat: its test part is that repeat's fixed held-out part."""
    if repeats < 2:
        raise StudyInputError(f"--repeats: {repeats}; paired intervals need at least 2 repeats")
    if len(np.unique(np.asarray(groups).astype(str))) < 3:
        raise StudyInputError(f"--data: {len(np.unique(np.asarray(groups).astype(str)))} group(s); a learning curve "
                              "needs at least 2 training groups beside a held-out test group")
    return evaluate.repeated_grouped_splits(groups, seed, repeats, test_fraction, inner_folds)


def available_groups(groups: np.ndarray, splits: list[evaluate.Split]) -> int:
    """Training groups every repeat has (the largest curve size all repeats can reach)."""
    labels = np.asarray(groups).astype(str)
    return min(len(np.unique(labels[s.train])) for s in splits)


def curve_sizes(available: int, sizes: tuple[int, ...] | None = None, fractions: tuple[float, ...] | None = None
                ) -> list[int]:
    """The curve's group counts: given `sizes`, or `fractions` of the available training groups, or the defaults
    below `available` plus `available` itself."""
    if available < 2:
        raise StudyInputError(f"--data: {available} training group(s) beside the held-out test part; a learning "
                              "curve needs at least 2")
    if sizes and fractions:
        raise StudyInputError("--sizes and --fractions: give one or the other")
    if sizes:
        for size in sizes:
            if not 2 <= size <= available:
                raise StudyInputError(f"--sizes: {size} groups asked; allowed 2–{available} (the training groups "
                                      "every repeat has beside its held-out test part)")
        return sorted(set(sizes))
    if fractions:
        for fraction in fractions:
            if not 0.0 < fraction <= 1.0:
                raise StudyInputError(f"--fractions: {fraction:g}; allowed (0, 1] of the training groups")
        return sorted({max(2, round(fraction * available)) for fraction in fractions})
    return [s for s in DEFAULT_SIZES if s < available] + [available]


def nested_subsets(groups: np.ndarray, outer: evaluate.Split, sizes: list[int], repeat: int, seed: int,
                   inner_folds: int) -> list[CurveSplit]:
    """The repeat's curve points: the first n groups of one random order of its training groups, for each n."""
    labels = np.asarray(groups).astype(str)
    rng = np.random.default_rng([seed, repeat])
    order = rng.permutation(np.unique(labels[outer.train]))
    points = []
    for size in sizes:
        rows = outer.train[np.isin(labels[outer.train], order[:size])]
        folds = evaluate.group_folds(rows, labels, inner_folds, np.random.default_rng([seed, repeat, size]))
        points.append(CurveSplit(size, repeat, evaluate.Split(rows, outer.test, folds, outer.seed)))
    return points


def curve_splits(groups: np.ndarray, config: TrainConfig, repeats: int, sizes: tuple[int, ...] | None = None,
                 fractions: tuple[float, ...] | None = None) -> list[CurveSplit]:
    """Every (size, repeat) point, ordered by repeat then size."""
    outer = held_out_splits(groups, config.seed, repeats, config.test_fraction, config.inner_folds)
    chosen = curve_sizes(available_groups(groups, outer), sizes, fractions)
    return [point for repeat, split in enumerate(outer)
            for point in nested_subsets(groups, split, chosen, repeat, config.seed, config.inner_folds)]


# -------------------------------------------------------------------------------------------------------------
# Training and scoring


def method_mapes(data: fit.Dataset, points: list[CurveSplit], config: TrainConfig,
               frozen: tuple[np.ndarray, np.ndarray] | None) -> dict[str, np.ndarray]:
    """Test MAPE (%) of every method on every point; `frozen` = the base's (last hidden layer, prediction) on
    every row, or None for the source-size ablation (no transfer, no zero-shot)."""
    splits = [p.split for p in points]
    net = config.net(data.target.task)
    runs: dict[str, fit.MethodRun] = {}
    if frozen is not None:
        hidden, zero_shot = frozen
        adapter = config.adapter
        candidates = [fit.Choice(f"transfer_{kind}", lr, width) for kind in adapter.adapters
                      for lr in adapter.learning_rates for width in adapter.widths]
        runs.update(fit.nested_nets(hidden, data.y, splits, {"transfer": candidates}, 1, adapter.epochs,
                                    net.batch_size, config.seed, skip=zero_shot, skip_methods=("transfer_residual",),
                                    mask_constant=False))
    scratch = [fit.Choice("scratch", lr, width) for lr in net.learning_rates for width in net.widths]
    runs.update(fit.nested_nets(data.scaled, data.y, splits, {"scratch": scratch}, net.hidden_layers, net.epochs,
                                net.batch_size, config.seed))
    out = {method: np.asarray([evaluate.mape_pct(data.y[s.test], runs[method].predictions[i, s.test])
                               for i, s in enumerate(splits)]) for method in runs}
    out["random_forest"] = np.asarray([
        evaluate.mape_pct(data.y[s.test], evaluate.fit_baseline("random_forest", data.x[s.train], data.y[s.train],
                                                                s.seed, config.random_forest_trees)
                          .predict(data.x[s.test]))
        for s in splits])
    if frozen is not None:
        out["zero_shot"] = np.asarray([evaluate.mape_pct(data.y[s.test], frozen[1][s.test]) for s in splits])
    order = TARGET_METHODS if frozen is not None else SOURCE_METHODS
    return {method: out[method] for method in order}


def summarise(points: list[CurveSplit], mapes: dict[str, np.ndarray], config: TrainConfig) -> pd.DataFrame:
    """One row per (size, method): mean and SD of the test MAPE over repeats, mean training rows, and (for the
    other methods) the paired interval of main − method with its verdict; main is the first method."""
    main = next(iter(mapes))
    sizes = np.asarray([p.size for p in points])
    rows = []
    for size in sorted(set(sizes.tolist())):
        at = np.flatnonzero(sizes == size)
        ratio = float(np.mean([len(points[i].split.test) / len(points[i].split.train) for i in at]))
        level = evaluate.bonferroni_level(config.family_confidence, len(mapes) - 1)
        for method, values in mapes.items():
            row: dict[str, object] = {
                "groups": size, "train_rows": float(np.mean([len(points[i].split.train) for i in at])),
                "method": method, "test_mape_pct": float(np.mean(values[at])),
                "test_mape_sd": float(np.std(values[at], ddof=1)), "repeats": len(at)}
            if method != main:
                paired = evaluate.paired_difference(mapes[main][at], values[at], config.seed, ratio,
                                                    config.bootstrap_resamples, level)
                row.update({f"{main}_minus_low": paired.low, f"{main}_minus_mean": paired.mean,
                            f"{main}_minus_high": paired.high, "verdict": paired.verdict})
            rows.append(row)
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame) -> str:
    """The curve as a Markdown table: groups → MAPE per method, and main − method [interval] for the others."""
    methods = list(dict.fromkeys(table["method"]))
    main = methods[0]
    header = ["groups", "train rows", *[f"{m} MAPE %" for m in methods], *[f"{main} − {m}" for m in methods[1:]]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for size, block in table.groupby("groups", sort=True):
        by = block.set_index("method")
        cells = [str(size), f"{by['train_rows'].iloc[0]:.0f}"]
        cells += [f"{by.loc[m, 'test_mape_pct']:.2f} ± {by.loc[m, 'test_mape_sd']:.2f}" for m in methods]
        cells += [f"{by.loc[m, f'{main}_minus_mean']:+.2f} [{by.loc[m, f'{main}_minus_low']:+.2f}, "
                  f"{by.loc[m, f'{main}_minus_high']:+.2f}] {by.loc[m, 'verdict']}" for m in methods[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(table: pd.DataFrame, title: str, path: Path) -> Path:
    """Test MAPE against training groups, one line per method, with ± 1 SD over repeats as a band."""
    import matplotlib

    matplotlib.use("Agg")  # headless, as training/plots.py
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5.5, 3.6))
    for method, block in table.groupby("method", sort=False):
        block = block.sort_values("groups")
        axes.plot(block["groups"], block["test_mape_pct"], "o-", label=str(method), markersize=3)
        axes.fill_between(block["groups"], block["test_mape_pct"] - block["test_mape_sd"],
                          block["test_mape_pct"] + block["test_mape_sd"], alpha=0.15)
    axes.set(xlabel="training groups (sheets / structures)", ylabel="test MAPE (%)", title=title)
    low, high = table["test_mape_pct"].min(), table["test_mape_pct"].max()
    if low > 0 and high / low > 8:  # methods an order of magnitude apart: a log axis keeps the best ones readable
        axes.set_yscale("log")
    else:
        axes.set_ylim(bottom=0)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path
