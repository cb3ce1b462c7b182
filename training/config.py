"""Training configuration: one typed object, defaults commented, loaded once at the entry point.

Every saved model carries the config it was built from (logged as MLflow params and as `config.json`).
Presets: `paper` is the paper's protocol (250 epochs); `quick` trains a few epochs on the same data for tests and
integration checks.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class NetConfig:
    """A feed-forward ReLU net; the paper does not give sizes, so these are ours, per task."""

    hidden_units: int = 32  # width of every hidden layer, and of the transfer adapter layer
    hidden_layers: int = 2  # ReLU hidden layers of the pretrained/scratch net
    learning_rate: float = 5e-3  # Adam, pretraining and scratch
    epochs: int = 250  # the paper's epoch count
    batch_size: int = 16  # small sets: a few steps per epoch
    adapter_learning_rate: float = 5e-3  # Adam on the transfer adapter only


@dataclass(frozen=True)
class TransferConfig:
    finetune_learning_rate: float = 1e-3  # Adam on every weight (comparison only): smaller, to not erase the source
    epochs: int = 250


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "paper"
    seed: int = 42  # one seed drives splits, initial weights and shuffling
    test_fraction: float = 0.3  # the paper's 70/30 split
    validation_fraction: float = 0.1  # of the training part, as in the paper
    repeats: int = 10  # extra random splits for mean ± std (beyond the paper)
    random_forest_trees: int = 200
    shap_background_rows: int = 50  # rows kept as SHAP background in the contract
    workers: int = 2  # processes for repeated splits and the learning curve (0: inline, no process pool)
    learning_curve_fractions: tuple[float, ...] = (0.1, 0.2, 0.35, 0.5, 0.75, 1.0)  # of the source training part
    nets: dict[str, NetConfig] = field(default_factory=lambda: {
        "density": NetConfig(hidden_units=32, hidden_layers=2),
        "mass_loading": NetConfig(hidden_units=32, hidden_layers=2),
        # GDL200 → GDL1000 is the same physics on a larger ___domain: the zero-shot net is already close, so the
        # adapter takes small steps and stays near it (5e-3 overfits the ~50 training rows' noise).
        "tortuosity": NetConfig(hidden_units=16, hidden_layers=2, adapter_learning_rate=1e-3),
    })
    transfer: TransferConfig = field(default_factory=TransferConfig)

    def net(self, task: str) -> NetConfig:
        return self.nets[task]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat_params(self) -> dict[str, str]:
        """The whole config as flat MLflow params (`nets.density.hidden_units` = `32`)."""
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
    small = NetConfig(hidden_units=8, hidden_layers=1, epochs=5)
    return TrainConfig(
        preset="quick", repeats=2, workers=0, random_forest_trees=20, shap_background_rows=20,
        learning_curve_fractions=(0.5, 1.0),
        nets={"density": small, "mass_loading": small, "tortuosity": small},
        transfer=TransferConfig(epochs=5),
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
