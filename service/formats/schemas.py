"""Request and response models of the HTTP API, and the examples shown in the OpenAPI docs and used by tests.

Top-level models derive from `bentoml.IODescriptor` so BentoML uses them as they are (named as here in the
OpenAPI schema and in error titles) instead of wrapping them. Rows are TypedDicts rather than models: pydantic
validates 10,000 of them into plain dicts in ~10 ms, and the JSON schema still lists every feature with its unit
and physical bounds. A request that fails validation is answered 400 by BentoML with one `detail` entry per
problem; the wrap validators below rewrite each message so it names the row, the field, the value sent and what
is allowed, since pydantic's own messages leave the value out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, NotRequired

from bentoml import IODescriptor
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, WithJsonSchema, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError
from typing_extensions import TypedDict

from cellmfg.contract import FeatureSpec
from cellmfg.domain import DATASETS, ELECTRODE_FEATURES, GDL_FEATURES, feature_columns
from service.engine.errors import MAX_ERRORS_REPORTED, short_repr

# Any dataset the catalogue serves: the paper's are the examples, a lab's own (e.g. lfp) are accepted once their
# models are promoted; the prediction path answers an unknown one with 400 naming the served datasets.
DatasetName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.\-]+$")]
# Where the served datasets come from: the running service's catalogue (set by service.answers). Without one the
# paper's datasets are named as examples and the predictor decides what is served.
_DATASET_PROVIDER: Callable[[str], list[str]] | None = None


def use_dataset_provider(provider: Callable[[str], list[str]] | None) -> None:
    """Name the served datasets of a kind in validation messages (None: the paper's, as examples)."""
    global _DATASET_PROVIDER
    _DATASET_PROVIDER = provider


# The served models and their features, for the per-model operations of the OpenAPI document (set likewise).
_MODEL_PROVIDER: Callable[[], dict[str, list[FeatureSpec]]] | None = None


def use_model_provider(provider: Callable[[], dict[str, list[FeatureSpec]]] | None) -> None:
    global _MODEL_PROVIDER
    _MODEL_PROVIDER = provider


def served_models() -> dict[str, list[FeatureSpec]] | None:
    """Served model name -> its features (contract order), or None when no service runs in this process."""
    return _MODEL_PROVIDER() if _MODEL_PROVIDER is not None else None


def catalogue_is_live() -> bool:
    return _DATASET_PROVIDER is not None


def served_datasets(kind: str) -> tuple[str, ...]:
    if _DATASET_PROVIDER is not None:
        return tuple(_DATASET_PROVIDER(kind))
    return PAPER_CHEMISTRIES if kind == "electrode" else PAPER_GDL_DATASETS


PAPER_CHEMISTRIES: tuple[str, ...] = tuple(n for n, s in DATASETS.items() if s.kind == "electrode")
PAPER_GDL_DATASETS: tuple[str, ...] = tuple(n for n, s in DATASETS.items() if s.kind == "gdl")

# sample_id, group_id and operator: recorded in the prediction ledger; what a QC lab later posts outcomes against.
ClientText = Annotated[str, Field(max_length=200, description="the client's own label, stored with the prediction "
                                                               "in the ledger (at most 200 characters)")]
_OPERATOR_DESCRIPTION = "who asked (stored with every row in the prediction ledger)"
# The document BentoML serves is OpenAPI 3.0, which has no "null" type: an optional label is a nullable string there
# (pydantic's anyOf [string, null] would tell clients and fuzzers that null is refused, while it is accepted).
OptionalClientText = Annotated[str | None, Field(max_length=200), WithJsonSchema(
    {"type": "string", "maxLength": 200, "nullable": True, "description": _OPERATOR_DESCRIPTION})]
_PREDICTION_ID = ("sortable id of this answered row (UUIDv7) in the prediction ledger: post the measured values to "
                  "POST /outcomes with it")
_ELECTRODE_COLUMNS = feature_columns("electrode")
_GDL_COLUMNS = feature_columns("gdl")
_QUANTITIES = {q.column: q for q in (*ELECTRODE_FEATURES, *GDL_FEATURES)}


def _feature(column: str) -> Any:
    """The quantity's rule (`Quantity.problem`) in the form pydantic checks in Rust and the JSON schema shows: a
    strict finite number within the physical bounds (10,000 rows would cost ~60,000 Python calls otherwise). What
    it refuses is worded by `Quantity.problem` (`_describe`); tests/test_one_rule.py holds the two to one verdict."""
    q = _QUANTITIES[column]
    return Field(ge=q.physical_min, le=q.physical_max, allow_inf_nan=False, strict=True,
                 description=f"{q.description} [{q.unit}]; physically possible {q.physical_range_text()}")


class ElectrodeRow(TypedDict):
    """Electrode manufacturing parameters of one sample, in raw physical units."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]
    am_wt_pct: Annotated[float, _feature("am_wt_pct")]
    solid_content_pct: Annotated[float, _feature("solid_content_pct")]
    coating_speed_m_min: Annotated[float, _feature("coating_speed_m_min")]
    comma_gap_um: Annotated[float, _feature("comma_gap_um")]
    roll_speed_m_min: Annotated[float, _feature("roll_speed_m_min")]
    roll_gap_um: Annotated[float, _feature("roll_gap_um")]
    # The client's own fields, stored with the row in the prediction ledger (never fed to the model).
    sample_id: NotRequired[ClientText]
    group_id: NotRequired[ClientText]


class GdlRow(TypedDict):
    """Gas-diffusion-layer structure parameters of one sample, in raw physical units."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]
    fiber_diameter_um: Annotated[float, _feature("fiber_diameter_um")]
    fiber_concentration_pct: Annotated[float, _feature("fiber_concentration_pct")]
    binder_concentration_pct: Annotated[float, _feature("binder_concentration_pct")]
    thickness_um: Annotated[float, _feature("thickness_um")]
    compression_factor: Annotated[float, _feature("compression_factor")]
    # The client's own fields, stored with the row in the prediction ledger (never fed to the model).
    sample_id: NotRequired[ClientText]
    group_id: NotRequired[ClientText]


EXAMPLE_INPUT: dict[str, Any] = {
    "chemistry": "nmc",
    "rows": [
        {"am_wt_pct": 94.0, "solid_content_pct": 60.0, "coating_speed_m_min": 0.5, "comma_gap_um": 200.0,
         "roll_speed_m_min": 0.4, "roll_gap_um": 100.0},
        {"am_wt_pct": 94.0, "solid_content_pct": 60.0, "coating_speed_m_min": 0.5, "comma_gap_um": 200.0,
         "roll_speed_m_min": 0.4, "roll_gap_um": 250.0},
    ],
    "explain": False,
    "interval": True,
}
GDL_EXAMPLE_INPUT: dict[str, Any] = {
    "dataset": "gdl1000",
    "rows": [
        {"fiber_diameter_um": 9.0, "fiber_concentration_pct": 18.0, "binder_concentration_pct": 7.5,
         "thickness_um": 300.0, "compression_factor": 0.25},
    ],
    "explain": False,
    "interval": True,
}

_ROWS_DESCRIPTION = ("samples to predict, at least one; at most CELLMFG_MAX_ROWS (default 10,000) per request, "
                     "larger batches are refused with 413")
_EXPLAIN_DESCRIPTION = ("add per row the exact SHAP base value and one contribution per feature, which add up to "
                        "the prediction")
_INTERVAL_DESCRIPTION = "add per row a 90 % split-conformal prediction interval per target"


def _describe(error: Any, columns: list[str], top_fields: list[str], choice_field: str,
              choices: tuple[str, ...]) -> str:
    """One human message per pydantic error: where (row, field), what was sent, what is allowed."""
    loc, kind, msg = tuple(error["loc"]), error["type"], error["msg"]
    value = error.get("input")
    if loc and loc[0] == "rows" and len(loc) >= 2 and isinstance(loc[1], int):
        where = f"row {loc[1]}"
        if len(loc) == 2:
            return (f"{where}: {msg}; each row is an object with the features {', '.join(columns)}, "
                    f"got {short_repr(value)}")
        field = str(loc[2])
        if kind == "missing":
            return f"{where}: feature {field!r} is missing; every row needs {', '.join(columns)}"
        if kind == "extra_forbidden":
            return f"{where}: unknown feature {field!r} = {short_repr(value)}; allowed features: {', '.join(columns)}"
        q = _QUANTITIES.get(field)
        problem = q.problem(value) if q else None
        if problem is not None:
            return f"{where}, {problem}"
        return f"{where}, {field} = {short_repr(value)}: {msg}"
    if loc == ("rows",):
        if kind == "too_short":
            return "rows: at least one row is required, got an empty list"
        return f"rows: {msg}; expected a list of row objects, got {short_repr(value)}"
    if loc == (choice_field,):
        if kind == "missing":
            return (f"{choice_field} is missing; a served dataset name, e.g. {', '.join(choices)} "
                    "(GET /models lists them)")
        return f"{choice_field} = {short_repr(value)}: {msg}; a served dataset name, e.g. {', '.join(choices)}"
    if len(loc) == 1 and kind == "extra_forbidden":
        return f"unknown field {loc[0]!r}; allowed fields: {', '.join(top_fields)}"
    if loc:
        field = ".".join(str(part) for part in loc)
        if kind == "missing":
            return f"{field} is missing"
        return f"{field} = {short_repr(value)}: {msg}"
    return f"{msg}; expected a JSON object with the fields {', '.join(top_fields)}, got {short_repr(value)}"


def _explained(title: str, model: type[BaseModel], exc: ValidationError, columns: list[str], choice_field: str,
               choices: tuple[str, ...], data: Any = None) -> ValidationError:
    errors = exc.errors(include_url=False)
    top_fields = list(model.model_fields)
    details: list[InitErrorDetails] = []
    chosen = data.get(choice_field) if isinstance(data, dict) else None
    if isinstance(chosen, str) and _DATASET_PROVIDER is not None and chosen not in choices and \
            not any(tuple(e["loc"]) == (choice_field,) for e in errors):
        # Reported with the other problems: an unknown dataset is otherwise caught only after validation passes.
        message = (f"{choice_field} = {short_repr(chosen)} is not served; served datasets: "
                   f"{', '.join(choices) or 'none'}")
        details.append(InitErrorDetails(type=PydanticCustomError("unknown_dataset", "{message}", {"message": message}),
                                        loc=(choice_field,), input=chosen))
    for error in errors[:MAX_ERRORS_REPORTED]:
        message = _describe(error, columns, top_fields, choice_field, choices)
        details.append(InitErrorDetails(type=PydanticCustomError(error["type"], "{message}", {"message": message}),
                                        loc=tuple(error["loc"]), input=error.get("input")))
    if len(errors) > MAX_ERRORS_REPORTED:
        more = f"{len(errors) - MAX_ERRORS_REPORTED} more problems not listed; fix the ones above first"
        details.append(InitErrorDetails(type=PydanticCustomError("too_many_errors", "{message}", {"message": more}),
                                        loc=(), input=None))
    return ValidationError.from_exception_data(title, details)


class ElectrodeRequest(IODescriptor):
    """Electrode properties for a batch of manufacturing settings of one chemistry."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": EXAMPLE_INPUT})
    chemistry: DatasetName = Field(description="electrode dataset (chemistry) whose models answer: any served one, "
                                                "e.g. graphite, si_gra, nmc or a lab's own; GET /models lists them",
                                    examples=list(PAPER_CHEMISTRIES))
    rows: list[ElectrodeRow] = Field(min_length=1, description=_ROWS_DESCRIPTION)
    explain: StrictBool = Field(False, description=_EXPLAIN_DESCRIPTION)
    interval: StrictBool = Field(False, description=_INTERVAL_DESCRIPTION)
    operator: OptionalClientText = None

    @model_validator(mode="wrap")
    @classmethod
    def _name_the_problem(cls, data: Any, handler: Any) -> Any:
        try:
            return handler(data)
        except ValidationError as exc:
            raise _explained("ElectrodeRequest", cls, exc, _ELECTRODE_COLUMNS, "chemistry",
                             served_datasets("electrode"), data) from None


class GdlRequest(IODescriptor):
    """Gas-diffusion-layer tortuosity for a batch of structures."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": GDL_EXAMPLE_INPUT})
    dataset: DatasetName = Field(description="GDL dataset whose model answers: any served one, e.g. gdl200 (thin "
                                              "slab, source), gdl1000 (square, transfer) or a lab's own",
                                  examples=list(PAPER_GDL_DATASETS))
    rows: list[GdlRow] = Field(min_length=1, description=_ROWS_DESCRIPTION)
    explain: StrictBool = Field(False, description=_EXPLAIN_DESCRIPTION)
    interval: StrictBool = Field(False, description=_INTERVAL_DESCRIPTION)
    operator: OptionalClientText = None

    @model_validator(mode="wrap")
    @classmethod
    def _name_the_problem(cls, data: Any, handler: Any) -> Any:
        try:
            return handler(data)
        except ValidationError as exc:
            raise _explained("GdlRequest", cls, exc, _GDL_COLUMNS, "dataset", served_datasets("gdl"), data) from None


