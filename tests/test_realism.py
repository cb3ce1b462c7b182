"""The realism report (`cellmfg data realism`): its measures on data whose answers are known, and its yardsticks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellmfg.domain import feature_columns
from cellmfg.paper import PAPER_MAPE
from datagen import realism


def _gdl_frame(tortuosity: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    frame = pd.DataFrame({column: rng.uniform(1.0, 2.0, len(tortuosity)) for column in feature_columns("gdl")})
    frame["tortuosity"] = tortuosity
    return frame


def test_a_linear_target_is_found_linear_and_a_constant_one_has_no_spread() -> None:
    rng = np.random.default_rng(0)
    frame = _gdl_frame(np.zeros(60), rng)
    frame["tortuosity"] = 1.0 + 0.05 * frame["fiber_concentration_pct"] + 0.02 * frame["thickness_um"]
    item = realism.measure(frame, "gdl200", "tortuosity", repeats=3, trees=10)
    assert item.linear_r2 == pytest.approx(1.0, abs=1e-9)
    assert item.linear_mape_pct == pytest.approx(0.0, abs=1e-9)
    assert item.noise_free_r2 is None  # GDL has no nominal model
    assert item.rows == 60 and item.groups == 60  # no group_id: one row per group


def test_mean_predictor_mape_is_the_spread_a_constant_guess_leaves() -> None:
    rng = np.random.default_rng(1)
    # Two levels, 1.0 and 1.2, alternating: a training mean near 1.1 misses each row by about 9 %.
    frame = _gdl_frame(np.tile([1.0, 1.2], 40), rng)
    item = realism.measure(frame, "gdl200", "tortuosity", repeats=5, trees=10)
    expected = np.mean([abs(1.1 - 1.0) / 1.0, abs(1.1 - 1.2) / 1.2]) * 100
    assert item.mean_predictor_mape_pct == pytest.approx(expected, rel=0.1)
    assert item.forest_r2 < 0.5  # the features are noise


def test_grouped_rows_count_their_groups() -> None:
    rng = np.random.default_rng(2)
    frame = _gdl_frame(rng.uniform(1.0, 1.2, 40), rng)
    frame["group_id"] = np.repeat(np.arange(10), 4)
    assert realism.measure(frame, "gdl200", "tortuosity", repeats=2, trees=5).groups == 10


def test_yardsticks_flag_what_misses_them(tmp_path: Path) -> None:
    results = pd.DataFrame([
        {"task": "density", "dataset": "si_gra", "method": "zero_shot", "test_mape_pct_mean": 8.2},
        {"task": "density", "dataset": "nmc", "method": "zero_shot", "test_mape_pct_mean": 51.0},
        {"task": "density", "dataset": "graphite", "method": "pretrained", "test_mape_pct_mean": 9.5},
        {"task": "density", "dataset": "nmc", "method": "scratch", "test_mape_pct_mean": 7.0},  # not in the paper
    ])
    path = tmp_path / "results.csv"
    results.to_csv(path, index=False)
    rows = realism.difficulty_rows(path)
    assert [(r.dataset, r.method) for r in rows] == [("si_gra", "zero_shot"), ("nmc", "zero_shot"),
                                                      ("graphite", "pretrained")]
    assert rows[0].paper_pct == PAPER_MAPE[("density", "si_gra", "zero_shot")]
    met = {goal.text: goal.met for goal in realism.goals([], rows)}
    assert met == {"graphite net zero-shot on si_gra density: 30–120 %": False,
                   "graphite net zero-shot on nmc density: 30–120 %": True,
                   "graphite net in-domain density: within ×1.5 of the paper": False}  # 9.5 / 4.5 = 2.1


def test_report_puts_the_gdl_distribution_beside_the_papers() -> None:
    rng = np.random.default_rng(3)
    item = realism.measure(_gdl_frame(rng.uniform(1.03, 1.2, 30), rng), "gdl1000", "tortuosity", repeats=2, trees=5)
    text = realism.markdown([item], [], None, repeats=2)
    assert "| gdl1000 | " in text and "| 1.09 | 1.08 | 1.17 | right-skewed |" in text
    assert "gdl1000: mean-predictor MAPE ≥ 2 %" in text
