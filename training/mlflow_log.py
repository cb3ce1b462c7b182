"""MLflow logging of one task's outcome: the registered net's run (params, metrics, curves, plots, SHAP, promotion
inputs, model) and one comparison run per other method (metrics and a parity plot)."""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from cellmfg import contract as contracts
from cellmfg.domain import all_quantities
from training import evaluate, explain, nets, plots, tracking
from training.config import TrainConfig
from training.fit import Dataset, Measured, MethodRun, TaskOutcome

log = logging.getLogger("cellmfg.training")
PROBE_ROWS = 200


def dataset_params(data: Dataset) -> dict[str, str]:
    return {"dataset": data.name, "data_sha256": data.sha256, "data_rows": str(len(data.y)),
            "data_groups": str(len(np.unique(data.groups))), "data_source": data.source,
            "target_column": data.target.column}


def _first_split_scores(outcome: TaskOutcome, run: MethodRun) -> dict[str, float]:
    split, y = outcome.first, outcome.data.y
    return {**evaluate.scores(y[split.train], run.predictions[0][split.train], "train"),
            **evaluate.scores(y[split.test], run.predictions[0][split.test], "test")}


def _summary_metrics(outcome: TaskOutcome, method: str) -> dict[str, float]:
    measured, run = outcome.measured[method], outcome.runs[method]
    mean, std = evaluate.mean_std(measured.test_mape)
    out = {"test_mape_pct_mean": mean, "test_mape_pct_std": std,
           "interval_coverage": float(np.nanmean(measured.coverage)),
           "interval_mean_relative_width": float(np.nanmean(measured.relative_width)),
           "interval_group_coverage": float(np.nanmean(measured.group_coverage)),
           "interval_relative_quantile_first_split": float(measured.quantiles[0])}
    out.update(spread_metrics(measured, run.members))
    if np.isfinite(run.validation_mape[0]):
        out["validation_mape_pct"] = float(run.validation_mape[0])
    paired = outcome.paired.get(method)
    if paired is not None:
        out.update({"main_minus_method_pct_points": paired.mean})
        if np.isfinite(paired.low):
            out.update({"main_minus_method_low": paired.low, "main_minus_method_high": paired.high})
    return {k: v for k, v in out.items() if np.isfinite(v)}


def spread_metrics(measured: Measured, members: int) -> dict[str, float]:
    """An ensemble's interval figures for MLflow: the constant-width interval is `interval_*`; these add the
    spread-scaled one, the share of splits whose rule chose it, and the interval the rule chose."""
    if measured.chosen_coverage is None or measured.chosen_relative_width is None or measured.uses_spread is None:
        return {}
    out = {"ensemble_members": float(members),
           "interval_spread_coverage": _mean(measured.spread_coverage),
           "interval_spread_mean_relative_width": _mean(measured.spread_relative_width),
           "interval_spread_chosen_share": float(np.mean(measured.uses_spread)),
           "interval_chosen_coverage": _mean(measured.chosen_coverage),
           "interval_chosen_mean_relative_width": _mean(measured.chosen_relative_width)}
    if measured.calibration is not None:
        out.update({"interval_spread_quantile_first_split": measured.calibration.quantile,
                    "interval_spread_offset_first_split": measured.calibration.offset})
    return out


def _mean(values: np.ndarray | None) -> float:
    finite = np.asarray([] if values is None else values, dtype=float)
    finite = finite[np.isfinite(finite)]
    return float(finite.mean()) if len(finite) else float("nan")


