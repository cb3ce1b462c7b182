"""A lab's own small dataset for the "Your own data" walk-through: an LFP-like cathode (LiFePO4, PVDF/NMP, Al foil),
a fourth electrode chemistry none of the shipped nets saw.

The generator is deliberately simple (it stands for a lab's measurements, not for the calibrated process models of
`datagen/`): the comma-coated wet film is a fixed share of the comma gap, the dry film holds the slurry's solids,
the uncalendered porosity falls with solid content, and calendering presses the film towards the roll gap but not
below a minimum porosity. Each sheet (one coating) is cut into pieces calendered at different gaps, so rows share a
`group_id` like the shipped data. Constants are typical LFP values, each with its source:

- LiFePO4 true density 3.6 g/cm³ (olivine crystal density, e.g. Padhi et al., J. Electrochem. Soc. 144 (1997)
  1188); PVDF 1.78 g/cm³ and carbon black ~1.9 g/cm³ (supplier data sheets): solids ≈ 3.3 g/cm³.
- NMP slurry density ≈ 1.6 g/cm³ at 40-55 % solids (mixture rule with NMP 1.03 g/cm³).
- wet film ≈ 0.8 of the comma gap (typical comma-coater transfer, 0.6-0.95).
- dry porosity 0.55 at 45 % solids, calendered down to at least 0.30 (typical LFP cathodes 0.30-0.40).
- scatter: 2 % on loading per sheet (0.5 % per piece) and 1.5 % on density per piece (typical repeatability of
  lab coatings).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cellmfg.domain import feature_columns

LFP_SEED = 2024
SOLID_DENSITY_G_CM3 = 3.3
SLURRY_DENSITY_G_CM3 = 1.6
WET_FILM_SHARE = 0.8
MIN_POROSITY = 0.30


def lfp_frame(sheets: int = 16, pieces: int = 4, seed: int = LFP_SEED) -> pd.DataFrame:
    """`sheets × pieces` rows in the canonical electrode CSV layout (sample_id, group_id, features, targets)."""
    rng = np.random.default_rng(seed)
    rows = []
    for sheet in range(sheets):
        am = round(float(rng.uniform(88.0, 95.0)), 1)
        solids = round(float(rng.uniform(40.0, 55.0)), 1)
        speed = round(float(rng.choice([0.2, 0.4, 0.6, 0.8])), 1)
        gap = float(rng.choice(np.arange(100.0, 351.0, 25.0)))
        wet_cm = WET_FILM_SHARE * gap * 1e-4
        solids_mg_cm2 = wet_cm * SLURRY_DENSITY_G_CM3 * solids / 100 * 1000
        loading = solids_mg_cm2 * am / 100 * (1 + rng.normal(0, 0.02))
        porosity0 = 0.55 - 0.004 * (solids - 45.0)
        dry_um = solids_mg_cm2 / 1000 / (SOLID_DENSITY_G_CM3 * (1 - porosity0)) * 1e4
        for piece in range(pieces):
            roll_gap = round(float(rng.uniform(0.3, 0.95) * dry_um), 0)
            roll_speed = round(float(rng.choice([0.3, 0.4, 0.5])), 2)
            min_um = solids_mg_cm2 / 1000 / (SOLID_DENSITY_G_CM3 * (1 - MIN_POROSITY)) * 1e4
            # a faster calender springs back a little more (assumption: +2 % thickness per 0.1 m/min above 0.3)
            thickness = max(roll_gap, min_um) * (1 + 0.2 * (roll_speed - 0.3))
            density = solids_mg_cm2 / 1000 / (thickness * 1e-4) * (1 + rng.normal(0, 0.015))
            rows.append({"sample_id": f"lfp-{sheet * pieces + piece + 1:04d}", "group_id": f"lfp-sheet{sheet + 1:03d}",
                         "am_wt_pct": am, "solid_content_pct": solids, "coating_speed_m_min": speed,
                         "comma_gap_um": gap, "roll_speed_m_min": roll_speed, "roll_gap_um": roll_gap,
                         "density_g_cm3": round(float(density), 4),
                         "mass_loading_mg_cm2": round(float(loading * (1 + rng.normal(0, 0.005))), 4)})
    frame = pd.DataFrame(rows)
    return frame[["sample_id", "group_id", *feature_columns("electrode"), "density_g_cm3", "mass_loading_mg_cm2"]]


def lfp_recipes(n: int = 12, seed: int = LFP_SEED + 1) -> pd.DataFrame:
    """Recipes to score (no measurements): a planning sheet with an id and a note column."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "recipe": [f"R{i + 1:02d}" for i in range(n)],
        "note": ["baseline" if i == 0 else "" for i in range(n)],
        "am_wt_pct": rng.uniform(89.0, 94.0, n).round(1), "solid_content_pct": rng.uniform(42.0, 54.0, n).round(1),
        "coating_speed_m_min": rng.choice([0.2, 0.4, 0.6], n), "comma_gap_um": rng.choice([150.0, 200.0, 250.0], n),
        "roll_speed_m_min": rng.choice([0.3, 0.4], n), "roll_gap_um": rng.uniform(40.0, 120.0, n).round(0),
    })
    frame.loc[n - 1, "roll_gap_um"] = 400.0  # one recipe outside the measured range: flagged, not refused
    return frame
