"""Training stage end to end on tiny data (quick preset): CLI JSON contract, MLflow logging, reload, bad input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cellmfg import cli
from cellmfg.dataio import shipped_path

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
runner = CliRunner()


@pytest.fixture(scope="module")
def app(session_mlflow_uri: str) -> Iterator[object]:
    cli._build()
    yield cli.app


def _subset(tmp: Path, dataset: str, rows: int, name: str) -> Path:
    frame = pd.read_csv(shipped_path(dataset)).sample(n=rows, random_state=0)
    path = tmp / f"{name}.csv"
    frame.to_csv(path, index=False)
    return path


def _invoke(app: object, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))  # type: ignore[arg-type]
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def pretrained(app: object, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    tmp = tmp_path_factory.mktemp("pretrain")
    source = _subset(tmp, "graphite", 60, "lab_graphite")
    code, out, err = _invoke(app, "train", "pretrain", "--dataset", str(source), "--target", "density_g_cm3",
                             "--preset", "quick", "--json")
    assert code == 0, err
    return dict(json.loads(out.strip().splitlines()[-1]))


def test_pretrain_json_contract(pretrained: dict[str, object]) -> None:
    assert {"run_id", "model_uri", "test_mape_pct", "baselines"} <= set(pretrained)
    assert set(pretrained["baselines"]) == {"mean", "linear", "random_forest"}  # type: ignore[arg-type]
    assert all(0 < v < 1000 for v in pretrained["baselines"].values())  # type: ignore[attr-defined]
    assert pretrained["registered_model"] == "density_lab_graphite"
    run = mlflow.tracking.MlflowClient().get_run(str(pretrained["run_id"]))
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_mape_pct"] == pytest.approx(float(pretrained["test_mape_pct"]))  # type: ignore[arg-type]
    for key in ("train_mape_pct", "validation_mape_pct", "test_mae", "test_r2", "test_mape_pct_mean"):
        assert key in run.data.metrics
    assert run.data.params["nets.density.epochs"] == "5"
    assert run.data.tags["role"] == "pretrained" and len(run.data.tags["data_sha256"]) == 64
    history = mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "train_loss_mape")
    assert [m.step for m in history] == list(range(5))
    artifacts = {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(run.info.run_id, "plots")}
    expected = {"loss_curves.png", "parity.png", "shap_waterfall.png", "shap_beeswarm.png",
                "input_distributions.png", "output_distribution.png", "learning_curve.png"}
    assert {p.split("/")[-1] for p in artifacts} == expected


def test_logged_model_reloads_with_same_predictions(pretrained: dict[str, object]) -> None:
    client = mlflow.tracking.MlflowClient()
    run_id = str(pretrained["run_id"])
    shap_csv = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="shap/shap_values.csv"))
    table = pd.read_csv(shap_csv)
    model = mlflow.keras.load_model(str(pretrained["model_uri"]))
    version = client.get_model_version("density_lab_graphite", "1")
    assert version.tags["task"] == "density" and version.tags["git_commit"]
    inputs = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="serving_inputs.json")).read_text())
    x_test = np.asarray(inputs["test_x"], dtype="float32")
    reloaded = np.asarray(model(x_test), dtype=float).reshape(-1)
    assert np.allclose(reloaded, table["prediction"].to_numpy(), rtol=1e-6)
    # SHAP values add up to the prediction (exact explainer).
    features = [c for c in table.columns if c not in ("row", "base_value", "prediction")]
    assert np.allclose(table[features].sum(axis=1) + table["base_value"], table["prediction"], rtol=1e-4)


def test_transfer_json_contract_and_lineage(app: object, pretrained: dict[str, object], tmp_path: Path) -> None:
    target = _subset(tmp_path, "nmc", 40, "lab_nmc")
    code, out, err = _invoke(app, "train", "transfer", "--base", "models:/density_lab_graphite/1", "--data",
                             str(target), "--target", "density", "--preset", "quick", "--seed", "5",
                             "--test-fraction", "0.25", "--json")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["role"] == "transfer" and result["registered_model"] == "density_lab_nmc"
    assert set(result["repeated_splits"]) >= {"zero_shot", "transfer", "finetune", "scratch"}
    version = mlflow.tracking.MlflowClient().get_model_version("density_lab_nmc", result["registered_version"])
    assert version.tags["base_model_name"] == "density_lab_graphite" and version.tags["base_model_version"] == "1"
    run = mlflow.tracking.MlflowClient().get_run(result["run_id"])
    assert run.data.params["test_fraction"] == "0.25" and run.data.params["seed"] == "5"
    assert "zero_shot_test_mape_pct" in run.data.metrics


def _run_count() -> int:
    return len(mlflow.search_runs(search_all_experiments=True))


def test_bad_csv_stops_before_any_run(app: object, tmp_path: Path) -> None:
    frame = pd.read_csv(shipped_path("graphite")).head(30)
    frame.loc[7, "roll_gap_um"] = -3
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    before = _run_count()
    code, _, err = _invoke(app, "train", "pretrain", "--dataset", str(bad), "--target", "density_g_cm3",
                           "--preset", "quick")
    assert code == 2
    assert "row 8 (line 9), column roll_gap_um" in err and "physically impossible" in err
    assert _run_count() == before


def test_unknown_target_column(app: object, tmp_path: Path) -> None:
    source = _subset(tmp_path, "graphite", 30, "g")
    code, _, err = _invoke(app, "train", "pretrain", "--dataset", str(source), "--target", "porosity",
                           "--preset", "quick")
    assert code == 2 and "unknown target column 'porosity'" in err and "density_g_cm3" in err


def test_base_with_other_inputs_is_refused(app: object, pretrained: dict[str, object], tmp_path: Path) -> None:
    gdl = _subset(tmp_path, "gdl1000", 30, "lab_gdl")
    before = _run_count()
    code, _, err = _invoke(app, "train", "transfer", "--base", "models:/density_lab_graphite/1", "--data", str(gdl),
                           "--target", "tortuosity", "--preset", "quick")
    assert code == 2 and "takes inputs [am_wt_pct" in err and "fiber_diameter_um" in err
    assert _run_count() == before


def test_unknown_base_model(app: object, tmp_path: Path) -> None:
    target = _subset(tmp_path, "nmc", 30, "n")
    code, _, err = _invoke(app, "train", "transfer", "--base", "models:/no_such_model/1", "--data", str(target),
                           "--target", "density_g_cm3", "--preset", "quick")
    assert code == 2 and "cannot load base model models:/no_such_model/1" in err
