"""The simulated campaign (`scripts/campaign.py`, training/campaign.py): the suggestion criterion is the service's,
the lab is the generator read at run time, the bookkeeping of curves and the pairing of strategies hold.

Fast tests need no training; the one `trains` test runs a 2-repetition, 2-round campaign on the quick preset
(~20–40 s on 2 shared cores)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest

from cellmfg.domain import DENSITY
from cellmfg.recipe_search import MIN_SEPARATION
from datagen import electrode_process
from training import campaign
from training.config import load_config

# -------------------------------------------------------------------------------------------------------------
# The suggestion criterion is the service's: both call cellmfg.recipe_search; the box and its candidates must match


def _service_space(box: campaign.RecipeBox) -> Any:
    from service.design import search as design

    return design.SearchSpace(
        columns=list(box.columns), base=box.low.copy(), low=box.low, high=box.high, continuous=box.continuous,
        discrete=box.discrete, decimals=box.decimals, train_low=box.low, train_high=box.high, common_low=box.low,
        common_high=box.high, disjoint=[])


def test_the_campaign_box_is_the_one_suggest_searches_over_the_paper_ranges() -> None:
    from service.design.search import search_space

    for chemistry in campaign.ELECTRODE_CHEMISTRIES:
        box = campaign.recipe_box(chemistry)
        # What search_space reads: the request's bounds and fixed values, the models' features and training range.
        paper_range = SimpleNamespace(bounds={}, fixed={})
        model = SimpleNamespace(feature_names=list(box.columns), train_min=box.low, train_max=box.high)
        space = search_space(cast(Any, paper_range), [cast(Any, model)])
        assert space.columns == list(box.columns)
        np.testing.assert_array_equal(space.continuous, box.continuous)
        assert list(space.discrete) == list(box.discrete)
        np.testing.assert_array_equal(space.decimals, box.decimals)


def test_the_campaign_picks_what_suggest_picks_from_the_same_candidates() -> None:
    from service.design import search as design
    from service.design import suggest

    box = campaign.recipe_box("nmc")
    space = _service_space(box)
    candidates = campaign.suggestion_candidates(box)
    np.testing.assert_array_equal(candidates[:50], space.rounded(candidates[:50]))
    rng = np.random.default_rng(3)
    p, spread = rng.uniform(1.5, 3.0, len(candidates)), rng.uniform(0.0, 0.2, len(candidates))
    spread[5:40] = spread[0]  # ties and repeated answers, as nets that ignore a parameter give
    p[5:40] = p[0]
    relative = spread / p
    order = np.argsort(-relative, kind="stable")
    for k in (1, 4, 10):
        service_pick = design.diverse(space, candidates, suggest._distinct_answers(order, p[:, None], spread[:, None]),
                                      k)
        np.testing.assert_array_equal(campaign.suggest_by_spread(box, candidates, p, spread, k),
                                      candidates[service_pick])


def test_suggestion_takes_the_largest_relative_spread_but_keeps_its_picks_apart() -> None:
    box = campaign.recipe_box("si_gra")
    candidates = campaign.suggestion_candidates(box)
    p = np.full(len(candidates), 2.0)
    spread = np.linspace(0.0, 1.0, len(candidates))  # the last candidate is the least certain
    chosen = campaign.suggest_by_spread(box, candidates, p, spread, 4)
    assert len(chosen) == 4
    np.testing.assert_array_equal(chosen[0], candidates[-1])
    units = box.normalised(chosen)
    for i in range(4):
        for j in range(i):
            assert np.max(np.abs(units[i] - units[j])) >= MIN_SEPARATION


def test_random_and_sobol_recipes_stay_in_the_box_at_the_roll_speed_settings() -> None:
    box = campaign.recipe_box("nmc")
    roll = box.columns.index("roll_speed_m_min")
    for x in (campaign.random_recipes(box, 32, np.random.default_rng(0)), campaign.sobol_recipes(box, 32, 5)):
        assert x.shape == (32, len(box.columns))
        assert np.all(x >= box.low) and np.all(x <= box.high)
        assert set(np.unique(x[:, roll])) == {0.27, 0.54}
        assert len(np.unique(x, axis=0)) == 32
    # Sobol's first points are balanced: the first 4 put one point in each half of every continuous parameter.
    units = box.normalised(campaign.sobol_recipes(box, 4, 9))
    assert np.all(np.sum(units < 0.5, axis=0) == 2)


# -------------------------------------------------------------------------------------------------------------
# The lab is the generator, read at run time


def test_a_measured_sheet_carries_the_generators_noise_and_sheet_effects() -> None:
    box = campaign.recipe_box("nmc")
    recipe = np.repeat(((box.low + box.high) / 2)[None, :], 40, axis=0)
    recipe[:, box.columns.index("roll_speed_m_min")] = 0.27
    measured = campaign.measure_sheets("nmc", DENSITY, recipe, np.random.default_rng(1), "test")
    sheets, discs = np.unique(measured.groups, return_counts=True)
    low, high = electrode_process.DESIGN_PLANS["nmc"].replicates
    assert len(sheets) == 40 and discs.min() >= low and discs.max() <= high
    nominal = electrode_process.process_model(
        __import__("pandas").DataFrame(measured.x, columns=list(box.columns)), "nmc")["density_g_cm3"].to_numpy()
    relative = measured.y / nominal - 1.0
    sheet_means = np.array([relative[measured.groups == s].mean() for s in sheets])
    assert 0.005 < np.std(sheet_means) < 0.2  # sheets differ (random effects), but around the nominal model
    assert abs(np.median(relative)) < 0.1


def test_the_lab_reads_the_generator_at_run_time(monkeypatch: pytest.MonkeyPatch) -> None:
    quiet = dataclasses.replace(
        electrode_process.SCATTER["si_gra"], batch_solids_sd_pct=0.0, batch_viscosity_log_sd=0.0,
        batch_dry_porosity_sd=0.0, coater_gap_offset_sd_um=0.0, coater_run_log_sd=0.0, coater_drift_log_sd=0.0,
        sheet_spring_back_log_sd=0.0, punch_loading_log_sd=0.0, thickness_gauge_sd_um=0.0, density_rel_sd=0.0,
        outlier_fraction=0.0)
    monkeypatch.setitem(electrode_process.SCATTER, "si_gra", quiet)
    box = campaign.recipe_box("si_gra")
    recipes = campaign.random_recipes(box, 6, np.random.default_rng(2))
    measured = campaign.measure_sheets("si_gra", DENSITY, recipes, np.random.default_rng(3), "quiet")
    import pandas as pd

    nominal = electrode_process.process_model(pd.DataFrame(measured.x, columns=list(box.columns)), "si_gra")
    np.testing.assert_allclose(measured.y, nominal["density_g_cm3"].to_numpy(), rtol=1e-4)


def test_start_sheets_and_the_held_out_set_never_share_a_sheet() -> None:
    frame = campaign.lab_campaign("nmc", 11)
    start, held_out = campaign.start_and_held_out(frame, DENSITY, 2, np.random.default_rng(0))
    assert len(np.unique(start.groups)) == 2
    assert not set(start.groups) & set(held_out.groups)
    assert len(start) + len(held_out) == len(frame)


# -------------------------------------------------------------------------------------------------------------
# Bookkeeping


def test_experiments_to_reach_and_the_area_under_the_curve() -> None:
    experiments = np.array([2, 6, 10, 14])
    curve = np.array([[12.0, 9.0, 7.9, 8.5],    # reaches 8.1 at 10 sheets (and leaves again: first time counts)
                      [12.0, 11.0, 10.0, 9.0],  # never
                      [8.0, 8.0, 8.0, 8.0]])    # at the start
    reach = campaign.experiments_to_reach(curve, experiments, 8.1)
    np.testing.assert_array_equal(reach[[0, 2]], [10.0, 2.0])
    assert np.isnan(reach[1])
    auc = campaign.area_under_curve(curve, experiments)
    assert auc[2] == pytest.approx(8.0)
    assert auc[1] == pytest.approx((11.5 * 4 + 10.5 * 4 + 9.5 * 4) / 12)


# -------------------------------------------------------------------------------------------------------------
# A tiny campaign (trains)


@pytest.mark.trains
def test_a_tiny_campaign_is_paired_counted_and_suggests_its_own_recipes() -> None:
    config = load_config("quick")
    setup = campaign.prepare("nmc", DENSITY, config, rounds=2, data_seed=20250214)
    repetitions = campaign.run_campaign(setup, 2)
    np.testing.assert_array_equal(setup.experiments, [2, 6, 10])
    assert repetitions[0].held_out_groups != repetitions[1].held_out_groups  # each repetition its own lab campaign
    for rep in repetitions:
        assert not set(rep.start_groups) & set(rep.held_out_groups)
        starts = {float(rep.mape[s][0]) for s in campaign.STRATEGIES}
        assert len(starts) == 1  # one start model for every strategy
        for s in campaign.STRATEGIES:
            assert rep.mape[s].shape == (3,) and np.all(np.isfinite(rep.mape[s]))
            assert rep.recipes[s].shape == (8, 6)
            rows = rep.measured_rows[s]
            assert np.all(np.diff(rows) >= 4 * 2) and np.all(np.diff(rows) <= 4 * 4)  # 4 sheets of 2–4 discs
        assert rep.measured_rows["random"][0] == rep.measured_rows["suggestion"][0]
        assert not np.array_equal(rep.recipes["suggestion"], rep.recipes["random"])
        assert not np.array_equal(rep.recipes["suggestion"], rep.recipes["sobol"])
    summary = campaign.summarise(setup.plan, repetitions)
    assert list(summary.table["strategy"]) == list(campaign.STRATEGIES)
    table = campaign.long_table(setup.plan, repetitions)
    assert len(table) == 2 * 3 * 3
    [(plan, read)] = campaign.from_table(table, config)  # the report of separate runs reads the same curves back
    assert plan.experiments.tolist() == setup.experiments.tolist()
    for mine, back in zip(repetitions, read, strict=True):
        for s in campaign.STRATEGIES:
            np.testing.assert_allclose(back.mape[s], mine.mape[s])


@pytest.mark.trains
def test_the_ensembles_own_forward_pass_reproduces_the_stacks_predictions() -> None:
    config = load_config("quick")
    base = campaign.FrozenBase.of(campaign.pretrain_base(config, DENSITY, 20250214))
    data = campaign.measured_from_frame(campaign.lab_campaign("nmc", 3), DENSITY)
    hidden, zero_shot = base.features(data.x)
    rows = np.flatnonzero(np.isin(data.groups, np.unique(data.groups)[:4]))
    fitted = campaign.retrain(hidden, zero_shot, data.y, data.groups, [rows], config, 5)
    assert fitted.ensemble is not None and len(fitted.ensemble.layers) == config.ensemble_members
    members = fitted.ensemble.member_predictions(hidden, zero_shot)
    np.testing.assert_allclose(members.mean(axis=0), fitted.predictions[0], rtol=1e-4, atol=1e-5)
