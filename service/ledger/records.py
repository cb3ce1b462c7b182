"""The ledger's typed seams: what a caller records, posts and gets back (pydantic models, no loose dicts)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from cellmfg.domain import TARGETS


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PredictionOutput(_Frozen):
    """What one model answered for one request row: a target column, its value and interval."""

    target: str = Field(description="target CSV column, e.g. density_g_cm3")
    unit: str
    model_name: str
    model_version: str
    model_alias: str | None = None
    value: float
    interval_low: float | None = None
    interval_high: float | None = None


class PredictionRecord(_Frozen):
    """One answered request row: its id, time, the client's own fields, the inputs and every model's output."""

    prediction_id: uuid.UUID
    created_at: AwareDatetime
    dataset: str = Field(description="chemistry or GDL dataset the row was predicted for, e.g. nmc")
    endpoint: str = Field(description="which answer path made it: json, csv, predict, design")
    sample_id: str | None = None
    group_id: str | None = Field(None, description="the client's sheet, batch or group id")
    operator: str | None = None
    inputs: dict[str, float]
    in_domain: bool
    outputs: tuple[PredictionOutput, ...] = Field(min_length=1)
    shadow_of: uuid.UUID | None = Field(default=None,
                                        description="the champion's answered row this challenger row shadows")

    @model_validator(mode="after")
    def _one_output_per_target(self) -> PredictionRecord:
        targets = [output.target for output in self.outputs]
        if len(set(targets)) != len(targets):
            raise ValueError(f"prediction {self.prediction_id}: a target appears twice in outputs {targets}")
        return self


class ModelOutputs(_Frozen):
    """One model's answers for every row of a request, in row order (columnar: cheap to check for 10,000 rows)."""

    target: str
    unit: str
    model_name: str
    model_version: str
    model_alias: str | None = None
    values: list[float]
    interval_low: list[float] | None = None
    interval_high: list[float] | None = None


class PredictionBatch(_Frozen):
    """The rows of one request, columnar: one id, input row, in-domain flag and client fields per row, and each
    target model's outputs. Records the same rows as the equivalent PredictionRecords, for far less validation
    work on large requests (one model instead of one per row)."""

    created_at: AwareDatetime
    dataset: str
    endpoint: str
    operator: str | None = None
    prediction_ids: list[uuid.UUID]
    sample_ids: list[str | None] | None = None
    group_ids: list[str | None] | None = None
    feature_columns: list[str]
    inputs: list[list[float]] = Field(description="one list per row, values in feature_columns order")
    in_domain: list[bool]
    outputs: list[ModelOutputs] = Field(min_length=1)
    # A challenger's shadow predictions of these rows: a batch of its own whose `shadow_of` holds these rows' ids,
    # committed in the same transaction (service.ledger.recording.shadow_batch).
    shadow_of: list[uuid.UUID] | None = None
    shadow: PredictionBatch | None = None

    @model_validator(mode="after")
    def _columns_agree(self) -> PredictionBatch:
        n = len(self.prediction_ids)
        lengths = {"inputs": len(self.inputs), "in_domain": len(self.in_domain)}
        lengths |= {name: len(column) for name, column in (("sample_ids", self.sample_ids),
                                                           ("group_ids", self.group_ids),
                                                           ("shadow_of", self.shadow_of)) if column is not None}
        for output in self.outputs:
            lengths |= {f"{output.target} {name}": len(column) for name, column in (
                ("values", output.values), ("interval_low", output.interval_low),
                ("interval_high", output.interval_high)) if column is not None}
        wrong = {name: length for name, length in lengths.items() if length != n}
        if wrong:
            raise ValueError(f"{n} prediction ids but lengths {wrong}")
        widths = {len(row) for row in self.inputs}
        if widths - {len(self.feature_columns)}:
            raise ValueError(f"input rows of {sorted(widths)} values for {len(self.feature_columns)} feature columns")
        targets = [output.target for output in self.outputs]
        if len(set(targets)) != len(targets):
            raise ValueError(f"a target appears twice in outputs {targets}")
        return self

    def __len__(self) -> int:
        return len(self.prediction_ids)

    def with_shadow(self, shadow: PredictionBatch | None) -> PredictionBatch:
        """This batch carrying `shadow` (unvalidated copy, as the batch itself was built)."""
        return self if shadow is None else self.model_copy(update={"shadow": shadow})


