"""CSV in and out for the predict endpoints and `cellmfg predict`: the lab's spreadsheet, scored.

Reading: UTF-8 text (a leading byte-order mark, as Excel's "CSV UTF-8" writes, is skipped), comma-separated, `.` as
the decimal mark (digits 0-9 only: Python would read Arabic-Indic or full-width digits as numbers too), one header
line naming the columns as in `data/*.csv` (units in the names, e.g. `roll_gap_um`).
Every feature column the model needs must be there; any other column (`sample_id`, a measured `density_g_cm3`, a
note) is carried through untouched. Files separated by `;` or tabs are refused rather than guessed: such files
usually come from a locale that writes `0,5` for one half, and a guess would read numbers wrong without a word. Each
problem is reported with its line (the header is line 1) and column, at most `MAX_ERRORS_REPORTED` of them.

Writing: every input column as sent, then per target `{column}_predicted` (and `{column}_low`, `{column}_high` with
intervals, and `{column}_spread` when an ensemble's spread scales that target's interval, as the JSON answer's
`spread` shows), `in_domain`, `out_of_domain` (the features outside the training range, `;`-separated), and with
explanations `{column}_shap_base` and `{column}_shap_{feature}` per feature. Numbers are written with Python's
shortest round-trip repr, so reading the CSV back gives the same float64 values as the JSON answer. An input column
with the name of an output column is replaced by the fresh value. A cell holding a line break or a bare carriage return
is quoted, so it reads back as one cell.

Spreadsheets run a cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return as a formula, so a sample id
such as `=HYPERLINK(...)` would run when an operator opens the scored file. Every text cell passed through (and every
header name) that starts with one of them gets a leading `'` (OWASP's rule for CSV injection); numbers, negative ones
included, are written as they are. The JSON answer carries no input text, so it needs no such change.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cellmfg.contract import FeatureSpec
from cellmfg.domain import Kind, Quantity, features_for
from service.engine.errors import MAX_ERRORS_REPORTED, CsvInputError
from service.engine.model_store import feature_quantity
from service.engine.predict import Computed, Predictor
from service.formats.media import CSV_MEDIA_TYPES

BOM = "\ufeff"
# What a spreadsheet reads as the start of a formula (OWASP, "CSV Injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def kind_columns(kind: Kind) -> list[Quantity]:
    """The feature columns a kind's CSV needs, each checking its own cells (`Quantity.problem`)."""
    return list(features_for(kind))


def model_columns(features: Sequence[FeatureSpec]) -> list[Quantity]:
    """From a contract's `FeatureSpec`s."""
    return [feature_quantity(f) for f in features]


@dataclass(frozen=True)
class CsvTable:
    """A parsed CSV: its header and cells as sent (echoed in the answer) and the feature matrix."""

    header: list[str]
    cells: list[list[str]]
    x: np.ndarray  # float64 [rows, features] in the order of the feature columns asked for
    lines: list[int]  # the line each row ended on


def _problem(line: int, column: str | None, message: str, kind: str = "csv") -> dict[str, Any]:
    where = f"line {line}" + (f", column {column}" if column else "")
    return {"type": kind, "loc": ["csv", f"line {line}", *([column] if column else [])], "msg": f"{where}: {message}"}


def _value_problem(line: int, column: str, message: str) -> dict[str, Any]:
    """A cell that breaks its quantity's rule: the message (`Quantity.problem`) names the column already."""
    return {"type": "value_error", "loc": ["csv", f"line {line}", column], "msg": f"line {line}, {message}"}


def _fail(problems: list[dict[str, Any]], source: str) -> CsvInputError:
    shown = problems[:MAX_ERRORS_REPORTED]
    if len(problems) > MAX_ERRORS_REPORTED:
        shown.append({"type": "too_many_errors", "loc": ["csv"],
                      "msg": f"{len(problems) - MAX_ERRORS_REPORTED} more problems not listed; fix the ones above"})
    first = problems[0]["msg"]
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return CsvInputError(f"{source}: {first}{more}", shown)


