"""Shared fixtures: an isolated MLflow store per test session, quiet TensorFlow, the project's data paths."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def session_mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway SQLite tracking store shared by the tests of one session."""
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield uri
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture(scope="session", autouse=True)
def _ledger_outside_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Services started in this process keep their prediction ledger in a throwaway folder, not ~/bentoml."""
    if "CELLMFG_LEDGER_DIR" in os.environ or "CELLMFG_LEDGER_URL" in os.environ:
        yield
        return
    os.environ["CELLMFG_LEDGER_DIR"] = str(tmp_path_factory.mktemp("ledger"))
    yield
    os.environ.pop("CELLMFG_LEDGER_DIR", None)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake bundle (testkit.fakes: eight small ONNX models with valid contracts), one per test module."""
    from testkit.fakes import write_fake_bundle

    return write_fake_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def client(bundle: Path) -> Iterator[Any]:
    """The service in process (BentoML's ASGI app with its lifespan, a Starlette TestClient) on `bundle`."""
    from testkit.fakes import service_client

    with service_client(bundle) as test_client:
        yield test_client