def conformal(outcome: TaskOutcome, method: str, coverage: float) -> contracts.Conformal:
    """The served quantile: the first split's, calibrated at group level on the out-of-fold residuals of its
    training part (the registered net is that split's refit), with the coverage and width the same scheme reached
    on the test groups of every split (rows no calibration or choice saw).

    For an ensemble, also the spread-scaled quantile and the rule's choice between the two (made on the first
    split's calibration rows only, `evaluate.SpreadCalibration`); `measured_coverage` and `mean_relative_width` are
    then those of the interval the rule chose in each split, and both schemes' own figures sit beside them."""
    measured, run = outcome.measured[method], outcome.runs[method]
    single = len(np.unique(outcome.data.groups)) == len(outcome.data.y)
    scheme = ("row level (every group is a single row)" if single
              else "group level (one score per group: its largest relative residual)")
    constant = contracts.Conformal(
        coverage=coverage, relative_quantile=float(measured.quantiles[0]), n_calibration=measured.calibration_groups,
        method=f"conformal on relative residuals, {scheme}, calibrated on the out-of-fold residuals of the first "
               "grouped split's training part (n_calibration groups); ends clipped to the target's physical range",
        measured_coverage=float(np.nanmean(measured.coverage)),
        mean_relative_width=float(np.nanmean(measured.relative_width)), n_evaluated=measured.coverage_rows)
    calibration = measured.calibration
    if run.members < 2 or measured.chosen_coverage is None or measured.chosen_relative_width is None:
        return constant.model_copy(update={"scale_reason": "a single net (no ensemble spread): constant width"})
    both = {"ensemble_members": run.members,
            "constant_measured_coverage": constant.measured_coverage,
            "constant_mean_relative_width": constant.mean_relative_width,
            "spread_measured_coverage": _finite_or_none(_mean(measured.spread_coverage)),
            "spread_mean_relative_width": _finite_or_none(_mean(measured.spread_relative_width)),
            "measured_coverage": _mean(measured.chosen_coverage),
            "mean_relative_width": _mean(measured.chosen_relative_width)}
    if calibration is None:
        return constant.model_copy(update={**both, "scale_reason": "the ensemble members agree on every "
                                           "calibration row (zero spread): constant width"})
    update = {**both, "scale": "spread" if calibration.uses_spread else "constant",
              "scale_reason": calibration.reason(), "spread_quantile": calibration.quantile,
              "spread_offset": calibration.offset}
    if calibration.uses_spread:
        update["method"] = (f"normalised conformal: scores |y - p| / (σ + β|p|), σ the spread of the "
                            f"{run.members} ensemble members, β = spread_offset; {scheme.replace('relative', 'such')}, "
                            "calibrated on the out-of-fold residuals and spreads of the first grouped split's "
                            "training part (n_calibration groups); ends clipped to the target's physical range")
    return constant.model_copy(update=update)


def _finite_or_none(value: float) -> float | None:
    return value if np.isfinite(value) else None


def _metrics_model(outcome: TaskOutcome, method: str) -> contracts.Metrics:
    split, data = outcome.first, outcome.data
    run, measured = outcome.runs[method], outcome.measured[method]
    mean, std = evaluate.mean_std(measured.test_mape)
    test = evaluate.scores(data.y[split.test], run.predictions[0][split.test], "test")
    zero_shot = outcome.runs.get("zero_shot")
    out_of_fold = float(run.selection_free_mape(data.y, outcome.splits[:1])[0])
    return contracts.Metrics(
        test_mape_pct=float(measured.test_mape[0]), test_mape_pct_mean=mean, test_mape_pct_std=std,
        n_splits=len(measured.test_mape), test_mae=test["test_mae"], test_r2=test["test_r2"],
        validation_mape_pct=float(run.validation_mape[0]) if np.isfinite(run.validation_mape[0]) else None,
        zero_shot_test_mape_pct=None if zero_shot is None or method == "zero_shot"
        else float(outcome.measured["zero_shot"].test_mape[0]),
        zero_shot_validation_mape_pct=None if zero_shot is None or method == "zero_shot"
        else float(zero_shot.validation_mape[0]),
        out_of_fold_mape_pct=out_of_fold if np.isfinite(out_of_fold) else None)


# Decile edges of each feature's training rows, min to max: the reference of the service's input-drift PSI.
DRIFT_QUANTILES = np.linspace(0.0, 1.0, 11)


