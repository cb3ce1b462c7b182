"""Training configuration: one typed object, defaults commented, loaded once at the entry point.

Every saved model carries the config it was built from (logged as MLflow params and as `config.json`).
Presets: `paper` is the paper's protocol (250 epochs) with 20 grouped repeated splits and nested selection; `quick`
trains a few epochs on the same data for tests and integration checks.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class NetConfig:
    """A feed-forward ReLU net (pretrained, scratch, pooled); the paper does not give sizes.

    `widths` and `learning_rates` are candidates: grouped inner validation inside each training part chooses one
    pair per split (nested), never the test rows.
    """

    hidden_layers: int = 2  # ReLU hidden layers
    widths: tuple[int, ...] = (16, 32)  # candidate width of every hidden layer
    learning_rates: tuple[float, ...] = (1e-3, 5e-3)  # candidate Adam learning rates
    epochs: int = 250  # the paper's epoch count
    batch_size: int = 16  # small sets: a few steps per epoch


@dataclass(frozen=True)
class AdapterConfig:
    """The transfer adapter on the frozen net: which designs, widths and learning rates validation may choose."""

    adapters: tuple[str, ...] = ("paper", "residual")  # paper: hidden → Dense → out; residual (ours): + skip
    widths: tuple[int, ...] = (16, 32)
    learning_rates: tuple[float, ...] = (1e-3, 5e-3)
    epochs: int = 250


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "paper"
    seed: int = 42  # one seed drives splits, initial weights and shuffling
    test_fraction: float = 0.3  # the paper's 70/30 split, by whole groups
    inner_folds: int = 2  # grouped validation folds inside each training part, for every choice
    repeats: int = 20  # grouped outer splits; the first one's model is registered
    coverage: float = 0.9  # nominal coverage of the conformal intervals
    # Adapters (and scratch/pooled nets) trained per configuration with different initial weights and batch orders;
    # their mean is the prediction and their spread scales the conformal interval (1: a single net, constant width)
    ensemble_members: int = 5
    bootstrap_resamples: int = 4000  # for the paired-difference intervals
    # Family-wise confidence of a task's paired intervals: each of its m intervals is at 1 - (1 - this)/m
    family_confidence: float = 0.95
    random_forest_trees: int = 200
    shap_background_rows: int = 50  # rows kept as SHAP background in the contract
    learning_curve_fractions: tuple[float, ...] = (0.1, 0.2, 0.35, 0.5, 0.75, 1.0)  # of the source training part
    nets: dict[str, NetConfig] = field(default_factory=lambda: {
        "density": NetConfig(),
        "mass_loading": NetConfig(),
        "tortuosity": NetConfig(widths=(8, 16)),
    })
    adapter: AdapterConfig = field(default_factory=AdapterConfig)

    def net(self, task: str) -> NetConfig:
        return self.nets[task]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat_params(self) -> dict[str, str]:
        """The whole config as flat MLflow params (`nets.density.hidden_layers` = `2`)."""
        flat: dict[str, str] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for key, inner in value.items():
                    walk(f"{prefix}.{key}" if prefix else str(key), inner)
            else:
                flat[prefix] = json.dumps(value) if isinstance(value, list | tuple) else str(value)

        walk("", self.to_dict())
        return flat


def _quick() -> TrainConfig:
    small = NetConfig(hidden_layers=1, widths=(8,), learning_rates=(5e-3,), epochs=5)
    return TrainConfig(
        preset="quick", repeats=3, inner_folds=2, random_forest_trees=20, shap_background_rows=20,
        bootstrap_resamples=500, learning_curve_fractions=(0.5, 1.0),
        ensemble_members=2,  # the ensemble path (graph, spread, normalised interval) at the least training cost
        nets={"density": small, "mass_loading": small, "tortuosity": small},
        adapter=AdapterConfig(widths=(8,), learning_rates=(5e-3,), epochs=5),
    )


PRESETS = {"paper": TrainConfig, "quick": _quick}


def load_config(preset: str = "paper", seed: int | None = None, **overrides: Any) -> TrainConfig:
    """The config for a named preset, with the seed and any top-level fields overridden."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    config = PRESETS[preset]()
    changes = {key: value for key, value in overrides.items() if value is not None}
    if seed is not None:
        changes["seed"] = seed
    return dataclasses.replace(config, **changes) if changes else config
