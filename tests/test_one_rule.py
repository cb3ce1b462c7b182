"""One rule, one message (issue 28): "a number inside the physical range" is checked by the feature's quantity
(`cellmfg.domain.Quantity.problem`), and every way a value arrives words a refusal with that one message.

Costs: the in-process service on the fake bundle (one per module, ~2 s) and four requests.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import TypeAdapter, ValidationError
from starlette.testclient import TestClient

from cellmfg.dataio import DataValidationError, validate_frame
from cellmfg.domain import ELECTRODE_FEATURES, GDL_FEATURES, Quantity, feature_columns
from service.engine.errors import CsvInputError, OutcomesInputError, RequestRejectedError
from service.formats.schemas import ElectrodeRow, GdlRow
from testkit.fakes import example_rows

AM = next(q for q in ELECTRODE_FEATURES if q.column == "am_wt_pct")


def _edge_values(q: Quantity) -> list[Any]:
    span = q.physical_max - q.physical_min
    return [q.physical_min, q.physical_max, (q.physical_min + q.physical_max) / 2, int(q.physical_max),
            q.physical_min - span * 1e-9, q.physical_max + span * 1e-9, math.nextafter(q.physical_max, math.inf),
            -1, 10**400, math.nan, math.inf, -math.inf, True, False, "1", None]


@pytest.mark.parametrize("q", [*ELECTRODE_FEATURES, *GDL_FEATURES], ids=lambda q: q.column)
def test_the_schema_and_the_column_test_give_the_quantitys_verdict(q: Quantity) -> None:
    """pydantic's compiled bounds (the JSON endpoints) and the vectorised column test (CSV, dataset files) accept
    exactly what `Quantity.problem` accepts."""
    row_type = ElectrodeRow if q in ELECTRODE_FEATURES else GdlRow
    kind = "electrode" if q in ELECTRODE_FEATURES else "gdl"
    adapter = TypeAdapter(row_type)
    good_row = example_rows(kind, "nmc" if kind == "electrode" else "gdl1000", 1)[0]
    for value in _edge_values(q):
        problem = q.problem(value)
        try:
            adapter.validate_python({**good_row, q.column: value})
            schema_refuses = False
        except ValidationError:
            schema_refuses = True
        assert schema_refuses == (problem is not None), (value, problem)
        if isinstance(value, float):
            assert bool(q.outside(np.array([value]))[0]) == (problem is not None), (value, problem)


def test_the_message_names_field_value_unit_and_range() -> None:
    assert AM.problem(50.0) is None
    assert AM.problem(150) == AM.problem(150.0) == AM.problem(np.float64(150.0)) == \
        "am_wt_pct = 150.0 wt% is physically impossible; allowed: a number in [0, 100] wt%"
    assert AM.problem("abc") == "am_wt_pct = 'abc' is not a number; allowed: a number in [0, 100] wt%"
    assert AM.problem(True) == "am_wt_pct = True is not a number; allowed: a number in [0, 100] wt%"
    assert AM.problem(math.inf) == "am_wt_pct = inf is not finite; allowed: a number in [0, 100] wt%"
    assert AM.problem(" ") == "am_wt_pct is empty; allowed: a number in [0, 100] wt%"  # a blank cell
    assert AM.problem(None) == "am_wt_pct = None is not a number; allowed: a number in [0, 100] wt%"  # JSON null


def _good_rows(n: int) -> list[dict[str, Any]]:
    return example_rows("electrode", "nmc", n)


def _csv_body(rows: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=feature_columns("electrode"))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


@pytest.mark.parametrize("bad", [150.0, -0.5, "abc"], ids=["over", "under", "text"])
def test_the_four_entry_points_give_the_identical_message(client: TestClient, bad: Any) -> None:
    """JSON predict (a model's own route), CSV predict, schema validation (the typed JSON route) and the dataset
    check of training data each put only their "where" in front of the quantity's one message."""
    expected = AM.problem(bad)
    assert expected is not None
    rows = _good_rows(2)
    rows[1]["am_wt_pct"] = bad

    schema = client.post("/predict/electrode", json={"chemistry": "nmc", "rows": rows})
    by_model = client.post("/predict/density_nmc_onnx", json={"rows": rows})
    by_csv = client.post("/predict/electrode?chemistry=nmc", content=_csv_body(rows),
                         headers={"Content-Type": "text/csv"})
    frame = pd.DataFrame([{**row, "density_g_cm3": 2.5} for row in rows]).astype(str)
    with pytest.raises(DataValidationError) as dataset_check:
        validate_frame(frame, "electrode", ["density_g_cm3"], "lab.csv")

    messages = {}
    for name, response in (("schema", schema), ("JSON predict", by_model), ("CSV predict", by_csv)):
        assert response.status_code == 400, (name, response.text)
        details = [d["msg"] for d in response.json()["detail"]]
        assert len(details) == 1, (name, details)
        messages[name] = details[0]
    messages["dataset check"] = str(dataset_check.value)
    assert messages["schema"] == f"row 1, {expected}"
    assert messages["JSON predict"] == f"row 1, {expected}"
    assert messages["CSV predict"] == f"line 3, {expected}"
    assert messages["dataset check"] == f"lab.csv: row 2 (line 3), {expected}"


def test_every_refusal_is_one_error_type_with_one_body() -> None:
    for error in (CsvInputError("bad.csv: line 2, ...", [{"type": "value_error", "loc": [], "msg": "x"}]),
                  OutcomesInputError("not outcomes", [{"type": "json", "loc": [], "msg": "y"}])):
        assert isinstance(error, RequestRejectedError) and isinstance(error, ValueError)
        assert error.status == 400 and error.body() == {"error": error.message, "detail": error.detail}
    too_big = CsvInputError("too many rows", [], status=413)
    assert too_big.status == 413 and too_big.body() == {"error": "too many rows", "detail": []}
