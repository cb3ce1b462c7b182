"""The bad-input catalogue: requests the service must refuse with a specific 4xx whose message names the problem.

tests/test_robustness.py sends every case in-process and some to a real server; scripts/soak.py mixes them into
its load. Each case holds its body as the bytes sent (dictionaries are written with `json.dumps`, which writes NaN
and Infinity as bare tokens), the Content-Type, the route, the status expected and fragments the answer must hold.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

MIB = 1024 * 1024
ELECTRODE = "/predict/electrode"
GDL = "/predict/gdl"


@dataclass(frozen=True)
class BadInput:
    name: str
    body: bytes
    content_type: str
    status: int
    fragments: tuple[str, ...]
    path: str = ELECTRODE


def electrode_row(**changes: Any) -> dict[str, Any]:
    """The README's example NMC row with `changes`."""
    from service.formats.schemas import EXAMPLE_INPUT

    return {**EXAMPLE_INPUT["rows"][0], **changes}


def parsed_answer(status: int, text: str, expected_status: int) -> tuple[Any, str | None]:
    """(the JSON answer, None) if the answer has the expected status and is JSON; else (None, what is wrong)."""
    if status != expected_status:
        return None, f"status {status}, expected {expected_status}: {text[:500]}"
    try:
        return json.loads(text), None
    except ValueError:
        return None, f"not JSON: {text[:500]}"


def refusal_problem(status: int, text: str, expected_status: int, fragments: tuple[str, ...] | list[str]) -> str | None:
    """None if an answer (`status`, body `text`) is the expected refusal, a JSON object with an `error` message
    holding every fragment; else what is wrong."""
    answer, problem = parsed_answer(status, text, expected_status)
    if problem is not None:
        return problem
    if not isinstance(answer, dict) or not answer.get("error"):
        return f"no error message: {text[:500]}"
    readable = text.replace("\\u00b5", "µ")  # JSON writers may escape the µ of units
    missing = [fragment for fragment in fragments if fragment not in readable]
    return f"the answer lacks {missing}: {readable[:800]}" if missing else None


def _case(name: str, body: Any, status: int, fragments: list[str], content_type: str = "application/json",
          path: str = ELECTRODE) -> BadInput:
    data = body if isinstance(body, bytes) else body.encode() if isinstance(body, str) else json.dumps(body).encode()
    return BadInput(name=name, body=data, content_type=content_type, status=status, fragments=tuple(fragments),
                    path=path)


