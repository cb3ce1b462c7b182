"""Where MLflow lives and how our experiments are named: one definition for training, registry and tools.

No TensorFlow here, so registry commands (`list`, `rollback`, `retire`, `export-bundle`) start without it. `mlflow`
is imported inside the functions: the serving image has only mlflow-skinny, and importing MLflow costs ~1 s.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TRACKING_URI = f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"
EXPERIMENT_PREFIX = "cellmfg"
# MLflow 3 opens experiments in its GenAI view unless told what kind they are; ours train models. The UI's
# model-training view is also selected by this query parameter in the addresses we print.
EXPERIMENT_KIND_TAG = ("mlflow.experimentKind", "custom_model_development")
ML_VIEW_QUERY = "workflowType=machine_learning"


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` if set, else the embedded SQLite file in the project root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def configure() -> str:
    """Point MLflow's tracking and registry at the tracking URI; called once by each entry point."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


# MLflow's registration notices (mlflow/tracking/_model_registry/fluent.py, `_register_model`): what
# `registration_notices_off` drops, and nothing else.
REGISTRATION_NOTICE = re.compile(
    r"Successfully registered model '[^\n]*'\."
    r"|Registered model '[^\n]*' already exists\. Creating a new version of this model\.\.\."
    r"|(🔗 )?Created version '[^\n]*' of model '[^\n]*'[^\n]*"
)
_filter_lock = threading.Lock()
_filter_users = 0


@contextmanager
def registration_notices_off() -> Iterator[None]:
    """Around a call that registers a model version: without MLflow's "Successfully registered model …",
    "Registered model … already exists …" and "Created version … of model …" lines, unless its logger shows INFO
    (`cellmfg --verbose` leaves it there; the quiet console sets WARNING).

    MLflow prints them with `print` to its logging stream (`mlflow.utils.logging_utils.eprint`), not through a
    logger, so no log level reaches them, and MLflow offers no setting for them (its documented switches turn the
    whole stream off, its warnings and errors too). So the stream drops exactly those lines while this runs, and
    passes everything else: a warning or error MLflow logs during the registration still shows. Reference-counted,
    so overlapping registrations (threads) share one filter.
    """
    import logging

    if logging.getLogger("mlflow").isEnabledFor(logging.INFO):
        yield
        return
    from mlflow.utils import logging_utils

    global _filter_users
    stream = logging_utils.MLFLOW_LOGGING_STREAM
    with _filter_lock:
        _filter_users += 1
        if _filter_users == 1:
            stream.write = _without_notices(type(stream).write.__get__(stream))  # type: ignore[method-assign]
    try:
        yield
    finally:
        with _filter_lock:
            _filter_users -= 1
            if _filter_users == 0:
                del stream.write  # the class's own method again


def _without_notices(write: Callable[[str], object]) -> Callable[[str], object]:
    """`write` without the registration notices. `print` writes a message and its line end in two calls: the line
    end after a dropped notice is dropped too."""
    after_notice = threading.local()

    def filtered(text: str) -> object:
        if getattr(after_notice, "value", False) and text == "\n":
            after_notice.value = False
            return None
        after_notice.value = REGISTRATION_NOTICE.fullmatch(text.rstrip("\n")) is not None
        if after_notice.value:
            after_notice.value = not text.endswith("\n")
            return None
        return write(text)

    return filtered


def experiment_name(task: str) -> str:
    return f"{EXPERIMENT_PREFIX}-{task}"


def use_experiment(task: str) -> str:
    """Make the task's experiment active (created on first use), tagged as model development; returns its id."""
    import mlflow

    experiment = mlflow.set_experiment(experiment_name(task))
    if experiment.tags.get(EXPERIMENT_KIND_TAG[0]) != EXPERIMENT_KIND_TAG[1]:
        mlflow.set_experiment_tag(*EXPERIMENT_KIND_TAG)
    return str(experiment.experiment_id)


def experiment_id(task: str) -> str | None:
    """The id of the task's experiment in the tracking store, None when it has none yet."""
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    experiment = MlflowClient(tracking_uri=uri, registry_uri=uri).get_experiment_by_name(experiment_name(task))
    return None if experiment is None else str(experiment.experiment_id)


def ui_address(base_url: str, experiment_id: str | None = None) -> str:
    """The MLflow UI address that opens on the model-training view (of one experiment's runs, if given)."""
    base = base_url.rstrip("/")
    if experiment_id is None:
        return f"{base}/#/experiments?{ML_VIEW_QUERY}"
    return f"{base}/#/experiments/{experiment_id}/runs?{ML_VIEW_QUERY}"
