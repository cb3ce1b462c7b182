"""Domain definitions: the one source of truth for features, targets, datasets and tasks.

Every stage (training, registry, service) reads column names, units, physical bounds and the paper's ranges from
here. Nothing in this module imports TensorFlow or touches the file system.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Literal, cast

Kind = Literal["electrode", "gdl"]


@dataclass(frozen=True)
class Quantity:
    """A measured column: its CSV name, unit, the physically possible closed interval and, for a feature, the
    fixed standardisation every net applies to it: z = (value - scale_centre) / scale_width.

    The scale comes from the process window a lab works in, not from a dataset's statistics: a feature a source
    dataset holds constant (coating speed 0.3 m/min in graphite) would otherwise get a near-zero "std" and enter a
    net at |z| of hundreds on a target that varies it.
    """

    column: str
    unit: str
    description: str
    physical_min: float
    physical_max: float
    scale_centre: float = 0.0
    scale_width: float = 1.0

    def __post_init__(self) -> None:
        if not self.scale_width > 0:
            raise ValueError(f"{self.column}: scale_width must be positive, got {self.scale_width}")

    def physical_range_text(self) -> str:
        return f"[{self.physical_min:g}, {self.physical_max:g}] {self.unit}"

    def problem(self, value: object) -> str | None:
        """The one rule for a value of this quantity, wherever it arrives (JSON, CSV, a dataset file): a finite
        number (not a bool) inside [physical_min, physical_max]. None when it holds, else the one message naming
        the field, the value as sent, the unit and the allowed range; callers put where (row, line) in front."""
        allowed = f"allowed: a number in {self.physical_range_text()}"
        if isinstance(value, str) and not value.strip():  # a blank cell
            return f"{self.column} is empty; {allowed}"
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return f"{self.column} = {_quoted(value)} is not a number; {allowed}"
        if not isinstance(value, int) and not math.isfinite(value):  # an int is finite (and may not fit a float)
            return f"{self.column} = {float(value)!r} is not finite; {allowed}"
        number = cast(float, value)  # any real (int, float, a numpy scalar); typing's float covers int
        if not self.physical_min <= number <= self.physical_max:
            unit = "" if self.unit == "1" else f" {self.unit}"
            return f"{self.column} = {_number_text(number)}{unit} is physically impossible; {allowed}"
        return None

    def outside(self, values: Any) -> Any:
        """The same bound test on a whole numpy column at once (True where `problem` is not None): NaN and ±inf
        fail both comparisons, so they are outside too. No numpy import: the serving entry point stays light."""
        return ~((values >= self.physical_min) & (values <= self.physical_max))


def _number_text(value: float) -> str:
    """A number as the float it is read as, in the shortest text that reads back to it (150 and "150" alike give
    150.0, whichever way they arrived); an int too large for a float as it is."""
    text = repr(value) if isinstance(value, int) and abs(value) >= 2**53 else repr(float(value))
    return text if len(text) <= 40 else text[:37] + "..."


def _quoted(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# Physical bounds say what is impossible (a negative gap, a percentage over 100), not what is unusual: values
# inside them but outside a dataset's range are accepted and reported as out of domain.
# Scales (centre, width): the typical lab process window of each quantity, so z stays within about ±1 on every
# dataset of either kind; one definition for all nets and all datasets, recorded in each model's contract.
ELECTRODE_FEATURES: tuple[Quantity, ...] = (
    # a mass fraction: the whole 0–100 wt% span (Si share 8–15 and active material 85–97.5 share one axis)
    Quantity("am_wt_pct", "wt%", "active material mass fraction of the dry electrode "
             "(for si_gra: the Si share of the composite)", 0.0, 100.0, 50.0, 50.0),
    # slurries are coatable from ~20 % (aqueous anodes) to ~70 % solids (NMP cathodes)
    Quantity("solid_content_pct", "%", "solid content of the slurry by mass", 0.0, 100.0, 45.0, 25.0),
    # lab comma coaters run at ~0.1–2 m/min
    Quantity("coating_speed_m_min", "m/min", "comma-coater web speed", 0.0, 100.0, 1.0, 1.0),
    # comma gaps of 0–500 µm give wet films for 1–10 mAh/cm² electrodes
    Quantity("comma_gap_um", "µm", "comma-bar gap of the coater", 0.0, 5000.0, 250.0, 250.0),
    # lab calenders: 0–1 m/min
    Quantity("roll_speed_m_min", "m/min", "calender roll speed", 0.0, 100.0, 0.5, 0.5),
    # calender gaps from touching rolls to ~250 µm (thicker than any dry coating here)
    Quantity("roll_gap_um", "µm", "initial gap between the calender rolls", 0.0, 5000.0, 125.0, 125.0),
)
GDL_FEATURES: tuple[Quantity, ...] = (
    # PAN/pitch carbon fibers of commercial GDLs: ~5–15 µm
    Quantity("fiber_diameter_um", "µm", "carbon fiber diameter", 0.0, 100.0, 10.0, 5.0),
    # fiber volume fractions of carbon papers: ~10–30 %
    Quantity("fiber_concentration_pct", "vol%", "fiber volume fraction", 0.0, 100.0, 20.0, 10.0),
    # PTFE loadings: ~0–20 vol%
    Quantity("binder_concentration_pct", "vol%", "binder (PTFE) volume fraction", 0.0, 100.0, 10.0, 10.0),
    # GDL substrates: ~200–400 µm
    Quantity("thickness_um", "µm", "uncompressed layer thickness", 0.0, 5000.0, 300.0, 100.0),
    # assembly compression: 0–50 % of the thickness
    Quantity("compression_factor", "1", "fraction of compression along z", 0.0, 0.95, 0.25, 0.25),
)


@dataclass(frozen=True)
class Target:
    """A predicted property: the task name used in model names and the CSV column that holds it."""

    task: str
    quantity: Quantity

    @property
    def column(self) -> str:
        return self.quantity.column

    @property
    def unit(self) -> str:
        return self.quantity.unit


DENSITY = Target("density", Quantity("density_g_cm3", "g/cm³", "calendered electrode density", 0.0, 25.0))
MASS_LOADING = Target("mass_loading", Quantity("mass_loading_mg_cm2", "mg/cm²", "active-material mass loading",
                                               0.0, 500.0))
TORTUOSITY = Target("tortuosity", Quantity("tortuosity", "1", "geometric tortuosity through the plane", 1.0, 10.0))

TARGETS: dict[str, Target] = {t.task: t for t in (DENSITY, MASS_LOADING, TORTUOSITY)}

# Identifier columns of a dataset CSV. Rows that share a group (replicates of one coated sheet, one recipe, one
# structure) are not independent: evaluation keeps a group on one side of every split. Kept as text, never a feature.
SAMPLE_ID = "sample_id"
GROUP_ID = "group_id"


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset of the paper: its kind, role, paper row count and per-feature range (min, max)."""

    name: str
    kind: Kind
    role: Literal["source", "target"]
    paper_rows: int
    ranges: dict[str, tuple[float, float]]
    description: str

    @property
    def features(self) -> tuple[Quantity, ...]:
        return features_for(self.kind)

    @property
    def targets(self) -> tuple[Target, ...]:
        return targets_for(self.kind)


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("graphite", "electrode", "source", 235, {
            "am_wt_pct": (91.0, 95.5), "solid_content_pct": (22.0, 42.0), "coating_speed_m_min": (0.3, 0.3),
            "comma_gap_um": (100.0, 300.0), "roll_speed_m_min": (0.27, 0.54), "roll_gap_um": (1.0, 135.0),
        }, "Graphite anodes (water, Na-CMC, carbon black, Cu foil)"),
        DatasetSpec("si_gra", "electrode", "target", 53, {
            "am_wt_pct": (8.0, 15.0), "solid_content_pct": (24.0, 32.0), "coating_speed_m_min": (0.3, 0.3),
            "comma_gap_um": (100.0, 300.0), "roll_speed_m_min": (0.27, 0.54), "roll_gap_um": (15.0, 102.0),
        }, "Si-graphite anodes; am_wt_pct is the Si share, total active material fixed at 91 wt%"),
        DatasetSpec("nmc", "electrode", "target", 63, {
            "am_wt_pct": (85.0, 97.5), "solid_content_pct": (42.0, 66.0), "coating_speed_m_min": (0.2, 1.0),
            "comma_gap_um": (50.0, 400.0), "roll_speed_m_min": (0.27, 0.54), "roll_gap_um": (20.0, 206.0),
        }, "NMC111 cathodes (NMP, PVDF, carbon black, Al foil)"),
        DatasetSpec("gdl200", "gdl", "source", 240, {
            "fiber_diameter_um": (6.0, 12.0), "fiber_concentration_pct": (10.0, 25.0),
            "binder_concentration_pct": (5.0, 10.0), "thickness_um": (280.0, 320.0),
            "compression_factor": (0.0, 0.5),
        }, "Stochastic GDL microstructures on a thin slab domain (2000 x 200 µm in the paper)"),
        DatasetSpec("gdl1000", "gdl", "target", 78, {
            "fiber_diameter_um": (6.0, 12.0), "fiber_concentration_pct": (10.0, 25.0),
            "binder_concentration_pct": (5.0, 10.0), "thickness_um": (280.0, 320.0),
            "compression_factor": (0.0, 0.5),
        }, "Stochastic GDL microstructures on a square domain (1000 x 1000 µm in the paper)"),
    )
}