# ---------------------------------------------------------------------------------------------------------------
# Responses (documentation of what the endpoints send; the endpoints serialise plain dicts of this shape)


class ModelRef(BaseModel):
    name: str = Field(description="registered ONNX model name")
    version: str
    alias: str


class OutOfDomain(BaseModel):
    feature: str
    value: float
    min: float = Field(description="smallest value of this feature in the model's training data")
    max: float = Field(description="largest value of this feature in the model's training data")


class Explanation(BaseModel):
    base_value: float = Field(description="mean prediction over the SHAP background (the contract's rows)")
    contributions: dict[str, float] = Field(description="exact Shapley value per feature; base_value plus their "
                                                        "sum is the prediction")


_CLIPPED = ("only when a model's output was physically impossible (far out of domain): target -> the model's raw "
            "output; the prediction is then the nearest physical limit, and the explanation adds up to the raw output")
_IN_DOMAIN = ("every feature lies inside the training range of the answering models; outside it the paper's nets "
              "were off by 50-80 %")


_SPREAD = ("only with interval=true, for targets answered by an ensemble: target -> the standard deviation of its "
           "members' predictions for this recipe (same unit as the target); where the contract's interval scale is "
           "'spread' the interval's half-width is spread_quantile·(spread + spread_offset·|prediction|)")


