"""Training stage: pretrain on a source set, transfer to small target sets, evaluate honestly, log to MLflow.

Per source task: the pretrained net on the paper's split (registered), its repeated-split scores, its learning
curve (error vs source size) and the baselines. Per target task: zero-shot (the pretrained net as is), adapter
transfer (registered), fine-tuning and scratch (comparison only), and the baselines, each on the paper split and
on repeated random splits. Every model and baseline gets a nested MLflow run under one parent run per task.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import pandas as pd

from cellmfg.___domain import Kind, Target, feature_columns
from cellmfg.dataio import LoadedData
from training import evaluate, explain, nets, plots, tracking
from training.config import TrainConfig

Advance = Callable[[str], None]
PARTS = ("train", "validation", "test")
TARGET_VARIANTS = ("zero_shot", "transfer", "finetune", "scratch")


def _no_progress(_: str) -> None:
    return None


@dataclass(frozen=True)
class Dataset:
    """A validated dataset ready for training: inputs and one target as arrays, plus provenance."""

    name: str
    kind: Kind
    frame: pd.DataFrame
    x: np.ndarray
    y: np.ndarray
    target: Target
    sha256: str
    source: str

    @property
    def feature_names(self) -> list[str]:
        return feature_columns(self.kind)


def prepare(loaded: LoadedData, target: Target, name: str) -> Dataset:
    """Pure: frame in, feature matrix and target vector out (rows with a blank target are dropped)."""
    if target.column not in loaded.frame.columns:
        raise ValueError(f"{loaded.source}: no target column {target.column!r}")
    frame = loaded.frame[loaded.frame[target.column].notna()].reset_index(drop=True)
    x = frame[feature_columns(loaded.kind)].to_numpy(dtype="float64")
    y = frame[target.column].to_numpy(dtype="float64")
    return Dataset(name, loaded.kind, frame, x, y, target, loaded.sha256, loaded.source)


@dataclass(frozen=True)
class BaseRef:
    """The pretrained net a transfer starts from, and where it is registered."""

    model: keras.Model
    name: str
    version: str
    dataset: str


@dataclass
class Fitted:
    """One model's predictions on every row of a dataset for one split (nets also keep model and curves)."""

    variant: str
    predictions: np.ndarray
    split: evaluate.Split
    model: keras.Model | None = None
    history: nets.History | None = None

    def metrics(self, y: np.ndarray) -> dict[str, float]:
        out: dict[str, float] = {}
        for part in PARTS:
            rows = getattr(self.split, part)
            if len(rows):
                out.update(evaluate.scores(y[rows], self.predictions[rows], part))
        return out

    def test_mape(self, y: np.ndarray) -> float:
        return evaluate.mape_pct(y[self.split.test], self.predictions[self.split.test])


def fit_net(variant: str, data: Dataset, split: evaluate.Split, config: TrainConfig, base: BaseRef | None,
            name: str) -> Fitted:
    """Train (or, for zero-shot, apply) one net on one split."""
    net = config.net(data.target.task)
    x_train, y_train = data.x[split.train], data.y[split.train]
    x_val, y_val = data.x[split.validation], data.y[split.validation]
    nets.make_deterministic(split.seed)
    if variant in ("pretrained", "scratch"):
        model = nets.build_mlp(x_train, y_train, net.hidden_units, net.hidden_layers, name)
        epochs, learning_rate = net.epochs, net.learning_rate
    elif base is None:
        raise ValueError(f"variant {variant!r} needs a pretrained base net")
    elif variant == "zero_shot":
        return Fitted(variant, nets.predict(base.model, data.x), split, base.model)
    elif variant == "transfer":
        model = nets.build_transfer(base.model, x_train, y_train, name)
        epochs, learning_rate = config.transfer.epochs, net.adapter_learning_rate
    elif variant == "finetune":
        model = nets.unfreeze(nets.build_transfer(base.model, x_train, y_train, name))
        epochs, learning_rate = config.transfer.epochs, config.transfer.finetune_learning_rate
    else:
        raise ValueError(f"unknown variant {variant!r}")
    history = nets.fit(model, x_train, y_train, x_val, y_val, epochs, net.batch_size, learning_rate, split.seed)
    return Fitted(variant, nets.predict(model, data.x), split, model, history)


