"""The shipped datasets: the paper's row counts and ranges, byte-identical regeneration, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cellmfg.dataio import DATA_DIR, load_shipped
from cellmfg.domain import DATASETS
from cellmfg_cli import build
from datagen import generate as datagen


@pytest.mark.parametrize("name", list(DATASETS))
def test_rows_and_ranges_match_the_paper(name: str) -> None:
    spec = DATASETS[name]
    loaded = load_shipped(name)
    assert len(loaded.frame) == spec.paper_rows
    assert loaded.out_of_range == []  # every feature inside the paper's range for this dataset
    for column, (low, high) in spec.ranges.items():
        values = loaded.frame[column]
        width = high - low
        # ...and spanning it: a lab's set reaches both ends of what it explored.
        assert values.min() <= low + 0.1 * width and values.max() >= high - 0.1 * width, column
    assert loaded.frame["sample_id"].is_unique


@pytest.mark.parametrize(("name", "sheets"), [("graphite", (40, 80)), ("si_gra", (12, 20)), ("nmc", (12, 20))])
def test_electrodes_come_in_sheets_with_their_own_recipes(name: str, sheets: tuple[int, int]) -> None:
    raw = pd.read_csv(DATA_DIR / f"{name}.csv")
    assert list(raw.columns[:2]) == ["sample_id", "group_id"]
    groups = raw.groupby("group_id")
    assert sheets[0] <= groups.ngroups <= sheets[1]
    assert groups.size().min() >= 2  # several rows per sheet
    # Formulations vary continuously: (nearly) one recipe per sheet, not a handful repeated.
    assert raw.groupby(["am_wt_pct", "solid_content_pct"]).ngroups >= 0.9 * groups.ngroups
    assert set(raw["roll_speed_m_min"]) == {0.27, 0.54}


def test_gdl_tortuosity_and_porosity_plausible() -> None:
    for name in ("gdl200", "gdl1000"):
        raw = pd.read_csv(DATA_DIR / f"{name}.csv")
        assert list(raw.columns[-2:]) == ["tortuosity", "porosity"]
        tortuosity, porosity = raw["tortuosity"], raw["porosity"]
        assert tortuosity.min() >= 1.0 and tortuosity.max() < 1.3
        assert tortuosity.max() > 1.02  # the densest compressed layers detour
        # Fractions describe the as-laid layer, in the real carbon-paper band (70-90 % porosity); compression keeps the
        # solid volume, so the measured layer's porosity is 1 - (1 - p0)/(1 - c), down to 44 % in the densest corner.
        as_laid = 1 - raw["fiber_concentration_pct"] / 100 / (1 - raw["binder_concentration_pct"] / 100)
        assert as_laid.min() >= 0.70 and as_laid.max() <= 0.90
        compressed = 1 - (1 - as_laid) / (1 - raw["compression_factor"])
        assert np.max(np.abs(porosity - compressed)) < 0.01
        assert porosity.min() >= 0.43 and porosity.max() <= 0.90
        # Denser layers are more tortuous.
        assert np.corrcoef(porosity, tortuosity)[0, 1] < -0.5


def test_quick_check_regenerates_committed_bytes() -> None:
    assert datagen.check(datagen.DEFAULT_SEED, DATA_DIR, quick=True) == []


def test_check_detects_a_changed_file(tmp_path: pytest.TempPathFactory) -> None:
    folder = tmp_path  # type: ignore[assignment]
    for path in DATA_DIR.glob("*.csv"):
        (folder / path.name).write_bytes(path.read_bytes())  # type: ignore[operator]
    lines = (folder / "nmc.csv").read_text().splitlines()  # type: ignore[operator]
    lines[5] = lines[5].replace(",", ",9", 1)
    (folder / "nmc.csv").write_text("\n".join(lines) + "\n")  # type: ignore[operator]
    problems = datagen.check(datagen.DEFAULT_SEED, folder, quick=True, names=datagen.ELECTRODES)  # type: ignore[arg-type]
    assert len(problems) == 1 and "nmc.csv: differs" in problems[0]


def test_data_card_states_constants_sources_and_time() -> None:
    card = (DATA_DIR / datagen.CARD_NAME).read_text()
    assert "Total generation time" in card and "s on this project's" in card
    for constant in ("2.26", "2.33", "4.7", "1.78", "1.03"):  # material densities, g/cm³
        assert constant in card
    assert "voxel" in card.lower() and "| source |" in card
    for section in ("## Summary and groups", "## Physical caps", "## Difficulty calibration (graphite)",
                    "## Outputs beside literature", "## What this data cannot tell you", "Random effects"):
        assert section in card, section
    assert "grouped (20×, 70/30)" in card


def test_cli_help_lists_stages_and_data_check_json() -> None:
    app = build()
    runner = CliRunner()
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("data", "train", "registry", "serve"):
        assert command in result.stdout
    # The electrode sets through the CLI; the GDL sample is regenerated once, by test_quick_check_regenerates_...
    result = runner.invoke(app, ["data", "generate", "--check", "--quick", "--json",
                                 "--only", "graphite", "--only", "si_gra", "--only", "nmc"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["identical"] is True


def test_cli_check_only_reads_the_named_sets(tmp_path: Path) -> None:
    """`--only` limits the check: a damaged file goes unnoticed when only another set is named, and is reported when
    its own set is; an unknown name is refused with the known ones. (Electrode sets: they regenerate in a second.)"""
    for path in DATA_DIR.glob("*.csv"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    lines = (tmp_path / "nmc.csv").read_text().splitlines()
    lines[1] = lines[1].replace(",", ",9", 1)
    (tmp_path / "nmc.csv").write_text("\n".join(lines) + "\n")
    runner = CliRunner()
    base = ["data", "generate", "--check", "--quick", "--json", "--out", str(tmp_path)]
    result = runner.invoke(build(), [*base, "--only", "graphite"])
    assert result.exit_code == 0, result.stderr
    result = runner.invoke(build(), [*base, "--only", "nmc"])
    assert result.exit_code == 1
    assert "nmc.csv" in json.loads(result.stdout.strip().splitlines()[-1])["problems"][0]
    result = runner.invoke(build(), [*base, "--only", "nope"])
    assert result.exit_code != 0 and "unknown dataset(s) nope" in result.stderr and "gdl1000" in result.stderr
