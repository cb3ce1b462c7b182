"""Verdict words come from paired intervals only: constructed paired results with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from training import evaluate, report


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