def _decode(data: bytes, source: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise _fail([_problem(line, None, f"byte 0x{data[error.start]:02x} is not UTF-8 text; save the file as "
                                          "UTF-8 CSV (Excel: 'CSV UTF-8 (Comma delimited)')", "encoding")],
                    source) from None
    return text.removeprefix(BOM)


def read_csv(data: bytes, columns: list[Quantity], source: str = "CSV body",
             max_rows: int | None = None) -> CsvTable:
    """Parse and check a CSV body; raise `CsvInputError` naming each problem's line and column."""
    text = _decode(data, source)
    wanted = ", ".join(c.column for c in columns)
    if not text.strip():
        raise _fail([_problem(1, None, f"the CSV is empty; the first line must be a header naming the columns "
                                       f"{wanted}", "empty")], source)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = [name.strip() for name in next(reader)]
        records = []
        for record in reader:
            if record and any(cell.strip() for cell in record):
                records.append((reader.line_num, record))
    except csv.Error as error:
        raise _fail([_problem(reader.line_num, None, f"not valid CSV: {error}", "syntax")], source) from None
    problems = _check_header(header, columns)
    if problems:
        raise _fail(problems, source)
    if not records:
        raise _fail([_problem(2, None, "no data rows after the header", "empty")], source)
    if max_rows is not None and len(records) > max_rows:
        raise CsvInputError(f"{source}: {len(records)} rows in one request; the limit is {max_rows} rows per request "
                            "(CELLMFG_MAX_ROWS): split the file", [], status=413)
    positions = [header.index(c.column) for c in columns]
    x = np.empty((len(records), len(columns)), dtype=np.float64)
    for (line, record) in records:
        if len(record) != len(header):
            problems.append(_problem(line, None, f"{len(record)} fields, but the header has {len(header)} (a "
                                                 "missing or extra comma, or a decimal comma?)", "field_count"))
            if len(problems) > MAX_ERRORS_REPORTED:
                raise _fail(problems, source)
    if problems:
        raise _fail(problems, source)
    for j, (column, position) in enumerate(zip(columns, positions, strict=True)):
        cells = [record[position] for _, record in records]
        values = _column_values(cells)
        for i in np.flatnonzero(column.outside(values)).tolist():
            problems.append(_value_problem(records[i][0], column.column, _cell_problem(cells[i], column)))
            if len(problems) > MAX_ERRORS_REPORTED:
                raise _fail(problems, source)
        x[:, j] = values
    if problems:
        raise _fail(problems, source)
    return CsvTable(header, [record for _, record in records], x, [line for line, _ in records])


def _check_header(header: list[str], columns: list[Quantity]) -> list[dict[str, Any]]:
    wanted = ", ".join(c.column for c in columns)
    if len(header) == 1 and (";" in header[0] or "\t" in header[0]):
        separator = "';'" if ";" in header[0] else "a tab"
        return [_problem(1, header[0][:60], f"the header is one column: the file is separated by {separator}; "
                                            "send comma-separated CSV with '.' as the decimal mark (Excel: 'CSV UTF-8 "
                                            "(Comma delimited)')", "separator")]
    problems = []
    seen: dict[str, int] = {}
    for position, name in enumerate(header, start=1):
        if not name:
            problems.append(_problem(1, f"#{position}", "a column without a name; name every column", "header"))
        elif name in seen:
            problems.append(_problem(1, name, f"appears twice (columns {seen[name]} and {position})", "header"))
        seen.setdefault(name, position)
    for column in columns:
        if column.column not in seen:
            problems.append(_problem(1, column.column, f"missing; the header needs the columns {wanted} (any other "
                                                     "column is carried through)", "missing"))
    return problems


def _column_values(cells: list[str]) -> np.ndarray:
    """float64 values of one column's cells; NaN where a cell is not a plain decimal number."""
    try:
        values = np.asarray(cells, dtype=np.float64)
    except ValueError:
        values = np.array([_number(cell) for cell in cells], dtype=np.float64)
    else:
        # numpy accepts what float() does, including "1_000", "infinity" and Arabic-Indic or full-width digits
        # ("٩٤" is 94 to float()): look again at anything unusual.
        odd = [i for i, cell in enumerate(cells) if "_" in cell or not cell.isascii()]
        for i in odd:
            values[i] = math.nan
    return values


def parsed_number(cell: str) -> float | None:
    """The number a CSV cell holds, or None. Digits 0-9 only: float() also reads "1_000" and Arabic-Indic or
    full-width digits. "nan" and "inf" are numbers here; the range checks refuse them with their own message."""
    if "_" in cell or not cell.isascii():
        return None
    try:
        return float(cell)
    except ValueError:
        return None


def _number(cell: str) -> float:
    value = parsed_number(cell)
    return math.nan if value is None else value


def _cell_problem(cell: str, column: Quantity) -> str:
    """The quantity's own message for the cell's value (the text itself when it is not a number), with a hint for
    the usual spreadsheet slips."""
    text = cell.strip()
    value = parsed_number(text)
    problem = column.problem(text if value is None else value) or ""
    if value is None and text:
        hint = (" (write digits as 0-9)" if not text.isascii() else
                " (use '.' as the decimal mark)" if "," in text else "")
        return f"{problem}{hint}"
    return problem


# ---------------------------------------------------------------------------------------------------------------
# Writing


def json_rows_table(rows: list[dict[str, float]], columns: list[str], x: np.ndarray) -> CsvTable:
    """The table a JSON request stands for (features only), so a JSON request can be answered as CSV."""
    return CsvTable(list(columns), [[repr(float(v)) for v in row] for row in x.tolist()], x,
                    list(range(2, len(rows) + 2)))


def output_columns(targets: list[str], features: list[str], interval: bool, explain: bool,
                   ids: bool = False, spread: Collection[str] = ()) -> list[str]:
    """The answer's columns; `spread`: the targets whose answer carries an ensemble spread (with intervals)."""
    names = ["prediction_id"] if ids else []
    for target in targets:
        names.append(f"{target}_predicted")
        if interval:
            names += [f"{target}_low", f"{target}_high"]
            if target in spread:
                names.append(f"{target}_spread")
    names += ["in_domain", "out_of_domain"]
    if explain:
        for target in targets:
            names.append(f"{target}_shap_base")
            names += [f"{target}_shap_{feature}" for feature in features]
    return names


def write_csv(table: CsvTable, answer: dict[str, Any], targets: list[str], features: list[str], interval: bool,
              explain: bool) -> str:
    """The scored CSV: every input column as sent, then the answer's columns (see the module docstring)."""
    first = answer["predictions"][0] if answer["predictions"] else {}
    ids = "prediction_id" in first
    # Whether a target carries a spread depends on its model, not on the row: the first row says which do.
    spread = [target for target in targets if target in first.get("spread", {})] if interval else []
    added = output_columns(targets, features, interval, explain, ids, spread)
    added_set = set(added)
    keep = [i for i, name in enumerate(table.header) if name not in added_set]
    out = io.StringIO(newline="")
    writer = _CsvWriter(out)
    writer.writerow([neutralised(table.header[i]) for i in keep] + added)
    for cells, row in zip(table.cells, answer["predictions"], strict=True):
        values: list[Any] = [neutralised(cells[i]) for i in keep]
        if ids:
            values.append(row["prediction_id"])
        for target in targets:
            values.append(_num(row.get(target)))
            if interval:
                low, high = row["interval"][target] if target in row.get("interval", {}) else (None, None)
                values += [_num(low), _num(high)]
                if target in spread:
                    values.append(_num(row["spread"][target]))
        values.append("true" if row["in_domain"] else "false")
        values.append(";".join(item["feature"] for item in row["out_of_domain"]))
        if explain:
            for target in targets:
                explanation = row.get("explanation", {}).get(target)
                if explanation is None:
                    values += [""] * (1 + len(features))
                    continue
                values.append(_num(explanation["base_value"]))
                values += [_num(explanation["contributions"][feature]) for feature in features]
        writer.writerow(values)
    return out.getvalue()


class _CsvWriter:
    """csv.writer with "\n" line ends that also quotes a cell holding a bare "\r": Python 3.11's csv module quotes
    only the characters of its line terminator, and an unquoted "\r" ends the row for every CSV reader. Such a row
    (rare: only echoed input text can hold one) is written with "\r\n", which quotes it, and ends with "\n"."""

    def __init__(self, out: io.StringIO) -> None:
        self.out = out
        self.plain = csv.writer(out, lineterminator="\n")

    def writerow(self, values: list[Any]) -> None:
        if not any(isinstance(v, str) and "\r" in v for v in values):
            self.plain.writerow(values)
            return
        row = io.StringIO(newline="")
        csv.writer(row, lineterminator="\r\n").writerow(values)
        self.out.write(row.getvalue()[:-2] + "\n")


def neutralised(cell: str) -> str:
    """`cell` as a spreadsheet shows it rather than runs it: a leading `'` when it starts like a formula and is not a
    plain number (`-0.5` stays a number)."""
    if cell.startswith(FORMULA_STARTS) and not _PLAIN_NUMBER.fullmatch(cell.strip()):
        return "'" + cell
    return cell


def _num(value: Any) -> str:
    return "" if value is None else repr(float(value))


def models_header(answer: dict[str, Any]) -> str:
    """`density=density_nmc_onnx:3@champion, ...`: which versions answered, for a CSV answer's header."""
    return ", ".join(f"{task}={ref['name']}:{ref['version']}@{ref['alias']}" for task, ref in answer["models"].items())


def wants_csv(accept: str | None) -> bool:
    """Whether an Accept header prefers CSV to JSON (a missing header or */* means JSON)."""
    best_csv, best_json = 0.0, 0.0
    for position, entry in enumerate((accept or "").split(",")):
        parts = [p.strip() for p in entry.split(";")]
        media = parts[0].lower()
        q = 1.0
        for parameter in parts[1:]:
            if parameter.startswith("q="):
                try:
                    q = float(parameter[2:])
                except ValueError:
                    q = 0.0
        q -= position * 1e-6  # earlier entries win ties
        if media in CSV_MEDIA_TYPES:
            best_csv = max(best_csv, q)
        elif media in ("application/json", "application/*", "*/*"):
            best_json = max(best_json, q)
    return best_csv > 0 and best_csv > best_json


# ---------------------------------------------------------------------------------------------------------------
# Scoring a CSV: the one code path of the HTTP endpoints and `cellmfg predict`


@dataclass(frozen=True)
class Scored:
    """A scored table: the answer in the JSON shape, and what is needed to write it as CSV."""

    table: CsvTable
    answer: dict[str, Any]
    targets: list[str]
    features: list[str]
    interval: bool
    explain: bool
    computed: Computed | None = None  # the arrays behind the answer, for the prediction ledger

    def client_column(self, name: str) -> list[str | None] | None:
        """A passed-through column such as sample_id or group_id (blank cells: None), or None when absent."""
        if name not in self.table.header:
            return None
        j = self.table.header.index(name)
        return [cells[j].strip() or None if j < len(cells) else None for cells in self.table.cells]

    def to_csv(self) -> str:
        return write_csv(self.table, self.answer, self.targets, self.features, self.interval, self.explain)


def score_csv(predictor: Predictor, data: bytes, *, kind: Kind | None = None, dataset: str | None = None,
              model: str | None = None, explain: bool = False, interval: bool = False,
              source: str = "CSV body") -> Scored:
    """Score a CSV with the models of (`kind`, `dataset`) or with the single model `model`.

    Raises `CsvInputError` for a bad file and `RequestRejectedError` for a request the catalogue cannot answer."""
    if model is not None:
        answering = predictor.model_answering(model)
        columns = model_columns(answering[0].model.contract.features)
    elif kind is not None and dataset is not None:
        answering = predictor.answering(kind, dataset)
        columns = kind_columns(kind)
    else:
        raise ValueError("score_csv needs a model, or a kind and a dataset")
    table = read_csv(data, columns, source, max_rows=predictor.settings.max_rows)
    answer, computed = predictor.compute(answering, table.x, explain, interval)
    return Scored(table, answer, [a.target.column for a in answering], [c.column for c in columns], interval, explain,
                  computed)


def scored_json(answer: dict[str, Any], rows: list[dict[str, float]], features: list[str], interval: bool,
                explain: bool) -> Scored:
    """A JSON request's answer as a `Scored` table, to send as CSV when the client asks for it."""
    x = np.array([[row[f] for f in features] for row in rows], dtype=np.float64).reshape(len(rows), len(features))
    return Scored(json_rows_table(rows, features, x), answer, _target_columns(answer), features, interval, explain)


def _target_columns(answer: dict[str, Any]) -> list[str]:
    first = answer["predictions"][0] if answer["predictions"] else {}
    return [key for key in first
            if key not in {"in_domain", "out_of_domain", "interval", "spread", "explanation", "prediction_id"}]
