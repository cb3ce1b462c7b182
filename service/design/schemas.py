"""Request and response models of the recipe-design endpoints (`POST /design/electrode`, `POST /design/gdl`).

A design request names the dataset, the wanted value of one or more targets with a relative tolerance, the
parameters the user fixes (the slurry on hand) and, optionally, narrower bounds for the free ones. What can be
checked without the models is checked here, each problem answered 400 with its location (`targets.<column>`,
`fixed.<feature>`, `bounds.<feature>`): an unknown target or feature, a tolerance that is not positive, a value
outside the physical bounds of its quantity, a feature both fixed and bounded, a bound whose min exceeds its max.
What depends on the served models (bounds outside their training range, a target the dataset's models do not
predict) is checked by `service.design.search`, also with a 400 naming the field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from bentoml import IODescriptor
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    StrictBool,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import InitErrorDetails, PydanticCustomError

from cellmfg.domain import DATASETS, Kind, all_quantities, features_for, targets_for
from service.engine.errors import MAX_ERRORS_REPORTED, short_repr
from service.formats.schemas import (
    DatasetName,
    ElectrodePrediction,
    GdlPrediction,
    IntervalSummary,
    ModelRef,
)

if TYPE_CHECKING:
    from service.design.search import DesignProblem

DEFAULT_TOLERANCE_PCT = 5.0
MIN_TOLERANCE_PCT = 0.01  # far above the float32 rounding of the nets' outputs (~1e-5 %)
MAX_TOLERANCE_PCT = 50.0
DEFAULT_K = 5
MAX_K = 20
# More entries than any kind has parameters (electrode 6, GDL 5): a longer `targets`, `fixed` or `bounds` is refused
# with one error before its entries are validated, so the answer and its cost stay small whatever the body holds.
MAX_DESIGN_ENTRIES = 16
_MAPPINGS = ("targets", "fixed", "bounds")
# A number as JSON sends it: no strings, booleans, NaN or infinities.
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class DesignTarget(BaseModel):
    """A wanted value of one predicted property, met when the prediction lies within ±tolerance_pct of it."""

    model_config = ConfigDict(extra="forbid")
    value: Number = Field(description="wanted value, in the target's unit")
    # Checked with a message naming the field (`check_design`); the schema says the same for the docs.
    tolerance_pct: Number = Field(
        DEFAULT_TOLERANCE_PCT,
        json_schema_extra={"minimum": MIN_TOLERANCE_PCT, "maximum": MAX_TOLERANCE_PCT},
        description=f"allowed deviation of the prediction from `value`, in % of `value`; from {MIN_TOLERANCE_PCT:g} "
                    f"to {MAX_TOLERANCE_PCT:g}")


class DesignBound(BaseModel):
    """A narrower search range for one free parameter, inside the models' training range."""

    model_config = ConfigDict(extra="forbid")
    min: Number
    max: Number


_TARGETS_DESCRIPTION = "target column -> wanted value and tolerance; at least one"
_FIXED_DESCRIPTION = ("parameters the recipe must keep exactly (e.g. the slurry on hand), feature -> value in its "
                      "unit, inside its physical bounds; a value outside the training range is accepted and the "
                      "recipes then say they are out of domain")
_BOUNDS_DESCRIPTION = ("optional narrower search ranges for free parameters, feature -> {min, max}, inside the "
                       "models' training range (the default search range, which keeps every recipe in domain)")
_K_DESCRIPTION = (f"at most this many recipes, diverse rather than near-duplicates (each differs from every other "
                  f"in at least one free continuous parameter by a tenth of its search range); 1 to {MAX_K}")
_EXPLAIN_DESCRIPTION = "add the exact SHAP explanation of each recipe's predictions, as /predict does"


def field_problem(kind: str, loc: tuple[str | int, ...], message: str, value: Any) -> InitErrorDetails:
    return InitErrorDetails(type=PydanticCustomError(kind, "{message}", {"message": message}), loc=loc, input=value)


