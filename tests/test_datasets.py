"""The shipped datasets: the paper's row counts and ranges, byte-identical regeneration, and the CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cellmfg import cli
from cellmfg.___domain import DATASETS
from cellmfg.dataio import DATA_DIR, load_shipped
from training import datagen


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


def test_heterogeneous_not_a_grid() -> None:
    graphite = load_shipped("graphite").frame
    recipes = graphite.groupby(["am_wt_pct", "solid_content_pct"]).size()
    assert 3 <= len(recipes) <= 15  # a handful of formulations...
    assert recipes.max() >= 10  # ...each run many times
    assert set(graphite["roll_speed_m_min"]) == {0.27, 0.54}


def test_gdl_tortuosity_plausible() -> None:
    for name in ("gdl200", "gdl1000"):
        tortuosity = load_shipped(name).frame["tortuosity"]
        assert tortuosity.min() >= 1.0 and tortuosity.max() < 1.3
        assert tortuosity.mean() > tortuosity.median()  # right-skewed, as the paper's


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
    assert "Total generation time:" in card and "s on this project's" in card
    for constant in ("2.26", "2.33", "4.7", "1.78", "1.03"):  # material densities, g/cm³
        assert constant in card
    assert "voxel" in card.lower() and "| source |" in card


def test_cli_help_lists_stages_and_data_check_json() -> None:
    cli._build()
    runner = CliRunner()
    result = runner.invoke(cli.app, ["--help"])
    assert result.exit_code == 0
    for command in ("data", "train", "registry", "serve"):
        assert command in result.stdout
    result = runner.invoke(cli.app, ["data", "generate", "--check", "--quick", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["identical"] is True
