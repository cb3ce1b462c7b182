"""Synthetic lithium-ion electrode datasets: a lab campaign of coated sheets through a documented process model.

The paper's electrode data (ARTISTIC project) are "available on request", so the shipped `graphite`, `si_gra` and
`nmc` sets are generated here the way a lab produces them over months: each **sheet** is one slurry batch (its own
formulation, drawn continuously over the paper's ranges) coated at one comma gap and web speed; pieces of a sheet are
calendered at different roll gaps and roll speeds; each piece is punched into 2–4 replicate discs that are measured.
Every row carries its sheet as `group_id`, so splits can keep a sheet on one side.

The targets come from a small physical model (slurry → coating → drying → calendering, `process_terms`) whose
mechanisms differ between chemistries as real lines do: nano-Si thickens the slurry, takes binder and packs loosely
(Si-Gra), NMC runs on its own coater with NMP/PVDF and compacts as hard dense particles on aluminium foil, and the
carbon-binder domain keeps its nanopores through calendering. The model is evaluated with the sheet's *actual*
state, which differs from the nominal settings written in the CSV by documented random effects: slurry batch
(solids, viscosity, dried porosity), coater run (gap zero offset, run-to-run wet-film factor and a slow drift over
the campaign), calendering spring-back per sheet; then punch-to-punch areal-mass scatter, thickness gauge noise and
a few gross errors per measured disc. The nominal model (`process_model`) is what the inputs can explain; the
effects are what no input records, which is what makes lab data hard.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Literal

import numpy as np
import pandas as pd
from scipy.stats import beta as beta_distribution

from cellmfg.dataio import GROUP_ID, SAMPLE_ID
from cellmfg.domain import DATASETS, DENSITY, MASS_LOADING, feature_columns

FEATURES: tuple[str, ...] = tuple(feature_columns("electrode"))
TARGET_COLUMNS: tuple[str, ...] = (DENSITY.column, MASS_LOADING.column)
COLUMNS: tuple[str, ...] = (SAMPLE_ID, GROUP_ID, *FEATURES, *TARGET_COLUMNS)
# What makes a sheet: one slurry batch coated at one comma gap and web speed.
SHEET_FEATURES: tuple[str, ...] = ("am_wt_pct", "solid_content_pct", "coating_speed_m_min", "comma_gap_um")

# Decimals written to the CSV. Features are rounded before the targets are computed, so `process_model` on a shipped
# frame reproduces its nominal targets exactly.
FEATURE_DECIMALS: dict[str, int] = {
    "am_wt_pct": 1,
    "solid_content_pct": 1,
    "coating_speed_m_min": 2,
    "comma_gap_um": 0,
    "roll_speed_m_min": 2,
    "roll_gap_um": 0,
}
TARGET_DECIMALS = 4

# Material (skeletal/true) densities at room temperature, g/cm³.
MATERIAL_DENSITIES_G_CM3: dict[str, float] = {
    "graphite": 2.26,
    "silicon": 2.33,
    "nmc111": 4.70,
    "carbon_black": 1.90,
    "na_cmc": 1.60,
    "pvdf": 1.78,
    "water": 1.00,
    "nmp": 1.03,
}
MATERIAL_SOURCES: dict[str, str] = {
    "graphite": "handbook value (CRC Handbook of Chemistry and Physics: graphite 2.09–2.26; crystalline 2.26)",
    "silicon": "handbook value (CRC Handbook: crystalline Si 2.33)",
    "nmc111": "typical value for LiNi1/3Mn1/3Co1/3O2 powder (crystallographic ≈ 4.75–4.8; 4.6–4.8 in the "
              "electrode literature)",
    "carbon_black": "typical value for conductive carbon blacks (Super P / C65 skeletal density 1.8–2.1)",
    "na_cmc": "typical value for sodium carboxymethyl cellulose (≈ 1.59–1.6)",
    "pvdf": "manufacturer data sheets (Solef/Kynar PVDF homopolymer 1.75–1.80)",
    "water": "handbook value (CRC Handbook: 0.997 at 25 °C, rounded)",
    "nmp": "handbook value (CRC Handbook: N-methyl-2-pyrrolidone 1.028 at 25 °C)",
}


def _constant(unit: str, source: str, symbol: str) -> dict[str, str]:
    # Field metadata carries what the data card prints: one place for value, unit, symbol and source.
    return {"unit": unit, "source": source, "symbol": symbol}


@dataclass(frozen=True)
class ChemistryConstants:
    """Materials and process constants of one electrode chemistry; units and sources live in the field metadata."""

    name: str = field(metadata=_constant("-", "paper (dataset name)", "-"))
    active_materials: tuple[str, ...] = field(metadata=_constant(
        "-", "paper: graphite; Si + graphite; NMC111", "-"))
    am_feature: Literal["am_fraction", "si_share"] = field(metadata=_constant(
        "-", "paper: for Si-Gra `am_wt_pct` is the Si share of the composite, total AM fixed at 91 wt%", "-"))
    fixed_am_wt_pct: float | None = field(metadata=_constant("wt%", "paper (Si-Gra: 91 wt%)", "w_AM"))
    binder: str = field(metadata=_constant("-", "paper: Na-CMC (water) for anodes, PVDF (NMP) for NMC", "-"))
    solvent: str = field(metadata=_constant("-", "paper: water for anodes, NMP for NMC", "-"))
    binder_share_of_additives: float = field(metadata=_constant(
        "1", "typical value: non-AM solids split binder : carbon black 1:1 (e.g. 96:2:2, 90:5:5 recipes); "
             "for Si-Gra the Si-free intercept of a rule that reaches ≈ 0.56–0.70 (5–6.3 wt% binder) at 8–15 % Si "
             "(assumption)", "b"))
    foil_thickness_um: float = field(metadata=_constant("µm", "paper: Cu 16 µm (anodes), Al 22 µm (NMC)", "t_foil"))
    binder_share_si_slope: float = field(metadata=_constant(
        "1 per unit Si share", "typical value: Si anodes take 8–20 wt% binder against 2–5 wt% for graphite "
        "(binder reviews, e.g. Kovalenko et al., Science 334 (2011) 75); with total AM fixed at 91 wt% the lab "
        "moves additives from carbon black to binder as Si rises (assumption of a linear recipe rule; 0 without Si)",
        "k_si,b"))
    cbd_porosity: float = field(metadata=_constant(
        "1", "typical value: the carbon-binder domain keeps nanopores of ≈ 0.4–0.6 of its volume, which calendering "
             "does not close (FIB-SEM: Vierrath et al., Electrochem. Commun. 60 (2015) 176; Zielke et al., Adv. "
             "Energy Mater. 4 (2014) 1301617); more additive → more porous, less dense electrode", "ε_CBD"))
    max_packing_fraction: float = field(metadata=_constant(
        "1", "typical value: random close packing of polydisperse particles 0.55–0.64, the φ_m of the Krieger–"
             "Dougherty law (Krieger & Dougherty, Trans. Soc. Rheol. 3 (1959) 137)", "φ_m"))
    intrinsic_viscosity: float = field(metadata=_constant(
        "1", "Einstein value 2.5 for spheres; higher for platelet graphite (assumption within 2.5–4)", "[η]"))
    intrinsic_viscosity_si_slope: float = field(metadata=_constant(
        "1 per unit Si share", "typical value: nano-Si (specific surface ≈ 10–50 m²/g against ≈ 2–5 for graphite) "
        "thickens aqueous slurries; [η] grows linearly with the Si share (assumption of the slope; 0 without Si)",
        "k_si,η"))
    wet_film_factor_ref: float = field(metadata=_constant(
        "1", "typical value: a comma-coated wet film is between half the gap (pure drag flow) and the gap; one "
             "value per coater for its reference slurry: the anode line (graphite, Si-Gra) 0.95, the NMC coater "
             "0.9 (assumption within that band, chosen so loadings fall in typical lab ranges)", "f_ref"))
    wet_film_viscosity_exponent: float = field(metadata=_constant(
        "1", "typical value: under the comma the film is drag flow (half the gap) plus a pressure-driven flow that "
             "falls as 1/(viscosity·speed) (lubrication theory of knife-over-roll coating, Kistler & Schweizer, "
             "Liquid Film Coating, 1997); a thicker slurry transfers less of the gap (assumption: weak power law "
             "f ∝ (η/η_ref)^(−a_η), shear-thinning slurries)", "a_η"))
    binder_viscosity_exponent: float = field(metadata=_constant(
        "1", "typical value: the dissolved binder (Na-CMC in water, PVDF in NMP) sets the liquid's viscosity, "
             "η ∝ c^n with n ≈ 2–4 in semidilute/entangled solutions (Na-CMC: Benchabane & Bekkour, Colloid "
             "Polym. Sci. 286 (2008) 1173; scaling: Colby, Rheol. Acta 49 (2010) 425); taken at or below the low "
             "end (2 for Na-CMC, 1.5 for PVDF) because the slurries shear-thin at coating shear rates (assumption)",
        "n_b"))
    binder_wt_ref: float = field(metadata=_constant(
        "wt%", "binder share of the dry solids in the coater's reference slurry (the middle recipe of the paper's "
               "range; for Si-Gra the graphite recipe, so Si's extra binder shows as a thicker slurry)", "w_b,ref"))
    wet_film_speed_slope: float = field(metadata=_constant(
        "1/(m/min)", "typical value: faster web → more film split and less transfer (assumption)", "k_f"))
    wet_film_ref_speed_m_min: float = field(metadata=_constant(
        "m/min", "lowest coating speed of the paper's range for the chemistry", "v_ref"))
    dry_porosity_ref: float = field(metadata=_constant(
        "1", "typical value: porosity of the active-material frame of a dried, uncalendered film; with the "
             "carbon-binder nanopores the total is ≈ 0.5–0.6 for graphite (uncalendered ≈ 0.9–1.0 g/cm³) and "
             "≈ 0.45–0.5 for NMC (≈ 2.2–2.5 g/cm³) (assumption within those bands)", "ε0_ref"))
    dry_porosity_solids_slope: float = field(metadata=_constant(
        "1", "typical value: denser-packing films from more concentrated slurries (assumption)", "k_ε"))
    dry_porosity_si_slope: float = field(metadata=_constant(
        "1 per unit Si share", "typical value: nano-Si and its agglomerates pack loosely; uncalendered Si/graphite "
        "films are ≈ 0.6–0.7 porous against ≈ 0.55 for graphite (assumption within that band; 0 without Si)",
        "k_si,ε0"))
    solids_ref: float = field(metadata=_constant("1", "middle of the paper's solid-content range", "s_ref"))
    min_porosity: float = field(metadata=_constant(
        "1", "typical value: tightest packing of the active-material frame under the rolls; with the carbon-binder "
             "nanopores the electrode's floor is ≈ 0.25–0.3 for graphite and ≈ 0.22–0.3 for NMC111 (below which "
             "particles crack), the 25–40 % porosity of calendered electrodes at the dense end (assumption)", "ε_min"))
    min_porosity_si_slope: float = field(metadata=_constant(
        "1 per unit Si share", "typical value: hard Si particles resist compaction (assumption; 0 without Si)",
        "k_si,ε"))
    compaction_strain_scale: float = field(metadata=_constant(
        "1", "typical value: exponential porosity–compaction law in the form of Meyer et al., J. Mater. Process. "
             "Technol. 249 (2017) 172, with nominal strain instead of line load (scale is an assumption): NMC's "
             "dense hard particles reach their floor within a small squeeze, binder-rich Si-Gra needs the most",
        "δ_c"))
    spring_back: float = field(metadata=_constant(
        "1", "typical value: elastic recovery after the nip, a few to ~15% of the thickness reduction, larger for "
             "graphite than NMC (assumption)", "r_sb"))
    spring_back_si_slope: float = field(metadata=_constant(
        "1 per unit Si share", "typical value: Si and the extra binder raise elastic recovery, to ≈ 20–27 % of "
        "the squeeze at 8–15 % Si (assumption; 0 without Si)", "k_si,sb"))
    roll_speed_ref_m_min: float = field(metadata=_constant("m/min", "paper: slower of the two roll speeds", "u_ref"))
    roll_speed_exponent: float = field(metadata=_constant(
        "1", "typical value: shorter dwell time at higher roll speed compacts slightly less; reported as a weak "
             "effect (paper SHAP: ~no influence) (assumption)", "β"))
    contact_width_um: float = field(metadata=_constant(
        "µm", "smoothing width of the onset of roll contact (surface roughness scale; assumption)", "w"))


CHEMISTRIES: dict[str, ChemistryConstants] = {
    "graphite": ChemistryConstants(
        name="graphite", active_materials=("graphite",), am_feature="am_fraction", fixed_am_wt_pct=None,
        binder_viscosity_exponent=2.0, binder_wt_ref=3.4,
        binder="na_cmc", solvent="water", binder_share_of_additives=0.5, foil_thickness_um=16.0,
        binder_share_si_slope=0.0, cbd_porosity=0.5, max_packing_fraction=0.55, intrinsic_viscosity=3.0,
        intrinsic_viscosity_si_slope=0.0, wet_film_factor_ref=0.95, wet_film_viscosity_exponent=0.2,
        wet_film_speed_slope=0.20, wet_film_ref_speed_m_min=0.3, dry_porosity_ref=0.60,
        dry_porosity_solids_slope=0.25, dry_porosity_si_slope=0.0, solids_ref=0.32, min_porosity=0.22,
        min_porosity_si_slope=0.0, compaction_strain_scale=0.30, spring_back=0.10, spring_back_si_slope=0.0,
        roll_speed_ref_m_min=0.27, roll_speed_exponent=0.06, contact_width_um=3.0,
    ),
    "si_gra": ChemistryConstants(
        name="si_gra", active_materials=("silicon", "graphite"), am_feature="si_share", fixed_am_wt_pct=91.0,
        binder_viscosity_exponent=2.0, binder_wt_ref=4.5,
        binder="na_cmc", solvent="water", binder_share_of_additives=0.4, foil_thickness_um=16.0,
        binder_share_si_slope=2.0, cbd_porosity=0.5, max_packing_fraction=0.55, intrinsic_viscosity=3.0,
        intrinsic_viscosity_si_slope=10.0, wet_film_factor_ref=0.95, wet_film_viscosity_exponent=0.2,
        wet_film_speed_slope=0.20, wet_film_ref_speed_m_min=0.3, dry_porosity_ref=0.58,
        dry_porosity_solids_slope=0.30, dry_porosity_si_slope=0.8, solids_ref=0.28, min_porosity=0.22,
        min_porosity_si_slope=1.0, compaction_strain_scale=0.45, spring_back=0.12, spring_back_si_slope=1.0,
        roll_speed_ref_m_min=0.27, roll_speed_exponent=0.06, contact_width_um=3.0,
    ),
    "nmc": ChemistryConstants(
        name="nmc", active_materials=("nmc111",), am_feature="am_fraction", fixed_am_wt_pct=None,
        binder_viscosity_exponent=1.5, binder_wt_ref=4.0,
        binder="pvdf", solvent="nmp", binder_share_of_additives=0.5, foil_thickness_um=22.0,
        binder_share_si_slope=0.0, cbd_porosity=0.5, max_packing_fraction=0.60, intrinsic_viscosity=2.5,
        intrinsic_viscosity_si_slope=0.0, wet_film_factor_ref=0.9, wet_film_viscosity_exponent=0.2,
        wet_film_speed_slope=0.25, wet_film_ref_speed_m_min=0.2, dry_porosity_ref=0.42,
        dry_porosity_solids_slope=0.20, dry_porosity_si_slope=0.0, solids_ref=0.54, min_porosity=0.20,
        min_porosity_si_slope=0.0, compaction_strain_scale=0.20, spring_back=0.05, spring_back_si_slope=0.0,
        roll_speed_ref_m_min=0.27, roll_speed_exponent=0.04, contact_width_um=3.0,
    ),
}

# Bounds of the wet-film factor whatever the slurry and speed: a comma coater neither transfers more than the gap
# nor, in the paper's speed window, less than about half of it (assumption).
WET_FILM_FACTOR_BOUNDS: tuple[float, float] = (0.50, 1.00)
CARBON_BLACK = "carbon_black"
# NMC111 electrodes rarely exceed 3.5–3.6 g/cm³; the model's cap is ρ_s·(1 − ε_min) at the richest recipe.
NMC_DENSITY_LITERATURE_MAX_G_CM3 = 3.6
# Re-measurements of a disc whose reading is physically impossible before the value is clamped at the cap.
MAX_REMEASUREMENTS = 10


def _effect(unit: str, source: str, level: str) -> dict[str, str]:
    return {"unit": unit, "source": source, "level": level}


@dataclass(frozen=True)
class ScatterConstants:
    """Random effects of a lab campaign: what differs between the nominal settings and what was made or measured.

    Every field is one documented effect; `level` says what shares it (slurry batch = sheet, coater run = sheet,
    campaign = slowly drifting across consecutive sheets, disc = one measured row).
    """

    batch_solids_sd_pct: float = field(metadata=_effect(
        "wt% points", "slurry batch: solvent weighing and evaporation while mixing/degassing an open batch move the "
                      "real solid content by ~0.5–1 point from the recipe (assumption, typical lab practice)",
        "sheet"))
    batch_viscosity_log_sd: float = field(metadata=_effect(
        "ln units", "slurry batch: binder dissolution, mixing energy and slurry age; batch-to-batch viscosity of "
                    "the same recipe commonly differs by 20–50% (assumption within that band)", "sheet"))
    batch_dry_porosity_sd: float = field(metadata=_effect(
        "porosity", "slurry batch/drying: dried-film porosity of the same recipe varies with drying rate and "
                    "agglomeration by 1–2 points (assumption)", "sheet"))
    coater_gap_offset_sd_um: float = field(metadata=_effect(
        "µm", "coater run: the comma gap is zeroed by hand with feeler gauges; a lab coater's real gap differs from "
              "the dial by several µm, a larger share of a narrow gap (assumption)", "sheet"))
    coater_run_log_sd: float = field(metadata=_effect(
        "ln units", "coater run: web tension, blade cleanliness and bead stability change the transferred film "
                    "from run to run (assumption: ~5% lab-scale coat-weight reproducibility)", "sheet"))
    coater_drift_log_sd: float = field(metadata=_effect(
        "ln units", "campaign: slow drift of the coater's transfer over months (blade wear, re-shimming, "
                    "temperature/humidity season); stationary AR(1) over the sheets in coating order (assumption)",
        "campaign"))
    coater_drift_correlation: float = field(metadata=_effect(
        "1", "campaign: correlation of the drift between consecutive sheets (assumption)", "campaign"))
    sheet_spring_back_log_sd: float = field(metadata=_effect(
        "ln units", "calendering: elastic recovery differs between sheets with binder distribution and storage; "
                    "a 15 % relative spread of a 5–20 % recovery, i.e. about ±1–3 % of the thickness (assumption)",
        "sheet"))
    punch_loading_log_sd: float = field(metadata=_effect(
        "ln units", "disc: punch-to-punch areal-mass scatter along and across a sheet; the areal-mass CV of a "
                    "comma coater is ≈ 1–3 % (typical value of coating-uniformity reports); thinner anode slurries "
                    "level less evenly (assumption: 2 % anodes, 1.5 % NMC)", "disc"))
    thickness_gauge_sd_um: float = field(metadata=_effect(
        "µm", "disc: micrometer/dial-gauge repeatability on a compressible coating, ~1 µm (assumption)", "disc"))
    density_rel_sd: float = field(metadata=_effect(
        "1", "disc: disc area (punch wear) and foil-mass subtraction, relative (assumption)", "disc"))
    outlier_fraction: float = field(metadata=_effect(
        "1", "disc: gross errors (mislabelled disc, thickness read on a wrinkle or burr) in 1–2% of rows "
             "(assumption)", "disc"))
    outlier_rel_error: tuple[float, float] = field(metadata=_effect(
        "1", "disc: size of a gross error, uniform in this band; loading either sign, density only downward (a "
             "wrinkle or burr reads too thick) (assumption)", "disc"))


SCATTER: dict[str, ScatterConstants] = {
    "graphite": ScatterConstants(
        batch_solids_sd_pct=0.8, batch_viscosity_log_sd=0.2, batch_dry_porosity_sd=0.015,
        coater_gap_offset_sd_um=8.0, coater_run_log_sd=0.05, coater_drift_log_sd=0.05,
        coater_drift_correlation=0.9, sheet_spring_back_log_sd=0.15, punch_loading_log_sd=0.02,
        thickness_gauge_sd_um=1.0, density_rel_sd=0.01, outlier_fraction=0.015, outlier_rel_error=(0.12, 0.25),
    ),
    "si_gra": ScatterConstants(
        batch_solids_sd_pct=0.8, batch_viscosity_log_sd=0.2, batch_dry_porosity_sd=0.015,
        coater_gap_offset_sd_um=8.0, coater_run_log_sd=0.05, coater_drift_log_sd=0.05,
        coater_drift_correlation=0.9, sheet_spring_back_log_sd=0.15, punch_loading_log_sd=0.02,
        thickness_gauge_sd_um=1.0, density_rel_sd=0.01, outlier_fraction=0.015, outlier_rel_error=(0.12, 0.25),
    ),
    "nmc": ScatterConstants(
        batch_solids_sd_pct=0.8, batch_viscosity_log_sd=0.2, batch_dry_porosity_sd=0.015,
        coater_gap_offset_sd_um=8.0, coater_run_log_sd=0.05, coater_drift_log_sd=0.05,
        coater_drift_correlation=0.9, sheet_spring_back_log_sd=0.15, punch_loading_log_sd=0.015,
        thickness_gauge_sd_um=1.0, density_rel_sd=0.01, outlier_fraction=0.015, outlier_rel_error=(0.12, 0.25),
    ),
}

SOURCES: dict[str, str] = {
    **{f"density:{name}": text for name, text in MATERIAL_SOURCES.items()},
    **{f.name: str(f.metadata["source"]) for f in fields(ChemistryConstants)},
    **{f.name: str(f.metadata["source"]) for f in fields(ScatterConstants)},
    "wet_film_factor_bounds": "typical value: a comma coater transfers between half the gap (pure drag flow under "
                              "the comma, Kistler & Schweizer, Liquid Film Coating, 1997) and the gap",
    "nmc_density_literature_max": "NMC111 electrodes are calendered to ≈ 2.8–3.4 g/cm³ and rarely beyond "
                                  "3.5–3.6 (typical range of calendering studies; assumption of a round value)",
}


@dataclass(frozen=True)
class DesignPlan:
    """How the simulated lab chose its runs: design choices, not physics (documented in the data card)."""

    sheets: int  # coated sheets (= slurry batches) in the campaign
    am_step: float  # recipes are weighed to this resolution of AM wt%
    solids_step: float
    solids_beta: tuple[float, float]  # where the lab's recipes sit in the solid-content range
    comma_gap_step_um: float  # resolution of the comma-gap dial
    coating_speed_step_m_min: float
    pieces_weights: tuple[float, ...]  # probability of 1, 2, 3, ... calendered pieces per sheet
    replicates: tuple[int, int]  # discs punched and measured per piece, inclusive range
    fast_roll_probability: float  # share of pieces calendered at 0.54 rather than 0.27 m/min
    roll_gap_mean_um: float  # the paper's reported mean roll gap, which the gap choice is aimed at
    roll_gap_position: tuple[float, float]  # allowed mean position of a gap inside its window (floor → cap), 0–1
    roll_gap_cap_ratio: float  # widest gap the lab uses, relative to the coated foil's measured thickness
    max_roll_strain: float  # deepest nominal thickness reduction asked of a coating (roll gap ≥ foil + (1 − it)·t0)


DESIGN_PLANS: dict[str, DesignPlan] = {
    "graphite": DesignPlan(
        sheets=52, am_step=0.1, solids_step=0.1, solids_beta=(1.6, 1.0), comma_gap_step_um=5.0,
        coating_speed_step_m_min=0.1, pieces_weights=(0.25, 0.5, 0.25), replicates=(2, 4),
        fast_roll_probability=0.35, roll_gap_mean_um=70.0, roll_gap_position=(0.3, 0.7), roll_gap_cap_ratio=1.05,
        max_roll_strain=0.8,
    ),
    "si_gra": DesignPlan(
        sheets=16, am_step=0.1, solids_step=0.1, solids_beta=(1.2, 1.0), comma_gap_step_um=5.0,
        coating_speed_step_m_min=0.1, pieces_weights=(0.4, 0.6), replicates=(2, 4),
        fast_roll_probability=0.4, roll_gap_mean_um=58.0, roll_gap_position=(0.3, 0.7), roll_gap_cap_ratio=1.05,
        max_roll_strain=0.8,
    ),
    "nmc": DesignPlan(
        sheets=17, am_step=0.1, solids_step=0.1, solids_beta=(1.0, 1.0), comma_gap_step_um=5.0,
        coating_speed_step_m_min=0.1, pieces_weights=(0.4, 0.6), replicates=(2, 4),
        fast_roll_probability=0.4, roll_gap_mean_um=62.0, roll_gap_position=(0.3, 0.7), roll_gap_cap_ratio=0.95,
        max_roll_strain=0.6,
    ),
}



@dataclass(frozen=True)
class SheetEffects:
    """Per-row random effects (arrays aligned with the frame's rows); zeros/ones mean the nominal process."""

    solids_offset: np.ndarray  # added to the solid mass fraction (fraction, not %)
    viscosity_factor: np.ndarray  # multiplies the slurry's relative viscosity
    dry_porosity_offset: np.ndarray
    gap_offset_um: np.ndarray  # added to the comma gap
    transfer_factor: np.ndarray  # multiplies the wet-film factor (coater run × campaign drift)
    spring_back_factor: np.ndarray

    @staticmethod
    def nominal(rows: int) -> SheetEffects:
        zeros, ones = np.zeros(rows), np.ones(rows)
        return SheetEffects(zeros, ones, zeros, zeros, ones, ones)

    def take(self, index: np.ndarray) -> SheetEffects:
        return SheetEffects(*(getattr(self, f.name)[index] for f in fields(SheetEffects)))


def _require_chemistry(chemistry: str) -> ChemistryConstants:
    if chemistry not in CHEMISTRIES:
        raise KeyError(f"unknown chemistry {chemistry!r}; known: {', '.join(CHEMISTRIES)}")
    return CHEMISTRIES[chemistry]


def _feature_array(frame: pd.DataFrame, column: str) -> np.ndarray:
    return np.asarray(frame[column].to_numpy(dtype=float), dtype=float)


def _binder_in_liquid(solids: np.ndarray, w_binder: np.ndarray) -> np.ndarray:
    """Mass fraction of dissolved binder in the slurry's liquid (binder + solvent)."""
    binder = w_binder * solids
    return np.asarray(binder / (binder + 1.0 - solids))


def _relative_viscosity(solids: np.ndarray, solid_density: np.ndarray, w_binder: np.ndarray,
                        c: ChemistryConstants, intrinsic: np.ndarray) -> np.ndarray:
    """Slurry viscosity relative to the chemistry's reference binder solution: particles × dissolved binder."""
    solvent = MATERIAL_DENSITIES_G_CM3[c.solvent]
    phi = (solids / solid_density) / (solids / solid_density + (1.0 - solids) / solvent)
    # Held below the packing limit: the law diverges there, and no coatable slurry gets that close.
    phi = np.minimum(phi, 0.95 * c.max_packing_fraction)
    particles = (1.0 - phi / c.max_packing_fraction) ** (-intrinsic * c.max_packing_fraction)
    reference_binder = _binder_in_liquid(np.asarray(c.solids_ref), np.asarray(c.binder_wt_ref / 100.0))
    medium = (_binder_in_liquid(solids, w_binder) / reference_binder) ** c.binder_viscosity_exponent
    return np.asarray(particles * medium)


def process_terms(frame: pd.DataFrame, chemistry: str, effects: SheetEffects | None = None) -> dict[str, np.ndarray]:
    """Every intermediate of the process model, vectorised over rows (µm, g/cm³, mg/cm²).

    Without `effects` this is the nominal process the CSV's settings describe; with them, the sheet actually made.
    """
    c = _require_chemistry(chemistry)
    missing = [col for col in FEATURES if col not in frame.columns]
    if missing:
        raise KeyError(f"missing feature column(s) {', '.join(missing)}")
    e = effects if effects is not None else SheetEffects.nominal(len(frame))
    rho = MATERIAL_DENSITIES_G_CM3
    am_pct = _feature_array(frame, "am_wt_pct")
    nominal_solids = _feature_array(frame, "solid_content_pct") / 100.0
    solids = np.clip(nominal_solids + e.solids_offset, 0.01, 0.95)
    coating_speed = _feature_array(frame, "coating_speed_m_min")
    comma_gap = _feature_array(frame, "comma_gap_um")
    roll_speed = _feature_array(frame, "roll_speed_m_min")
    roll_gap = _feature_array(frame, "roll_gap_um")

    if c.am_feature == "si_share":
        si_share = am_pct / 100.0
        w_am = np.full_like(am_pct, (c.fixed_am_wt_pct or 0.0) / 100.0)
        am_specific_volume = w_am * (si_share / rho["silicon"] + (1.0 - si_share) / rho["graphite"])
    else:
        si_share = np.zeros_like(am_pct)
        w_am = am_pct / 100.0
        am_specific_volume = w_am / rho[c.active_materials[0]]
    additives = 1.0 - w_am
    # Silicon's surface area and volume change take more binder: the recipe shifts additives from carbon to binder.
    binder_share = np.clip(c.binder_share_of_additives + c.binder_share_si_slope * si_share, 0.0, 1.0)
    w_binder = binder_share * additives
    w_carbon = additives - w_binder
    cbd_specific_volume = w_binder / rho[c.binder] + w_carbon / rho[CARBON_BLACK]
    solid_density = 1.0 / (am_specific_volume + cbd_specific_volume)
    slurry_density = 1.0 / (solids / solid_density + (1.0 - solids) / rho[c.solvent])

    # Nano-Si thickens the slurry: its intrinsic viscosity rises with the Si share.
    intrinsic = c.intrinsic_viscosity * (1.0 + c.intrinsic_viscosity_si_slope * si_share)
    viscosity = _relative_viscosity(solids, solid_density, w_binder, c, intrinsic) * e.viscosity_factor
    # The reference is the coater's reference slurry: middle solid content, reference binder, no Si.
    reference = _relative_viscosity(np.full_like(solids, c.solids_ref), solid_density,
                                    np.full_like(solids, c.binder_wt_ref / 100.0), c,
                                    np.full_like(solids, c.intrinsic_viscosity))
    low, high = WET_FILM_FACTOR_BOUNDS
    nominal_factor = (c.wet_film_factor_ref * (viscosity / reference) ** (-c.wet_film_viscosity_exponent)
                      - c.wet_film_speed_slope * (coating_speed - c.wet_film_ref_speed_m_min))
    wet_factor = np.clip(nominal_factor, low, high) * e.transfer_factor
    wet_film = wet_factor * np.maximum(comma_gap + e.gap_offset_um, 1.0)
    # µm × g/cm³ → mg/cm²: 1 µm = 1e-4 cm, 1 g = 1e3 mg.
    dry_loading = 0.1 * wet_film * slurry_density * solids
    am_loading = w_am * dry_loading

    def with_cbd(frame_porosity: np.ndarray) -> np.ndarray:
        # Two porous phases side by side: the active-material frame (porosity set by packing and calendering) and
        # the carbon-binder domain, whose own nanopores survive calendering. Per gram of solids.
        pores = (am_specific_volume * frame_porosity / (1.0 - frame_porosity)
                 + cbd_specific_volume * c.cbd_porosity / (1.0 - c.cbd_porosity))
        return np.asarray(pores / (pores + am_specific_volume + cbd_specific_volume))

    dry_porosity = with_cbd(c.dry_porosity_ref + c.dry_porosity_solids_slope * (c.solids_ref - solids)
                            + c.dry_porosity_si_slope * si_share + e.dry_porosity_offset)
    dry_thickness = 10.0 * dry_loading / (solid_density * (1.0 - dry_porosity))
    # The rolls only act once the gap is below the coated foil; the softplus keeps the onset smooth like a rough
    # surface does, and the foil itself is taken as incompressible.
    width = c.contact_width_um
    squeeze = width * np.logaddexp(0.0, (dry_thickness + c.foil_thickness_um - roll_gap) / width)
    safe_speed = np.maximum(roll_speed, 1e-6)
    strain = squeeze / dry_thickness * (c.roll_speed_ref_m_min / safe_speed) ** c.roll_speed_exponent
    min_porosity = with_cbd(np.full_like(si_share, c.min_porosity) + c.min_porosity_si_slope * si_share)
    nip_porosity = min_porosity + (dry_porosity - min_porosity) * np.exp(-strain / c.compaction_strain_scale)
    nip_thickness = dry_thickness * (1.0 - dry_porosity) / (1.0 - nip_porosity)
    spring_back = np.clip((c.spring_back + c.spring_back_si_slope * si_share) * e.spring_back_factor, 0.0, 0.9)
    thickness = nip_thickness + spring_back * (dry_thickness - nip_thickness)
    density = solid_density * (1.0 - dry_porosity) * dry_thickness / thickness
    return {
        "w_am": w_am,
        "solids": solids,
        "solid_density": solid_density,
        "slurry_density": slurry_density,
        "relative_viscosity": viscosity,
        "wet_film_factor": wet_factor,
        "wet_film_um": wet_film,
        "dry_loading_mg_cm2": dry_loading,
        "am_loading_mg_cm2": am_loading,
        "dry_porosity": dry_porosity,
        "dry_thickness_um": dry_thickness,
        "coated_foil_um": dry_thickness + c.foil_thickness_um,
        "min_porosity": min_porosity,
        "nip_porosity": nip_porosity,
        "thickness_um": thickness,
        "density_g_cm3": density,
    }


def process_model(frame: pd.DataFrame, chemistry: str) -> pd.DataFrame:
    """Nominal targets for the feature columns of `frame` (no random effects).

    Returns a frame with the same index and the columns `density_g_cm3` (calendered coating density, g/cm³) and
    `mass_loading_mg_cm2` (active-material mass loading, mg/cm²). Pure and vectorised; raises KeyError for an
    unknown chemistry or a missing feature column.
    """
    terms = process_terms(frame, chemistry)
    return pd.DataFrame(
        {DENSITY.column: terms["density_g_cm3"], MASS_LOADING.column: terms["am_loading_mg_cm2"]},
        index=frame.index,
    )


def nominal_r2(frame: pd.DataFrame, chemistry: str) -> dict[str, float]:
    """Noise-free R² per target: the nominal `process_model` against the measured targets of `frame`.

    The best any model of the six inputs can do on average; 1 − R² is the share of variance the unrecorded sheet
    effects and the measurement scatter carry.
    """
    nominal = process_model(frame, chemistry)
    out = {}
    for column in TARGET_COLUMNS:
        y = frame[column].to_numpy(dtype=float)
        residual = y - nominal[column].to_numpy(dtype=float)
        out[column] = float(1.0 - np.sum(residual**2) / np.sum((y - y.mean()) ** 2))
    return out


def density_cap(frame: pd.DataFrame, chemistry: str) -> np.ndarray:
    """Highest density each row's recipe allows: ρ_s·(1 − ε_min'), the solid density at the minimum porosity."""
    terms = process_terms(frame, chemistry)
    return np.asarray(terms["solid_density"] * (1.0 - terms["min_porosity"]))


def _round_to(values: np.ndarray, step: float) -> np.ndarray:
    return np.asarray(np.round(values / step) * step, dtype=float)


def _stratified(rng: np.random.Generator, count: int) -> np.ndarray:
    """Latin-hypercube positions in (0, 1): a campaign spreads its recipes over the range rather than clustering."""
    return np.asarray((rng.permutation(count) + rng.random(count)) / count)


def _sheet_plan(chemistry: str, rng: np.random.Generator) -> pd.DataFrame:
    """The campaign's sheets in coating order: formulation, comma gap and web speed, rounded as written to CSV."""
    spec = DATASETS[chemistry]
    plan = DESIGN_PLANS[chemistry]
    ranges = spec.ranges
    n = plan.sheets

    def spread(column: str, positions: np.ndarray, step: float) -> np.ndarray:
        low, high = ranges[column]
        values = np.clip(_round_to(low + (high - low) * positions, step), low, high)
        # The campaign covers its ranges: the extreme recipes are exactly the range ends.
        values[int(np.argmin(values))] = low
        values[int(np.argmax(values))] = high
        return values

    am = spread("am_wt_pct", _stratified(rng, n), plan.am_step)
    # Solid content: a Beta-shaped preference (labs favour the coatable middle-to-high end), still stratified.
    solids = spread("solid_content_pct",
                    beta_distribution.ppf(_stratified(rng, n), *plan.solids_beta), plan.solids_step)
    gaps = spread("comma_gap_um", _stratified(rng, n), plan.comma_gap_step_um)
    speed_low, speed_high = ranges["coating_speed_m_min"]
    speeds = (spread("coating_speed_m_min", _stratified(rng, n), plan.coating_speed_step_m_min)
              if speed_high > speed_low else np.full(n, speed_low))
    sheets = pd.DataFrame({"am_wt_pct": am, "solid_content_pct": solids, "coating_speed_m_min": speeds,
                           "comma_gap_um": gaps})
    # The thickest coating (most concentrated slurry, widest gap, slowest web) exists, so the widest roll gap of the
    # paper's range still touches a coating; the narrowest gap and fastest web then sit on other sheets.
    thick = int(np.argmax(solids))
    widest, slowest = int(np.argmax(gaps)), int(np.argmin(speeds))
    sheets.loc[[thick, widest], "comma_gap_um"] = sheets.loc[[widest, thick], "comma_gap_um"].to_numpy()
    sheets.loc[[thick, slowest], "coating_speed_m_min"] = sheets.loc[[slowest, thick],
                                                                     "coating_speed_m_min"].to_numpy()
    for column, decimals in FEATURE_DECIMALS.items():
        if column in sheets:
            sheets[column] = sheets[column].round(decimals)
    return sheets


def _pieces(chemistry: str, rng: np.random.Generator) -> list[list[int]]:
    """Replicate counts per calendered piece, per sheet, summing exactly to the paper's row count."""
    plan = DESIGN_PLANS[chemistry]
    rows = DATASETS[chemistry].paper_rows
    lo, hi = plan.replicates
    weights = np.asarray(plan.pieces_weights) / sum(plan.pieces_weights)
    counts = rng.choice(np.arange(1, len(weights) + 1), size=plan.sheets, p=weights)
    # Adjust piece counts until the rows fit between lo and hi discs per piece.
    while counts.sum() * lo > rows:
        candidates = np.flatnonzero(counts > 1)
        counts[int(rng.choice(candidates))] -= 1
    while counts.sum() * hi < rows:
        candidates = np.flatnonzero(counts < len(weights))
        counts[int(rng.choice(candidates))] += 1
    replicates = [np.full(int(k), lo) for k in counts]
    flat_sizes = np.concatenate(replicates)
    extra = rows - int(flat_sizes.sum())
    open_slots = np.repeat(np.arange(flat_sizes.size), hi - lo)
    chosen = rng.choice(open_slots, size=extra, replace=False)
    np.add.at(flat_sizes, chosen, 1)
    out, start = [], 0
    for k in counts:
        out.append([int(v) for v in flat_sizes[start:start + int(k)]])
        start += int(k)
    return out


def sheet_effects(chemistry: str, sheets: int, rng: np.random.Generator) -> SheetEffects:
    s = SCATTER[chemistry]
    draws = rng.standard_normal((6, sheets))
    # Campaign drift: a stationary AR(1) over the coating order, so neighbouring sheets share most of it.
    drift = np.empty(sheets)
    rho = s.coater_drift_correlation
    drift[0] = s.coater_drift_log_sd * draws[4, 0]
    for k in range(1, sheets):
        drift[k] = rho * drift[k - 1] + s.coater_drift_log_sd * math.sqrt(1.0 - rho * rho) * draws[4, k]
    return SheetEffects(
        solids_offset=s.batch_solids_sd_pct / 100.0 * draws[0],
        viscosity_factor=np.exp(s.batch_viscosity_log_sd * draws[1]),
        dry_porosity_offset=s.batch_dry_porosity_sd * draws[2],
        gap_offset_um=s.coater_gap_offset_sd_um * draws[3],
        transfer_factor=np.exp(s.coater_run_log_sd * draws[5] + drift),
        spring_back_factor=np.exp(s.sheet_spring_back_log_sd * rng.standard_normal(sheets)),
    )


@dataclass(frozen=True)
class Campaign:
    """A generated lab campaign: the CSV's feature rows, each row's sheet index and the sheets' random effects."""

    features: pd.DataFrame  # FEATURES columns, rounded as written
    sheet: np.ndarray  # sheet index per row
    effects: SheetEffects  # one entry per sheet


def design_campaign(chemistry: str, design_rng: np.random.Generator, effects_rng: np.random.Generator) -> Campaign:
    """Sheets, their random effects and the calendered pieces with their replicate discs.

    Roll gaps are chosen per piece between the deepest squeeze the lab asks of the coating and a cap tied to the
    sheet's *measured* coated-foil thickness (no lab calenders far above the coating), aimed at the paper's mean roll
    gap; the pieces of one sheet get different gaps and roll speeds. Every feature's paper range ends occur exactly.
    """
    _require_chemistry(chemistry)
    spec = DATASETS[chemistry]
    plan = DESIGN_PLANS[chemistry]
    sheets = _sheet_plan(chemistry, design_rng)
    pieces = _pieces(chemistry, design_rng)
    effects = sheet_effects(chemistry, len(sheets), effects_rng)

    gap_low, gap_high = spec.ranges["roll_gap_um"]
    speed_low, speed_high = spec.ranges["roll_speed_m_min"]
    probe = sheets.assign(roll_speed_m_min=speed_low, roll_gap_um=gap_high + 1000.0)
    coated_foil = process_terms(probe, chemistry, effects)["coated_foil_um"]
    piece_sheet = np.array([k for k, reps in enumerate(pieces) for _ in reps])
    piece_reps = np.array([r for reps in pieces for r in reps])
    caps = np.clip(plan.roll_gap_cap_ratio * coated_foil[piece_sheet], gap_low + 5.0, gap_high)
    # The deepest squeeze the lab asks of a sheet: beyond it the coating only cracks or wrinkles.
    dry = coated_foil[piece_sheet] - CHEMISTRIES[chemistry].foil_thickness_um
    floors = np.clip(coated_foil[piece_sheet] - plan.max_roll_strain * dry, gap_low, caps - 5.0)
    # Position of each gap in its window (deepest squeeze → sheet cap): stratified quantiles of a power law u^(1/a)
    # (Beta(a, 1), mean a/(a+1)), with the mean position aimed at the paper's mean gap for this set of sheets.
    window = caps - floors
    position = float(np.clip((plan.roll_gap_mean_um - floors.mean()) / window.mean(), *plan.roll_gap_position))
    draws = _stratified(design_rng, len(piece_sheet)) ** ((1.0 - position) / position)
    piece_gaps = np.round(floors + window * draws)
    piece_speeds = np.where(design_rng.random(len(piece_sheet)) < plan.fast_roll_probability, speed_high, speed_low)
    # Pieces of one sheet are calendered differently: a repeated (gap, speed) moves to the next free gap.
    for k in range(len(sheets)):
        seen: set[tuple[float, float]] = set()
        for p in np.flatnonzero(piece_sheet == k):
            while (piece_gaps[p], piece_speeds[p]) in seen:
                piece_gaps[p] = piece_gaps[p] - 3.0 if piece_gaps[p] - 3.0 >= gap_low else piece_gaps[p] + 3.0
            seen.add((float(piece_gaps[p]), float(piece_speeds[p])))
    # Exact range ends: the narrowest gap is the calender closed to its limit, the widest is used on the thickest
    # sheet (where it still touches the coating), and both roll speeds occur.
    lowest = int(np.argmin(piece_gaps))
    piece_gaps[lowest] = gap_low
    thickest = np.flatnonzero(piece_sheet == int(np.argmax(coated_foil)))
    widest = int(thickest[np.argmax(piece_gaps[thickest])])
    if widest == lowest:
        widest = int(np.argmax(np.where(np.arange(len(piece_gaps)) == lowest, -np.inf, piece_gaps)))
    piece_gaps[widest] = gap_high
    if not (piece_speeds == speed_low).any():
        piece_speeds[int(design_rng.integers(len(piece_speeds)))] = speed_low
    if not (piece_speeds == speed_high).any():
        piece_speeds[int(design_rng.integers(len(piece_speeds)))] = speed_high

    row_piece = np.repeat(np.arange(len(piece_sheet)), piece_reps)
    row_sheet = piece_sheet[row_piece]
    frame = sheets.iloc[row_sheet].reset_index(drop=True)
    frame["roll_speed_m_min"] = piece_speeds[row_piece]
    frame["roll_gap_um"] = piece_gaps[row_piece]
    frame = frame[list(FEATURES)]
    for column, decimals in FEATURE_DECIMALS.items():
        frame[column] = frame[column].astype(float).round(decimals)
    return Campaign(features=frame, sheet=row_sheet, effects=effects)


def design_of_experiments(chemistry: str, rng: np.random.Generator) -> pd.DataFrame:
    """The feature rows of a campaign (rounded as written to CSV), with the paper's row count."""
    return design_campaign(chemistry, rng, np.random.default_rng(rng.integers(2**63))).features


def _dataset_rng(chemistry: str, seed: int) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    # Separate streams for the design, the sheets' random effects and the disc measurements, so a change to one
    # part of the scatter model leaves the others untouched.
    index = list(CHEMISTRIES).index(chemistry)
    design, effects, measurement = np.random.SeedSequence([seed, index]).spawn(3)
    return np.random.default_rng(design), np.random.default_rng(effects), np.random.default_rng(measurement)


def group_label(chemistry: str, sheet: int) -> str:
    return f"{chemistry}-sheet{sheet + 1:03d}"


def measure_discs(terms: dict[str, np.ndarray], scatter: ScatterConstants, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(density, mass loading) as a lab reads them off one punched disc per row of `terms` (`process_terms`),
    before gross errors: the disc's own areal mass (punch scatter) at the sheet's calendered porosity, a gauged
    thickness, the density scatter, and a re-measurement of any reading the recipe's solids cannot reach."""
    rows = len(terms["am_loading_mg_cm2"])
    punch = np.exp(scatter.punch_loading_log_sd * rng.standard_normal(rows))
    loading = terms["am_loading_mg_cm2"] * punch
    thickness = terms["thickness_um"] * punch
    gauged = thickness + scatter.thickness_gauge_sd_um * rng.standard_normal(rows)
    density = terms["density_g_cm3"] * thickness / gauged * np.exp(scatter.density_rel_sd * rng.standard_normal(rows))
    # A reading above what the recipe's solids allow at their minimum porosity is physically impossible; a lab
    # re-measures such a disc (thin coatings, where 1 µm of gauge error is several percent, are where it happens).
    cap = terms["solid_density"] * (1.0 - terms["min_porosity"])
    for _ in range(MAX_REMEASUREMENTS):
        impossible = np.flatnonzero(density > cap)
        if impossible.size == 0:
            break
        regauged = thickness[impossible] + scatter.thickness_gauge_sd_um * rng.standard_normal(impossible.size)
        density[impossible] = (terms["density_g_cm3"][impossible] * thickness[impossible] / regauged
                               * np.exp(scatter.density_rel_sd * rng.standard_normal(impossible.size)))
    return np.minimum(density, cap), loading


def generate_electrode(chemistry: str, seed: int) -> pd.DataFrame:
    """A complete dataset in CSV column order: ids, the six features and the measured targets.

    The same (chemistry, seed) always gives the same frame; sub-seeds derive from (seed, chemistry index).
    """
    _require_chemistry(chemistry)
    scatter = SCATTER[chemistry]
    design_rng, effects_rng, measure_rng = _dataset_rng(chemistry, seed)
    campaign = design_campaign(chemistry, design_rng, effects_rng)
    frame = campaign.features.copy()
    terms = process_terms(frame, chemistry, campaign.effects.take(campaign.sheet))
    rows = len(frame)
    density, loading = measure_discs(terms, scatter, measure_rng)

    outliers = max(1, round(scatter.outlier_fraction * rows))
    low, high = scatter.outlier_rel_error
    for values, downward_only in ((density, True), (loading, False)):
        chosen = measure_rng.choice(rows, size=outliers, replace=False)
        signs = np.where(measure_rng.random(outliers) < 0.5, -1.0, 1.0)
        if downward_only:
            signs = -np.ones(outliers)
        values[chosen] *= 1.0 + signs * measure_rng.uniform(low, high, size=outliers)

    frame[DENSITY.column] = np.round(density, TARGET_DECIMALS)
    frame[MASS_LOADING.column] = np.round(loading, TARGET_DECIMALS)
    frame.insert(0, GROUP_ID, [group_label(chemistry, int(k)) for k in campaign.sheet])
    frame.insert(0, SAMPLE_ID, [f"{chemistry}-{i:04d}" for i in range(1, rows + 1)])
    return frame[list(COLUMNS)]
