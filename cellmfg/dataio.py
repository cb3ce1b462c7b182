"""One loader for shipped and user CSVs: columns, types, NaN/inf, duplicates and physical bounds.

A violation raises `DataValidationError` naming the file, row, column, value and allowed range, before anything
downstream runs. Values inside physical bounds but outside a dataset's paper range are accepted and reported.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cellmfg.domain import DATASETS, GROUP_ID, SAMPLE_ID, Kind, all_quantities, feature_columns, kind_of_columns

# GROUP_ID and SAMPLE_ID, the identifier columns, live in cellmfg.domain (the service reads them without pandas).
# Columns the shipped generators add for reference (see data/DATA_CARD.md) that no model uses: skipped quietly.
DOCUMENTED_EXTRA_COLUMNS = frozenset({"porosity"})
DATA_DIR = Path(__file__).resolve().parent.parent / "data"


class DataValidationError(ValueError):
    """A CSV that cannot be used; the message names file, row, column, value and the allowed range."""


@dataclass(frozen=True)
class OutOfRange:
    column: str
    rows: int
    observed_min: float
    observed_max: float
    paper_min: float
    paper_max: float


@dataclass
class LoadedData:
    frame: pd.DataFrame
    kind: Kind
    source: str
    sha256: str
    ignored_columns: list[str] = field(default_factory=list)
    out_of_range: list[OutOfRange] = field(default_factory=list)

    @property
    def groups(self) -> np.ndarray:
        """One group label per row (see `row_groups`)."""
        return row_groups(self.frame, self.kind)


def row_groups(frame: pd.DataFrame, kind: Kind) -> np.ndarray:
    """The `group_id` column as strings; without it, rows with identical inputs form one group (replicates)."""
    if GROUP_ID in frame.columns:
        return frame[GROUP_ID].astype(str).to_numpy()
    numbers = frame.groupby(feature_columns(kind), sort=False).ngroup().to_numpy()
    return np.asarray([f"inputs-{n}" for n in numbers], dtype=object)


def _row_label(position: int) -> str:
    # CSV line numbers are what a user sees in an editor: header is line 1.
    return f"row {position + 1} (line {position + 2})"


def validate_frame(
    frame: pd.DataFrame,
    kind: Kind,
    required_targets: list[str],
    source: str = "<frame>",
) -> tuple[pd.DataFrame, list[str]]:
    """Check a raw frame and return it with canonical column order and float dtypes, plus ignored columns."""
    features = feature_columns(kind)
    quantities = all_quantities(kind)
    wanted = features + required_targets
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise DataValidationError(
            f"{source}: missing column(s) {', '.join(missing)}; a {kind} CSV needs {', '.join(wanted)}"
        )
    unknown_targets = [c for c in required_targets if c not in quantities]
    if unknown_targets:
        raise DataValidationError(f"{source}: unknown target column(s) {', '.join(unknown_targets)}")
    optional_targets = [c for c in quantities if c not in wanted and c in frame.columns]
    ids = [c for c in (SAMPLE_ID, GROUP_ID) if c in frame.columns]
    keep = ids + wanted + optional_targets
    ignored = [c for c in frame.columns if c not in keep]
    unexpected = [c for c in ignored if c not in DOCUMENTED_EXTRA_COLUMNS]
    if unexpected:
        warnings.warn(f"{source}: ignoring extra column(s) {', '.join(map(str, unexpected))}", stacklevel=2)

    out = frame[keep].copy().reset_index(drop=True)
    for column in wanted + optional_targets:
        quantity = quantities[column]
        raw_values = out[column].to_numpy(dtype=object)
        numbers = pd.to_numeric(out[column], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        for position in np.flatnonzero(quantity.outside(numbers)).tolist():
            raw, value = raw_values[position], numbers[position]
            if column in optional_targets and _is_blank(raw):
                continue
            # The quantity's one rule words it: a blank cell or text as written when it is not a number, else
            # the number ("nan" and "inf" are numbers that are not finite).
            unreadable = _is_blank(raw) or (math.isnan(value) and not _is_nan_text(raw))
            problem = quantity.problem(raw if unreadable else value)
            raise DataValidationError(f"{source}: {_row_label(position)}, {problem}")
        out[column] = numbers

    if GROUP_ID in out.columns:
        out[GROUP_ID] = out[GROUP_ID].astype(str).str.strip()
        blank = (out[GROUP_ID] == "") | out[GROUP_ID].str.lower().isin({"nan", "none"})
        if blank.any():
            position = int(np.flatnonzero(blank.to_numpy())[0])
            raise DataValidationError(
                f"{source}: {_row_label(position)}, column {GROUP_ID}: blank (allowed: any non-empty label; "
                f"rows sharing a label are replicates of one sample)"
            )
    if SAMPLE_ID in out.columns:
        out[SAMPLE_ID] = out[SAMPLE_ID].astype(str)
        repeated = out[SAMPLE_ID].duplicated(keep="first")
        if repeated.any():
            position = int(np.flatnonzero(repeated.to_numpy())[0])
            raise DataValidationError(
                f"{source}: {_row_label(position)}, column {SAMPLE_ID}: {out[SAMPLE_ID].iat[position]!r} "
                f"repeats an earlier sample_id (allowed: unique ids)"
            )
    repeated_rows = out[wanted].duplicated(keep="first")
    if repeated_rows.any():
        position = int(np.flatnonzero(repeated_rows.to_numpy())[0])
        first = int(np.flatnonzero((out[wanted] == out[wanted].iloc[position]).all(axis=1).to_numpy())[0])
        raise DataValidationError(
            f"{source}: {_row_label(position)}: every column equals {_row_label(first)}; "
            f"an exact duplicate (allowed: replicates differ in their measured values)"
        )
    if out.empty:
        raise DataValidationError(f"{source}: no data rows")
    return out, ignored


def _is_blank(raw: object) -> bool:
    return raw is None or (isinstance(raw, float) and math.isnan(raw)) or (isinstance(raw, str) and not raw.strip())


def _is_nan_text(raw: object) -> bool:
    # NaN that pandas parsed from an empty cell or "nan" reaches the finiteness check with its own message.
    return _is_blank(raw) or (isinstance(raw, str) and raw.strip().lower() in {"nan", "inf", "-inf", "+inf"})


def out_of_paper_range(frame: pd.DataFrame, dataset: str) -> list[OutOfRange]:
    """Features inside physical bounds but outside the paper's range for `dataset`."""
    report = []
    for column, (low, high) in DATASETS[dataset].ranges.items():
        values = frame[column].to_numpy(dtype=float)
        outside = (values < low - 1e-9) | (values > high + 1e-9)
        if outside.any():
            report.append(OutOfRange(column, int(outside.sum()), float(values.min()), float(values.max()), low, high))
    return report


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_csv(
    path: str | Path,
    required_targets: list[str] | None = None,
    kind: Kind | None = None,
    dataset: str | None = None,
) -> LoadedData:
    """Read and validate a CSV. `dataset` (a paper dataset name) enables the out-of-range report."""
    path = Path(path)
    if not path.is_file():
        raise DataValidationError(f"{path}: no such file")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as error:
        raise DataValidationError(f"{path}: not a readable CSV ({error})") from error
    kind = kind or (DATASETS[dataset].kind if dataset else kind_of_columns(list(raw.columns)))
    frame, ignored = validate_frame(raw, kind, list(required_targets or []), source=str(path))
    report = out_of_paper_range(frame, dataset) if dataset else []
    return LoadedData(frame, kind, str(path), file_sha256(path), ignored, report)


def shipped_path(dataset: str) -> Path:
    """Path of a shipped dataset CSV under data/."""
    if dataset not in DATASETS:
        raise KeyError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    return DATA_DIR / f"{dataset}.csv"


def load_shipped(dataset: str) -> LoadedData:
    spec = DATASETS[dataset]
    return load_csv(shipped_path(dataset), [t.column for t in spec.targets], spec.kind, dataset)