class ElectrodePrediction(BaseModel):
    prediction_id: str | None = Field(None, description=_PREDICTION_ID)
    density_g_cm3: float | None = Field(None, description="calendered electrode density [g/cm³]; absent when the "
                                                          "chemistry has no density model")
    mass_loading_mg_cm2: float | None = Field(None, description="active-material mass loading [mg/cm²]; absent "
                                                                "when the chemistry has no mass-loading model")
    in_domain: bool = Field(description=_IN_DOMAIN)
    out_of_domain: list[OutOfDomain] = Field(description="the features outside the training range, with the range")
    interval: dict[str, tuple[float, float]] | None = Field(
        None, description="only with interval=true: target -> [low, high], a split-conformal prediction interval "
                          "(coverage in GET /models), clipped to the target's physical range")
    spread: dict[str, float] | None = Field(None, description=_SPREAD)
    explanation: dict[str, Explanation] | None = Field(None, description="only with explain=true: target -> SHAP")
    clipped: dict[str, float] | None = Field(None, description=_CLIPPED)


class GdlPrediction(BaseModel):
    prediction_id: str | None = Field(None, description=_PREDICTION_ID)
    tortuosity: float = Field(description="geometric through-plane tortuosity [1]")
    in_domain: bool = Field(description=_IN_DOMAIN)
    out_of_domain: list[OutOfDomain]
    interval: dict[str, tuple[float, float]] | None = Field(
        None, description="only with interval=true: target -> [low, high], a split-conformal prediction interval "
                          "(coverage in GET /models), clipped to the target's physical range")
    spread: dict[str, float] | None = Field(None, description=_SPREAD)
    explanation: dict[str, Explanation] | None = Field(None, description="only with explain=true: target -> SHAP")
    clipped: dict[str, float] | None = Field(None, description=_CLIPPED)


