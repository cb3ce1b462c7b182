"""MLflow's per-model registration notices stay off the console, and nothing else MLflow says does (issue 28).

Costs: two pyfunc registrations in the session's SQLite store (~2 s).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from cellmfg.mlflow_setup import registration_notices_off


@pytest.fixture
def quiet_mlflow_logger() -> Iterator[logging.Logger]:
    """MLflow's logger at WARNING, as the quiet console (cellmfg_cli.quiet_libraries) leaves it."""
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield logger
    logger.setLevel(level)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_registration_prints_no_notices_but_mlflows_warnings_still_show(
        session_mlflow_uri: str, quiet_mlflow_logger: logging.Logger, capsys: pytest.CaptureFixture[str]) -> None:
    import mlflow

    class Echo(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined]
        def predict(self, context: object, model_input: list[float]) -> list[float]:
            return model_input

    capsys.readouterr()
    for _ in range(2):  # a new model, then a new version of it ("already exists", "Created version '2'")
        with mlflow.start_run(), registration_notices_off():
            info = mlflow.pyfunc.log_model(name="model", python_model=Echo(), registered_model_name="notice_check",
                                           pip_requirements=[])
            logging.getLogger("mlflow.store").warning("a warning MLflow logs during the registration")
    printed = capsys.readouterr()
    assert info.registered_model_version == 2, "both registrations happened"
    text = printed.out + printed.err
    for notice in ("Successfully registered model", "already exists", "Created version"):
        assert notice not in text, text
    assert text.count("a warning MLflow logs during the registration") == 2, text

    # The filter is gone afterwards: MLflow's stream prints its notices again.
    from mlflow.utils.logging_utils import eprint

    eprint("Created version '9' of model 'notice_check'.")
    assert "Created version '9'" in capsys.readouterr().err


def test_only_the_notice_lines_are_dropped(quiet_mlflow_logger: logging.Logger,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow.utils.logging_utils import eprint

    with registration_notices_off(), registration_notices_off():  # nested: one filter, released by the outer
        eprint("Successfully registered model 'x'.")
        eprint("Registered model 'x' already exists. Creating a new version of this model...")
        eprint("Created version '3' of model 'x'.")
        eprint("Created the run; model 'x' is fine")  # not a notice
        logging.getLogger("mlflow").error("registry unreachable")
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "Created the run; model 'x' is fine", err
    assert "registry unreachable" in err and "Successfully" not in err and "version '3'" not in err