def fit_baseline(name: str, data: Dataset, split: evaluate.Split, config: TrainConfig) -> Fitted:
    model = evaluate.fit_baseline(name, data.x[split.train], data.y[split.train], split.seed,
                                  config.random_forest_trees)
    return Fitted(name, np.asarray(model.predict(data.x), dtype=float), split)


@dataclass
class Scores:
    """Test MAPE of one method: on the paper split, and over the repeated splits."""

    paper: float
    repeated: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float | int]:
        mean, std = evaluate.mean_std(self.repeated or [self.paper])
        return {"paper_split": self.paper, "mean": mean, "std": std, "n_splits": len(self.repeated)}


@dataclass
class TaskResult:
    """What one task/dataset run produced: the registered net and every method's scores."""

    task: str
    dataset: str
    role: str
    run_id: str
    model_uri: str
    registered_name: str | None
    registered_version: str | None
    scores: dict[str, Scores]
    model: keras.Model

    def to_json(self) -> dict[str, Any]:
        main = "pretrained" if self.role == "pretrained" else "transfer"
        return {
            "task": self.task, "dataset": self.dataset, "role": self.role, "run_id": self.run_id,
            "model_uri": self.model_uri, "registered_model": self.registered_name,
            "registered_version": self.registered_version,
            "test_mape_pct": self.scores[main].paper,
            "baselines": {name: self.scores[name].paper for name in evaluate.BASELINES},
            "repeated_splits": {name: score.summary() for name, score in self.scores.items()},
        }


def _splits(data: Dataset, config: TrainConfig) -> tuple[evaluate.Split, list[evaluate.Split]]:
    rows = len(data.y)
    paper = evaluate.make_split(rows, config.seed, config.test_fraction, config.validation_fraction)
    return paper, evaluate.repeated_splits(rows, config.seed, config.repeats, config.test_fraction,
                                           config.validation_fraction)


# -------------------------------------------------------------------------------------------------------------
# Repeated splits and the learning curve: independent jobs, run in worker processes when config.workers > 0.
# Each job returns only test MAPEs, so nothing but arrays and a saved base net crosses the process boundary.


@dataclass(frozen=True)
class SplitJob:
    """Test MAPE of some methods on one split of one dataset."""

    dataset: str
    kind: Kind
    task: str
    x: np.ndarray
    y: np.ndarray
    split: evaluate.Split
    config: TrainConfig
    variants: tuple[str, ...]
    baselines: tuple[str, ...]
    base_path: str | None  # a saved .keras pretrained net, for transfer variants


_WORKER_BASES: dict[str, keras.Model] = {}  # per-process cache: each worker loads a base net once


def run_split_job(job: SplitJob) -> dict[str, float]:
    from cellmfg.___domain import TARGETS

    base = None
    if job.base_path is not None:
        if job.base_path not in _WORKER_BASES:
            _WORKER_BASES[job.base_path] = keras.models.load_model(job.base_path)
        base = BaseRef(_WORKER_BASES[job.base_path], "", "", "")
    data = Dataset(job.dataset, job.kind, pd.DataFrame(), job.x, job.y, TARGETS[job.task], "", "")
    scores = {v: fit_net(v, data, job.split, job.config, base, "repeat").test_mape(job.y) for v in job.variants}
    scores.update({b: fit_baseline(b, data, job.split, job.config).test_mape(job.y) for b in job.baselines})
    return scores


class Jobs:
    """Runs split jobs in a spawn-started process pool (TensorFlow is not fork-safe), or inline with 0 workers."""

    def __init__(self, workers: int) -> None:
        self._pool: ProcessPoolExecutor | None = None
        if workers > 0:
            self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                             initializer=_quiet_worker)

    def submit(self, job: SplitJob) -> Future[dict[str, float]]:
        if self._pool is not None:
            return self._pool.submit(run_split_job, job)
        done: Future[dict[str, float]] = Future()
        done.set_result(run_split_job(job))
        return done

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Jobs:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _quiet_worker() -> None:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@dataclass
class Pending:
    """One task's paper-split fits, and the jobs still computing its repeated splits and learning curve."""

    data: Dataset
    role: str
    registered_name: str | None
    fitted: dict[str, Fitted]
    repeats: list[Future[dict[str, float]]]
    curve: list[tuple[int, Future[dict[str, float]]]]
    base: BaseRef | None = None

    @property
    def name(self) -> str:
        return self.registered_name or f"{self.data.target.task}_{self.data.name}"

    def wait(self) -> None:
        wait([*self.repeats, *(future for _, future in self.curve)])

    def scores(self) -> dict[str, Scores]:
        scores = {variant: Scores(f.test_mape(self.data.y)) for variant, f in self.fitted.items()}
        for future in self.repeats:
            for variant, mape in future.result().items():
                scores[variant].repeated.append(mape)
        return scores

    def learning_curve(self) -> list[tuple[int, float]]:
        return [(rows, future.result()["pretrained"]) for rows, future in self.curve]


