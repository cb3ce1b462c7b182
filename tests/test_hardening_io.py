"""Issue 22, the input/output side: what an attacker (or an unlucky lab file) could send and what came back.

Bounded design errors, CSV cells that break or run in a spreadsheet, an impossible prediction outside its own
interval, JSON and CSV read the same way (byte-order mark, encodings, digits, repeated keys, bad query parameters)
and every example of the OpenAPI document answered 200. In-process BentoML app on the fake bundle.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from cellmfg.domain import feature_columns
from service.design.schemas import MAX_DESIGN_ENTRIES
from service.formats.csvio import neutralised
from service.formats.schemas import MAX_ERRORS_REPORTED
from service.web.guards import MAX_DESIGN_BODY_BYTES
from testkit.fakes import example_rows

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::PendingDeprecationWarning")

ELECTRODE = feature_columns("electrode")
ROW = {"am_wt_pct": 94.0, "solid_content_pct": 60.0, "coating_speed_m_min": 0.5, "comma_gap_um": 200.0,
       "roll_speed_m_min": 0.4, "roll_gap_um": 100.0}
DESIGN = {"chemistry": "nmc", "targets": {"density_g_cm3": {"value": 3.0}}}
JSON = {"Content-Type": "application/json"}


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text[:500]
    body = response.json()
    assert isinstance(body["error"], str) and isinstance(body["detail"], list), body
    return dict(body)


# --- 2. /design error answers are bounded ---------------------------------------------------------------------


def test_a_huge_design_body_is_refused_unparsed_with_a_short_answer(client: TestClient) -> None:
    body = json.dumps({**DESIGN, "fixed": {f"k{i}": 1.0 for i in range(200_000)}}).encode()
    assert len(body) > 2_500_000
    response = client.post("/design/electrode", content=body, headers=JSON)
    assert len(response.content) < 1000
    assert str(MAX_DESIGN_BODY_BYTES) in _error(response, 413)["error"]


def test_many_unknown_keys_under_the_body_limit_answer_one_error(client: TestClient) -> None:
    body = json.dumps({**DESIGN, "fixed": {f"k{i}": 1.0 for i in range(3000)}}).encode()
    assert len(body) < MAX_DESIGN_BODY_BYTES
    response = client.post("/design/electrode", content=body, headers=JSON)
    error = _error(response, 400)
    assert len(response.content) < 2000
    assert [d["loc"] for d in error["detail"]] == [["fixed"]]
    assert f"at most {MAX_DESIGN_ENTRIES}" in error["detail"][0]["msg"]


@pytest.mark.parametrize("value", [1.0, "x"], ids=["unknown-keys", "unknown-keys-and-strings"])
def test_design_problems_are_capped_like_predict(client: TestClient, value: Any) -> None:
    fixed = {f"f{i}": value for i in range(MAX_DESIGN_ENTRIES)}
    bounds = {f"b{i}": {"min": value, "max": value} for i in range(MAX_DESIGN_ENTRIES)}
    response = client.post("/design/electrode", json={**DESIGN, "fixed": fixed, "bounds": bounds})
    detail = _error(response, 400)["detail"]
    assert len(detail) == MAX_ERRORS_REPORTED + 1
    assert detail[-1]["type"] == "too_many_errors" and "more problems not listed" in detail[-1]["msg"]


# --- 3 and 4. The scored CSV: a bare CR stays in its cell, formulas are neutralised ------------------------------


@pytest.mark.parametrize(("cell", "written"), [
    ("=HYPERLINK(\"http://x\",\"y\")", "'=HYPERLINK(\"http://x\",\"y\")"),
    ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
    ("@SUM(1)", "'@SUM(1)"),
    ("\t=1+1", "'\t=1+1"),
    ("\r=2+2", "'\r=2+2"),
    ("-1+2", "'-1+2"),
    ("-", "'-"),
    ("-3.5", "-3.5"),
    ("+2e-3", "+2e-3"),
    ("S-001", "S-001"),
    ("", ""),
])
def test_neutralised_cells(cell: str, written: str) -> None:
    assert neutralised(cell) == written


def _scored(client: TestClient, text: str) -> tuple[list[list[str]], str]:
    response = client.post("/predict/electrode?chemistry=nmc&interval=true", content=text.encode(),
                           headers={"Content-Type": "text/csv", "Accept": "text/csv"})
    assert response.status_code == 200, response.text
    rows = list(csv.reader(io.StringIO(response.text, newline=""), strict=True))
    return rows, response.text


def test_a_bare_carriage_return_and_formulas_round_trip_as_single_neutralised_rows(client: TestClient) -> None:
    rows = example_rows("electrode", "nmc", 6, seed=3)
    rows[2] = {**rows[2], "roll_gap_um": 250.0}  # the row the page lost behind the CR: outside the training range
    ids = ["\r=2+2", "=HYPERLINK(\"http://x\",\"y\")", "plain", "+cmd|' /C calc'!A0", "@SUM(1)", "\t=1+1"]
    notes = ["-3.5", "a\nb", "", "-", "x", "=1+1"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)  # a bare CR, quoted, in the lab's file
    writer.writerow(["sample_id", "=1+1", *ELECTRODE])
    for sample, note, row in zip(ids, notes, rows, strict=True):
        writer.writerow([sample, note, *(repr(row[c]) for c in ELECTRODE)])
    scored, text = _scored(client, out.getvalue())

    assert scored[0][:2] == ["sample_id", "'=1+1"] and scored[0][2:8] == ELECTRODE
    assert len(scored) == 1 + len(rows)
    assert [r[0] for r in scored[1:]] == [neutralised(s) for s in ids]
    assert [r[1] for r in scored[1:]] == ["-3.5", "a\nb", "", "'-", "x", "'=1+1"]
    assert [[float(v) for v in r[2:8]] for r in scored[1:]] == [[row[c] for c in ELECTRODE] for row in rows]
    in_domain = scored[0].index("in_domain")
    assert [r[in_domain] for r in scored[1:]] == ["true", "true", "false", "true", "true", "true"]
    assert "\"'\r=2+2\"" in text  # the CR is inside a quoted cell


def test_the_json_answer_of_a_csv_stays_exact(client: TestClient) -> None:
    text = "sample_id,am_wt_pct,solid_content_pct,coating_speed_m_min,comma_gap_um,roll_speed_m_min,roll_gap_um\n" \
           "=1+1,-0,60,0.5,200,0.4,100\n"
    response = client.post("/predict/electrode?chemistry=nmc", content=text.encode(),
                           headers={"Content-Type": "text/csv"})
    # -0 wt% is physically possible (0 to 100): the number is read, not neutralised
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["out_of_domain"][0] == {"feature": "am_wt_pct", "value": 0.0,
                                                                      "min": 85.0, "max": 97.5}


# --- 8. An impossible prediction is clipped to the physical range, inside its interval ---------------------------


def test_an_impossible_prediction_is_clipped_flagged_and_inside_its_interval(client: TestClient,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from service.engine.model_store import ServedModel

    raw_predict = ServedModel.predict

    def impossible(self: ServedModel, x: np.ndarray) -> np.ndarray:
        out = raw_predict(self, x)
        return np.where(x[:, 0] == 0.0, -2.66, out)  # am_wt_pct 0: the issue's density of -2.66 g/cm³

    monkeypatch.setattr(ServedModel, "predict", impossible)
    odd = {**ROW, "am_wt_pct": 0.0, "solid_content_pct": 100.0, "comma_gap_um": 5000.0}
    response = client.post("/predict/electrode", json={"chemistry": "nmc", "rows": [ROW, odd], "interval": True,
                                                       "explain": True})
    assert response.status_code == 200, response.text
    normal, clipped = response.json()["predictions"]
    assert "clipped" not in normal
    assert clipped["clipped"] == {"density_g_cm3": -2.66, "mass_loading_mg_cm2": -2.66}
    for target, (low, high) in clipped["interval"].items():
        assert clipped[target] == 0.0 and low <= clipped[target] <= high
        explanation = clipped["explanation"][target]  # adds up to what the model said, as documented
        assert explanation["base_value"] + sum(explanation["contributions"].values()) == pytest.approx(-2.66, abs=1e-4)
    for target, (low, high) in normal["interval"].items():
        assert low <= normal[target] <= high


# --- 10. JSON and CSV read consistently -------------------------------------------------------------------------


def test_a_json_body_with_a_byte_order_mark_is_read_like_a_csv_one(client: TestClient) -> None:
    body = json.dumps({"chemistry": "nmc", "rows": [ROW]}).encode()
    plain = client.post("/predict/electrode", content=body, headers=JSON)
    with_bom = client.post("/predict/electrode", content=b"\xef\xbb\xbf" + body, headers=JSON)
    assert plain.status_code == with_bom.status_code == 200, with_bom.text
    assert with_bom.json() == plain.json()
    one_model = client.post("/predict/density_nmc_onnx", content=b"\xef\xbb\xbf" + json.dumps({"rows": [ROW]}).encode(),
                            headers=JSON)
    assert one_model.status_code == 200, one_model.text


@pytest.mark.parametrize("path", ["/predict/electrode", "/predict/density_nmc_onnx", "/design/electrode"])
@pytest.mark.parametrize("encoding", ["gzip", "br", "deflate"])
def test_a_compressed_body_is_a_415(client: TestClient, path: str, encoding: str) -> None:
    body = json.dumps({"chemistry": "nmc", "rows": [ROW]}).encode()
    response = client.post(path, content=body, headers={**JSON, "Content-Encoding": encoding})
    assert encoding in _error(response, 415)["error"]


@pytest.mark.parametrize("cell", ["٩٤", "９４", "9٤"], ids=["arabic-indic", "full-width", "mixed"])
def test_non_ascii_digits_in_a_csv_are_not_numbers(client: TestClient, cell: str) -> None:
    text = f"{','.join(ELECTRODE)}\n{cell},60,0.5,200,0.4,100\n"
    response = client.post("/predict/electrode?chemistry=nmc", content=text.encode(),
                           headers={"Content-Type": "text/csv"})
    detail = _error(response, 400)["detail"]
    assert detail[0]["loc"] == ["csv", "line 2", "am_wt_pct"] and "0-9" in detail[0]["msg"]


@pytest.mark.parametrize(("path", "body", "key"), [
    ("/predict/electrode", b'{"chemistry": "nmc", "chemistry": "graphite", "rows": [ROW]}', "chemistry"),
    ("/predict/electrode", b'{"chemistry": "nmc", "rows": [{"am_wt_pct": 94, "am_wt_pct": 95}]}', "am_wt_pct"),
    ("/predict/density_nmc_onnx", b'{"rows": [ROW], "explain": false, "explain": true}', "explain"),
    ("/design/electrode", b'{"chemistry": "nmc", "targets": {"density_g_cm3": {"value": 3, "value": 2}}}', "value"),
])
def test_a_repeated_json_key_is_refused_naming_it(client: TestClient, path: str, body: bytes, key: str) -> None:
    body = body.replace(b"ROW", json.dumps(ROW).encode())
    error = _error(client.post(path, content=body, headers=JSON), 400)
    assert repr(key) in error["error"] and error["detail"][0]["loc"] == [key]


@pytest.mark.parametrize(("path", "headers", "body"), [
    ("/predict/density_nmc_onnx?explain=maybe", JSON, json.dumps({"rows": [ROW]}).encode()),
    ("/predict/electrode?chemistry=nmc&interval=maybe", {"Content-Type": "text/csv"},
     f"{','.join(ELECTRODE)}\n94,60,0.5,200,0.4,100\n".encode()),
])
def test_a_bad_query_parameter_is_answered_in_the_service_shape(client: TestClient, path: str,
                                                                headers: dict[str, str], body: bytes) -> None:
    error = _error(client.post(path, content=body, headers=headers), 400)
    assert "maybe" in error["error"] and "true or false" in error["error"]
    assert error["detail"][0]["loc"][0] == "query"


def test_a_path_with_several_methods_lists_them_all_when_refusing_another(client: TestClient) -> None:
    from service.web.guards import METHODS_BY_PATH

    documented = client.get("/docs.json").json()["paths"]
    for path, methods in METHODS_BY_PATH.items():
        routed = {method.upper() for method in documented[path]}
        assert set(methods) == routed | ({"HEAD"} if "GET" in routed else set()), path  # the table is the API's
        refused = client.request("PUT", path)
        assert refused.status_code == 405
        assert refused.headers["allow"] == ", ".join(methods)


def test_the_openapi_document_names_the_400_a_bad_query_parameter_gets(client: TestClient) -> None:
    operation = client.get("/docs.json").json()["paths"]["/outcomes"]["get"]
    assert "400" in operation["responses"] and "422" not in operation["responses"]
    missing = client.get("/outcomes")  # `model` is required
    assert missing.status_code == 400 and "model" in missing.json()["error"]