@functools.cache
def bad_inputs() -> tuple[BadInput, ...]:
    """Every case (built once: one body is 50 MiB)."""
    from service.formats.schemas import EXAMPLE_INPUT, GDL_EXAMPLE_INPUT

    row = electrode_row
    row_text = json.dumps(row())[:-1]  # the row object without its closing brace, to append raw JSON tokens

    def raw_row(extra: str) -> str:
        # The feature `extra` sets is left out of the row first: a key repeated in one object is refused on its own.
        key = extra.split(":", 1)[0].strip().strip('"')
        text = json.dumps({k: v for k, v in row().items() if k != key})[:-1] if key in row() else row_text
        return '{"chemistry": "nmc", "rows": [' + text + ", " + extra + "}]}"

    def nmc(*rows: Any, **fields: Any) -> dict[str, Any]:
        return {"chemistry": "nmc", "rows": list(rows), **fields}

    return (
        # wrong types
        _case("number as string", nmc(row(am_wt_pct="94")), 400, ["row 0", "am_wt_pct", "'94'", "[0, 100] wt%"]),
        _case("boolean as number", nmc(row(roll_gap_um=True)), 400, ["roll_gap_um", "True"]),
        _case("null", nmc(row(comma_gap_um=None)), 400, ["comma_gap_um"]),
        _case("list as number", nmc(row(comma_gap_um=[1])), 400, ["comma_gap_um", "[1]"]),
        _case("row not an object", nmc([1, 2, 3]), 400, ["row 0"]),
        _case("rows an object", {"chemistry": "nmc", "rows": {"0": row()}}, 400, ["rows", "list"]),
        _case("chemistry a number", {"chemistry": 3, "rows": [row()]}, 400, ["chemistry = 3", "graphite, si_gra, nmc"]),
        _case("explain not a boolean", nmc(row(), explain="maybe"), 400, ["explain", "'maybe'"]),
        # NaN and infinities, as JSON numbers and as strings
        _case("NaN number", raw_row('"am_wt_pct": NaN'), 400, ["row 0", "am_wt_pct", "finite"]),
        _case("Infinity number", raw_row('"roll_gap_um": Infinity'), 400, ["roll_gap_um", "finite"]),
        _case("-Infinity number", raw_row('"comma_gap_um": -Infinity'), 400, ["comma_gap_um"]),
        _case("overflowing number", raw_row('"comma_gap_um": 1e400'), 400, ["comma_gap_um", "inf"]),
        _case("NaN string", nmc(row(am_wt_pct="NaN")), 400, ["am_wt_pct", "'NaN'"]),
        _case("inf string", nmc(row(roll_gap_um="inf")), 400, ["roll_gap_um", "'inf'"]),
        _case("Infinity string", nmc(row(roll_gap_um="-Infinity")), 400, ["roll_gap_um", "'-Infinity'"]),
        # missing and extra fields
        _case("missing chemistry", {"rows": [row()]}, 400, ["chemistry is missing"]),
        _case("missing rows", {"chemistry": "nmc"}, 400, ["rows"]),
        _case("missing feature", nmc({k: v for k, v in row().items() if k != "roll_gap_um"}), 400,
              ["'roll_gap_um' is missing"]),
        _case("extra feature", nmc(row(porosity=0.3)), 400, ["unknown feature 'porosity'", "allowed features"]),
        _case("extra field", nmc(row(), model="x"), 400, ["unknown field 'model'"]),
        _case("empty rows", nmc(), 400, ["at least one row"]),
        # negative and huge values
        _case("negative gap", nmc(row(roll_gap_um=-5.0)), 400, ["roll_gap_um", "-5.0", "[0, 5000] µm"]),
        _case("negative fraction", nmc(row(am_wt_pct=-0.001)), 400, ["am_wt_pct", "-0.001"]),
        _case("huge value", nmc(row(comma_gap_um=1e308)), 400, ["comma_gap_um", "1e+308"]),
        _case("huge integer literal", raw_row('"roll_speed_m_min": ' + "9" * 5000), 400, ["Invalid JSON"]),
        # size
        _case("10,001 rows", nmc(*[row()] * 10_001), 413, ["10001 rows", "the limit is 10000 rows per request"]),
        _case("50 MB body", b'{"chemistry": "nmc", "rows": [' + b" " * (50 * MIB) + b"]}", 413,
              ["larger than this server accepts", "CELLMFG_MAX_BODY_BYTES"]),
        # deeply nested and non-JSON bodies
        _case("deeply nested lists", b'{"chemistry": "nmc", "rows": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400,
              ["Invalid JSON", "recursion limit"]),
        _case("deeply nested objects",
              b'{"chemistry": "nmc", "rows": [' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"]}", 400,
              ["Invalid JSON"]),
        _case("not JSON", b"chemistry=nmc&rows=1", 400, ["Invalid JSON"]),
        _case("truncated JSON", json.dumps(EXAMPLE_INPUT)[:-3], 400, ["Invalid JSON"]),
        _case("binary garbage", bytes(range(256)) * 4, 400, ["Invalid JSON"]),
        _case("JSON array", b"[1, 2, 3]", 400, ["expected a JSON object"]),
        _case("JSON string", b'"nmc"', 400, ["expected a JSON object"]),
        # unknown chemistry or dataset
        _case("unknown chemistry", {"chemistry": "lfp", "rows": [row()]}, 400, ["'lfp'", "graphite, si_gra, nmc"]),
        _case("chemistry in the wrong case", {"chemistry": "NMC", "rows": [row()]}, 400,
              ["'NMC'", "graphite, si_gra, nmc"]),
        _case("unknown gdl dataset",
              {"dataset": "gdl500", "rows": [{**GDL_EXAMPLE_INPUT["rows"][0], "thickness_um": float("nan")}]}, 400,
              ["'gdl500'", "gdl200, gdl1000", "thickness_um"], path=GDL),
        # wrong content type
        _case("text/plain", json.dumps(EXAMPLE_INPUT), 415, ["application/json"], content_type="text/plain"),
        _case("form", b"chemistry=nmc", 415, ["application/json"], content_type="application/x-www-form-urlencoded"),
        _case("multipart", b"--b\r\nContent-Disposition: form-data; name=x\r\n\r\n1\r\n--b--\r\n", 415,
              ["application/json"], content_type="multipart/form-data; boundary=b"),
        _case("pickle", b"\x80\x04K\x01.", 415, ["application/json"], content_type="application/vnd.bentoml+pickle"),
    )
