"""Splits, metrics, baselines and conformal calibration: pure functions on arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.dummy import DummyRegressor
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LinearRegression

BASELINES = ("mean", "linear", "random_forest")


@dataclass(frozen=True)
class Split:
    """Row indices of one train/validation/test split."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    seed: int

    def to_dict(self) -> dict[str, list[int] | int]:
        return {"train": self.train.tolist(), "validation": self.validation.tolist(), "test": self.test.tolist(),
                "seed": self.seed}


def make_split(rows: int, seed: int, test_fraction: float, validation_fraction: float) -> Split:
    """The paper's protocol: a random test part, then a validation part out of the rest."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(rows)
    test_rows = max(1, round(rows * test_fraction))
    if rows - test_rows < 2:
        raise ValueError(f"{rows} rows leave fewer than 2 for training at test fraction {test_fraction}")
    validation_rows = round((rows - test_rows) * validation_fraction)
    test, rest = order[:test_rows], order[test_rows:]
    validation, train = rest[:validation_rows], rest[validation_rows:]
    return Split(np.sort(train), np.sort(validation), np.sort(test), seed)


def repeated_splits(rows: int, seed: int, repeats: int, test_fraction: float, validation_fraction: float
                    ) -> list[Split]:
    """Further random splits, seeded apart from the paper split's seed."""
    return [make_split(rows, seed * 1000 + repeat + 1, test_fraction, validation_fraction)
            for repeat in range(repeats)]


def mape_pct(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true, y_pred = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    return float(100.0 * np.mean(np.abs((y_true - y_pred) / np.maximum(np.abs(y_true), 1e-12))))


def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(y_true, dtype=float) - np.asarray(y_pred, dtype=float))))


def r2(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true, y_pred = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    total = float(np.sum((y_true - y_true.mean()) ** 2))
    return float(1.0 - np.sum((y_true - y_pred) ** 2) / total) if total > 0 else float("nan")


def scores(y_true: np.ndarray, y_pred: np.ndarray, part: str) -> dict[str, float]:
    """MAPE %, MAE and R² named for MLflow, e.g. `test_mape_pct`."""
    return {f"{part}_mape_pct": mape_pct(y_true, y_pred), f"{part}_mae": mae(y_true, y_pred),
            f"{part}_r2": r2(y_true, y_pred)}


def fit_baseline(name: str, x_train: np.ndarray, y_train: np.ndarray, seed: int, trees: int
                 ) -> DummyRegressor | LinearRegression | RandomForestRegressor:
    if name == "mean":
        model: DummyRegressor | LinearRegression | RandomForestRegressor = DummyRegressor(strategy="mean")
    elif name == "linear":
        model = LinearRegression()
    elif name == "random_forest":
        # One thread: the run is already CPU-bound on 2 cores and this keeps results identical across machines.
        model = RandomForestRegressor(n_estimators=trees, random_state=seed, n_jobs=1)
    else:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    return model.fit(x_train, y_train)


def conformal_relative_quantile(y_true: np.ndarray, y_pred: np.ndarray, coverage: float = 0.9) -> float:
    """Split-conformal quantile of |y - p| / |p| on held-out rows, with the finite-sample correction."""
    residuals = np.sort(np.abs(np.asarray(y_true) - np.asarray(y_pred)) / np.maximum(np.abs(y_pred), 1e-12))
    n = len(residuals)
    if n == 0:
        raise ValueError("conformal calibration needs at least one held-out row")
    rank = min(n, int(np.ceil((n + 1) * coverage)))
    return float(residuals[rank - 1])


def mean_std(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0