def promotion_inputs(outcome: TaskOutcome, config: TrainConfig,
                     background: np.ndarray) -> contracts.PromotionInputs:
    """What the registry needs to gate this net and write its contract; typed, no test rows in it. `background` is
    the SHAP background drawn from the training rows (`shap_background`)."""
    data, split = outcome.data, outcome.first
    quantities = all_quantities(data.kind)
    x_train = data.x[split.train]
    constant = ~outcome.input_mask  # features the source net ignores (constant in its training rows)
    features = [contracts.FeatureSpec(
        name=name, unit=quantities[name].unit, train_min=float(x_train[:, i].min()),
        train_max=float(x_train[:, i].max()), train_median=float(np.median(x_train[:, i])),
        train_quantiles=[float(q) for q in np.quantile(x_train[:, i], DRIFT_QUANTILES)],
        physical_min=quantities[name].physical_min, physical_max=quantities[name].physical_max,
        scale_centre=quantities[name].scale_centre, scale_width=quantities[name].scale_width,
        constant_in_source=bool(constant[i]))
        for i, name in enumerate(data.feature_names)]
    quantity = data.target.quantity
    choice = outcome.chosen()
    zero_shot = None
    if "zero_shot" in outcome.runs:
        zero_shot = contracts.ZeroShotInputs(metrics=_metrics_model(outcome, "zero_shot"),
                                             conformal=conformal(outcome, "zero_shot", config.coverage))
    probe = data.x[np.random.default_rng(config.seed).permutation(len(data.y))[:PROBE_ROWS]]
    return contracts.PromotionInputs(
        kind=data.kind, task=data.target.task, dataset=data.name, role=outcome.role,  # type: ignore[arg-type]
        target=contracts.TargetSpec(task=data.target.task, column=data.target.column, unit=data.target.unit,
                                    physical_min=quantity.physical_min, physical_max=quantity.physical_max),
        features=features,
        shap_background=background.tolist(),
        probe_x=probe.tolist(), metrics=_metrics_model(outcome, outcome.main),
        conformal=conformal(outcome, outcome.main, config.coverage),
        selection=contracts.Selection(method=choice.method, learning_rate=choice.learning_rate, width=choice.width,
                                      validation_mape_pct=float(outcome.runs[outcome.main].validation_mape[0])),
        zero_shot=zero_shot, data_sha256=data.sha256, data_rows=len(data.y), groups=len(np.unique(data.groups)))


def log_task(outcome: TaskOutcome, config: TrainConfig, name: str, registered_name: str | None,
             base_tags: dict[str, str]) -> tuple[str, str, str | None]:
    """The registered net's nested run and the comparison runs; returns run id, model URI, registered version."""
    data = outcome.data
    # One background (k-means centres of the training rows) for the contract and the SHAP artefacts.
    background = explain.representative_background(data.x[outcome.first.train], config.shap_background_rows,
                                                   config.seed)
    inputs = promotion_inputs(outcome, config, background)
    constant = [f.name for f in inputs.features if f.constant_in_source]
    if constant:
        log.warning("%s: %s constant in the source training rows; the source net ignores %s", name,
                    ", ".join(constant), "it" if len(constant) == 1 else "them")
    tags = {"task": data.target.task, "dataset": data.name, "role": outcome.role, "variant": outcome.chosen().method,
            "data_sha256": data.sha256, "git_commit": tracking.git_commit(), "features": ",".join(data.feature_names),
            "kind": data.kind, "source_constant_features": ",".join(constant), **base_tags}
    with tracking.run(name, nested=True, tags=tags) as active, tracking.artifact_dir() as tmp:
        folder = Path(tmp)
        main = outcome.runs[outcome.main]
        mlflow.log_params({**config.flat_params(), **dataset_params(data),
                           "chosen_method": outcome.chosen().method,
                           "chosen_learning_rate": str(outcome.chosen().learning_rate),
                           "chosen_width": str(outcome.chosen().width)})
        metrics = {**_first_split_scores(outcome, main), **_summary_metrics(outcome, outcome.main),
                   "test_mape_pct": float(outcome.measured[outcome.main].test_mape[0])}
        for method, paired in outcome.paired.items():
            metrics[f"vs_{method}_pct_points"] = paired.mean
        if "zero_shot" in outcome.runs:
            metrics["zero_shot_test_mape_pct"] = float(outcome.measured["zero_shot"].test_mape[0])
            metrics["zero_shot_validation_mape_pct"] = float(outcome.runs["zero_shot"].validation_mape[0])
        metrics["out_of_fold_mape_pct"] = float(main.selection_free_mape(data.y, outcome.splits[:1])[0])
        mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
        if main.train_loss is not None and main.validation_loss is not None:
            tracking.log_curves(main.train_loss, main.validation_loss)
            path = plots.loss_curves(main.train_loss, main.validation_loss, f"{name} ({outcome.chosen().label()})",
                                     folder / "loss_curves.png")
            mlflow.log_artifact(str(path), "plots")
        _log_figures(folder, name, outcome, main)
        _log_shap(folder, name, outcome, background, config)
        if outcome.learning_curve:
            for rows, mape in outcome.learning_curve:
                mlflow.log_metric("learning_curve_test_mape_pct", mape, step=rows)
            plots.learning_curve([r for r, _ in outcome.learning_curve], [m for _, m in outcome.learning_curve],
                                 f"{name}: source-size ablation", folder / "learning_curve.png")
            mlflow.log_artifact(str(folder / "learning_curve.png"), "plots")
        tracking.log_json(config.to_dict(), "config.json")
        tracking.log_json(dataset_params(data), "dataset.json")
        mlflow.log_text(inputs.model_dump_json(indent=2), contracts.PROMOTION_INPUTS_ARTIFACT)
        model_uri, version = tracking.log_keras_model(outcome.model, data.x[outcome.first.train], registered_name)
        if registered_name and version:
            scores: dict[str, str] = {key: f"{metrics[key]:.4f}" for key in ("validation_mape_pct", "test_mape_pct")
                      if key in metrics and np.isfinite(metrics[key])}
            tracking.tag_model_version(registered_name, version, {**tags, **scores, "run_id": active.info.run_id})
        run_id = active.info.run_id
    _log_comparisons(outcome, config, name)
    return run_id, model_uri, version


