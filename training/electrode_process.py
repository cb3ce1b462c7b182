"""Synthetic lithium-ion electrode datasets from a documented process model (slurry → coating → drying → calendering).

The paper's electrode data (ARTISTIC project) are "available on request", so the shipped `graphite`, `si_gra` and
`nmc` sets are generated here: a lab-like design of experiments over the paper's feature ranges, targets from a
small physical process model, then measurement noise and a few gross errors. All chemistries share the same laws;
what differs is the constants (materials, slurry rheology, dry porosity, compressibility, spring-back), so the
graphite source set is informative for the targets without being the same physics with new numbers.

Model, per electrode (symbols as in `data_card_section`):

1. Dry composition: active material (AM) fraction from `am_wt_pct` (for Si-Gra: AM fixed at 91 wt%, `am_wt_pct` is
   the Si share of the Si/graphite active composite); the rest split between binder and carbon black by a fixed
   per-chemistry binder share.
2. Solid and slurry densities by the rule of mixtures on specific volumes (mass fractions / material densities).
3. Wet film = wet-film factor × comma gap (factor falls with coating speed); dry mass loading = wet film × slurry
   density × solid fraction; AM mass loading = dry loading × AM fraction. Calendering cannot change it.
4. Dry porosity from the solid content; dry thickness from mass, solid density and porosity.
5. Calendering: the rolls squeeze the coating by how much the gap is below the coated foil (smoothed), the nip
   porosity relaxes exponentially toward a minimum porosity (saturation), a weak roll-speed term, then elastic
   spring-back recovers part of the thickness reduction: the final thickness is never the roll gap.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

import numpy as np
import pandas as pd

from cellmfg.___domain import DATASETS, DENSITY, MASS_LOADING, feature_columns

SAMPLE_ID = "sample_id"
FEATURES: tuple[str, ...] = tuple(feature_columns("electrode"))
TARGET_COLUMNS: tuple[str, ...] = (DENSITY.column, MASS_LOADING.column)
COLUMNS: tuple[str, ...] = (SAMPLE_ID, *FEATURES, *TARGET_COLUMNS)

# Decimals written to the CSV. Features are rounded before the targets are computed, so `process_model` on a shipped
# frame reproduces its noise-free targets exactly.
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
_MATERIAL_SOURCES: dict[str, str] = {
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
             "Si-Gra 3:2 because Si anodes use more binder to hold the volume change (assumption)", "b"))
    foil_thickness_um: float = field(metadata=_constant("µm", "paper: Cu 16 µm (anodes), Al 22 µm (NMC)", "t_foil"))
    wet_film_factor_ref: float = field(metadata=_constant(
        "1", "typical value: comma-coated wet film is ≈ 0.6–0.95 of the gap, set per slurry rheology; Si-Gra "
             "lower than graphite (more CMC, more viscous), NMC at its slowest web (assumption, tuned so loadings "
             "fall in typical lab ranges)", "f_ref"))
    wet_film_speed_slope: float = field(metadata=_constant(
        "1/(m/min)", "typical value: faster web → more film split and less transfer (assumption)", "k_f"))
    wet_film_ref_speed_m_min: float = field(metadata=_constant(
        "m/min", "lowest coating speed of the paper's range for the chemistry", "v_ref"))
    dry_porosity_ref: float = field(metadata=_constant(
        "1", "typical value: dried, uncalendered electrodes 0.45–0.6 porosity (assumption within that band)",
        "ε0_ref"))
    dry_porosity_solids_slope: float = field(metadata=_constant(
        "1", "typical value: denser-packing films from more concentrated slurries (assumption)", "k_ε"))
    solids_ref: float = field(metadata=_constant("1", "middle of the paper's solid-content range", "s_ref"))
    min_porosity: float = field(metadata=_constant(
        "1", "typical value: heavily calendered graphite ≈ 0.25–0.3, NMC ≈ 0.2–0.25; Si-containing anodes compact "
             "less (assumption)", "ε_min"))
    min_porosity_si_slope: float = field(metadata=_constant(
        "1 per unit Si share", "typical value: hard Si particles resist compaction (assumption; 0 without Si)",
        "k_si,ε"))
    compaction_strain_scale: float = field(metadata=_constant(
        "1", "typical value: exponential porosity–compaction law in the form of Meyer et al., J. Mater. Process. "
             "Technol. 249 (2017) 172, with nominal strain instead of line load (scale is an assumption)", "δ_c"))
    spring_back: float = field(metadata=_constant(
        "1", "typical value: elastic recovery after the nip, a few to ~15% of the thickness reduction, larger for "
             "graphite than NMC (assumption)", "r_sb"))
    spring_back_si_slope: float = field(metadata=_constant(
        "1 per unit Si share", "typical value: Si raises elastic recovery (assumption; 0 without Si)", "k_si,sb"))
    roll_speed_ref_m_min: float = field(metadata=_constant("m/min", "paper: slower of the two roll speeds", "u_ref"))
    roll_speed_exponent: float = field(metadata=_constant(
        "1", "typical value: shorter dwell time at higher roll speed compacts slightly less; reported as a weak "
             "effect (paper SHAP: ~no influence) (assumption)", "β"))
    contact_width_um: float = field(metadata=_constant(
        "µm", "smoothing width of the onset of roll contact (surface roughness scale; assumption)", "w"))
    density_rel_noise: float = field(metadata=_constant(
        "1", "typical value: relative measurement noise of mass/area/thickness (assumption)", "σ_ρ"))
    thickness_noise_um: float = field(metadata=_constant(
        "µm", "typical value: micrometer-gauge repeatability, matters for thin coatings (assumption)", "σ_t"))
    loading_rel_noise: float = field(metadata=_constant(
        "1", "typical value: punched-disc-to-disc loading scatter along a sheet (assumption)", "σ_m"))
    sheet_loading_noise: float = field(metadata=_constant(
        "1", "typical value: coat-to-coat scatter of the same recipe and settings (assumption)", "σ_sheet"))
    outlier_fraction: float = field(metadata=_constant(
        "1", "typical value: gross errors (mislabelled disc, torn foil) in 1–2% of rows (assumption)", "p_out"))
    outlier_rel_error: tuple[float, float] = field(metadata=_constant(
        "1", "typical value: size of a gross error, uniform in this band, either sign (assumption)", "e_out"))


CHEMISTRIES: dict[str, ChemistryConstants] = {
    "graphite": ChemistryConstants(
        name="graphite", active_materials=("graphite",), am_feature="am_fraction", fixed_am_wt_pct=None,
        binder="na_cmc", solvent="water", binder_share_of_additives=0.5, foil_thickness_um=16.0,
        wet_film_factor_ref=0.92, wet_film_speed_slope=0.20, wet_film_ref_speed_m_min=0.3,
        dry_porosity_ref=0.49, dry_porosity_solids_slope=0.25, solids_ref=0.32,
        min_porosity=0.26, min_porosity_si_slope=0.0, compaction_strain_scale=0.35,
        spring_back=0.10, spring_back_si_slope=0.0, roll_speed_ref_m_min=0.27, roll_speed_exponent=0.06,
        contact_width_um=3.0, density_rel_noise=0.02, thickness_noise_um=0.5, loading_rel_noise=0.015,
        sheet_loading_noise=0.015, outlier_fraction=0.015, outlier_rel_error=(0.12, 0.25),
    ),
    "si_gra": ChemistryConstants(
        name="si_gra", active_materials=("silicon", "graphite"), am_feature="si_share", fixed_am_wt_pct=91.0,
        binder="na_cmc", solvent="water", binder_share_of_additives=0.6, foil_thickness_um=16.0,
        wet_film_factor_ref=0.88, wet_film_speed_slope=0.20, wet_film_ref_speed_m_min=0.3,
        dry_porosity_ref=0.48, dry_porosity_solids_slope=0.30, solids_ref=0.28,
        min_porosity=0.26, min_porosity_si_slope=0.30, compaction_strain_scale=0.40,
        spring_back=0.12, spring_back_si_slope=0.40, roll_speed_ref_m_min=0.27, roll_speed_exponent=0.06,
        contact_width_um=3.0, density_rel_noise=0.025, thickness_noise_um=0.5, loading_rel_noise=0.02,
        sheet_loading_noise=0.015, outlier_fraction=0.015, outlier_rel_error=(0.12, 0.25),
    ),
    "nmc": ChemistryConstants(
        name="nmc", active_materials=("nmc111",), am_feature="am_fraction", fixed_am_wt_pct=None,
        binder="pvdf", solvent="nmp", binder_share_of_additives=0.5, foil_thickness_um=22.0,
        wet_film_factor_ref=0.90, wet_film_speed_slope=0.28, wet_film_ref_speed_m_min=0.2,
        dry_porosity_ref=0.46, dry_porosity_solids_slope=0.20, solids_ref=0.54,
        min_porosity=0.21, min_porosity_si_slope=0.0, compaction_strain_scale=0.20,
        spring_back=0.05, spring_back_si_slope=0.0, roll_speed_ref_m_min=0.27, roll_speed_exponent=0.04,
        contact_width_um=3.0, density_rel_noise=0.02, thickness_noise_um=0.5, loading_rel_noise=0.015,
        sheet_loading_noise=0.02, outlier_fraction=0.015, outlier_rel_error=(0.12, 0.25),
    ),
}

# Bounds of the wet-film factor whatever the speed: a comma coater neither transfers more than ~95% of the gap nor,
# in the paper's speed window, less than ~60% (assumption).
WET_FILM_FACTOR_BOUNDS: tuple[float, float] = (0.60, 0.95)
CARBON_BLACK = "carbon_black"

SOURCES: dict[str, str] = {
    **{f"density:{name}": text for name, text in _MATERIAL_SOURCES.items()},
    **{f.name: str(f.metadata["source"]) for f in fields(ChemistryConstants)},
    "wet_film_factor_bounds": "typical value: a comma coater transfers ~60–95% of the gap (assumption)",
}


@dataclass(frozen=True)
class _DesignPlan:
    """How the simulated lab chose its runs: design choices, not physics (documented in the data card)."""

    formulations: tuple[int, int]  # inclusive range of the number of recipes (AM wt%, solid content)
    am_step: float  # recipes are weighed in round steps of AM wt%
    solids_step: float
    solids_beta: tuple[float, float]  # where the lab's interior recipes sit in the solid-content range
    comma_gap_levels_um: tuple[float, ...]
    coating_speed_levels_m_min: tuple[float, ...]
    pieces_per_sheet: tuple[int, int]  # calendered pieces cut from one coated sheet, inclusive range
    replicate_weights: tuple[float, ...]  # probability of 1, 2, 3, ... discs measured per calendered piece
    fast_roll_probability: float  # share of pieces calendered at 0.54 rather than 0.27 m/min
    roll_gap_mean_um: float  # the paper's reported mean roll gap, which the gap choice is aimed at
    roll_gap_position: tuple[float, float]  # allowed mean position of a gap inside its window (min → cap), 0–1
    roll_gap_cap_ratio: float  # widest gap the lab uses, relative to the coated foil's thickness


_DESIGN_PLANS: dict[str, _DesignPlan] = {
    "graphite": _DesignPlan(
        formulations=(6, 8), am_step=0.5, solids_step=1.0, solids_beta=(3.0, 1.0),
        comma_gap_levels_um=(100.0, 150.0, 200.0, 220.0, 250.0, 280.0, 300.0), coating_speed_levels_m_min=(0.3,),
        pieces_per_sheet=(2, 5), replicate_weights=(0.35, 0.4, 0.25), fast_roll_probability=0.35,
        roll_gap_mean_um=70.0, roll_gap_position=(0.4, 0.85), roll_gap_cap_ratio=1.05,
    ),
    "si_gra": _DesignPlan(
        formulations=(4, 5), am_step=1.0, solids_step=1.0, solids_beta=(2.0, 1.0),
        comma_gap_levels_um=(100.0, 150.0, 200.0, 250.0, 300.0), coating_speed_levels_m_min=(0.3,),
        pieces_per_sheet=(2, 4), replicate_weights=(0.4, 0.4, 0.2), fast_roll_probability=0.4,
        roll_gap_mean_um=58.0, roll_gap_position=(0.4, 0.85), roll_gap_cap_ratio=1.05,
    ),
    "nmc": _DesignPlan(
        formulations=(5, 6), am_step=0.5, solids_step=1.0, solids_beta=(1.0, 1.0),
        comma_gap_levels_um=(50.0, 75.0, 100.0, 150.0, 200.0, 250.0, 300.0, 400.0),
        coating_speed_levels_m_min=(0.2, 0.3, 0.5, 0.7, 1.0),
        pieces_per_sheet=(2, 4), replicate_weights=(0.4, 0.4, 0.2), fast_roll_probability=0.4,
        roll_gap_mean_um=62.0, roll_gap_position=(0.4, 0.85), roll_gap_cap_ratio=0.85,
    ),
}

_EQUATIONS = """\
- Dry mass fractions: w_AM = am_wt_pct/100 (Si-Gra: w_AM = 0.91, Si share x_Si = am_wt_pct/100 of the AM);
  binder w_b = b·(1 − w_AM), carbon black w_cb = (1 − b)·(1 − w_AM).
