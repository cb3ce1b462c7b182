"""Verdict words come from paired intervals only: constructed paired results with known answers; the intervals
hold family-wise over a task's comparisons; `train all` writes its report to its own folder, not to docs/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from training import evaluate, fit, report


@pytest.mark.parametrize(("low", "high", "word"), [
    (-3.0, -0.1, "wins"), (0.2, 4.0, "loses"), (-1.0, 1.0, "indistinguishable"), (-2.0, 0.0, "indistinguishable"),
    (float("nan"), float("nan"), "indistinguishable"),
])
def test_verdict_from_interval(low: float, high: float, word: str) -> None:
    assert evaluate.verdict(low, high) == word


def test_paired_difference_on_constructed_results() -> None:
    rng = np.random.default_rng(0)
    competitor = rng.uniform(8.0, 12.0, 20)
    clear_win = evaluate.paired_difference(competitor - 3.0 + rng.normal(0, 0.3, 20), competitor, 0, 0.0)
    assert clear_win.verdict == "wins" and clear_win.mean == pytest.approx(-3.0, abs=0.3)
    assert clear_win.low < clear_win.mean < clear_win.high
    clear_loss = evaluate.paired_difference(competitor + 2.0 + rng.normal(0, 0.3, 20), competitor, 0, 0.0)
    assert clear_loss.verdict == "loses"
    noise = evaluate.paired_difference(competitor + rng.normal(0, 2.0, 20), competitor, 0, 0.0)
    assert noise.verdict == "indistinguishable" and noise.low < 0 < noise.high
    # Pairing matters: a shared split effect cancels in the difference.
    split_effect = rng.normal(0, 5.0, 20)
    paired = evaluate.paired_difference(10.0 + split_effect - 1.0 + rng.normal(0, 0.2, 20), 10.0 + split_effect, 0,
                                        0.0)
    assert paired.verdict == "wins"


def test_overlapping_splits_widen_the_interval() -> None:
    rng = np.random.default_rng(3)
    competitor = rng.uniform(8.0, 12.0, 20)
    method = competitor - 0.5 + rng.normal(0, 0.6, 20)
    independent = evaluate.paired_difference(method, competitor, 0, 0.0)
    overlapping = evaluate.paired_difference(method, competitor, 0, 0.3 / 0.7)
    factor = evaluate.nadeau_bengio_factor(20, 0.3 / 0.7)
    assert factor == pytest.approx(np.sqrt(1 + 20 * 0.3 / 0.7))
    assert overlapping.high - overlapping.low == pytest.approx(factor * (independent.high - independent.low))
    assert independent.verdict == "wins" and overlapping.verdict == "indistinguishable"


def test_one_split_gives_no_interval() -> None:
    result = evaluate.paired_difference(np.asarray([1.0]), np.asarray([2.0]), 0, 0.4)
    assert result.mean == -1.0 and np.isnan(result.low) and result.verdict == "indistinguishable"


def _summary(forest: evaluate.Verdict, zero_shot: evaluate.Verdict) -> report.TaskSummary:
    def method(name: str, mean: float, verdict: evaluate.Verdict | None) -> report.MethodSummary:
        paired = None if verdict is None else report.Paired(
            mean={"wins": -2.0, "loses": 2.0, "indistinguishable": 0.3}[verdict],
            low={"wins": -3.0, "loses": 1.0, "indistinguishable": -1.0}[verdict],
            high={"wins": -1.0, "loses": 3.0, "indistinguishable": 1.5}[verdict], verdict=verdict)
        return report.MethodSummary(method=name, test_mape_pct_mean=mean, test_mape_pct_std=1.0,
                                    test_mape_pct_first_split=mean, n_splits=20, vs_main=paired)

    methods = {"transfer": method("transfer", 5.0, None), "zero_shot": method("zero_shot", 30.0, zero_shot),
               "scratch": method("scratch", 5.5, "indistinguishable"),
               "random_forest": method("random_forest", 4.0 if forest == "loses" else 5.2, forest)}
    return report.TaskSummary(task="density", dataset="nmc", role="transfer", main="transfer", rows=63, groups=17,
                              n_splits=20, run_id="r", model_uri="m", registered_model=None, registered_version=None,
                              test_mape_pct=5.0, source_constant_features=["coating_speed_m_min"], methods=methods)


def test_verdict_sentence_says_what_the_intervals_say() -> None:
    text = report.verdict_sentence(_summary("indistinguishable", "wins"))
    assert "wins vs zero-shot" in text and "indistinguishable vs scratch net" in text
    assert "A random forest is as good" in text
    text = report.verdict_sentence(_summary("loses", "wins"))
    assert "loses vs baseline: random forest" in text and "A random forest is better" in text
    assert "Lowest mean: baseline: random forest" in text
    text = report.verdict_sentence(_summary("wins", "indistinguishable"))
    assert "random forest is" not in text and "indistinguishable vs zero-shot" in text


def test_markdown_marks_paper_figures_as_different_data() -> None:
    text = report.markdown([_summary("indistinguishable", "wins")])
    assert "paper, different data" in text and "| 56.1 |" in text  # the paper's NMC zero-shot density figure
    assert "coating_speed_m_min" in text


def test_bonferroni_level_per_comparison() -> None:
    assert evaluate.bonferroni_level(0.95, 10) == pytest.approx(0.995)
    assert evaluate.bonferroni_level(0.95, 1) == pytest.approx(0.95)
    with pytest.raises(ValueError, match="between 0 and 1"):
        evaluate.bonferroni_level(95.0, 9)


def _measured(test_mape: np.ndarray) -> fit.Measured:
    count = len(test_mape)
    return fit.Measured(test_mape, np.full(count, 0.9), np.full(count, 0.1), 10, np.full(count, 0.05),
                        np.full(count, 0.8), 5)


def test_a_task_s_verdicts_are_family_wise() -> None:
    """A difference a single 95 % interval calls a win is indistinguishable among nine comparisons."""
    from training.config import load_config

    rng = np.random.default_rng(4)
    main = rng.uniform(8.0, 12.0, 20)
    noise = rng.normal(0.0, 1.0, 20)
    competitor = main + 0.5 + (noise - noise.mean()) / noise.std(ddof=1)  # t = 0.5 / (1 / √20) = 2.2
    alone = evaluate.paired_difference(main, competitor, 42, 0.0, 4000)
    assert alone.verdict == "wins"
    others = {f"other{i}": _measured(main + 5.0 + rng.normal(0.0, 0.1, 20)) for i in range(8)}
    measured = {"transfer": _measured(main), "competitor": _measured(competitor), **others}
    splits = [evaluate.Split(np.arange(100), np.arange(100, 100), (np.arange(50), np.arange(50, 100)), 0)] * 20
    paired = fit._paired(measured, "transfer", splits, load_config("paper"))
    assert set(paired) == {"competitor", *others}
    assert paired["competitor"].verdict == "indistinguishable"
    assert paired["competitor"].high - paired["competitor"].low > alone.high - alone.low
    assert all(paired[name].verdict == "wins" for name in others)  # a clear difference survives the correction


def test_report_states_the_multiplicity_and_the_calibration() -> None:
    text = report.markdown([_summary("indistinguishable", "wins")])
    assert "95 % family-wise" in text and "Bonferroni" in text and "3 comparisons" in text
    assert "group level on out-of-fold residuals" in text and "single row" not in text
    single = _summary("indistinguishable", "wins").model_copy(update={"rows": 17, "groups": 17})
    assert "Every group here is a single row" in report.markdown([single])


def test_train_all_writes_its_report_to_its_run_folder_not_docs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    """The default `train all` leaves the committed docs/results.* alone; only --write-docs rewrites them."""
    from training import cli, jobs, tracking

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "results.md").write_text("committed\n")
    (docs / "results.csv").write_text("committed\n")
    summary = _summary("indistinguishable", "wins")

    def trained(config: Any, advance: Any, watch: Any) -> list[jobs.TaskResult]:
        return [jobs.TaskResult(summary, None)]

    monkeypatch.setattr(cli, "PROJECT_ROOT", tmp_path)
    monkeypatch.setattr(jobs, "train_all", trained)
    monkeypatch.setattr(tracking, "configure", lambda: "sqlite:///unused.db")
    runner = CliRunner()
    result = runner.invoke(cli.train_app, ["all", "--preset", "quick"])
    assert result.exit_code == 0, result.output
    assert (docs / "results.md").read_text() == "committed\n" and (docs / "results.csv").read_text() == "committed\n"
    written = list((tmp_path / "runs").glob("train-all-quick-*/results.md"))
    assert len(written) == 1 and "family-wise" in written[0].read_text()
    assert (written[0].parent / "results.csv").is_file() and str(written[0]) in result.output
    result = runner.invoke(cli.train_app, ["all", "--preset", "quick", "--write-docs"])
    assert result.exit_code == 0, result.output
    assert (docs / "results.md").read_text().startswith("# Results: `cellmfg train all --preset quick`")
    assert str(docs / "results.md") in result.output


def test_ensemble_intervals_reported_beside_constant_width() -> None:
    """Issue 24: the results report carries each ensemble's measured coverage and width, constant against spread,
    and which interval the registered model serves; single nets get no such row."""
    from training import evaluate as ev

    count = 4
    measured = _measured(np.full(count, 5.0))
    measured.spread_coverage = np.array([0.88, 0.92, 0.9, 0.86])
    measured.spread_relative_width = np.full(count, 0.06)
    measured.uses_spread = np.array([True, True, False, True])
    measured.chosen_coverage = np.array([0.88, 0.92, 0.9, 0.86])
    measured.chosen_relative_width = np.array([0.06, 0.06, 0.1, 0.06])
    measured.calibration = ev.SpreadCalibration(quantile=1.5, offset=0.01, constant_quantile=0.05,
                                                spread_width=0.06, constant_width=0.1, uses_spread=True)
    ensemble = report._ensemble_intervals(measured, 5)
    assert ensemble is not None
    assert ensemble.spread_share == 0.75 and ensemble.served == "spread"
    assert ensemble.chosen_width == pytest.approx(0.07) and ensemble.constant_width == pytest.approx(0.1)
    assert report._ensemble_intervals(_measured(np.full(count, 5.0)), 5) is None  # a single net

    summary = _summary("indistinguishable", "wins")
    methods = dict(summary.methods)
    methods["transfer"] = methods["transfer"].model_copy(update={"ensemble": ensemble})
    text = report.markdown([summary.model_copy(update={"methods": methods})])
    row = next(line for line in text.splitlines() if line.startswith("| density | NMC | transfer"))
    assert "| 5 | 0.90 | 0.100 | 0.89 | 0.060 | 0.75 | 0.89 | 0.070 | -30 % | spread |" in row
    assert "Lowest measured coverage of a chosen interval: 0.89" in text
    table = report.long_table([summary.model_copy(update={"methods": methods})])
    assert table.set_index("method").loc["transfer", "served_interval"] == "spread"
    assert pd.isna(table.set_index("method").loc["zero_shot", "served_interval"])