def _job(data: Dataset, split: evaluate.Split, config: TrainConfig, variants: tuple[str, ...],
         baselines: tuple[str, ...], base_path: str | None) -> SplitJob:
    return SplitJob(data.name, data.kind, data.target.task, data.x, data.y, split, config, variants, baselines,
                    base_path)


def start_source(data: Dataset, config: TrainConfig, registered_name: str | None, jobs: Jobs) -> Pending:
    """Fit the pretrained net on the paper split now; queue its repeated splits and learning curve."""
    paper, repeats = _splits(data, config)
    name = registered_name or f"{data.target.task}_{data.name}"
    fitted = {"pretrained": fit_net("pretrained", data, paper, config, None, name)}
    fitted.update({b: fit_baseline(b, data, paper, config) for b in evaluate.BASELINES})
    futures = [jobs.submit(_job(data, s, config, ("pretrained",), evaluate.BASELINES, None)) for s in repeats]
    order = np.random.default_rng(config.seed).permutation(paper.train)
    curve = []
    for fraction in config.learning_curve_fractions:
        rows = max(4, round(fraction * len(order)))
        subset = evaluate.Split(np.sort(order[:rows]), paper.validation, paper.test, paper.seed)
        curve.append((rows, jobs.submit(_job(data, subset, config, ("pretrained",), (), None))))
    return Pending(data, "pretrained", registered_name, fitted, futures, curve)


def start_target(data: Dataset, base: BaseRef, base_path: str, config: TrainConfig, registered_name: str | None,
                 jobs: Jobs) -> Pending:
    """Queue the repeated splits, then fit zero-shot, transfer, fine-tune, scratch and baselines on the paper split."""
    paper, repeats = _splits(data, config)
    name = registered_name or f"{data.target.task}_{data.name}"
    futures = [jobs.submit(_job(data, s, config, TARGET_VARIANTS, evaluate.BASELINES, base_path)) for s in repeats]
    fitted = {variant: fit_net(variant, data, paper, config, base, name) for variant in TARGET_VARIANTS}
    fitted.update({b: fit_baseline(b, data, paper, config) for b in evaluate.BASELINES})
    return Pending(data, "transfer", registered_name, fitted, futures, [], base)


def finish(pending: Pending, config: TrainConfig, advance: Advance = _no_progress) -> TaskResult:
    """Wait for the task's jobs, then log its registered net and comparison runs (nested under the active run)."""
    scores = pending.scores()
    main = pending.role
    curve = pending.learning_curve() if pending.curve else None
    zero_shot = pending.fitted.get("zero_shot")
    run_id, model_uri, version = _log_net_run(pending.name, pending.role, pending.data, pending.fitted[main], scores,
                                              config, pending.registered_name, pending.base, zero_shot, curve)
    _log_comparison_runs(pending.name, pending.data, pending.fitted, scores, config, skip=(main,))
    advance(f"{pending.name}: logged")
    model = pending.fitted[main].model
    assert model is not None
    return TaskResult(pending.data.target.task, pending.data.name, pending.role, run_id, model_uri,
                      pending.registered_name, version, scores, model)


def save_base(model: keras.Model, folder: Path) -> str:
    path = folder / f"{model.name}.keras"
    model.save(path)
    return str(path)


def run_source(data: Dataset, config: TrainConfig, registered_name: str | None, advance: Advance = _no_progress
               ) -> TaskResult:
    """Pretrain on a source dataset: the net, repeated splits, learning curve and baselines, all logged."""
    with Jobs(config.workers) as jobs:
        pending = start_source(data, config, registered_name, jobs)
        advance(f"{pending.name}: paper split")
        return finish(pending, config, advance)