class TargetLimits(_Frozen):
    """A measured target's contract unit and physically possible closed interval."""

    unit: str
    low: float
    high: float

    def text(self) -> str:
        return f"[{self.low:g}, {self.high:g}] {self.unit}"


def domain_limits() -> dict[str, TargetLimits]:
    """Target column -> its unit and physical bounds, from cellmfg.domain (the service's own contract)."""
    return {t.column: TargetLimits(unit=t.unit, low=t.quantity.physical_min, high=t.quantity.physical_max)
            for t in TARGETS.values()}


class OutcomeItem(_Frozen):
    """One measured sample as a QC lab reports it: which prediction (by id, or by sample id within a dataset),
    the measured value per target column, optionally the unit each was measured in, when, and a note.

    Values are plain floats here (NaN and inf pass) so the ledger can report them with every other problem."""

    prediction_id: uuid.UUID | None = None
    sample_id: str | None = None
    dataset: str | None = None
    values: dict[str, float]
    units: dict[str, str] = Field(default_factory=dict, description="target column -> unit; absent: contract unit")
    measured_at: AwareDatetime | None = None
    note: str | None = None


class OutcomeProblem(_Frozen):
    """Why one posted item cannot be stored: its index, the field, what is wrong and what is allowed."""

    index: int = Field(description="0-based position of the item in the post (a CSV's data row)")
    field: str
    message: str
    allowed: str | None = None


class OutcomeReceipt(_Frozen):
    written: int = Field(description="outcome rows added (new measurements and corrections)")
    unchanged: int = Field(description="items equal to the latest stored outcome: nothing added (idempotent)")


class OutcomesRejectedError(ValueError):
    """A post with at least one bad item; nothing was written. `problems` lists every one of them."""

    def __init__(self, problems: list[OutcomeProblem]) -> None:
        self.problems = problems
        lines = "; ".join(f"item {p.index}, {p.field}: {p.message}" + (f" (allowed: {p.allowed})" if p.allowed else "")
                          for p in problems[:20])
        more = f"; and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(f"{len(problems)} problem(s), nothing written: {lines}{more}")


class StoredOutcome(_Frozen):
    """One stored outcome row: a measurement (revision 1) or a correction of it (2, 3, ...)."""

    prediction_id: uuid.UUID
    target: str
    revision: int
    value: float
    unit: str
    measured_at: AwareDatetime | None
    note: str | None
    recorded_at: AwareDatetime


class LedgerStats(_Frozen):
    predictions: int = Field(description="answered request rows")
    outputs: int = Field(description="(row, target model) predictions")
    outcomes: int = Field(description="stored outcome rows, corrections included")
    size_bytes: int


def units_match(given: str, expected: str) -> bool:
    """Units compare after spelling out what keyboards lack: g/cm3 = g/cm³, um = µm, case and spaces ignored."""
    return _unit_key(given) == _unit_key(expected)


def _unit_key(unit: str) -> str:
    table: Mapping[str, str] = {"³": "3", "²": "2", "µ": "u", "μ": "u", " ": ""}
    key = unit.strip().lower()
    for old, new in table.items():
        key = key.replace(old, new)
    return key


@dataclass(frozen=True)
class OutcomeTable:
    """Measured predictions in the dataset CSV schema (`columns`), a row per prediction; an unmeasured target is
    None. Plain tuples: the service reads it without pandas (`service.ledger.outcomes_http.outcomes_csv`
    writes the CSV)."""

    columns: tuple[str, ...]
    rows: tuple[tuple[str | float | None, ...], ...]

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, name: str) -> list[str | float | None]:
        index = self.columns.index(name)
        return [row[index] for row in self.rows]


class LedgerClosedError(RuntimeError):
    pass


class LedgerUnreachableError(RuntimeError):
    """The ledger's database cannot be reached (an outage of a remote ledger): what needs to read it waits."""