def _log_figures(folder: Path, name: str, outcome: TaskOutcome, run: MethodRun) -> None:
    data, split = outcome.data, outcome.first
    paths = [
        plots.parity({"train": data.y[split.train], "test": data.y[split.test]},
                     {"train": run.predictions[0][split.train], "test": run.predictions[0][split.test]},
                     data.target.column, f"{name} ({run.method})", folder / "parity.png"),
        plots.distributions(data.frame, data.feature_names, f"{data.name}: inputs", folder / "input_distributions.png"),
        plots.distributions(data.frame, [data.target.column], f"{data.name}: output",
                            folder / "output_distribution.png"),
    ]
    for path in paths:
        mlflow.log_artifact(str(path), "plots")


def _log_shap(folder: Path, name: str, outcome: TaskOutcome, background: np.ndarray, config: TrainConfig) -> None:
    """The paper's Figs 6–7: a waterfall for one random test sample, a beeswarm over the test set, values as CSV."""
    data, split, model = outcome.data, outcome.first, outcome.model
    explanation = explain.explain(nets.compiled_predictor(model), background, data.x[split.test],
                                  data.feature_names)
    sample = int(np.random.default_rng(config.seed).integers(len(split.test)))
    plots.shap_waterfall(explanation[sample], f"{name}: test row {int(split.test[sample])}",
                         folder / "shap_waterfall.png")
    plots.shap_beeswarm(explanation, f"{name}: test set", folder / "shap_beeswarm.png")
    values = pd.DataFrame(explanation.values, columns=data.feature_names)
    values.insert(0, "row", split.test)
    values["base_value"] = explanation.base_values
    values["prediction"] = nets.predict(model, data.x[split.test])
    values.to_csv(folder / "shap_values.csv", index=False)
    for file in ("shap_waterfall.png", "shap_beeswarm.png"):
        mlflow.log_artifact(str(folder / file), "plots")
    mlflow.log_artifact(str(folder / "shap_values.csv"), "shap")


PARITY_PLOTTED = ("zero_shot", "scratch", "pooled", "transfer_paper", "transfer_residual")


def _log_comparisons(outcome: TaskOutcome, config: TrainConfig, name: str) -> None:
    """Every other method: its first-split scores, repeated-split summary and paired difference; a parity plot
    for the nets (the baselines' figures are in the results table)."""
    data, split = outcome.data, outcome.first
    for method, run in outcome.runs.items():
        if method == outcome.main:
            continue
        tags = {"task": data.target.task, "dataset": data.name, "variant": method, "role": "comparison"}
        with tracking.run(f"{name}/{method}", nested=True, tags=tags), tracking.artifact_dir() as tmp:
            mlflow.log_params(dataset_params(data))
            metrics = {**_first_split_scores(outcome, run), **_summary_metrics(outcome, method)}
            mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
            if method in PARITY_PLOTTED:
                path = plots.parity({"train": data.y[split.train], "test": data.y[split.test]},
                                    {"train": run.predictions[0][split.train], "test": run.predictions[0][split.test]},
                                    data.target.column, f"{name} ({method})", Path(tmp) / "parity.png")
                mlflow.log_artifact(str(path), "plots")