_ELECTRODE_RESPONSE_EXAMPLE: dict[str, Any] = {
    "models": {"density": {"name": "density_nmc_onnx", "version": "3", "alias": "champion"},
               "mass_loading": {"name": "mass_loading_nmc_onnx", "version": "2", "alias": "champion"}},
    "predictions": [{
        "density_g_cm3": 3.1, "mass_loading_mg_cm2": 21.4, "in_domain": False,
        "out_of_domain": [{"feature": "roll_gap_um", "value": 250.0, "min": 20.0, "max": 206.0}],
        "interval": {"density_g_cm3": [2.9, 3.3], "mass_loading_mg_cm2": [19.8, 23.0]},
    }],
}


class IntervalSummary(BaseModel):
    coverage: float = Field(description="nominal coverage the conformal quantile was calibrated for")
    measured_coverage: float | None = Field(description="share of held-out rows inside their interval (contract)")
    mean_relative_width: float | None = Field(description="mean (high - low) / |prediction| on held-out rows: the "
                                                          "width to expect")
    relative_quantile: float = Field(description="constant-width half-width as a share of |prediction|")
    scale: Literal["constant", "spread"] = Field(
        "constant", description="what the interval width follows: a constant share of the prediction, or the "
        "ensemble spread of each recipe (normalised conformal)")
    scale_reason: str | None = Field(None, description="the stated rule and its validation figures")
    ensemble_members: int | None = Field(None, description="nets averaged into the prediction (None: a single net)")
    spread_quantile: float | None = None
    spread_offset: float | None = None
    constant_measured_coverage: float | None = Field(
        None, description="the constant-width interval's held-out coverage, for comparison")
    constant_mean_relative_width: float | None = None
    spread_measured_coverage: float | None = Field(
        None, description="the spread-scaled interval's held-out coverage, for comparison")
    spread_mean_relative_width: float | None = None


