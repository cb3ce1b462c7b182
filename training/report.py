"""Results a scientist can cite: typed per-task summaries, the Markdown and CSV tables, and verdict sentences.

Every figure comes from grouped repeated splits; the words come from `evaluate.verdict` on paired intervals. The
paper's figures stand in their own column, marked as measured on different (private) data.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from cellmfg.paper import PAPER_MAPE
from training import evaluate
from training.config import TrainConfig
from training.fit import Measured, TaskOutcome

LABELS: dict[str, str] = {
    "pretrained": "pretrained net (source)",
    "transfer": "transfer, adapter chosen on validation",
    "transfer_paper": "transfer, paper's adapter (hidden → Dense → out)",
    "transfer_residual": "transfer, residual adapter (ours)",
    "zero_shot": "zero-shot (source net as is)",
    "zero_shot_recalibrated": "zero-shot + linear recalibration",
    "pooled": "pooled net (source + target, indicator)",
    "scratch": "scratch net (target only)",
    "mean": "baseline: training mean",
    "linear": "baseline: linear regression",
    "random_forest": "baseline: random forest",
}
DISPLAY = {"graphite": "Graphite", "si_gra": "Si-Gra", "nmc": "NMC", "gdl200": "GDL200", "gdl1000": "GDL1000"}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Paired(_Model):
    """Main method minus this method, test MAPE points: mean and 95 % interval; the verdict is the main method's."""

    mean: float
    low: float | None
    high: float | None
    verdict: evaluate.Verdict


class EnsembleIntervals(_Model):
    """An ensemble's two intervals on the held-out test rows, averaged over splits (issue 24): today's constant
    relative width against the normalised (spread-scaled) one, and the one the validation rule chose per split."""

    members: int
    constant_coverage: float | None
    constant_width: float | None
    spread_coverage: float | None
    spread_width: float | None
    spread_share: float  # fraction of splits whose rule (validation rows only) chose the spread
    chosen_coverage: float | None
    chosen_width: float | None
    served: str  # the first split's choice, the one the registered model's contract carries: spread | constant


class MethodSummary(_Model):
    method: str
    test_mape_pct_mean: float
    test_mape_pct_std: float
    test_mape_pct_first_split: float
    n_splits: int
    validation_mape_pct_mean: float | None = None  # nested-validation estimate of the chosen configuration
    validation_mape_pct_first_split: float | None = None  # what the registry compares for the registered net
    coverage: float | None = None  # measured coverage of the conformal intervals on the test rows
    mean_relative_width: float | None = None  # mean (upper - lower) / |prediction|
    chosen: dict[str, int] = {}  # configuration label → number of splits that chose it
    vs_main: Paired | None = None
    ensemble: EnsembleIntervals | None = None  # ensembles only: constant against spread-scaled intervals


class TaskSummary(_Model):
    task: str
    dataset: str
    role: str
    main: str
    rows: int
    groups: int
    n_splits: int
    run_id: str
    model_uri: str
    registered_model: str | None
    registered_version: str | None
    test_mape_pct: float  # the registered net on the first split's test part
    source_constant_features: list[str]
    methods: dict[str, MethodSummary]
    learning_curve: list[tuple[int, float]] = []
    family_confidence: float = 0.95  # the paired intervals hold together at this level (Bonferroni over the task)


def _finite(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 4)


def _mean(values: np.ndarray | None) -> float | None:
    if values is None or not np.isfinite(values).any():
        return None
    return _finite(float(np.nanmean(values)))


def _ensemble_intervals(measured: Measured, members: int) -> EnsembleIntervals | None:
    if measured.uses_spread is None or measured.calibration is None:
        return None
    return EnsembleIntervals(
        members=members, constant_coverage=_mean(measured.coverage), constant_width=_mean(measured.relative_width),
        spread_coverage=_mean(measured.spread_coverage), spread_width=_mean(measured.spread_relative_width),
        spread_share=round(float(np.mean(measured.uses_spread)), 4),
        chosen_coverage=_mean(measured.chosen_coverage), chosen_width=_mean(measured.chosen_relative_width),
        served="spread" if measured.calibration.uses_spread else "constant")


