"""Training jobs: pretrain on a source set, transfer to a target set, or the paper's full set, each logged to MLflow.

`fit` runs the protocol (grouped repeated splits, nested selection, every method on the same splits), `report`
summarises it, `mlflow_log` writes the runs. This module strings them together for the CLI and the benchmark.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import keras
import mlflow
import numpy as np

from cellmfg.domain import model_name
from training import fit, mlflow_log, nets, report, tracking
from training.config import TrainConfig
from training.fit import Dataset, prepare
from training.report import TaskSummary

__all__ = ["BaseRef", "Dataset", "Stopwatch", "TaskResult", "prepare", "run_source", "run_target", "train_all"]

Advance = Callable[[str], None]


def _no_progress(_: str) -> None:
    return None


@dataclass(frozen=True)
class BaseRef:
    """The pretrained net a transfer starts from, where it is registered, and (if known) its source data."""

    model: keras.Model
    name: str
    version: str
    dataset: str
    source: Dataset | None = None  # for the pooled comparison; None when the source CSV is not available


@dataclass(frozen=True)
class TaskResult:
    """What one task produced: the summary (JSON/report) and the registered Keras net."""

    summary: TaskSummary
    model: keras.Model

    @property
    def registered_version(self) -> str | None:
        return self.summary.registered_version


def input_mask_of(model: keras.Model) -> np.ndarray:
    """Which inputs a net uses: a zero on its frozen scaling layer's diagonal means ignored (constant in source)."""
    kernel = np.asarray(model.get_layer("scaling").get_weights()[0])
    return np.asarray(np.diag(kernel) != 0.0)


def _base_tags(base: BaseRef) -> dict[str, str]:
    return {"base_model_name": base.name, "base_model_version": base.version, "base_dataset": base.dataset}


def run_source(data: Dataset, config: TrainConfig, registered_name: str | None, advance: Advance = _no_progress
               ) -> TaskResult:
    """Pretrain on a source dataset and log it (nested under the active run)."""
    nets.single_threaded()
    name = registered_name or model_name(data.target.task, data.name)
    outcome = fit.source_task(data, config, name)
    advance(f"{name}: trained")
    run_id, uri, version = mlflow_log.log_task(outcome, config, name, registered_name, {})
    advance(f"{name}: logged")
    return TaskResult(report.summarize(outcome, run_id, uri, registered_name, version,
                                       config.family_confidence, config.ensemble_members), outcome.model)


def run_target(data: Dataset, base: BaseRef, config: TrainConfig, registered_name: str | None,
               advance: Advance = _no_progress) -> TaskResult:
    """Transfer a pretrained net to a target dataset against every comparison, and log it."""
    nets.single_threaded()
    name = registered_name or model_name(data.target.task, data.name)
    outcome = fit.target_task(data, base.model, base.source, input_mask_of(base.model), config, name)
    advance(f"{name}: trained")
    run_id, uri, version = mlflow_log.log_task(outcome, config, name, registered_name, _base_tags(base))
    advance(f"{name}: logged")
    return TaskResult(report.summarize(outcome, run_id, uri, registered_name, version,
                                       config.family_confidence, config.ensemble_members), outcome.model)


# -------------------------------------------------------------------------------------------------------------
# The paper's full set


def work_units(config: TrainConfig) -> int:
    """Progress-bar steps of `train_all`: a trained and a logged step per task."""
    from cellmfg.domain import TASKS

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
    """Three pretrained nets and five transfers on the shipped data, one parent MLflow run per task."""
    from cellmfg.dataio import load_shipped
    from cellmfg.domain import TASKS

    nets.single_threaded()
    watch = stopwatch or Stopwatch()
    with watch.lap("load and validate data"):
        loaded = {name: load_shipped(name) for name in dict.fromkeys(t.dataset for t in TASKS)}
    results: list[TaskResult] = []
    bases: dict[tuple[str, str], BaseRef] = {}
    parent_runs = []
    for task_name in dict.fromkeys(t.target.task for t in TASKS):
        tracking.use_experiment(task_name)
        with tracking.run(f"train-all-{config.preset}", tags={"task": task_name, "preset": config.preset}) as parent:
            parent_runs.append(parent.info.run_id)
            mlflow.log_params(config.flat_params())
            for task in (t for t in TASKS if t.target.task == task_name):
                data = prepare(loaded[task.dataset], task.target, task.dataset)
                with watch.lap("training and evaluation (all splits, all methods)"):
                    if task.source is None:
                        outcome = fit.source_task(data, config, task.model_name)
                        base_tags: dict[str, str] = {}
                    else:
                        base = bases[(task_name, task.source)]
                        outcome = fit.target_task(data, base.model, base.source, input_mask_of(base.model), config,
                                                  task.model_name)
                        base_tags = _base_tags(base)
                advance(f"{task.model_name}: trained")
                with watch.lap("MLflow logging (runs, plots, SHAP, models)"):
                    run_id, uri, version = mlflow_log.log_task(outcome, config, task.model_name, task.model_name,
                                                               base_tags)
                summary = report.summarize(outcome, run_id, uri, task.model_name, version,
                                            config.family_confidence, config.ensemble_members)
                results.append(TaskResult(summary, outcome.model))
                if task.source is None:
                    bases[(task_name, task.dataset)] = BaseRef(outcome.model, task.model_name, version or "",
                                                               task.dataset, data)
                advance(f"{task.model_name}: logged")
            summaries = [r.summary.model_dump(mode="json") for r in results if r.summary.task == task_name]
            mlflow.log_text(json.dumps(summaries, indent=2), "results.json")
    with watch.lap("MLflow logging (runs, plots, SHAP, models)"):
        log_report([r.summary for r in results], parent_runs, config)
    return results


def log_report(summaries: list[TaskSummary], run_ids: list[str], config: TrainConfig) -> None:
    """The whole results table (all tasks) as Markdown and CSV on every parent run, for the MLflow UI."""
    client = mlflow.tracking.MlflowClient()
    text = report.markdown(summaries, config.coverage, report.protocol(config))
    csv = report.long_table(summaries).to_csv(index=False)
    for run_id in run_ids:
        client.log_text(run_id, text, "results/results.md")
        client.log_text(run_id, csv, "results/results.csv")