- Solid density ρ_s = 1 / Σ_i (w_i / ρ_i); slurry density ρ_sl = 1 / (s/ρ_s + (1 − s)/ρ_solvent), s = solid
  content / 100.
- Wet-film factor f = clip(f_ref − k_f·(v − v_ref), 0.60, 0.95); wet film h_wet = f · comma gap [µm].
- Dry loading m_dry = 0.1 · h_wet · ρ_sl · s [mg/cm²]; **AM mass loading** m_AM = w_AM · m_dry (independent of
  calendering).
- Dry porosity ε0 = ε0_ref + k_ε·(s_ref − s); dry thickness t0 = 10 · m_dry / (ρ_s · (1 − ε0)) [µm].
- Squeeze Δ = w · ln(1 + exp((t0 + t_foil − roll gap)/w)) [µm]; nominal strain δ = (Δ / t0) · (u_ref/u)^β, u the roll
  speed.
- Nip porosity ε_nip = ε_min' + (ε0 − ε_min')·exp(−δ/δ_c), ε_min' = ε_min + k_si,ε·x_Si (saturates as the gap
  closes).
- Nip thickness t_nip = t0·(1 − ε0)/(1 − ε_nip); spring-back t = t_nip + r_sb'·(t0 − t_nip), r_sb' = r_sb +
  k_si,sb·x_Si.
