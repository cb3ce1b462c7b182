"""Where a registered model answers (cellmfg.endpoints): the rule the commands print is the service catalogue's, a
lab's dataset name is checked before training, and MLflow's registration notices stay off the quiet console."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
from pydantic import TypeAdapter, ValidationError
from typer.testing import CliRunner

from cellmfg.contract import Contract
from cellmfg.dataio import shipped_path
from cellmfg.domain import TASKS
from cellmfg.endpoints import DATASET_NAME_PATTERN, Serving, dataset_name_problem
from cellmfg_cli import build

runner = CliRunner()


def _contract(task_index: int, name: str, dataset: str) -> Contract:
    from testkit.fakes import fake_model

    contract = fake_model(TASKS[task_index]).contract
    return contract.model_copy(update={"name": f"{name}_onnx", "dataset": dataset})


@pytest.mark.parametrize(("task_index", "name", "dataset"), [
    (4, "density_nmc", "nmc"),  # a paper transfer
    (4, "density_cunha", "cunha"),  # a lab's chemistry, named as the catalogue looks it up
    (4, "density_cunha", "cunha_nmc_recipes"),  # issue 28: --name without --dataset, the CSV's stem recorded
    (6, "mass_loading_lfp", "lfp"),
    (6, "mass_loading_lab", "lfp"),
    (7, "tortuosity_my_gdl", "my_gdl"),
    (7, "tortuosity_gdl1000", "my_gdl"),
])
def test_the_printed_endpoints_are_where_the_service_answers(task_index: int, name: str, dataset: str) -> None:
    from service.answers import _endpoints
    from service.engine.model_store import endpoint_slot

    contract = _contract(task_index, name, dataset)
    serving = Serving(name, contract.kind, contract.task, contract.dataset)
    slot = endpoint_slot(contract)
    assert serving.on_kind_endpoint == (slot is not None)

    served = SimpleNamespace(name=f"{name}_onnx", slot=slot)  # what service.answers._endpoints reads of a model
    assert serving.endpoints() == _endpoints(served)  # type: ignore[arg-type]
    assert (serving.note() is None) == serving.on_kind_endpoint


def test_the_cunha_mistake_is_explained_with_the_fix() -> None:
    serving = Serving("density_cunha", "electrode", "density", "cunha_nmc_recipes")
    assert serving.endpoints() == ["POST /predict/density_cunha_onnx"]
    note = serving.note() or ""
    assert "density_cunha answers only at POST /predict/density_cunha_onnx" in note
    assert "looks that chemistry up as density_cunha_nmc_recipes" in note and "--dataset cunha" in note
    fixed = Serving("density_cunha", "electrode", "density", "cunha")
    assert fixed.endpoints() == ["POST /predict/electrode (chemistry=cunha)", "POST /predict/density_cunha_onnx"]
    assert fixed.to_json()["chemistry"] == "cunha" and fixed.to_json()["note"] is None
    assert fixed.sentence() == ("chemistry cunha (electrode): answers at POST /predict/electrode (chemistry=cunha) "
                                "and POST /predict/density_cunha_onnx")
    gdl = Serving("tortuosity_lab", "gdl", "tortuosity", "lab").to_json()
    assert gdl["field"] == "dataset" and gdl["endpoints"][0] == "POST /predict/gdl (dataset=lab)"


@pytest.mark.parametrize("name", ["lfp", "cunha_nmc", "NMC-811.v2", "a" * 200, "my data", "", "a" * 201, "lfp/2",
                                  "é", "x;y"])
def test_dataset_names_are_those_the_service_accepts(name: str) -> None:
    from service.formats.schemas import DatasetName

    try:
        TypeAdapter(DatasetName).validate_python(name)
        accepted = True
    except ValidationError:
        accepted = False
    assert (DATASET_NAME_PATTERN.fullmatch(name) is not None) == accepted
    assert (dataset_name_problem(name, "electrode") is None) == accepted


def test_a_paper_dataset_of_the_other_kind_is_refused() -> None:
    assert "the paper's gdl dataset" in (dataset_name_problem("gdl200", "electrode") or "")
    assert dataset_name_problem("nmc", "electrode") is None  # retraining a paper chemistry is allowed


@pytest.fixture(scope="module")
def app() -> Iterator[Any]:
    yield build()


def _lab_csv(folder: Path, stem: str) -> Path:
    path = folder / f"{stem}.csv"
    pd.read_csv(shipped_path("nmc")).head(30).to_csv(path, index=False)
    return path


def test_transfer_refuses_a_dataset_name_the_service_cannot_be_asked_for(app: Any, tmp_path: Path) -> None:
    csv = _lab_csv(tmp_path, "lab")
    result = runner.invoke(app, ["train", "transfer", "--base", "models:/density_graphite/1", "--data", str(csv),
                                 "--dataset", "my data", "--target", "density_g_cm3"])
    assert result.exit_code == 2, result.output
    assert "--dataset: 'my data' is not a chemistry name the service accepts" in result.stderr
    assert "letters, digits" in result.stderr


def test_a_file_name_that_is_no_dataset_name_asks_for_dataset(app: Any, tmp_path: Path) -> None:
    csv = _lab_csv(tmp_path, "cunha nmc recipes")
    result = runner.invoke(app, ["train", "transfer", "--base", "models:/density_graphite/1", "--data", str(csv),
                                 "--target", "density_g_cm3"])
    assert result.exit_code == 2, result.output
    assert "the file name gives the dataset name" in result.stderr and "--dataset NAME" in result.stderr


def test_pretrain_takes_the_csv_as_data_and_says_so_to_the_old_spelling(app: Any, tmp_path: Path) -> None:
    csv = _lab_csv(tmp_path, "big")
    result = runner.invoke(app, ["train", "pretrain", "--dataset", str(csv), "--target", "density_g_cm3"])
    assert result.exit_code == 2, result.output
    assert "give the source CSV with --data PATH" in result.stderr
    assert "--dataset names the dataset, e.g. big" in result.stderr


# ---------------------------------------------------------------------------------------------------------------
# MLflow's registration notices


@pytest.fixture
def mlflow_logger_level() -> Iterator[logging.Logger]:
    logger = logging.getLogger("mlflow")
    level = logger.level
    yield logger
    logger.setLevel(level)


def _register(name: str) -> None:
    import mlflow

    from cellmfg.mlflow_setup import registration_notices_off

    class Echo(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined]
        def predict(self, context: object, model_input: list[float]) -> list[float]:
            return model_input

    with mlflow.start_run(), registration_notices_off():
        mlflow.pyfunc.log_model(name="model", python_model=Echo(), registered_model_name=name, pip_requirements=[])


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_registration_notices_print_only_when_mlflow_logs_info(session_mlflow_uri: str,
                                                                mlflow_logger_level: logging.Logger,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("mlflow.pyfunc")
    mlflow_logger_level.setLevel(logging.WARNING)  # the quiet console (cellmfg_cli.quiet_libraries)
    _register("notice_quiet")
    _register("notice_quiet")  # a second version: "already exists" and "Created version '2'" stay off too
    quiet = capsys.readouterr()
    mlflow_logger_level.setLevel(logging.INFO)  # --verbose
    _register("notice_verbose")
    verbose = capsys.readouterr()
    assert "Successfully registered model 'notice_verbose'" in verbose.err
    assert "Created version '1' of model 'notice_verbose'" in verbose.err
    assert "notice_quiet" not in quiet.out + quiet.err, quiet.err
    # The switch is released after the call: MLflow's own log lines print again.
    mlflow_logger_level.setLevel(logging.WARNING)
    logging.getLogger("mlflow.tests").warning("still heard")
    assert "still heard" in capsys.readouterr().err