def check_design(kind: Kind, targets: dict[str, DesignTarget], fixed: dict[str, float],
                  bounds: dict[str, DesignBound]) -> list[InitErrorDetails]:
    """Every problem of a parsed design request that the domain alone can tell, each naming its field."""
    problems: list[InitErrorDetails] = []
    features = {q.column: q for q in features_for(kind)}
    target_quantities = {t.column: t.quantity for t in targets_for(kind)}
    quantities = all_quantities(kind)
    feature_list = ", ".join(features)
    for column, target in targets.items():
        loc: tuple[str | int, ...] = ("targets", column)
        q = target_quantities.get(column)
        if q is None:
            what = "a feature, not a target" if column in features else "unknown target"
            problems.append(field_problem("unknown_target", loc, f"targets.{column}: {what}; allowed targets: "
                                     f"{', '.join(target_quantities)}", column))
            continue
        if not (q.physical_min < target.value <= q.physical_max):
            problems.append(field_problem("value_out_of_range", (*loc, "value"),
                                     f"targets.{column}.value = {target.value:g}: outside the physical range "
                                     f"({q.physical_min:g}, {q.physical_max:g}] {q.unit}", target.value))
        if not (MIN_TOLERANCE_PCT <= target.tolerance_pct <= MAX_TOLERANCE_PCT):
            problems.append(field_problem("tolerance_out_of_range", (*loc, "tolerance_pct"),
                                     f"targets.{column}.tolerance_pct = {target.tolerance_pct:g}: must be more than "
                                     f"0, from {MIN_TOLERANCE_PCT:g} to {MAX_TOLERANCE_PCT:g} (% of the wanted "
                                     f"value)", target.tolerance_pct))
    for name, value in fixed.items():
        q = features.get(name)
        if q is None:
            what = "a target, not a parameter" if name in quantities else "unknown parameter"
            problems.append(field_problem("unknown_feature", ("fixed", name),
                                     f"fixed.{name}: {what}; allowed parameters: {feature_list}", name))
        elif (problem := q.problem(value)) is not None:  # the feature's one rule, as /predict words it
            problems.append(field_problem("value_out_of_range", ("fixed", name), f"fixed.{problem}", value))
    for name, bound in bounds.items():
        q = features.get(name)
        if q is None:
            what = "a target, not a parameter" if name in quantities else "unknown parameter"
            problems.append(field_problem("unknown_feature", ("bounds", name),
                                     f"bounds.{name}: {what}; allowed parameters: {feature_list}", name))
        elif name in fixed:
            problems.append(field_problem("fixed_and_bounded", ("bounds", name),
                                     f"bounds.{name}: the parameter is also fixed (fixed.{name} = {fixed[name]:g}); "
                                     f"give one or the other", bound.model_dump()))
        elif bound.min > bound.max:
            problems.append(field_problem("empty_bound", ("bounds", name),
                                     f"bounds.{name}: min {bound.min:g} is larger than max {bound.max:g}",
                                     bound.model_dump()))
    return problems


def capped_problems(problems: list[InitErrorDetails]) -> list[InitErrorDetails]:
    """At most MAX_ERRORS_REPORTED problems, then one entry saying how many more there are (as /predict does)."""
    if len(problems) <= MAX_ERRORS_REPORTED:
        return problems
    more = len(problems) - MAX_ERRORS_REPORTED
    return [*problems[:MAX_ERRORS_REPORTED],
            field_problem("too_many_errors", (), f"{more} more problems not listed; fix the ones above first", None)]


def oversized_mappings(data: Any) -> list[InitErrorDetails]:
    """A `targets`, `fixed` or `bounds` with more entries than a design request can have, before anything else."""
    if not isinstance(data, dict):
        return []
    return [field_problem("too_long", (name,), f"{name}: {len(value)} entries; at most {MAX_DESIGN_ENTRIES} (one per "
                                          f"target or parameter)", None)
            for name in _MAPPINGS if isinstance(value := data.get(name), dict) and len(value) > MAX_DESIGN_ENTRIES]


def reworded(title: str, error: ValidationError) -> ValidationError:
    """pydantic's own errors (a string for a number, a missing field) with the field path in the message."""
    details = []
    errors = error.errors(include_url=False)
    for e in errors[:MAX_ERRORS_REPORTED]:
        loc = tuple(e["loc"])
        where = ".".join(str(part) for part in loc) or "request"
        value = e.get("input")
        sent = "" if e["type"] == "missing" else f" (got {short_repr(value)})"
        details.append(field_problem(e["type"], loc, f"{where}: {e['msg']}{sent}", value))
    if len(errors) > MAX_ERRORS_REPORTED:
        details.append(field_problem("too_many_errors", (), f"{len(errors) - MAX_ERRORS_REPORTED} more problems not "
                                                       "listed; fix the ones above first", None))
    return ValidationError.from_exception_data(title, details)


