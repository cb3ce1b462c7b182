"""Request and response models of the experiment-suggestion endpoints (`POST /suggest/electrode`, `/suggest/gdl`).

A suggestion request names the dataset, a budget k (how many experiments the lab can run next), the parameters it
fixes and optional narrower bounds, as a design request does, and optionally a wanted window per target. What can be
checked without the models is checked here with a 400 naming the field, with the same checks and words as /design
(`service.design.schemas`): an unknown feature, a value outside its physical bounds, a bound upside down, a feature
both fixed and bounded; and for the window: an unknown target, a window upside down or outside the target's physical
range. What depends on the served models (a bound outside their training range, a window no recipe reaches) is
checked by `service.design.suggest`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from bentoml import IODescriptor
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, WithJsonSchema, model_validator
from pydantic_core import InitErrorDetails

from cellmfg.domain import Kind, features_for, targets_for
from service.design.schemas import (
    GDL_DESIGN_EXAMPLE,
    MAX_DESIGN_ENTRIES,
    DesignBound,
    Number,
    ReachableRange,
    SearchSummary,
    capped_problems,
    check_design,
    field_problem,
    oversized_mappings,
    reworded,
)
from service.formats.schemas import DatasetName, ElectrodePrediction, GdlPrediction, IntervalSummary, ModelRef

if TYPE_CHECKING:
    from service.design.suggest import SuggestProblem

DEFAULT_K = 4
MAX_K = 50


class WindowBound(BaseModel):
    """The wanted range of one target: a measurement inside [low, high] meets it."""

    model_config = ConfigDict(extra="forbid")
    low: Number = Field(description="lowest wanted value, in the target's unit")
    high: Number = Field(description="highest wanted value, in the target's unit (more than `low`)")


_K_DESCRIPTION = (f"how many experiments to suggest, diverse rather than near-duplicates (each differs from every "
                  f"other in at least one free continuous parameter by a tenth of its search range); 1 to {MAX_K}")
_WINDOW_DESCRIPTION = ("optional wanted range per target, target column -> {low, high} in its unit: the suggestions "
                       "then maximise the chance that the measurement lands inside (without it: the largest ensemble "
                       "spread, where a measurement teaches the models most)")
_FIXED_DESCRIPTION = ("parameters every suggestion keeps exactly (e.g. the slurry on hand), feature -> value in its "
                      "unit, inside its physical bounds")
_BOUNDS_DESCRIPTION = ("optional narrower search ranges for free parameters, feature -> {min, max}, inside the models' "
                       "training range (the default search range)")


def _check_window(kind: Kind, window: dict[str, WindowBound]) -> list[InitErrorDetails]:
    problems: list[InitErrorDetails] = []
    targets = {t.column: t.quantity for t in targets_for(kind)}
    features = {q.column for q in features_for(kind)}
    for column, bound in window.items():
        q = targets.get(column)
        if q is None:
            what = "a parameter, not a target" if column in features else "unknown target"
            problems.append(field_problem("unknown_target", ("window", column),
                                          f"window.{column}: {what}; allowed targets: {', '.join(targets)}", column))
            continue
        if bound.low >= bound.high:
            problems.append(field_problem("empty_window", ("window", column),
                                     f"window.{column}: low {bound.low:g} is not below high {bound.high:g} "
                                     f"({q.unit}); give the window as low < high", bound.model_dump()))
        for end in ("low", "high"):
            value = getattr(bound, end)
            if not (q.physical_min <= value <= q.physical_max):
                problems.append(field_problem("value_out_of_range", ("window", column, end),
                                         f"window.{column}.{end} = {value:g}: outside the physical range "
                                         f"{q.physical_range_text()}", value))
    return problems


class _SuggestRequest(IODescriptor):
    """Shared fields and checks; the subclasses add the dataset field and say their kind."""

    model_config = ConfigDict(extra="forbid")
    k: int = Field(DEFAULT_K, ge=1, le=MAX_K, strict=True, description=_K_DESCRIPTION)
    fixed: dict[str, Number] = Field(default_factory=dict, max_length=MAX_DESIGN_ENTRIES,
                                     description=_FIXED_DESCRIPTION)
    bounds: dict[str, DesignBound] = Field(default_factory=dict, max_length=MAX_DESIGN_ENTRIES,
                                           description=_BOUNDS_DESCRIPTION)
    window: dict[str, WindowBound] = Field(default_factory=dict, max_length=MAX_DESIGN_ENTRIES,
                                           description=_WINDOW_DESCRIPTION)
    explain: StrictBool = Field(False, description="add the exact SHAP explanation of each suggestion's predictions")
    operator: Annotated[str | None, Field(max_length=200), WithJsonSchema(
        {"type": "string", "maxLength": 200, "nullable": True,
         "description": "who asked (stored with every suggested recipe in the prediction ledger)"})] = None

    @classmethod
    def suggest_kind(cls) -> Kind:
        raise NotImplementedError

    @model_validator(mode="wrap")
    @classmethod
    def _name_the_field(cls, data: Any, handler: Any) -> Any:
        oversized = oversized_mappings(data)
        if isinstance(data, dict) and isinstance(window := data.get("window"), dict) \
                and len(window) > MAX_DESIGN_ENTRIES:
            oversized.append(field_problem("too_long", ("window",), f"window: {len(window)} entries; at most "
                                                               f"{MAX_DESIGN_ENTRIES} (one per target)", None))
        if oversized:
            raise ValidationError.from_exception_data(cls.__name__, oversized)
        try:
            parsed = handler(data)
        except ValidationError as error:
            raise reworded(cls.__name__, error) from None
        kind = cls.suggest_kind()
        problems = check_design(kind, {}, parsed.fixed, parsed.bounds) + _check_window(kind, parsed.window)
        if problems:
            raise ValidationError.from_exception_data(cls.__name__, capped_problems(problems))
        return parsed


ELECTRODE_SUGGEST_EXAMPLE: dict[str, Any] = {
    "chemistry": "nmc",
    "k": 4,
    "fixed": {"am_wt_pct": 94.0},
    "bounds": {},
    "window": {"density_g_cm3": {"low": 2.8, "high": 3.1}},
    "explain": False,
}
GDL_SUGGEST_EXAMPLE: dict[str, Any] = {
    "dataset": "gdl1000",
    "k": 4,
    "fixed": {"fiber_diameter_um": GDL_DESIGN_EXAMPLE["fixed"]["fiber_diameter_um"]},
    "bounds": GDL_DESIGN_EXAMPLE["bounds"],
    "window": {},
    "explain": False,
}


class ElectrodeSuggestRequest(_SuggestRequest):
    """Electrode recipes to measure next: where the models are least sure, or most likely to meet a wanted window."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": ELECTRODE_SUGGEST_EXAMPLE})
    chemistry: DatasetName = Field(description="electrode chemistry whose models choose the experiments")

    @classmethod
    def suggest_kind(cls) -> Kind:
        return "electrode"


