"""CSV in and out: over HTTP (in-process BentoML app) and with `cellmfg predict`, the same numbers as JSON; every
bad file a 4xx (or exit code 2) naming line and column."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from starlette.testclient import TestClient
from typer.testing import CliRunner

from cellmfg.domain import feature_columns
from service.cli import predict
from service.formats.csvio import wants_csv
from testkit.fakes import example_rows

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::PendingDeprecationWarning")

ELECTRODE = feature_columns("electrode")
CSV_HEADERS = {"Content-Type": "text/csv", "Accept": "text/csv"}


def _csv_text(rows: list[dict[str, float]], extra: dict[str, list[str]] | None = None) -> str:
    """A lab's CSV: extra columns first (sample_id, notes), then the features, numbers as Python writes them."""
    extra = extra or {}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    columns = list(rows[0])
    writer.writerow([*extra, *columns])
    for i, row in enumerate(rows):
        writer.writerow([*(values[i] for values in extra.values()), *(repr(row[c]) for c in columns)])
    return out.getvalue()


def _parse(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _cli(args: list[str]) -> Any:
    app = typer.Typer()
    app.command()(predict)
    return CliRunner().invoke(app, args)


def test_ten_thousand_rows_over_http_and_offline_give_the_json_numbers(client: TestClient, bundle: Path,
                                                                       tmp_path: Path) -> None:
    rows = example_rows("electrode", "nmc", 10_000, seed=5)
    rows[3] = {**rows[3], "roll_gap_um": 250.0}  # one row outside the training range
    ids = [f"S{i:05d}" for i in range(len(rows))]
    text = _csv_text(rows, {"sample_id": ids, "operator": ["ann, bob" if i % 2 else "" for i in range(len(rows))]})

    reference = client.post("/predict/electrode", json={"chemistry": "nmc", "rows": rows, "interval": True})
    assert reference.status_code == 200
    expected = reference.json()

    response = client.post("/predict/electrode?chemistry=nmc&interval=true", content=text.encode(),
                           headers=CSV_HEADERS)
    assert response.status_code == 200, response.text[:2000]
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["x-cellmfg-models"] == ("density=density_nmc_onnx:1@champion, "
                                                    "mass_loading=mass_loading_nmc_onnx:1@champion")
    scored = _parse(response.text)
    assert len(scored) == 10_000
    assert [r["sample_id"] for r in scored] == ids and scored[1]["operator"] == "ann, bob"
    assert list(scored[0])[:8] == ["sample_id", "operator", *ELECTRODE]
    for column in ("density_g_cm3", "mass_loading_mg_cm2"):
        got = np.array([float(r[f"{column}_predicted"]) for r in scored])
        want = np.array([p[column] for p in expected["predictions"]])
        np.testing.assert_array_equal(got, want)  # repr round-trips float64 exactly
        lows = np.array([float(r[f"{column}_low"]) for r in scored])
        np.testing.assert_array_equal(lows, [p["interval"][column][0] for p in expected["predictions"]])
    assert [r["in_domain"] == "true" for r in scored] == [p["in_domain"] for p in expected["predictions"]]
    assert scored[3]["out_of_domain"] == "roll_gap_um" and scored[0]["out_of_domain"] == ""

    # CSV in, JSON out: the JSON answer itself
    as_json = client.post("/predict/electrode?chemistry=nmc&interval=true", content=text.encode(),
                          headers={"Content-Type": "text/csv"})
    assert as_json.json() == expected

    source = tmp_path / "lab.csv"
    source.write_text(text)
    out = tmp_path / "scored.csv"
    result = _cli(["--chemistry", "nmc", "--csv", str(source), "--out", str(out), "--interval",
                   "--bundle", str(bundle)])
    assert result.exit_code == 0, result.output
    assert out.read_text() == response.text, "cellmfg predict runs the same code path as the endpoint"
    assert "10000 rows scored" in result.output and "1 outside the training range" in result.output


def test_explanations_as_columns_equal_the_json_ones(client: TestClient) -> None:
    rows = example_rows("gdl", "gdl1000", 50, seed=2)
    expected = client.post("/predict/gdl", json={"dataset": "gdl1000", "rows": rows, "explain": True}).json()
    response = client.post("/predict/gdl?dataset=gdl1000&explain=true", content=_csv_text(rows).encode(),
                           headers=CSV_HEADERS)
    assert response.status_code == 200, response.text
    scored = _parse(response.text)
    for row, want in zip(scored, expected["predictions"], strict=True):
        explanation = want["explanation"]["tortuosity"]
        assert float(row["tortuosity_shap_base"]) == explanation["base_value"]
        for feature, value in explanation["contributions"].items():
            assert float(row[f"tortuosity_shap_{feature}"]) == value


def test_json_in_csv_out_and_the_single_model_route(client: TestClient) -> None:
    rows = example_rows("electrode", "si_gra", 4)
    response = client.post("/predict/electrode", json={"chemistry": "si_gra", "rows": rows},
                           headers={"Accept": "text/csv"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    expected = client.post("/predict/electrode", json={"chemistry": "si_gra", "rows": rows}).json()
    scored = _parse(response.text)
    assert [float(r["density_g_cm3_predicted"]) for r in scored] == [
        p["density_g_cm3"] for p in expected["predictions"]]
    assert [float(r["am_wt_pct"]) for r in scored] == [r["am_wt_pct"] for r in rows]

    single = client.post("/predict/density_si_gra_onnx", content=_csv_text(rows).encode(), headers=CSV_HEADERS)
    assert single.status_code == 200, single.text
    assert [float(r["density_g_cm3_predicted"]) for r in _parse(single.text)] == [
        p["density_g_cm3"] for p in expected["predictions"]]
    assert "mass_loading_mg_cm2_predicted" not in single.text


def test_a_byte_order_mark_is_accepted(client: TestClient) -> None:
    # Excel's "CSV UTF-8" starts the file with one; documented as accepted.
    rows = example_rows("electrode", "nmc", 3)
    plain = client.post("/predict/electrode?chemistry=nmc", content=_csv_text(rows).encode(), headers=CSV_HEADERS)
    marked = client.post("/predict/electrode?chemistry=nmc", content=b"\xef\xbb\xbf" + _csv_text(rows).encode(),
                         headers=CSV_HEADERS)
    assert marked.status_code == 200 and marked.text == plain.text


ROWS = example_rows("electrode", "nmc", 3)
GOOD = _csv_text(ROWS)
HEADER, FIRST, *_ = GOOD.splitlines()

BAD_FILES: list[tuple[str, bytes, list[str]]] = [
    ("empty file", b"", ["line 1", "empty", "am_wt_pct"]),
    ("only blank lines", b"\n \n", ["line 1", "empty"]),
    ("missing column", GOOD.replace("roll_gap_um", "roll_gap").encode(),
     ["line 1", "column roll_gap_um", "missing"]),
    ("text cell", GOOD.replace(FIRST, "abc" + FIRST[FIRST.index(","):]).encode(),
     ["line 2", "am_wt_pct = 'abc' is not a number"]),
    ("semicolon separated", GOOD.replace(",", ";").encode(), ["line 1", "separated by ';'", "comma-separated"]),
    ("decimal comma", (HEADER + "\n" + '"94,0",' + FIRST[FIRST.index(",") + 1:] + "\n").encode(),
     ["line 2", "am_wt_pct = '94,0' is not a number", "decimal mark"]),
    ("empty cell", (HEADER + "\n" + "," + FIRST[FIRST.index(",") + 1:] + "\n").encode(),
     ["line 2", "am_wt_pct is empty"]),
    ("physically impossible", (GOOD + FIRST.replace(FIRST.split(",")[0], "120", 1) + "\n").encode(),
     ["line 5", "am_wt_pct = 120.0 wt% is physically impossible", "[0, 100] wt%"]),
    ("not finite", (GOOD + FIRST.replace(FIRST.split(",")[0], "inf", 1) + "\n").encode(),
     ["line 5", "am_wt_pct = inf is not finite"]),
    ("a field too many", (GOOD + FIRST + ",7\n").encode(), ["line 5", "7 fields", "header has 6"]),
    ("header only", (HEADER + "\n").encode(), ["line 2", "no data rows"]),
    ("not UTF-8", (HEADER + "\n").encode() + b"\xff\xfe9\n", ["line 2", "not UTF-8"]),
    ("duplicated column", (HEADER + ",am_wt_pct\n" + FIRST + ",1\n").encode(),
     ["line 1", "column am_wt_pct", "appears twice"]),
]


@pytest.mark.parametrize(("case", "body", "fragments"), BAD_FILES, ids=[c for c, _, _ in BAD_FILES])
def test_a_bad_csv_is_a_400_naming_line_and_column(client: TestClient, case: str, body: bytes,
                                                   fragments: list[str]) -> None:
    response = client.post("/predict/electrode?chemistry=nmc", content=body, headers=CSV_HEADERS)
    assert response.status_code == 400, (case, response.text)
    assert response.headers["content-type"].startswith("application/json"), "errors stay JSON"
    answer = response.json()
    text = answer["error"] + " " + " ".join(d["msg"] for d in answer["detail"])
    for fragment in fragments:
        assert fragment in text, (case, fragment, answer)


@pytest.mark.parametrize(("case", "body", "fragments"), BAD_FILES[:6], ids=[c for c, _, _ in BAD_FILES[:6]])
def test_cellmfg_predict_exits_2_naming_line_and_column(bundle: Path, tmp_path: Path, case: str, body: bytes,
                                                        fragments: list[str]) -> None:
    source = tmp_path / "lab.csv"
    source.write_bytes(body)
    out = tmp_path / "scored.csv"
    result = _cli(["--chemistry", "nmc", "--csv", str(source), "--out", str(out), "--bundle", str(bundle)])
    assert result.exit_code == 2, (case, result.output)
    for fragment in fragments:
        assert fragment in result.output, (case, fragment, result.output)
    assert not out.exists() and not list(tmp_path.glob(".*partial")), "nothing half-written"


def test_request_level_problems(client: TestClient, bundle: Path, tmp_path: Path) -> None:
    no_dataset = client.post("/predict/electrode", content=GOOD.encode(), headers=CSV_HEADERS)
    assert no_dataset.status_code == 400 and "?chemistry=NAME" in no_dataset.text and "nmc" in no_dataset.text
    unknown = client.post("/predict/electrode?chemistry=lfp", content=GOOD.encode(), headers=CSV_HEADERS)
    assert unknown.status_code == 400 and "'lfp'" in unknown.text and "graphite, si_gra, nmc" in unknown.text
    big = _csv_text(example_rows("electrode", "nmc", 10_001))
    too_many = client.post("/predict/electrode?chemistry=nmc", content=big.encode(), headers=CSV_HEADERS)
    assert too_many.status_code == 413 and "the limit is 10000 rows" in too_many.text

    source = tmp_path / "lab.csv"
    source.write_text(GOOD)
    result = _cli(["--chemistry", "lfp", "--csv", str(source), "--bundle", str(bundle)])
    assert result.exit_code == 2 and "'lfp'" in result.output
    result = _cli(["--model", "density_nmc", "--csv", str(source), "--bundle", str(bundle)])
    assert result.exit_code == 0, result.output
    assert "density_g_cm3_predicted" in result.stdout


@pytest.mark.parametrize(("accept", "csv_wanted"), [
    (None, False), ("*/*", False), ("text/csv", True), ("application/json", False),
    ("text/csv, application/json", True), ("application/json, text/csv", False),
    ("application/json;q=0.5, text/csv", True), ("text/csv;q=0", False),
])
def test_accept_negotiation(accept: str | None, csv_wanted: bool) -> None:
    assert wants_csv(accept) is csv_wanted