def summarize(outcome: TaskOutcome, run_id: str, model_uri: str, registered: str | None, version: str | None,
              family_confidence: float = 0.95, ensemble_members: int = 1) -> TaskSummary:
    methods = {}
    for name, measured in outcome.measured.items():
        run = outcome.runs[name]
        mean, std = evaluate.mean_std(measured.test_mape)
        chosen = Counter(c.label() for c in run.choices if c is not None)
        paired = outcome.paired.get(name)
        methods[name] = MethodSummary(
            method=name, test_mape_pct_mean=round(mean, 4), test_mape_pct_std=round(std, 4),
            test_mape_pct_first_split=round(float(measured.test_mape[0]), 4), n_splits=len(measured.test_mape),
            validation_mape_pct_mean=_finite(float(np.nanmean(run.validation_mape)))
            if np.isfinite(run.validation_mape).any() else None,
            validation_mape_pct_first_split=_finite(float(run.validation_mape[0])),
            coverage=_finite(float(np.nanmean(measured.coverage))) if np.isfinite(measured.coverage).any() else None,
            mean_relative_width=_finite(float(np.nanmean(measured.relative_width)))
            if np.isfinite(measured.relative_width).any() else None,
            chosen=dict(chosen.most_common()),
            vs_main=None if paired is None else Paired(mean=round(paired.mean, 4), low=_finite(paired.low),
                                                       high=_finite(paired.high), verdict=paired.verdict),
            ensemble=_ensemble_intervals(measured, ensemble_members))
    constant = ~outcome.input_mask
    return TaskSummary(
        task=outcome.data.target.task, dataset=outcome.data.name, role=outcome.role, main=outcome.main,
        rows=len(outcome.data.y), groups=len(np.unique(outcome.data.groups)), n_splits=len(outcome.splits),
        run_id=run_id, model_uri=model_uri, registered_model=registered, registered_version=version,
        test_mape_pct=round(float(outcome.measured[outcome.main].test_mape[0]), 4),
        source_constant_features=[f for f, c in zip(outcome.data.feature_names, constant, strict=True) if c],
        methods=methods, learning_curve=[(rows, round(mape, 4)) for rows, mape in outcome.learning_curve],
        family_confidence=family_confidence)


# -------------------------------------------------------------------------------------------------------------
# Tables


def long_table(results: list[TaskSummary]) -> pd.DataFrame:
    rows = []
    for result in results:
        for name, method in result.methods.items():
            paired = method.vs_main
            rows.append({
                "task": result.task, "dataset": result.dataset, "method": name, "main_method": result.main,
                "test_mape_pct_mean": round(method.test_mape_pct_mean, 2),
                "test_mape_pct_std": round(method.test_mape_pct_std, 2),
                "test_mape_pct_first_split": round(method.test_mape_pct_first_split, 2),
                "n_splits": method.n_splits,
                "main_minus_method_pct_points": None if paired is None else round(paired.mean, 2),
                "main_minus_method_low": None if paired is None or paired.low is None else round(paired.low, 2),
                "main_minus_method_high": None if paired is None or paired.high is None else round(paired.high, 2),
                "main_verdict": None if paired is None else paired.verdict,
                "interval_coverage": None if method.coverage is None else round(method.coverage, 3),
                "interval_mean_relative_width": None if method.mean_relative_width is None
                else round(method.mean_relative_width, 3),
                "validation_mape_pct_mean": None if method.validation_mape_pct_mean is None
                else round(method.validation_mape_pct_mean, 2),
                **_ensemble_columns(method.ensemble),
                "paper_test_mape_pct_different_data": PAPER_MAPE.get((result.task, result.dataset, name)),
            })
    return pd.DataFrame(rows)


