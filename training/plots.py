"""Figures for MLflow runs, after the paper's: loss curves, parity plots, SHAP plots and data distributions.

Each function takes data and a path, writes one PNG and closes its figure (no global pyplot state survives).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers or in CI

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def _save(figure: plt.Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def loss_curves(train_loss: np.ndarray, validation_loss: np.ndarray, title: str, path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(5, 3.5))
    epochs = np.arange(1, len(train_loss) + 1)
    axes.plot(epochs, train_loss, label="train")
    axes.plot(epochs, validation_loss, label="validation")
    axes.set(xlabel="epoch", ylabel="MAPE (%)", title=title, yscale="log")
    axes.legend()
    return _save(figure, path)


def parity(y_true: dict[str, np.ndarray], y_pred: dict[str, np.ndarray], label: str, title: str, path: Path) -> Path:
    """Predicted vs actual per part (train/test), with the ideal line."""
    figure, axes = plt.subplots(figsize=(4.5, 4.5))
    for part in y_true:
        axes.scatter(y_true[part], y_pred[part], s=14, alpha=0.75, label=part)
    values = np.concatenate([*y_true.values(), *y_pred.values()])
    low, high = float(np.min(values)), float(np.max(values))
    pad = 0.05 * (high - low or 1.0)
    axes.plot([low - pad, high + pad], [low - pad, high + pad], "k--", lw=1, label="ideal")
    axes.set(xlabel=f"actual {label}", ylabel=f"predicted {label}", title=title)
    axes.legend()
    return _save(figure, path)


def distributions(frame: pd.DataFrame, columns: list[str], title: str, path: Path) -> Path:
    count = len(columns)
    width = min(count, 3)
    height = -(-count // width)
    figure, grid = plt.subplots(height, width, figsize=(3.2 * width, 2.6 * height), squeeze=False)
    for axes, column in zip(grid.flat, columns, strict=False):
        axes.hist(frame[column].to_numpy(dtype=float), bins=20, color="tab:blue", alpha=0.8)
        axes.set_title(column, fontsize=9)
    for axes in list(grid.flat)[count:]:
        axes.axis("off")
    figure.suptitle(title)
    return _save(figure, path)


def learning_curve(rows: list[int], mape: list[float], title: str, path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(5, 3.5))
    axes.plot(rows, mape, "o-")
    axes.set(xlabel="source training rows", ylabel="test MAPE (%)", title=title)
    return _save(figure, path)


def shap_waterfall(explanation: object, title: str, path: Path) -> Path:
    import shap

    shap.plots.waterfall(explanation, show=False)
    figure = plt.gcf()
    figure.suptitle(title, fontsize=10)
    return _save(figure, path)


def shap_beeswarm(explanation: object, title: str, path: Path) -> Path:
    import shap

    shap.plots.beeswarm(explanation, show=False)
    figure = plt.gcf()
    figure.suptitle(title, fontsize=10)
    return _save(figure, path)