def run_target(data: Dataset, base: BaseRef, config: TrainConfig, registered_name: str | None,
               advance: Advance = _no_progress) -> TaskResult:
    """Transfer a pretrained net to a small target dataset, against zero-shot, fine-tune, scratch and baselines."""
    with Jobs(config.workers) as jobs, tempfile.TemporaryDirectory() as tmp:
        pending = start_target(data, base, save_base(base.model, Path(tmp)), config, registered_name, jobs)
        advance(f"{pending.name}: paper split")
        return finish(pending, config, advance)


# -------------------------------------------------------------------------------------------------------------
# MLflow logging


def _dataset_params(data: Dataset) -> dict[str, str]:
    return {"dataset": data.name, "data_sha256": data.sha256, "data_rows": str(len(data.y)),
            "data_source": data.source, "target_column": data.target.column}


def _serving_inputs(data: Dataset, fitted: Fitted, scores: dict[str, Scores], config: TrainConfig,
                    main: str, zero_shot: Fitted | None) -> dict[str, Any]:
    """What the registry needs to write a contract and run its gates, without re-reading the CSV."""
    split = fitted.split
    x_train = data.x[split.train]
    held_out = np.concatenate([split.validation, split.test])
    summary = scores[main].summary()
    return {
        "kind": data.kind, "task": data.target.task, "dataset": data.name,
        "target": {"task": data.target.task, "column": data.target.column, "unit": data.target.unit},
        "feature_names": data.feature_names,
        "train_min": x_train.min(axis=0).tolist(), "train_max": x_train.max(axis=0).tolist(),
        "shap_background": explain.representative_background(x_train, config.shap_background_rows,
                                                              config.seed).tolist(),
        "conformal": {"coverage": 0.9, "n_calibration": len(held_out),
                      "relative_quantile": evaluate.conformal_relative_quantile(
                          data.y[held_out], fitted.predictions[held_out], 0.9)},
        "test_x": data.x[split.test].tolist(), "test_y": data.y[split.test].tolist(),
        "metrics": {**fitted.metrics(data.y), "test_mape_pct_mean": summary["mean"],
                    "test_mape_pct_std": summary["std"], "n_splits": summary["n_splits"],
                    "zero_shot_test_mape_pct": zero_shot.test_mape(data.y) if zero_shot else None},
        "data_sha256": data.sha256, "data_rows": len(data.y), "split": split.to_dict(),
    }


def _log_net_run(name: str, role: str, data: Dataset, fitted: Fitted, scores: dict[str, Scores],
                 config: TrainConfig, registered_name: str | None, base: BaseRef | None, zero_shot: Fitted | None,
                 curve: list[tuple[int, float]] | None) -> tuple[str, str, str | None]:
    """The registered net's nested run: params, metrics, curves, plots, SHAP, model, serving inputs."""
    model = fitted.model
    assert model is not None and fitted.history is not None
    tags = {"task": data.target.task, "dataset": data.name, "role": role, "variant": fitted.variant,
            "data_sha256": data.sha256, "git_commit": tracking.git_commit(),
            "features": ",".join(data.feature_names), "kind": data.kind}
    if base is not None:
        tags.update({"base_model_name": base.name, "base_model_version": base.version})
    with tracking.run(name, nested=True, tags=tags) as active, tracking.artifact_dir() as tmp:
        folder = Path(tmp)
        mlflow.log_params({**config.flat_params(), **_dataset_params(data)})
        metrics = fitted.metrics(data.y)
        main = "pretrained" if role == "pretrained" else "transfer"
        summary = scores[main].summary()
        metrics.update({"test_mape_pct_mean": summary["mean"], "test_mape_pct_std": summary["std"]})
        if zero_shot is not None:
            metrics["zero_shot_test_mape_pct"] = zero_shot.test_mape(data.y)
        mlflow.log_metrics(metrics)
        tracking.log_curves(fitted.history.train_loss, fitted.history.validation_loss)
        _log_figures(folder, name, data, fitted)
        _log_shap(folder, name, data, fitted, config)
        if curve:
            for rows, mape in curve:
                mlflow.log_metric("learning_curve_test_mape_pct", mape, step=rows)
            plots.learning_curve([r for r, _ in curve], [m for _, m in curve], f"{name}: source-size ablation",
                                 folder / "learning_curve.png")
            mlflow.log_artifact(str(folder / "learning_curve.png"), "plots")
        tracking.log_json(config.to_dict(), "config.json")
        tracking.log_json(_dataset_params(data), "dataset.json")
        tracking.log_json(_serving_inputs(data, fitted, scores, config, main, zero_shot),
                          tracking.SERVING_INPUTS_ARTIFACT)
        model_uri, version = tracking.log_keras_model(model, data.x[fitted.split.train], registered_name)
        if registered_name and version:
            tracking.tag_model_version(registered_name, version, {**tags, "run_id": active.info.run_id})
        return active.info.run_id, model_uri, version