def _ensemble_columns(ensemble: EnsembleIntervals | None) -> dict[str, object]:
    """The long table's ensemble-interval columns (empty for single nets)."""
    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 3)
    if ensemble is None:
        columns = ("ensemble_members", "spread_interval_coverage", "spread_interval_mean_relative_width",
                   "spread_rule_share", "chosen_interval_coverage", "chosen_interval_mean_relative_width",
                   "served_interval")
        return dict.fromkeys(columns)
    return {"ensemble_members": ensemble.members, "spread_interval_coverage": rounded(ensemble.spread_coverage),
            "spread_interval_mean_relative_width": rounded(ensemble.spread_width),
            "spread_rule_share": rounded(ensemble.spread_share),
            "chosen_interval_coverage": rounded(ensemble.chosen_coverage),
            "chosen_interval_mean_relative_width": rounded(ensemble.chosen_width), "served_interval": ensemble.served}


def ensemble_table(results: list[TaskSummary], coverage: float) -> list[str]:
    """Recipe-dependent intervals (issue 24): per ensemble method, today's constant width against the spread-scaled
    width and the validation rule's choice, on the same held-out test rows."""
    rows = [(result, name, method) for result in results for name, method in result.methods.items()
            if method.ensemble is not None]
    if not rows:
        return []
    lines = [
        "\n### Recipe-dependent intervals: constant width against the ensemble spread\n",
        f"Ensemble methods only (K members on one frozen base for transfer; K independent nets for scratch and "
        f"pooled). Nominal {coverage:.0%}. *Constant*: p ± q·|p|, as the single nets have. *Spread*: normalised "
        "split-conformal p ± q·(σ + β|p|), σ the members' standard deviation at that recipe. Both are calibrated at "
        "group level on each split's out-of-fold training residuals and measured on its test groups. *Rule share*: "
        "splits where the rule (validation rows only: is the spread-scaled interval narrower at equal calibration "
        "coverage?) chose the spread; otherwise the spread carries no usable information and constant width is "
        "kept. *Served*: the first split's choice, the one the registered model's contract carries "
        "(registered methods only).\n",
        "| task | dataset | method | K | constant coverage | constant width | spread coverage | spread width | "
        "rule share | chosen coverage | chosen width | chosen vs constant width | served |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result, name, method in rows:
        e = method.ensemble
        assert e is not None
        change = "—" if e.chosen_width is None or not e.constant_width else \
            f"{100 * (e.chosen_width / e.constant_width - 1):+.0f} %"
        lines.append(
            f"| {result.task} | {DISPLAY.get(result.dataset, result.dataset)} | {LABELS.get(name, name)} | "
            f"{e.members} | {_fmt(e.constant_coverage, 2)} | {_fmt(e.constant_width, 3)} | "
            f"{_fmt(e.spread_coverage, 2)} | {_fmt(e.spread_width, 3)} | {_fmt(e.spread_share, 2)} | "
            f"{_fmt(e.chosen_coverage, 2)} | {_fmt(e.chosen_width, 3)} | {change} | "
            f"{e.served if name == result.main else '—'} |")
    chosen = [m.ensemble.chosen_coverage for _, _, m in rows
              if m.ensemble is not None and m.ensemble.chosen_coverage is not None]
    if chosen:
        lines.append(f"\nLowest measured coverage of a chosen interval: {min(chosen):.2f} (nominal {coverage:.2f}).")
    return lines


def _fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _pct(value: float, signed: bool = False) -> str:
    """MAPE points: two decimals below 1 (tortuosity errors are tenths of a percent), else one."""
    digits = 2 if abs(value) < 1.0 else 1
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _paired_cell(paired: Paired | None) -> str:
    if paired is None:
        return "(reference)"
    if paired.low is None or paired.high is None:
        return f"{_pct(paired.mean, True)} (too few splits)"
    return f"{_pct(paired.mean, True)} [{_pct(paired.low, True)}, {_pct(paired.high, True)}] → {paired.verdict}"


def _task_table(result: TaskSummary, coverage: float) -> list[str]:
    main = "transfer" if result.main == "transfer" else "pretrained net"
    comparisons = sum(1 for m in result.methods.values() if m.vs_main is not None)
    lines = [
        f"\n#### {result.task} on {DISPLAY.get(result.dataset, result.dataset)} "
        f"({result.rows} rows in {result.groups} groups, {result.n_splits} grouped splits)\n",
        f"| method | test MAPE %, mean ± std | first split | {main} − method, points "
        f"[{100 * result.family_confidence:.0f} % family-wise CI, {comparisons} comparisons] → verdict | "
        f"{coverage:.0%} interval coverage | mean relative width | paper, different data |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, method in result.methods.items():
        paper = PAPER_MAPE.get((result.task, result.dataset, name))
        lines.append(
            f"| {LABELS.get(name, name)} | {_pct(method.test_mape_pct_mean)} ± {_pct(method.test_mape_pct_std)} | "
            f"{_pct(method.test_mape_pct_first_split)} | {_paired_cell(method.vs_main)} | "
            f"{_fmt(None if method.coverage is None else 100 * method.coverage, 0)} % | "
            f"{_fmt(None if method.mean_relative_width is None else 100 * method.mean_relative_width, 0)} % | "
            f"{_fmt(paper)} |")
    chosen = result.methods[result.main].chosen
    if chosen:
        lines.append("\nChosen on validation (splits): " + "; ".join(f"{k} ({v})" for k, v in chosen.items()) + ".")
    if result.groups == result.rows:
        lines.append("\nEvery group here is a single row (one structure each), so the group-level interval "
                     "calibration is a row-level one; its coverage is measured on the test rows, not fixed by the "
                     "number of held-out rows.")
    if result.source_constant_features:
        lines.append(f"\nConstant in the source training rows, so ignored by the source net: "
                     f"{', '.join(result.source_constant_features)}.")
    return lines


def _versus(result: TaskSummary, competitor: str) -> str:
    paired = result.methods[competitor].vs_main
    if paired is None:
        return ""
    span = "" if paired.low is None or paired.high is None else \
        f" [{_pct(paired.low, True)}, {_pct(paired.high, True)}]"
    return f"{paired.verdict} vs {LABELS[competitor].split(' (')[0]} ({_pct(paired.mean, True)} points{span})"


def verdict_sentence(result: TaskSummary) -> str:
    """One sentence per task, every claim backed by a paired interval."""
    main = result.methods[result.main]
    name = f"{result.task} on {DISPLAY.get(result.dataset, result.dataset)}"
    competitors = (["zero_shot", "zero_shot_recalibrated", "scratch", "pooled", "linear", "random_forest"]
                   if result.role == "transfer" else ["linear", "random_forest"])
    parts = [_versus(result, c) for c in competitors if c in result.methods]
    text = (f"**{name}**: {LABELS[result.main].split(',')[0]} {_pct(main.test_mape_pct_mean)} ± "
            f"{_pct(main.test_mape_pct_std)} %; " + "; ".join(p for p in parts if p) + ".")
    forest = result.methods["random_forest"].vs_main
    if forest is not None:
        if forest.verdict == "loses":
            text += " A random forest is better here."
        elif forest.verdict == "indistinguishable":
            text += " A random forest is as good (no difference the splits can resolve)."
    best = min(result.methods.values(), key=lambda m: m.test_mape_pct_mean)
    if best.method != result.main:
        text += f" Lowest mean: {LABELS[best.method]} ({_pct(best.test_mape_pct_mean)} %)."
    return text


def zero_shot_table(results: list[TaskSummary]) -> list[str]:
    rows = [r for r in results if r.role == "transfer"]
    if not rows:
        return []
    lines = ["\n### Zero-shot: the source net applied as is\n",
             "| task | target | ours, mean ± std | paper, different data |", "|---|---|---|---|"]
    for result in rows:
        method = result.methods["zero_shot"]
        paper = PAPER_MAPE.get((result.task, result.dataset, "zero_shot"))
        lines.append(f"| {result.task} | {DISPLAY.get(result.dataset, result.dataset)} | "
                     f"{_pct(method.test_mape_pct_mean)} ± {_pct(method.test_mape_pct_std)} | {_fmt(paper)} |")
    return lines


def protocol(config: TrainConfig) -> str:
    """The choices the protocol offered, in one paragraph (what "chosen on validation" chose among)."""
    nets = "; ".join(f"{task}: {n.hidden_layers} hidden layer(s) of width {'/'.join(map(str, n.widths))}, "
                     f"learning rate {'/'.join(f'{r:g}' for r in n.learning_rates)}" for task, n in config.nets.items())
    adapter = config.adapter
    return (f"Protocol: {config.repeats} grouped outer splits (test share {config.test_fraction:g}); in each, "
            f"{config.inner_folds} grouped inner validation folds choose among the candidates, which are then "
            f"refit on the whole training part. Pretrained and scratch nets ({nets}); adapters "
            f"{' and '.join(adapter.adapters)} of width {'/'.join(map(str, adapter.widths))} with learning rate "
            f"{'/'.join(f'{r:g}' for r in adapter.learning_rates)}; every net {config.net('density').epochs} "
            f"epochs of Adam on MAPE. The pooled net is not tuned (widest width, smallest rate, batches of twice "
            f"the rows). Random forest: {config.random_forest_trees} trees. Inputs are scaled by fixed physical "
            "scales (`cellmfg/domain.py`); a feature constant in a net's training rows is ignored by it.\n")


def markdown(results: list[TaskSummary], coverage: float = 0.9, protocol_note: str = "") -> str:
    if not results:
        return "(no results)\n"
    splits = max(r.n_splits for r in results)
    family_wise = results[0].family_confidence
    parts = [
        f"Test MAPE (%) over {splits} grouped repeated 70/30 splits (no group of replicates on both sides of any "
        "split). Every method runs on the same splits; net widths, learning rates and the adapter design are "
        "chosen per split by grouped inner validation folds of the training part, then refit on it; test rows are "
        "read once, for this report.\n",
        "Paired column: mean over splits of (main − method) test MAPE; negative means the main method (the "
        "registered net) is better. The interval is a bootstrap over splits widened by the Nadeau–Bengio "
        "factor, because repeated splits share training rows; the verdict is `wins` when the interval lies below "
        "0, `loses` when above, else `indistinguishable`.\n",
        "Multiplicity: a transfer task makes nine comparisons (a source task three), so its intervals are "
        f"{100 * family_wise:.0f} % family-wise (Bonferroni: each of a task's m intervals at "
        f"1 − {1 - family_wise:.2g}/m). The chance that any verdict of a task is a false `wins` or `loses` is then "
        f"at most {100 * (1 - family_wise):.0f} %; across the eight tasks no further correction is made.\n",
        f"Intervals: conformal on relative residuals, nominal {coverage:.0%}, ends clipped to the target's "
        "physical range, calibrated at group level on out-of-fold residuals: in each split, every inner "
        "validation fold of the training part is predicted by a model fitted without it (for the nets, the "
        "configuration chosen on the other folds), each group (a sheet's replicate punches, a structure) gives one "
        "score, its largest relative residual, because replicates are not independent, and the conformal quantile "
        "is taken over groups. The interval then goes around the model refit on the whole training part, as the "
        "served one does (the served quantile is the first split's). Coverage (rows inside) and width are "
        "measured on the split's test groups, which no calibration or choice saw.\n",
        "The paper's figures come from its own (private) data and a single random row split; ours come from "
        "generated data. They are shown for orientation, not as a like-for-like comparison.\n",
    ]
    if protocol_note:
        parts.append(protocol_note)
    for family, kind in (("Electrodes (paper Table 1)", "electrode"), ("GDL tortuosity (paper Table 2)", "gdl")):
        if kind == "gdl":
            selected = [r for r in results if r.task == "tortuosity"]
        else:
            selected = [r for r in results if r.task != "tortuosity"]
        if not selected:
            continue
        parts.append(f"\n### {family}")
        for result in selected:
            parts.extend(_task_table(result, coverage))
    parts.extend(ensemble_table(results, coverage))
    parts.extend(zero_shot_table(results))
    parts.append("\n### Verdicts\n")
    parts.extend(f"- {verdict_sentence(r)}" for r in results)
    return "\n".join(parts) + "\n"