- **Density** ρ = ρ_s · (1 − ε0) · t0 / t [g/cm³] (coating only, foil excluded, as in the paper).
- Noise: ρ_obs = ρ·exp(z·√(σ_ρ² + (σ_t/t)²)); m_obs = m_AM·exp(z_sheet·σ_sheet + z·σ_m); in a fraction p_out of
  rows per target the value is multiplied by 1 ± U(e_out); targets rounded to 4 decimals.
"""


def _require_chemistry(chemistry: str) -> ChemistryConstants:
    if chemistry not in CHEMISTRIES:
        raise KeyError(f"unknown chemistry {chemistry!r}; known: {', '.join(CHEMISTRIES)}")
    return CHEMISTRIES[chemistry]


def _feature_array(frame: pd.DataFrame, column: str) -> np.ndarray:
    return np.asarray(frame[column].to_numpy(dtype=float), dtype=float)


def _process_terms(frame: pd.DataFrame, chemistry: str) -> dict[str, np.ndarray]:
    """Every intermediate of the noise-free model, vectorised over rows (µm, g/cm³, mg/cm²)."""
    c = _require_chemistry(chemistry)
    missing = [col for col in FEATURES if col not in frame.columns]
    if missing:
        raise KeyError(f"missing feature column(s) {', '.join(missing)}")
    rho = MATERIAL_DENSITIES_G_CM3
    am_pct = _feature_array(frame, "am_wt_pct")
    solids = _feature_array(frame, "solid_content_pct") / 100.0
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
    w_binder = c.binder_share_of_additives * additives
    w_carbon = additives - w_binder
    solid_density = 1.0 / (am_specific_volume + w_binder / rho[c.binder] + w_carbon / rho[CARBON_BLACK])
    slurry_density = 1.0 / (solids / solid_density + (1.0 - solids) / rho[c.solvent])

    low, high = WET_FILM_FACTOR_BOUNDS
    wet_factor = np.clip(c.wet_film_factor_ref - c.wet_film_speed_slope * (coating_speed - c.wet_film_ref_speed_m_min),
                         low, high)
    wet_film = wet_factor * comma_gap
    # µm × g/cm³ → mg/cm²: 1 µm = 1e-4 cm, 1 g = 1e3 mg.
    dry_loading = 0.1 * wet_film * slurry_density * solids
    am_loading = w_am * dry_loading

    dry_porosity = c.dry_porosity_ref + c.dry_porosity_solids_slope * (c.solids_ref - solids)
    dry_thickness = 10.0 * dry_loading / (solid_density * (1.0 - dry_porosity))
    # The rolls only act once the gap is below the coated foil; the softplus keeps the onset smooth like a rough
    # surface does, and the foil itself is taken as incompressible.
    width = c.contact_width_um
    squeeze = width * np.logaddexp(0.0, (dry_thickness + c.foil_thickness_um - roll_gap) / width)
    safe_speed = np.maximum(roll_speed, 1e-6)
    strain = squeeze / dry_thickness * (c.roll_speed_ref_m_min / safe_speed) ** c.roll_speed_exponent
    min_porosity = c.min_porosity + c.min_porosity_si_slope * si_share
    nip_porosity = min_porosity + (dry_porosity - min_porosity) * np.exp(-strain / c.compaction_strain_scale)
    nip_thickness = dry_thickness * (1.0 - dry_porosity) / (1.0 - nip_porosity)
    spring_back = c.spring_back + c.spring_back_si_slope * si_share
    thickness = nip_thickness + spring_back * (dry_thickness - nip_thickness)
    density = solid_density * (1.0 - dry_porosity) * dry_thickness / thickness
    return {
        "w_am": w_am,
        "solid_density": solid_density,
        "slurry_density": slurry_density,
        "wet_film_factor": wet_factor,
        "wet_film_um": wet_film,
        "dry_loading_mg_cm2": dry_loading,
        "am_loading_mg_cm2": am_loading,
        "dry_porosity": dry_porosity,
        "dry_thickness_um": dry_thickness,
        "coated_foil_um": dry_thickness + c.foil_thickness_um,
        "nip_porosity": nip_porosity,
        "thickness_um": thickness,
        "density_g_cm3": density,
    }


def process_model(frame: pd.DataFrame, chemistry: str) -> pd.DataFrame:
    """Noise-free targets for the feature columns of `frame`.

    Returns a frame with the same index and the columns `density_g_cm3` (calendered coating density, g/cm³) and
    `mass_loading_mg_cm2` (active-material mass loading, mg/cm²). Pure and vectorised; raises KeyError for an
    unknown chemistry or a missing feature column.
    """
    terms = _process_terms(frame, chemistry)
    return pd.DataFrame(
        {DENSITY.column: terms["density_g_cm3"], MASS_LOADING.column: terms["am_loading_mg_cm2"]},
        index=frame.index,
    )


def _round_to(values: np.ndarray, step: float) -> np.ndarray:
    return np.asarray(np.round(values / step) * step, dtype=float)


def _formulations(chemistry: str, plan: _DesignPlan, rng: np.random.Generator) -> list[tuple[float, float]]:
    # Recipes sit at round weights; the first four carry the range ends so the set spans the paper's ranges.
    am_low, am_high = DATASETS[chemistry].ranges["am_wt_pct"]
    s_low, s_high = DATASETS[chemistry].ranges["solid_content_pct"]
    count = int(rng.integers(plan.formulations[0], plan.formulations[1] + 1))

    def am() -> float:
        return float(_round_to(np.array(rng.uniform(am_low, am_high)), plan.am_step))

    def solids() -> float:
        share = rng.beta(plan.solids_beta[0], plan.solids_beta[1])
        return float(_round_to(np.array(s_low + (s_high - s_low) * share), plan.solids_step))

    recipes: list[tuple[float, float]] = []
    for candidate in [(am_low, solids()), (am_high, solids()), (am(), s_low), (am(), s_high)]:
        if candidate not in recipes:
            recipes.append(candidate)
    while len(recipes) < count:
        candidate = (am(), solids())
        if candidate not in recipes:
            recipes.append(candidate)
    return recipes


def design_of_experiments(chemistry: str, rng: np.random.Generator) -> pd.DataFrame:
    """A lab-like run plan with the paper's row count: the feature columns only, rounded as written to CSV.

    A handful of recipes (AM wt%, solid content); each coated as several sheets at a few comma gaps (and speeds,
    for NMC); each sheet cut into pieces calendered at several roll gaps and roll speeds; each piece measured on
    one to three discs (replicates). Roll gaps are chosen below a cap tied to the sheet's thickness (no lab
    calenders far above the coating), aimed at the paper's mean roll gap; so roll gap and coating thickness are
    correlated across sheets but not within a sheet. Every feature's paper range ends occur exactly.
    """
    _require_chemistry(chemistry)
    spec = DATASETS[chemistry]
    plan = _DESIGN_PLANS[chemistry]
    recipes = _formulations(chemistry, plan, rng)
    # Uneven preferences make the marginal distributions lumpy, as in real lab records.
    recipe_weights = rng.dirichlet(np.full(len(recipes), 2.0))
    gap_weights = rng.dirichlet(np.full(len(plan.comma_gap_levels_um), 2.0))
    speed_weights = rng.dirichlet(np.full(len(plan.coating_speed_levels_m_min), 2.0))
    replicate_counts = np.arange(1, len(plan.replicate_weights) + 1)
    replicate_p = np.asarray(plan.replicate_weights) / sum(plan.replicate_weights)

    sheets: list[dict[str, float]] = []
    pieces: list[tuple[int, int]] = []  # (sheet index, replicates)
    rows = 0
    while rows < spec.paper_rows:
        index = len(sheets)
        recipe = index if index < len(recipes) else int(rng.choice(len(recipes), p=recipe_weights))
        sheets.append({
            "am_wt_pct": recipes[recipe][0],
            "solid_content_pct": recipes[recipe][1],
            "coating_speed_m_min": float(rng.choice(plan.coating_speed_levels_m_min, p=speed_weights)),
            "comma_gap_um": float(rng.choice(plan.comma_gap_levels_um, p=gap_weights)),
        })
        for _ in range(int(rng.integers(plan.pieces_per_sheet[0], plan.pieces_per_sheet[1] + 1))):
            if rows >= spec.paper_rows:
                break
            replicates = min(int(rng.choice(replicate_counts, p=replicate_p)), spec.paper_rows - rows)
            pieces.append((index, replicates))
            rows += replicates

    _force_sheet_range_ends(sheets, chemistry, rng)
    sheet_frame = pd.DataFrame(sheets)
    sheet_frame["roll_speed_m_min"] = spec.ranges["roll_speed_m_min"][0]
    sheet_frame["roll_gap_um"] = spec.ranges["roll_gap_um"][1]
    coated_foil = _process_terms(sheet_frame, chemistry)["coated_foil_um"]

    gap_low, gap_high = spec.ranges["roll_gap_um"]
    speed_low, speed_high = spec.ranges["roll_speed_m_min"]
    piece_sheet = np.array([sheet for sheet, _ in pieces])
    caps = np.clip(plan.roll_gap_cap_ratio * coated_foil[piece_sheet], gap_low + 5.0, gap_high)
    # Position of each gap in its window (range minimum → sheet cap): stratified quantiles of a power law u^(1/a)
    # (Beta(a, 1), mean a/(a+1)), with the mean position aimed at the paper's mean gap for this set of sheets, so
    # the mean does not drift with how many thick sheets the recipe draw produced.
    window = caps - gap_low
    position = float(np.clip((plan.roll_gap_mean_um - gap_low) / window.mean(), *plan.roll_gap_position))
    strata = (rng.permutation(len(pieces)) + rng.random(len(pieces))) / len(pieces)
    draws = strata ** ((1.0 - position) / position)
    piece_gaps = np.round(gap_low + window * draws)
    piece_speeds = np.where(rng.random(len(pieces)) < plan.fast_roll_probability, speed_high, speed_low)
    # Exact range ends: the narrowest gap is the calender closed to its limit, the widest is used on the thickest
    # sheet (where it still touches the coating), and both roll speeds occur.
    lowest = int(np.argmin(piece_gaps))
    piece_gaps[lowest] = gap_low
    thickest = np.flatnonzero(piece_sheet == int(np.argmax(coated_foil)))
    widest = int(thickest[np.argmax(piece_gaps[thickest])])
    if widest == lowest:
        widest = int(np.argmax(piece_gaps))
    piece_gaps[widest] = gap_high
    if not (piece_speeds == speed_low).any():
        piece_speeds[int(rng.integers(len(pieces)))] = speed_low
    if not (piece_speeds == speed_high).any():
        piece_speeds[int(rng.integers(len(pieces)))] = speed_high

    records: list[dict[str, float]] = []
    for piece, (sheet, replicates) in enumerate(pieces):
        record = dict(sheets[sheet])
        record["roll_speed_m_min"] = float(piece_speeds[piece])
        record["roll_gap_um"] = float(piece_gaps[piece])
        records.extend(dict(record) for _ in range(replicates))
    frame = pd.DataFrame.from_records(records, columns=list(FEATURES))
    for column, decimals in FEATURE_DECIMALS.items():
        frame[column] = frame[column].astype(float).round(decimals)
    return frame


def _force_sheet_range_ends(sheets: list[dict[str, float]], chemistry: str, rng: np.random.Generator) -> None:
    # The thickest coating (most concentrated recipe, widest comma gap, slowest web) must exist so the widest roll
    # gap still acts on something; the narrowest gap and, for NMC, the fastest web are put on another sheet.
    ranges = DATASETS[chemistry].ranges
    gap_low, gap_high = ranges["comma_gap_um"]
    speed_low, speed_high = ranges["coating_speed_m_min"]
    max_solids = max(sheet["solid_content_pct"] for sheet in sheets)
    thick = next(i for i, sheet in enumerate(sheets) if sheet["solid_content_pct"] == max_solids)
    sheets[thick]["comma_gap_um"] = gap_high
    sheets[thick]["coating_speed_m_min"] = speed_low
    others = [i for i in range(len(sheets)) if i != thick]
    if not any(sheets[i]["comma_gap_um"] == gap_low for i in others):
        sheets[int(rng.choice(others))]["comma_gap_um"] = gap_low
    if not any(sheets[i]["coating_speed_m_min"] == speed_high for i in others):
        sheets[int(rng.choice(others))]["coating_speed_m_min"] = speed_high


def _dataset_rng(chemistry: str, seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    # One stream for the design and one for the noise, so a change to the noise model leaves the design untouched.
    index = list(CHEMISTRIES).index(chemistry)
    design, noise = np.random.SeedSequence([seed, index]).spawn(2)
    return np.random.default_rng(design), np.random.default_rng(noise)


def generate_electrode(chemistry: str, seed: int) -> pd.DataFrame:
    """A complete dataset: `sample_id`, the six features and noisy measured targets, in CSV column order.

    The same (chemistry, seed) always gives the same frame; sub-seeds derive from (seed, chemistry index).
    """
    constants = _require_chemistry(chemistry)
    design_rng, noise_rng = _dataset_rng(chemistry, seed)
    frame = design_of_experiments(chemistry, design_rng)
    terms = _process_terms(frame, chemistry)
    rows = len(frame)

    density_sigma = np.sqrt(constants.density_rel_noise ** 2
                            + (constants.thickness_noise_um / terms["thickness_um"]) ** 2)
    density = terms["density_g_cm3"] * np.exp(density_sigma * noise_rng.standard_normal(rows))
    # Discs punched from one coated sheet share that coat's deviation from nominal.
    sheet = frame.groupby(["am_wt_pct", "solid_content_pct", "coating_speed_m_min", "comma_gap_um"],
                          sort=True).ngroup().to_numpy()
    sheet_effect = constants.sheet_loading_noise * noise_rng.standard_normal(int(sheet.max()) + 1)
    loading = terms["am_loading_mg_cm2"] * np.exp(
        sheet_effect[sheet] + constants.loading_rel_noise * noise_rng.standard_normal(rows))

    outliers = max(1, round(constants.outlier_fraction * rows))
    low, high = constants.outlier_rel_error
    for values in (density, loading):
        chosen = noise_rng.choice(rows, size=outliers, replace=False)
        signs = np.where(noise_rng.random(outliers) < 0.5, -1.0, 1.0)
        values[chosen] *= 1.0 + signs * noise_rng.uniform(low, high, size=outliers)

    frame[DENSITY.column] = np.round(density, TARGET_DECIMALS)
    frame[MASS_LOADING.column] = np.round(loading, TARGET_DECIMALS)
    frame.insert(0, SAMPLE_ID, [f"{chemistry}-{i:04d}" for i in range(1, rows + 1)])
    return frame[list(COLUMNS)]


def _format_value(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, tuple):
        return ", ".join(_format_value(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def data_card_section() -> str:
    """Markdown for the data card: every constant with value, unit and source, the design plan and the equations."""
    lines = [
        "### Electrode process model",
        "",
        "The `graphite`, `si_gra` and `nmc` sets are synthetic: a lab-like design of experiments over the paper's "
        "feature ranges, targets from the process model below, multiplicative measurement noise and a few gross "
        "errors. `mass_loading_mg_cm2` is the active-material loading.",
        "",
        "#### Material densities",
        "",
        "| material | density (g/cm³) | source |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {value:g} | {_MATERIAL_SOURCES[name]} |"
              for name, value in MATERIAL_DENSITIES_G_CM3.items()]
    names = list(CHEMISTRIES)
    lines += [
        "",
        "#### Per-chemistry constants",
        "",
        "| constant | symbol | unit | " + " | ".join(names) + " | source |",
        "|---|---|---|" + "---|" * len(names) + "---|",
    ]
    for f in fields(ChemistryConstants):
        if f.name == "name":
            continue
        values = " | ".join(_format_value(getattr(CHEMISTRIES[n], f.name)) for n in names)
        lines.append(f"| {f.name} | {f.metadata['symbol']} | {f.metadata['unit']} | {values} | "
                     f"{f.metadata['source']} |")
    low, high = WET_FILM_FACTOR_BOUNDS
    lines.append(f"| wet_film_factor_bounds | - | 1 | {low:g}–{high:g} (all) | | | "
                 f"{SOURCES['wet_film_factor_bounds']} |")
    lines += [
        "",
        "#### Design of experiments (our choices, mimicking lab practice)",
        "",
        "| setting | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for f in fields(_DesignPlan):
        values = " | ".join(_format_value(getattr(_DESIGN_PLANS[n], f.name)) for n in names)
        lines.append(f"| {f.name} | {values} |")
    lines += ["", "#### Equations", "", _EQUATIONS]
    return "\n".join(lines)
