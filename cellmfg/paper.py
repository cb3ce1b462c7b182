"""The reference paper's published figures, in one place for every stage that prints them beside ours.

Fernandez et al., npj Adv. Manuf. 2, 14 (2025): Table 1 (electrodes), Table 2 (GDL) and the text on the GDL
tortuosity distributions. The paper used one random row split of its own (private) data, so these figures orient;
they are never a target for our generated data beyond the difficulty calibration the data card documents.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PAPER_MAPE", "PAPER_TORTUOSITY", "TortuosityDistribution"]

# Test MAPE (%) reported by the paper; keys: (task, dataset, method).
PAPER_MAPE: dict[tuple[str, str, str], float] = {
    ("density", "graphite", "pretrained"): 4.5, ("density", "si_gra", "zero_shot"): 78.8,
    ("density", "nmc", "zero_shot"): 56.1, ("density", "si_gra", "transfer_paper"): 14.5,
    ("density", "nmc", "transfer_paper"): 8.1, ("mass_loading", "graphite", "pretrained"): 13.9,
    ("mass_loading", "si_gra", "zero_shot"): 45.0, ("mass_loading", "nmc", "zero_shot"): 70.8,
    ("mass_loading", "si_gra", "transfer_paper"): 3.7, ("mass_loading", "nmc", "transfer_paper"): 10.6,
    ("tortuosity", "gdl200", "pretrained"): 2.1, ("tortuosity", "gdl1000", "zero_shot"): 2.6,
    ("tortuosity", "gdl1000", "transfer_paper"): 2.0,
}


@dataclass(frozen=True)
class TortuosityDistribution:
    """What the paper says of a GDL set's geometric tortuosity (its text gives no standard deviation)."""

    mean: float
    minimum: float
    maximum: float
    shape: str


PAPER_TORTUOSITY: dict[str, TortuosityDistribution] = {
    "gdl200": TortuosityDistribution(1.07, 1.03, 1.17, "right-skewed"),
    "gdl1000": TortuosityDistribution(1.09, 1.08, 1.17, "right-skewed"),
}