class _DesignRequest(IODescriptor):
    """Shared fields and checks; the subclasses add the dataset field and say their kind."""

    model_config = ConfigDict(extra="forbid")
    targets: dict[str, DesignTarget] = Field(min_length=1, max_length=MAX_DESIGN_ENTRIES,
                                             description=_TARGETS_DESCRIPTION)
    fixed: dict[str, Number] = Field(default_factory=dict, max_length=MAX_DESIGN_ENTRIES,
                                     description=_FIXED_DESCRIPTION)
    bounds: dict[str, DesignBound] = Field(default_factory=dict, max_length=MAX_DESIGN_ENTRIES,
                                           description=_BOUNDS_DESCRIPTION)
    k: int = Field(DEFAULT_K, ge=1, le=MAX_K, strict=True, description=_K_DESCRIPTION)
    explain: StrictBool = Field(True, description=_EXPLAIN_DESCRIPTION)
    # OpenAPI 3.0 has no "null" type: a nullable string, as the prediction requests' operator.
    operator: Annotated[str | None, Field(max_length=200), WithJsonSchema(
        {"type": "string", "maxLength": 200, "nullable": True,
         "description": "who asked (stored with every returned recipe in the prediction ledger)"})] = None

    @classmethod
    def design_kind(cls) -> Kind:
        raise NotImplementedError

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        """The schema lists the kind's targets and parameters as the only keys (with each parameter's physical
        bounds), so the docs and schema-driven clients show what is allowed; OpenAPI 3.0 keywords only."""
        schema = handler.resolve_ref_schema(handler(core_schema))
        properties = schema.get("properties", {})
        if "targets" not in properties or cls is _DesignRequest:
            return schema
        kind = cls.design_kind()
        features = features_for(kind)
        target_ref = properties["targets"].pop("additionalProperties")
        properties["targets"].update(additionalProperties=False,
                                     properties={t.column: target_ref for t in targets_for(kind)})
        properties["fixed"].update(additionalProperties=False, properties={
            q.column: {"type": "number", "minimum": q.physical_min, "maximum": q.physical_max,
                       "description": f"{q.description} [{q.unit}]"} for q in features})
        bound_ref = properties["bounds"].pop("additionalProperties")
        properties["bounds"].update(additionalProperties=False, properties={q.column: bound_ref for q in features})
        return schema

    @model_validator(mode="wrap")
    @classmethod
    def _name_the_field(cls, data: Any, handler: Any) -> Any:
        oversized = oversized_mappings(data)
        if oversized:
            raise ValidationError.from_exception_data(cls.__name__, oversized)
        try:
            parsed = handler(data)
        except ValidationError as error:
            raise reworded(cls.__name__, error) from None
        problems = check_design(cls.design_kind(), parsed.targets, parsed.fixed, parsed.bounds)
        if problems:
            raise ValidationError.from_exception_data(cls.__name__, capped_problems(problems))
        return parsed


ELECTRODE_DESIGN_EXAMPLE: dict[str, Any] = {
    "chemistry": "nmc",
    "targets": {"mass_loading_mg_cm2": {"value": 20.0, "tolerance_pct": 3.0},
                "density_g_cm3": {"value": 3.0, "tolerance_pct": 3.0}},
    "fixed": {"am_wt_pct": 94.0, "solid_content_pct": 60.0},
    "bounds": {},
    "k": 5,
    "explain": True,
}
_GDL_COMPRESSION = DATASETS["gdl1000"].ranges["compression_factor"]


def _inside(span: tuple[float, float], fraction: float) -> float:
    """A value `fraction` of the way through a dataset's nominal range: the data sampled from it reaches neither end
    (gdl1000's compression factors span 0.002-0.495 of the nominal 0-0.5)."""
    return round(span[0] + fraction * (span[1] - span[0]), 3)


GDL_DESIGN_EXAMPLE: dict[str, Any] = {
    "dataset": "gdl1000",
    "targets": {"tortuosity": {"value": 1.06, "tolerance_pct": 1.0}},
    "fixed": {"fiber_diameter_um": 9.0, "thickness_um": 300.0},
    # Well inside gdl1000's range (a bound outside the served models' training range is refused with 400).
    "bounds": {"compression_factor": {"min": _inside(_GDL_COMPRESSION, 0.1), "max": _inside(_GDL_COMPRESSION, 0.6)}},
    "k": 5,
    "explain": True,
}


class ElectrodeDesignRequest(_DesignRequest):
    """Electrode recipes (coater and calender settings) that give the wanted density and/or mass loading."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": ELECTRODE_DESIGN_EXAMPLE})
    chemistry: DatasetName = Field(description="electrode chemistry whose models are searched")

    @classmethod
    def design_kind(cls) -> Kind:
        return "electrode"


class GdlDesignRequest(_DesignRequest):
    """GDL structures that give the wanted tortuosity."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": GDL_DESIGN_EXAMPLE})
    dataset: DatasetName = Field(description="GDL domain whose model is searched")

    @classmethod
    def design_kind(cls) -> Kind:
        return "gdl"


