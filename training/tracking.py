"""MLflow plumbing for training: tracking URI, experiments, runs that never stay half-finished, model logging."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.entities import Metric
from mlflow.models import infer_signature

from cellmfg import mlflow_setup

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TRACKING_URI = mlflow_setup.DEFAULT_TRACKING_URI

# Explicit requirements: MLflow's inference imports the model and scans packages, ~20 s a model.
KERAS_PIP_REQUIREMENTS = [
    f"{package}=={version}" for package, version in (
        ("tensorflow-cpu", "2.21.0"), ("keras", "3.15.1"), ("numpy", "2.4.6"))
]
# Source hashes of the mlflow 3.17.2 functions the input-example workaround relies on (cellmfg.patch_guard).
KERAS_SAVE_MODEL_SHA256 = "54cba1daebbc946a0b457eb1a2319959735f692461921579efb87d162894860c"
KERAS_SAVE_EXAMPLE_SHA256 = "a893de36392569df3ac5fe6650baa0d97728174dbe5d4e9fa36c5db0af12ba08"


def tracking_uri() -> str:
    return mlflow_setup.tracking_uri()


def configure() -> str:
    """Point MLflow at the tracking URI (registry included); called once by each entry point."""
    import keras

    # MLflow validates each logged model by predicting its input example; Keras would draw a progress bar each time.
    keras.utils.disable_interactive_logging()
    return mlflow_setup.configure()


def use_experiment(task: str) -> str:
    """The task's experiment, active and tagged as model development (so MLflow 3 opens its training view)."""
    return mlflow_setup.use_experiment(task)


def git_commit() -> str:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                                timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                           capture_output=True, text=True, timeout=5, check=False).stdout.strip()
    commit = result.stdout.strip() or "unknown"
    return f"{commit}-dirty" if dirty and commit != "unknown" else commit


@contextmanager
def run(name: str, nested: bool = False, tags: dict[str, str] | None = None) -> Iterator[mlflow.ActiveRun]:
    """A run that ends FAILED (not FINISHED) when the body raises, so no half-done run looks complete."""
    active = mlflow.start_run(run_name=name, nested=nested, tags=tags)
    try:
        yield active
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run(status="FINISHED")


def log_curves(train_loss: np.ndarray, validation_loss: np.ndarray) -> None:
    """Per-epoch losses as stepped metrics, in one batch call (250 epochs would be 500 round trips)."""
    client = mlflow.tracking.MlflowClient()
    run_id = mlflow.active_run().info.run_id  # type: ignore[union-attr]
    timestamp = 0
    metrics = [Metric("train_loss_mape", float(v), timestamp, step) for step, v in enumerate(train_loss)]
    metrics += [Metric("validation_loss_mape", float(v), timestamp, step) for step, v in enumerate(validation_loss)]
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start:start + 1000])


def log_json(payload: Any, artifact_file: str) -> None:
    mlflow.log_text(json.dumps(payload, indent=2, default=_to_builtin), artifact_file)


def _to_builtin(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def log_keras_model(model: Any, x_example: np.ndarray, registered_name: str | None) -> tuple[str, str | None]:
    """Log a Keras model with signature, input example and pinned requirements; register it if named.

    Returns the model URI and the registered version (None when not registered).
    """
    example = np.asarray(x_example[:3], dtype="float32")
    output = model(example)  # an ensemble answers {"prediction", "spread"}
    signature = infer_signature(example, {k: np.asarray(v, dtype="float32") for k, v in output.items()}
                                if isinstance(output, dict) else np.asarray(output, dtype="float32"))
    with _model_dir_exists_before_example(), mlflow_setup.registration_notices_off():
        info = mlflow.keras.log_model(model, name="model", signature=signature, input_example=example,
                                      pip_requirements=KERAS_PIP_REQUIREMENTS,
                                      registered_model_name=registered_name)
    version = info.registered_model_version
    return info.model_uri, (str(version) if version is not None else None)


@contextmanager
def _model_dir_exists_before_example() -> Iterator[None]:
    """Work around MLflow 3.17's Keras flavor writing the input example before it creates the model folder.

    Fails loudly (PatchedCodeChangedError) when `save_model` or `_save_example` are not the code this was written
    for: an MLflow upgrade may have fixed the order, or changed what `_save_example` is called with.
    """
    from mlflow.keras import save as keras_save

    from cellmfg.patch_guard import expect_source

    expect_source(keras_save.save_model, KERAS_SAVE_MODEL_SHA256, "training/tracking.py (Keras input example)")
    expect_source(keras_save._save_example, KERAS_SAVE_EXAMPLE_SHA256, "training/tracking.py (Keras input example)")
    original = keras_save._save_example

    def save_example(mlflow_model: Any, input_example: Any, path: str) -> Any:
        os.makedirs(path, exist_ok=True)
        return original(mlflow_model, input_example, path)

    keras_save._save_example = save_example
    try:
        yield
    finally:
        keras_save._save_example = original


def tag_model_version(name: str, version: str, tags: dict[str, str]) -> None:
    client = mlflow.tracking.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def artifact_dir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="cellmfg-artifacts-")
