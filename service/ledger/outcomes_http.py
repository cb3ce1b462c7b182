"""POST /outcomes bodies (JSON, or CSV as a QC lab exports it) -> the ledger's OutcomeItems, and the answers.

JSON: `{"outcomes": [{"prediction_id": "...", "values": {"density_g_cm3": 3.1}, "units": {...}, "measured_at":
"2026-01-05T10:00:00Z", "note": "..."}]}` (or the list alone); `sample_id` with `dataset` instead of prediction_id.
CSV: a header naming `prediction_id` (or `sample_id` and `dataset`), one column per measured target (its contract
name, e.g. `density_g_cm3`; a blank cell: not measured), optionally `{target}_unit`, `measured_at` (ISO 8601 with a
time zone) and `note`. The columns of a scored CSV (features, `*_predicted`, `*_low`, `*_high`, `in_domain`, ...)
are ignored, so a lab can fill in the measured column of the file the service answered and post it back; any other
column is refused, since a misspelt target would otherwise be dropped without a word.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from cellmfg.domain import TARGETS, feature_columns
from service.engine.errors import MAX_ERRORS_REPORTED, OutcomesInputError
from service.formats.csvio import parsed_number
from service.formats.media import CSV_MEDIA_TYPES, media_type
from service.ledger import OutcomeItem, OutcomesRejectedError, OutcomeTable

_TARGET_COLUMNS = [t.column for t in TARGETS.values()]
_ID_COLUMNS = ("prediction_id", "sample_id", "dataset", "measured_at", "note")
_PASSED = {"group_id", "operator", "in_domain", "out_of_domain", *feature_columns("electrode"),
           *feature_columns("gdl")}
_SCORED_SUFFIXES = ("_predicted", "_low", "_high")


class _OutcomesBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    outcomes: list[OutcomeItem]


def parse_outcomes(data: bytes, content_type: str | None) -> tuple[list[OutcomeItem], list[int] | None]:
    """The posted items and, for a CSV, the line of each (for the error messages)."""
    if media_type(content_type) in CSV_MEDIA_TYPES:
        return _parse_csv(data)
    return _parse_json(data), None


def _parse_json(data: bytes) -> list[OutcomeItem]:
    text = data.strip()
    try:
        if text.startswith(b"["):
            return _OutcomesBody.model_validate_json(b'{"outcomes": ' + text + b"}").outcomes
        return _OutcomesBody.model_validate_json(text).outcomes
    except ValidationError as error:
        detail = [{"type": e["type"], "loc": list(e["loc"]), "msg": f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"}
                  for e in error.errors(include_url=False)]
        raise OutcomesInputError(f"the body is not a list of outcomes: {detail[0]['msg'] if detail else ''}; "
                                 "expected {\"outcomes\": [{\"prediction_id\": ..., \"values\": {target: value}}]}",
                                 detail) from None


def _allowed_column(name: str) -> bool:
    if name in _ID_COLUMNS or name in _TARGET_COLUMNS or name in _PASSED:
        return True
    if any(name == f"{t}_unit" for t in _TARGET_COLUMNS):
        return True
    return any((name.startswith(t) and name[len(t):] in _SCORED_SUFFIXES) or name.startswith(f"{t}_shap_")
               for t in _TARGET_COLUMNS)


def _parse_csv(data: bytes) -> tuple[list[OutcomeItem], list[int]]:
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        raise OutcomesInputError("the CSV body is not UTF-8 text", [{"type": "encoding", "loc": ["csv"],
                                 "msg": "save the file as UTF-8 CSV"}]) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [name.strip() for name in next(reader, [])]
    problems: list[dict[str, Any]] = []
    unknown = [name for name in header if not _allowed_column(name)]
    for name in unknown:
        problems.append(_line_problem(1, name, f"unknown column {name!r}; allowed: prediction_id (or sample_id and "
                                      f"dataset), {', '.join(_TARGET_COLUMNS)}, <target>_unit, measured_at, note"))
    if not {"prediction_id", "sample_id"} & set(header):
        problems.append(_line_problem(1, None, "no prediction_id column (nor sample_id with dataset)"))
    targets = [name for name in header if name in _TARGET_COLUMNS]
    if not targets:
        problems.append(_line_problem(1, None, f"no measured target column; allowed: {', '.join(_TARGET_COLUMNS)}"))
    if problems:
        raise OutcomesInputError(f"CSV header: {problems[0]['msg']}", problems)
    items: list[OutcomeItem] = []
    lines: list[int] = []
    for cells in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in cells):
            continue
        row = {name: (cells[j].strip() if j < len(cells) else "") for j, name in enumerate(header)}
        values: dict[str, float] = {}
        for target in targets:
            if row[target]:
                # The prediction CSV's rule ("nan"/"inf" pass here; the ledger refuses them with the other problems).
                number = parsed_number(row[target])
                if number is None:
                    hint = " (write digits as 0-9)" if not row[target].isascii() else ""
                    problems.append(_line_problem(line, target, f"{row[target]!r} is not a number{hint}"))
                    continue
                values[target] = number
        units = {t: row[f"{t}_unit"] for t in values if row.get(f"{t}_unit")}
        measured_at = None
        if row.get("measured_at"):
            try:
                measured_at = datetime.fromisoformat(row["measured_at"])
            except ValueError:
                measured_at = None
            if measured_at is None or measured_at.tzinfo is None:
                problems.append(_line_problem(line, "measured_at", f"{row['measured_at']!r}: allowed: an ISO 8601 "
                                              "time with a zone, e.g. 2026-01-05T10:00:00+00:00"))
                continue
        try:
            items.append(OutcomeItem.model_validate({
                "prediction_id": row.get("prediction_id") or None, "sample_id": row.get("sample_id") or None,
                "dataset": row.get("dataset") or None, "values": values, "units": units, "measured_at": measured_at,
                "note": row.get("note") or None}))
        except ValidationError as error:
            for e in error.errors(include_url=False):
                field = ".".join(str(p) for p in e["loc"])
                problems.append(_line_problem(line, field, f"{row.get(field, '')!r}: {e['msg']}"))
            continue
        lines.append(line)
    if problems:
        raise OutcomesInputError(f"{len(problems)} problem(s), nothing written: {problems[0]['msg']}", problems)
    if not items:
        raise OutcomesInputError("the CSV has no data rows", [_line_problem(2, None, "no data rows")])
    return items, lines


def _line_problem(line: int, column: str | None, message: str) -> dict[str, Any]:
    where = f"line {line}" + (f", column {column}" if column else "")
    return {"type": "outcome", "loc": ["csv", f"line {line}", *([column] if column else [])],
            "msg": f"{where}: {message}"}


def rejected_body(rejected: OutcomesRejectedError, lines: list[int] | None) -> dict[str, Any]:
    """The 400 answer of a post the ledger refused: every problem, by item (or CSV line) and field."""
    detail = []
    for problem in rejected.problems[:MAX_ERRORS_REPORTED]:
        if lines is not None:
            line = lines[problem.index]
            loc: list[Any] = ["csv", f"line {line}", problem.field]
            where = f"line {line}, {problem.field}"
        else:
            loc = ["outcomes", problem.index, problem.field]
            where = f"outcome {problem.index}, {problem.field}"
        allowed = f" (allowed: {problem.allowed})" if problem.allowed else ""
        detail.append({"type": "outcome", "loc": loc, "msg": f"{where}: {problem.message}{allowed}",
                       "allowed": problem.allowed})
    if len(rejected.problems) > MAX_ERRORS_REPORTED:
        detail.append({"type": "too_many_errors", "loc": [],
                       "msg": f"{len(rejected.problems) - MAX_ERRORS_REPORTED} more problems not listed"})
    return {"error": f"{len(rejected.problems)} problem(s) in the outcomes, nothing written: {detail[0]['msg']}",
            "detail": detail}


def outcomes_csv(table: OutcomeTable) -> str:
    """Rows in the dataset CSV schema; numbers as shortest round-trip text, unmeasured targets blank."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table.columns)
    for row in table.rows:
        writer.writerow(["" if v is None else repr(v) if isinstance(v, float) else v for v in row])
    return out.getvalue()