def _log_figures(folder: Path, name: str, data: Dataset, fitted: Fitted) -> None:
    assert fitted.history is not None
    split = fitted.split
    paths = [
        plots.loss_curves(fitted.history.train_loss, fitted.history.validation_loss, f"{name} ({fitted.variant})",
                          folder / "loss_curves.png"),
        plots.parity({p: data.y[getattr(split, p)] for p in ("train", "test")},
                     {p: fitted.predictions[getattr(split, p)] for p in ("train", "test")},
                     f"{data.target.column}", f"{name} ({fitted.variant})", folder / "parity.png"),
        plots.distributions(data.frame, data.feature_names, f"{data.name}: inputs",
                            folder / "input_distributions.png"),
        plots.distributions(data.frame, [data.target.column], f"{data.name}: output",
                            folder / "output_distribution.png"),
    ]
    for path in paths:
        mlflow.log_artifact(str(path), "plots")


def _log_shap(folder: Path, name: str, data: Dataset, fitted: Fitted, config: TrainConfig) -> None:
    """The paper's Figs 6–7: a waterfall for one random test sample, a beeswarm over the test set, values as CSV."""
    model = fitted.model
    split = fitted.split
    background = explain.representative_background(data.x[split.train], config.shap_background_rows, config.seed)
    explanation = explain.explain(lambda x: nets.predict(model, x), background, data.x[split.test],
                                  data.feature_names)
    sample = int(np.random.default_rng(config.seed).integers(len(split.test)))
    plots.shap_waterfall(explanation[sample], f"{name}: test row {int(split.test[sample])}",
                         folder / "shap_waterfall.png")
    plots.shap_beeswarm(explanation, f"{name}: test set", folder / "shap_beeswarm.png")
    values = pd.DataFrame(explanation.values, columns=data.feature_names)
    values.insert(0, "row", split.test)
    values["base_value"] = explanation.base_values
    values["prediction"] = fitted.predictions[split.test]
    values.to_csv(folder / "shap_values.csv", index=False)
    for file in ("shap_waterfall.png", "shap_beeswarm.png"):
        mlflow.log_artifact(str(folder / file), "plots")
    mlflow.log_artifact(str(folder / "shap_values.csv"), "shap")


def _log_comparison_runs(name: str, data: Dataset, fitted: dict[str, Fitted], scores: dict[str, Scores],
                         config: TrainConfig, skip: tuple[str, ...]) -> None:
    """Zero-shot, fine-tune, scratch and baselines: metrics, loss curves and a parity plot each."""
    for variant, result in fitted.items():
        if variant in skip:
            continue
        summary = scores[variant].summary()
        tags = {"task": data.target.task, "dataset": data.name, "variant": variant, "role": "comparison"}
        with tracking.run(f"{name}/{variant}", nested=True, tags=tags), tracking.artifact_dir() as tmp:
            mlflow.log_params({**config.flat_params(), **_dataset_params(data)})
            mlflow.log_metrics({**result.metrics(data.y), "test_mape_pct_mean": summary["mean"],
                                "test_mape_pct_std": summary["std"]})
            split = result.split
            path = plots.parity({p: data.y[getattr(split, p)] for p in ("train", "test")},
                                {p: result.predictions[getattr(split, p)] for p in ("train", "test")},
                                data.target.column, f"{name} ({variant})", Path(tmp) / "parity.png")
            mlflow.log_artifact(str(path), "plots")
            if result.history is not None:
                tracking.log_curves(result.history.train_loss, result.history.validation_loss)
                path = plots.loss_curves(result.history.train_loss, result.history.validation_loss,
                                         f"{name} ({variant})", Path(tmp) / "loss_curves.png")
                mlflow.log_artifact(str(path), "plots")



# -------------------------------------------------------------------------------------------------------------
# The paper's full set


