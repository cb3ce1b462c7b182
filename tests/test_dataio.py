"""The CSV loader: every violation stops with one message naming file, row, column, value and allowed range."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cellmfg.dataio import DataValidationError, load_csv
from cellmfg.domain import DATASETS, feature_columns

GOOD_ROW = {"am_wt_pct": 93.0, "solid_content_pct": 30.0, "coating_speed_m_min": 0.3, "comma_gap_um": 200.0,
            "roll_speed_m_min": 0.27, "roll_gap_um": 60.0, "density_g_cm3": 1.4, "mass_loading_mg_cm2": 8.0}


def _write(tmp_path: Path, rows: list[dict[str, object]], name: str = "lab.csv") -> Path:
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _rows(count: int = 3) -> list[dict[str, object]]:
    return [{**GOOD_ROW, "comma_gap_um": 150.0 + 10 * i} for i in range(count)]


def test_valid_csv_loads_in_canonical_order(tmp_path: Path) -> None:
    loaded = load_csv(_write(tmp_path, _rows()), ["density_g_cm3"])
    assert loaded.kind == "electrode"
    assert list(loaded.frame.columns[:6]) == feature_columns("electrode")
    assert len(loaded.frame) == 3
    assert len(loaded.sha256) == 64


def test_missing_column_is_named(tmp_path: Path) -> None:
    rows = [{k: v for k, v in row.items() if k != "roll_gap_um"} for row in _rows()]
    with pytest.raises(DataValidationError, match=r"missing column\(s\) roll_gap_um"):
        load_csv(_write(tmp_path, rows), ["density_g_cm3"])


def test_string_in_number_column_names_row_and_column(tmp_path: Path) -> None:
    rows = _rows()
    rows[1]["solid_content_pct"] = "thirty"
    with pytest.raises(DataValidationError) as error:
        load_csv(_write(tmp_path, rows), ["density_g_cm3"])
    message = str(error.value)
    assert "lab.csv" in message and "row 2 (line 3)" in message and "solid_content_pct" in message
    assert "'thirty' is not a number" in message and "[0, 100] %" in message


def test_negative_gap_is_physically_impossible(tmp_path: Path) -> None:
    rows = _rows()
    rows[2]["comma_gap_um"] = -5.0
    with pytest.raises(DataValidationError, match=r"row 3 \(line 4\), comma_gap_um = -5.0 µm is physically "
                                                  r"impossible; allowed: a number in \[0, 5000\] µm"):
        load_csv(_write(tmp_path, rows), ["density_g_cm3"])


def test_solid_content_over_100_percent(tmp_path: Path) -> None:
    rows = _rows()
    rows[0]["solid_content_pct"] = 120.0
    with pytest.raises(DataValidationError, match=r"row 1 \(line 2\), solid_content_pct = 120.0 %"):
        load_csv(_write(tmp_path, rows), ["density_g_cm3"])


@pytest.mark.parametrize("bad", ["nan", "inf", ""])
def test_nan_and_inf_rejected(tmp_path: Path, bad: str) -> None:
    rows = _rows()
    rows[1]["roll_gap_um"] = bad
    with pytest.raises(DataValidationError, match=r"row 2 \(line 3\), roll_gap_um (=|is empty)"):
        load_csv(_write(tmp_path, rows), ["density_g_cm3"])


def test_exact_duplicate_rows_rejected(tmp_path: Path) -> None:
    rows = _rows()
    rows.append(dict(rows[0]))
    with pytest.raises(DataValidationError, match=r"row 4 \(line 5\): every column equals row 1"):
        load_csv(_write(tmp_path, rows), ["density_g_cm3"])


def test_duplicate_sample_id_rejected(tmp_path: Path) -> None:
    rows = [{"sample_id": name, **r} for name, r in zip("abc", _rows(), strict=True)]
    rows[2]["sample_id"] = "a"
    with pytest.raises(DataValidationError, match=r"row 3 \(line 4\), column sample_id: 'a' repeats"):
        load_csv(_write(tmp_path, rows), ["density_g_cm3"])


def test_extra_columns_ignored_with_warning_and_sample_id_kept(tmp_path: Path) -> None:
    rows = [{"sample_id": f"s{i}", "operator": "ann", **r} for i, r in enumerate(_rows())]
    with pytest.warns(UserWarning, match="ignoring extra column"):
        loaded = load_csv(_write(tmp_path, rows), ["density_g_cm3"])
    assert "operator" not in loaded.frame.columns
    assert loaded.frame["sample_id"].tolist() == ["s0", "s1", "s2"]
    assert loaded.ignored_columns == ["operator"]


def test_out_of_paper_range_accepted_and_reported(tmp_path: Path) -> None:
    rows = _rows()
    rows[0]["roll_gap_um"] = 180.0  # graphite's paper range ends at 135 µm
    loaded = load_csv(_write(tmp_path, rows), ["density_g_cm3"], dataset="graphite")
    report = {item.column: item for item in loaded.out_of_range}
    assert set(report) == {"roll_gap_um"} and report["roll_gap_um"].rows == 1
    assert report["roll_gap_um"].paper_max == DATASETS["graphite"].ranges["roll_gap_um"][1]


def test_missing_file_and_non_csv(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="no such file"):
        load_csv(tmp_path / "absent.csv")
    binary = tmp_path / "blob.csv"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataValidationError):
        load_csv(binary)


def test_group_id_is_kept_as_text_and_is_not_a_feature(tmp_path: Path) -> None:
    rows = [{**row, "group_id": group} for row, group in zip(_rows(4), ["007", "007", "8", "x-1"], strict=True)]
    loaded = load_csv(_write(tmp_path, rows), ["density_g_cm3"])
    assert loaded.groups.tolist() == ["007", "007", "8", "x-1"]  # "007" stays text, not the number 7
    assert "group_id" not in feature_columns("electrode")


def test_blank_group_id_is_named(tmp_path: Path) -> None:
    rows = [{**row, "group_id": group} for row, group in zip(_rows(3), ["a", " ", "b"], strict=True)]
    with pytest.raises(DataValidationError, match=r"row 2 \(line 3\), column group_id: blank"):
        load_csv(_write(tmp_path, rows), ["density_g_cm3"])


def test_without_group_id_identical_inputs_form_one_group(tmp_path: Path) -> None:
    replicate = {**GOOD_ROW, "density_g_cm3": 1.41}
    loaded = load_csv(_write(tmp_path, [GOOD_ROW, replicate, *_rows(2)]), ["density_g_cm3"])
    groups = loaded.groups
    assert groups[0] == groups[1] and len(set(groups.tolist())) == 3