@dataclass(frozen=True)
class Task:
    """One predicted property on one dataset; `source` is the dataset a transfer model is pretrained on."""

    target: Target
    dataset: str
    source: str | None  # None: this is a pretrained (source) model

    @property
    def model_name(self) -> str:
        return model_name(self.target.task, self.dataset)

    @property
    def role(self) -> Literal["pretrained", "transfer"]:
        return "pretrained" if self.source is None else "transfer"


def model_name(task: str, dataset: str) -> str:
    """Registered model name, e.g. `density_si_gra`."""
    return f"{task}_{dataset}"


# The paper's eight nets: three pretrained on the source sets, five transferred to the small target sets.
TASKS: tuple[Task, ...] = (
    Task(DENSITY, "graphite", None),
    Task(MASS_LOADING, "graphite", None),
    Task(TORTUOSITY, "gdl200", None),
    Task(DENSITY, "si_gra", "graphite"),
    Task(DENSITY, "nmc", "graphite"),
    Task(MASS_LOADING, "si_gra", "graphite"),
    Task(MASS_LOADING, "nmc", "graphite"),
    Task(TORTUOSITY, "gdl1000", "gdl200"),
)
MODEL_NAMES: tuple[str, ...] = tuple(t.model_name for t in TASKS)


def features_for(kind: Kind) -> tuple[Quantity, ...]:
    return ELECTRODE_FEATURES if kind == "electrode" else GDL_FEATURES


def targets_for(kind: Kind) -> tuple[Target, ...]:
    return (DENSITY, MASS_LOADING) if kind == "electrode" else (TORTUOSITY,)


def feature_columns(kind: Kind) -> list[str]:
    return [q.column for q in features_for(kind)]


def feature_scaling(kind: Kind) -> tuple[list[float], list[float]]:
    """The fixed (centres, widths) of a kind's features, in input order."""
    features = features_for(kind)
    return [q.scale_centre for q in features], [q.scale_width for q in features]


def all_quantities(kind: Kind) -> dict[str, Quantity]:
    """Every column of a kind (features then targets) by CSV name."""
    quantities = {q.column: q for q in features_for(kind)}
    quantities.update({t.column: t.quantity for t in targets_for(kind)})
    return quantities


def kind_of_columns(columns: list[str]) -> Kind:
    """Guess a CSV's kind from its header: the kind whose feature columns overlap most."""
    present = set(columns)
    electrode = len(present & set(feature_columns("electrode")))
    gdl = len(present & set(feature_columns("gdl")))
    return "electrode" if electrode >= gdl else "gdl"
