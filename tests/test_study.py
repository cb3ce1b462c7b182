"""Learning curves (`cellmfg study learning-curve`, training/study.py): whole nested groups, a fixed test part per
repeat, every method on the same rows, the table and plot, and bad input named by its option."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cellmfg.dataio import shipped_path
from training import study
from training.config import load_config

runner = CliRunner()


def _groups(count: int, rows_per_group: int = 3) -> np.ndarray:
    return np.repeat([f"sheet-{i:02d}" for i in range(count)], rows_per_group)


def _points(groups: np.ndarray, repeats: int = 4, sizes: tuple[int, ...] | None = None) -> list[study.CurveSplit]:
    return study.curve_splits(groups, load_config("quick"), repeats, sizes)


# -------------------------------------------------------------------------------------------------------------
# Sizes and splits (fast)


def test_training_sets_are_whole_nested_groups_and_never_touch_the_test_part() -> None:
    groups = _groups(20)
    points = _points(groups, sizes=(2, 4, 8))
    for repeat in range(4):
        mine = sorted((p for p in points if p.repeat == repeat), key=lambda p: p.size)
        assert [p.size for p in mine] == [2, 4, 8]
        assert len({tuple(p.split.test) for p in mine}) == 1  # one fixed test part per repeat
        previous: set[str] = set()
        for point in mine:
            train_groups = set(groups[point.split.train].tolist())
            assert len(train_groups) == point.size
            # Whole groups: every row of a chosen group is in, and no test group trains.
            assert len(point.split.train) == 3 * point.size
            assert not train_groups & set(groups[point.split.test].tolist())
            assert previous <= train_groups  # nested: the larger set holds the smaller one
            previous = train_groups
            # The inner validation folds partition the training rows by whole groups.
            folds = point.split.folds
            assert np.array_equal(np.sort(np.concatenate(folds)), np.sort(point.split.train))
            assert all(not set(groups[a].tolist()) & set(groups[b].tolist())
                       for i, a in enumerate(folds) for b in folds[i + 1:])
    # Repeats differ (else the repeats would measure one split several times).
    assert len({tuple(p.split.test) for p in points}) > 1


def test_default_sizes_end_with_every_available_group() -> None:
    assert study.curve_sizes(13) == [2, 4, 6, 8, 12, 13]
    assert study.curve_sizes(12) == [2, 4, 6, 8, 12]
    assert study.curve_sizes(2) == [2]
    assert study.curve_sizes(40, fractions=(0.25, 0.5, 0.75, 1.0)) == [10, 20, 30, 40]
    assert study.curve_sizes(40, sizes=(8, 2, 8)) == [2, 8]


@pytest.mark.parametrize(("kwargs", "option", "detail"), [
    ({"available": 12, "sizes": (2, 13)}, "--sizes", "allowed 2–12"),
    ({"available": 12, "sizes": (1,)}, "--sizes", "allowed 2–12"),
    ({"available": 1}, "--data", "at least 2"),
    ({"available": 12, "fractions": (0.0,)}, "--fractions", "(0, 1]"),
    ({"available": 12, "sizes": (2,), "fractions": (0.5,)}, "--sizes and --fractions", "one or the other"),
])
def test_bad_sizes_name_the_option(kwargs: dict[str, Any], option: str, detail: str) -> None:
    with pytest.raises(study.StudyInputError) as caught:
        study.curve_sizes(**kwargs)
    assert str(caught.value).startswith(option) and detail in str(caught.value)


def test_too_few_groups_or_repeats_are_refused() -> None:
    with pytest.raises(study.StudyInputError, match=r"^--data: 2 group"):
        _points(_groups(2))
    with pytest.raises(study.StudyInputError, match=r"^--repeats: 1"):
        _points(_groups(10), repeats=1)


# -------------------------------------------------------------------------------------------------------------
# Table and plot (fast: given MAPEs, no training)


def test_table_pairs_methods_per_size_and_the_plot_is_written(tmp_path: Path) -> None:
    points = _points(_groups(20), repeats=6, sizes=(2, 6))
    rng = np.random.default_rng(0)
    scratch = 20.0 + rng.normal(0.0, 1.0, len(points))
    mapes = {"transfer": scratch - 5.0 + rng.normal(0.0, 0.1, len(points)),  # clearly better, same splits
             "scratch": scratch, "random_forest": scratch + rng.normal(0.0, 3.0, len(points))}
    table = study.summarise(points, mapes, load_config("quick"))
    assert len(table) == 2 * 3 and set(table["repeats"]) == {6}
    versus_scratch = table[table["method"] == "scratch"]
    assert (versus_scratch["verdict"] == "wins").all()
    assert (versus_scratch["transfer_minus_high"] < 0).all()
    assert np.allclose(versus_scratch["transfer_minus_mean"], -5.0, atol=0.2)
    assert table[table["method"] == "transfer"]["verdict"].isna().all()  # no interval against itself
    text = study.markdown(table)
    assert "| groups | train rows | transfer MAPE % | scratch MAPE % | random_forest MAPE %" in text
    assert text.count("\n") == 2 + 2 and "wins" in text
    png = study.plot(table, "synthetic", tmp_path / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -------------------------------------------------------------------------------------------------------------
# Command line: bad input (no training)


def _invoke(*args: str) -> tuple[int, str]:
    from cellmfg_cli import build

    result = runner.invoke(build(), ["study", "learning-curve", *args])
    return result.exit_code, result.stderr


def test_cli_unknown_target_names_the_option() -> None:
    code, err = _invoke("--data", str(shipped_path("si_gra")), "--target", "porosity")
    assert code == 2 and "--target: unknown target column 'porosity'" in err and "density_g_cm3" in err


def test_cli_sizes_beyond_the_groups_name_the_option() -> None:
    code, err = _invoke("--data", str(shipped_path("si_gra")), "--target", "density_g_cm3", "--sizes", "2,500",
                        "--repeats", "2")
    assert code == 2 and "--sizes: 500 groups asked; allowed 2–" in err


def test_cli_sizes_not_numbers_name_the_option() -> None:
    code, err = _invoke("--data", str(shipped_path("si_gra")), "--target", "density_g_cm3", "--sizes", "two")
    assert code == 2 and "--sizes: 'two' is not a comma-separated list" in err


def test_cli_fewer_than_two_groups_is_refused(tmp_path: Path) -> None:
    frame = pd.read_csv(shipped_path("si_gra"))
    two = frame[frame["group_id"].isin(frame["group_id"].unique()[:2])]
    path = tmp_path / "two_sheets.csv"
    two.to_csv(path, index=False)
    code, err = _invoke("--data", str(path), "--target", "density_g_cm3")
    assert code == 2 and "--data: 2 group(s)" in err


# -------------------------------------------------------------------------------------------------------------
# Training (tiny epochs)


@pytest.mark.trains
def test_every_method_is_scored_on_the_same_rows() -> None:
    from cellmfg.dataio import load_shipped
    from cellmfg.domain import feature_scaling, targets_for
    from training import evaluate, fit, nets

    loaded = load_shipped("si_gra")
    target = next(t for t in targets_for(loaded.kind) if t.task == "density")
    data = fit.prepare(loaded, target, "si_gra")
    config = load_config("quick")
    centre, width = feature_scaling(data.kind)
    rng = np.random.default_rng(1)
    layers = [(rng.normal(0, 0.3, (6, 8)), np.zeros(8)), (rng.normal(0, 0.3, (8, 1)), np.full(1, 1.4))]
    base = nets.mlp_model(np.asarray(centre), np.asarray(width), np.ones(6), layers, "tiny_base")
    frozen = nets.frozen_features(base, data.x)
    points = study.curve_splits(data.groups, config, 2, (2, 4))
    mapes = study.method_mapes(data, points, config, frozen)
    assert list(mapes) == list(study.TARGET_METHODS)
    assert all(values.shape == (len(points),) and np.isfinite(values).all() for values in mapes.values())
    for index, point in enumerate(points):
        s = point.split
        # Zero-shot and the forest, recomputed on the point's own rows, give the figures the study reports.
        assert mapes["zero_shot"][index] == pytest.approx(evaluate.mape_pct(data.y[s.test], frozen[1][s.test]))
        forest = evaluate.fit_baseline("random_forest", data.x[s.train], data.y[s.train], s.seed,
                                       config.random_forest_trees)
        assert mapes["random_forest"][index] == pytest.approx(evaluate.mape_pct(data.y[s.test],
                                                                                forest.predict(data.x[s.test])))
    assert mapes["transfer"][0] != mapes["transfer"][1]  # more sheets, another net


def _refuse_nan(constant: str) -> None:
    raise ValueError(f"not strict JSON: {constant}")


@pytest.mark.trains
def test_cli_logs_the_table_and_plot_to_one_mlflow_run(session_mlflow_uri: str, tmp_path: Path) -> None:
    import mlflow

    from cellmfg_cli import build

    app = build()
    source = tmp_path / "lab_graphite.csv"
    pd.read_csv(shipped_path("graphite")).sample(n=60, random_state=0).to_csv(source, index=False)
    result = runner.invoke(app, ["train", "pretrain", "--data", str(source), "--target", "density_g_cm3",
                                 "--preset", "quick", "--name", "study_base", "--json"])
    assert result.exit_code == 0, result.stderr
    base = json.loads(result.stdout.strip().splitlines()[-1])
    base_uri = f"models:/study_base/{base['registered_version']}"
    result = runner.invoke(app, ["study", "learning-curve", "--base", base_uri,
                                 "--data", str(shipped_path("si_gra")), "--target", "density_g_cm3", "--preset",
                                 "quick", "--repeats", "2", "--sizes", "2,4", "--out", str(tmp_path / "out"),
                                 "--json"])
    assert result.exit_code == 0, result.stderr
    answer = json.loads(result.stdout.strip().splitlines()[-1], parse_constant=_refuse_nan)
    rows = pd.DataFrame(answer["table"])
    assert sorted(set(rows["groups"])) == [2, 4] and set(rows["method"]) == set(study.TARGET_METHODS)
    assert (rows["repeats"] == 2).all()
    assert rows.loc[rows["method"] == "transfer", "verdict"].isna().all()  # strict JSON: null, not NaN
    client = mlflow.tracking.MlflowClient()
    files = {f.path for f in client.list_artifacts(answer["run_id"], "learning_curve")}
    assert files == {f"learning_curve/learning_curve.{ext}" for ext in ("md", "csv", "png")}
    history = client.get_metric_history(answer["run_id"], "transfer_test_mape_pct")
    assert sorted(m.step for m in history) == [2, 4]
    assert (tmp_path / "out" / "learning_curve.png").is_file()