# ---------------------------------------------------------------------------------------------------------------
# Responses (documentation of what the endpoints send; the endpoints serialise plain dicts of this shape)


class WantedTarget(BaseModel):
    value: float
    tolerance_pct: float
    unit: str
    low: float = Field(description="smallest prediction that meets the target")
    high: float = Field(description="largest prediction that meets the target")


class ReachableRange(BaseModel):
    min: float = Field(description="lowest prediction found under the fixed parameters, inside the search range")
    max: float = Field(description="highest prediction found under the fixed parameters, inside the search range")
    unit: str


class SearchSummary(BaseModel):
    fixed: dict[str, float] = Field(description="the fixed parameters, exactly as given")
    free: dict[str, tuple[float, float]] = Field(description="searched range of every free parameter")
    discrete: dict[str, list[float]] = Field(description="free parameters that take only these values (roll speed "
                                                         "takes the two speeds of the training data)")
    within_training_range: bool = Field(description="every parameter, fixed or free, lies inside the training range "
                                                    "of every answering model, so every recipe is in domain")
    fixed_outside_training_range: list[str] = Field(description="fixed parameters outside the training range: "
                                                                "recipes with them are extrapolations")
    no_common_training_range: list[str] = Field(
        description="free parameters in which the answering models' training ranges do not overlap (a zero-shot "
                    "source net beside a transfer): searched over both ranges, so every recipe is out of domain "
                    "for one of the models")
    candidates: int = Field(description="recipes ranked (quasi-random design, corners and refinements)")
    model_rows: int = Field(description="rows evaluated by each model, finite-difference steps included")
    refined: int = Field(description="local refinements run (scipy.optimize)")
    seconds: float


class ElectrodeRecipe(BaseModel):
    rank: int = Field(description="1 = closest to the targets; ties (within a tenth of the tolerance) go to the "
                                  "narrower prediction interval")
    settings: dict[str, float] = Field(description="the full recipe, one value per parameter, the row to send to "
                                                   "/predict")
    distance: float = Field(description="largest deviation from a target in units of its tolerance (<= 1 meets "
                                        "every target)")
    deviation_pct: dict[str, float] = Field(description="target -> (prediction - wanted) / wanted, in %")
    prediction: ElectrodePrediction = Field(description="exactly what /predict answers for `settings`")


class GdlRecipe(BaseModel):
    rank: int
    settings: dict[str, float]
    distance: float
    deviation_pct: dict[str, float]
    prediction: GdlPrediction


_INTERVALS = "target column -> what its 90 % intervals are worth, from the model's contract (as /predict says)"


class ElectrodeDesignResponse(IODescriptor):
    models: dict[str, ModelRef] = Field(description="target task -> the model that answered")
    intervals: dict[str, IntervalSummary] | None = Field(None, description=_INTERVALS)
    targets: dict[str, WantedTarget]
    recipes: list[ElectrodeRecipe] = Field(description="up to k recipes meeting every target, best first")
    reachable: dict[str, ReachableRange] = Field(description="per target, what the free parameters can reach")
    search: SearchSummary


class GdlDesignResponse(IODescriptor):
    models: dict[str, ModelRef]
    intervals: dict[str, IntervalSummary] | None = Field(None, description=_INTERVALS)
    targets: dict[str, WantedTarget]
    recipes: list[GdlRecipe]
    reachable: dict[str, ReachableRange]
    search: SearchSummary


class InfeasibleDesign(BaseModel):
    """The 422 answer: no recipe meets every target within its tolerance."""

    error: str = Field(description="names each target with its reachable range")
    detail: list[dict[str, Any]] = Field(description="one entry per target: loc, wanted value, reachable range")
    reachable: dict[str, ReachableRange]
    closest: dict[str, Any] | None = Field(description="the recipe found closest to the targets, with its "
                                                       "/predict row")


def design_problem(kind: Kind, dataset: str, targets: dict[str, DesignTarget], fixed: dict[str, float],
                   bounds: dict[str, DesignBound], k: int, explain: bool) -> DesignProblem:
    """The validated request as the search takes it."""
    # Imported here: the request schemas are read by BentoML's supervisor process too, which loads no numpy.
    from service.design.search import DesignProblem, TargetGoal

    return DesignProblem(
        kind=kind, dataset=dataset,
        targets=tuple(TargetGoal(column, t.value, t.tolerance_pct) for column, t in targets.items()),
        fixed=dict(fixed), bounds={name: (b.min, b.max) for name, b in bounds.items()}, k=k, explain=explain)