_INTERVALS = "only with interval=true: target column -> what its intervals are worth, from the model's contract"


class ElectrodeResponse(IODescriptor):
    model_config = ConfigDict(json_schema_extra={"example": _ELECTRODE_RESPONSE_EXAMPLE})
    models: dict[str, ModelRef] = Field(description="target task (density, mass_loading) -> the model that answered")
    predictions: list[ElectrodePrediction] = Field(description="one per request row, in request order")
    intervals: dict[str, IntervalSummary] | None = Field(None, description=_INTERVALS)


class GdlResponse(IODescriptor):
    models: dict[str, ModelRef] = Field(description="target task (tortuosity) -> the model that answered")
    predictions: list[GdlPrediction] = Field(description="one per request row, in request order")
    intervals: dict[str, IntervalSummary] | None = Field(None, description=_INTERVALS)


class FeatureRange(BaseModel):
    name: str
    unit: str
    train_min: float
    train_max: float
    train_median: float | None = Field(None, description="median of the training rows (a typical recipe)")
    physical_min: float
    physical_max: float


class ModelInfo(BaseModel):
    name: str
    version: str
    alias: str
    source: str = Field(description="where it was loaded from: a models:/ URI or a bundle directory")
    loaded_at: str
    task: str
    dataset: str
    role: str
    target: dict[str, Any] = Field(description="task, column, unit and the physical range intervals are clipped to")
    test_mape_pct: float
    metrics: dict[str, Any]
    conformal: dict[str, Any]
    lineage: dict[str, Any]
    features: list[FeatureRange]
    endpoints: list[str] = Field(description="where it answers: POST /predict/{name} always, and the kind's endpoint "
                                             "with its dataset when its features and target are the domain's own")
    live: dict[str, Any] | None = Field(
        None, description="from the prediction ledger, for the served version: n_outcomes, mape_last_n (MAPE % of "
        "the last 50 measured predictions with a 95 % group bootstrap interval), test_mape_upper_pct, "
        "interval_coverage, share_in_domain and drift per feature (share outside the training range, PSI when the "
        "contract carries training quantiles); null when the ledger is off")


class ModelsResponse(BaseModel):
    ready: bool = Field(description="every model in the catalogue at start (still in it) is loaded, and at least "
                                    "one model is served")
    datasets: dict[str, list[str]] = Field(description="kind (electrode, gdl) -> the datasets its endpoint answers "
                                                       "now: the values `chemistry` and `dataset` accept")
    source: str
    alias: str
    poll_seconds: float
    models: list[ModelInfo]
    missing: dict[str, str] = Field(description="catalogue model names not loaded, with the reason (refused as "
                                                "invalid, or not fetched yet)")


class ModelRequest(BaseModel):
    """Rows for one served model, with exactly the features its contract names (GET /models lists them)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {
        "rows": EXAMPLE_INPUT["rows"][:1], "explain": False, "interval": True}})
    rows: list[Any] = Field(min_length=1, description=_ROWS_DESCRIPTION)
    explain: StrictBool = Field(False, description=_EXPLAIN_DESCRIPTION)
    interval: StrictBool = Field(False, description=_INTERVAL_DESCRIPTION)
    operator: OptionalClientText = None


# The error body, named as it appears in the OpenAPI document (service.web.openapi generates the schema from these).
class CellMfgErrorDetail(BaseModel):
    type: str
    loc: list[str | int]
    msg: str = Field(description="names the row, the field, the value sent and what is allowed")


class CellMfgError(BaseModel):
    """Every error the service answers: a message, and for invalid requests one entry per problem"""

    error: str = Field(title="Message")
    detail: list[CellMfgErrorDetail] = Field(default=[], title="Problems")