class GdlSuggestRequest(_SuggestRequest):
    """GDL structures to measure next."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": GDL_SUGGEST_EXAMPLE})
    dataset: DatasetName = Field(description="GDL domain whose model chooses the experiments")

    @classmethod
    def suggest_kind(cls) -> Kind:
        return "gdl"


# ---------------------------------------------------------------------------------------------------------------
# Responses (documentation of what the endpoints send; the endpoints serialise plain dicts of this shape)


class WantedWindow(BaseModel):
    low: float
    high: float
    unit: str


_SCORE = ("the ranking score: the mean relative ensemble spread (strategy spread) or the chance of landing in the "
          "window (strategy window); null without an ensemble spread")
_WHY = "why this recipe was chosen, in the targets' own terms"
_SPREAD = "target -> the ensemble spread (members' standard deviation) in the target's unit; null for single nets"


class ElectrodeSuggestion(BaseModel):
    rank: int = Field(description="1 = the most worth measuring")
    settings: dict[str, float] = Field(description="the full recipe, one value per parameter")
    score: float | None = Field(description=_SCORE)
    why: str = Field(description=_WHY)
    spread: dict[str, float] | None = Field(description=_SPREAD)
    prediction: ElectrodePrediction = Field(description="exactly what /predict answers for `settings`")


class GdlSuggestion(BaseModel):
    rank: int
    settings: dict[str, float]
    score: float | None = Field(description=_SCORE)
    why: str
    spread: dict[str, float] | None = Field(description=_SPREAD)
    prediction: GdlPrediction


_STRATEGY = ("spread (no window), window (with one), or, for models without an ensemble spread, space_filling / "
             "window_without_spread")
_INTERVALS = "target column -> what its 90 % intervals are worth, from the model's contract (as /predict says)"


class ElectrodeSuggestResponse(IODescriptor):
    models: dict[str, ModelRef] = Field(description="target task -> the model that answered")
    intervals: dict[str, IntervalSummary] | None = Field(None, description=_INTERVALS)
    strategy: str = Field(description=_STRATEGY)
    strategy_reason: str
    window: dict[str, WantedWindow]
    suggestions: list[ElectrodeSuggestion] = Field(description="up to k recipes, most worth measuring first")
    reachable: dict[str, ReachableRange] = Field(description="per windowed target, what the free parameters reach")
    search: SearchSummary


class GdlSuggestResponse(IODescriptor):
    models: dict[str, ModelRef]
    intervals: dict[str, IntervalSummary] | None = Field(None, description=_INTERVALS)
    strategy: str = Field(description=_STRATEGY)
    strategy_reason: str
    window: dict[str, WantedWindow]
    suggestions: list[GdlSuggestion]
    reachable: dict[str, ReachableRange]
    search: SearchSummary


def suggest_problem(kind: Kind, dataset: str, k: int, fixed: dict[str, float], bounds: dict[str, DesignBound],
                    window: dict[str, WindowBound], explain: bool) -> SuggestProblem:
    """The validated request as the search takes it."""
    # Imported here: the request schemas are read by BentoML's supervisor process too, which loads no numpy.
    from service.design.suggest import SuggestProblem

    return SuggestProblem(kind=kind, dataset=dataset, k=k, fixed=dict(fixed),
                          bounds={name: (b.min, b.max) for name, b in bounds.items()},
                          window={name: (w.low, w.high) for name, w in window.items()}, explain=explain)