def work_units(config: TrainConfig) -> int:
    """Progress-bar steps of `train_all`: one per paper-split fit and one per logged task."""
    from cellmfg.___domain import TASKS

    return 2 * len(TASKS)


@dataclass
class Stopwatch:
    """Wall-clock seconds per named stage (the benchmark prints them)."""

    laps: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def lap(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.laps[name] = self.laps.get(name, 0.0) + time.perf_counter() - started


def train_all(config: TrainConfig, advance: Advance = _no_progress, stopwatch: Stopwatch | None = None
              ) -> list[TaskResult]:
    """Three pretrained nets and five transfers on the shipped data, one parent MLflow run per task.

    All paper-split fits happen first while worker processes compute every repeated split and learning curve;
    logging follows, task by task, under each task's parent run.
    """
    from cellmfg.___domain import TASKS
    from cellmfg.dataio import load_shipped

    watch = stopwatch or Stopwatch()
    with watch.lap("load and validate data"):
        loaded = {name: load_shipped(name) for name in dict.fromkeys(t.dataset for t in TASKS)}
    with watch.lap("start worker processes"):
        jobs = Jobs(config.workers)
    with jobs, tempfile.TemporaryDirectory() as tmp:
        with watch.lap("paper-split fits (main process)"):
            pending = _start_all(loaded, config, jobs, Path(tmp), advance)

        results: list[TaskResult] = []
        parent_runs = []
        for task_name in dict.fromkeys(t.target.task for t in TASKS):
            mlflow.set_experiment(tracking.experiment_name(task_name))
            with tracking.run(f"train-all-{config.preset}", tags={"task": task_name, "preset": config.preset}
                              ) as parent:
                parent_runs.append(parent.info.run_id)
                mlflow.log_params(config.flat_params())
                for item in (p for p in pending if p.data.target.task == task_name):
                    if item.base is not None:
                        # The base net's registered version is known only once its own run has logged it.
                        registered = next(r for r in results if r.registered_name == item.base.name)
                        item.base = BaseRef(item.base.model, item.base.name, registered.registered_version or "",
                                            item.base.dataset)
                    # Logging a task overlaps with the workers still computing later tasks' splits.
                    with watch.lap("waiting for repeated splits and learning curves (workers)"):
                        item.wait()
                    with watch.lap("MLflow logging (runs, plots, SHAP, models)"):
                        results.append(finish(item, config, advance))
                summaries = [r.to_json() for r in results if r.task == task_name]
                mlflow.log_text(json.dumps(summaries, indent=2), "results.json")
    with watch.lap("MLflow logging (runs, plots, SHAP, models)"):
        log_report([r.to_json() for r in results], parent_runs)
    return results


def _start_all(loaded: dict[str, LoadedData], config: TrainConfig, jobs: Jobs, folder: Path, advance: Advance
               ) -> list[Pending]:
    """Fit every paper-split net (sources first: targets need their base) and queue every repeated split."""
    from cellmfg.___domain import TASKS

    pending: list[Pending] = []
    bases: dict[tuple[str, str], tuple[BaseRef, str]] = {}
    for task in (t for t in TASKS if t.source is None):
        source = start_source(prepare(loaded[task.dataset], task.target, task.dataset), config, task.model_name,
                              jobs)
        model = source.fitted["pretrained"].model
        assert model is not None
        bases[(task.target.task, task.dataset)] = (BaseRef(model, task.model_name, "", task.dataset),
                                                   save_base(model, folder))
        pending.append(source)
        advance(f"{task.model_name}: pretrained")
    for task in (t for t in TASKS if t.source is not None):
        base, path = bases[(task.target.task, str(task.source))]
        pending.append(start_target(prepare(loaded[task.dataset], task.target, task.dataset), base, path, config,
                                    task.model_name, jobs))
        advance(f"{task.model_name}: paper split")
    return pending


def log_report(summaries: list[dict[str, Any]], run_ids: list[str]) -> None:
    """The whole results table (all tasks) as Markdown and CSV on every parent run, for the MLflow UI."""
    from training import report

    client = mlflow.tracking.MlflowClient()
    text, csv = report.markdown(summaries), report.long_table(summaries).to_csv(index=False)
    for run_id in run_ids:
        client.log_text(run_id, text, "results/results.md")
        client.log_text(run_id, csv, "results/results.csv")
