"""SHAP explanations of a trained net: exact Shapley values (5–6 features make all coalitions affordable)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import shap


def representative_background(x_train: np.ndarray, rows: int, seed: int) -> np.ndarray:
    """Up to `rows` training rows, k-means centres when there are more, so the background spans the data."""
    if len(x_train) <= rows:
        return np.asarray(x_train, dtype=float)
    from sklearn.cluster import KMeans

    centres = KMeans(n_clusters=rows, n_init=3, random_state=seed).fit(x_train).cluster_centers_
    return np.asarray(centres, dtype=float)


def explain(predict: Callable[[np.ndarray], np.ndarray], background: np.ndarray, x: np.ndarray,
            feature_names: list[str]) -> shap.Explanation:
    """Exact SHAP values of `predict` at `x` against `background`; values + base add up to the prediction."""
    masker = shap.maskers.Independent(background, max_samples=len(background))
    explainer = shap.explainers.Exact(predict, masker, feature_names=feature_names)
    return explainer(np.asarray(x, dtype=float), silent=True)  # shap's progress bar would cut into the CLI's
