"""Training stage end to end on tiny data (quick preset): CLI JSON contract, MLflow logging, reload, bad input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cellmfg import contract as contracts
from cellmfg.dataio import shipped_path
from cellmfg.domain import feature_columns
from cellmfg_cli import build

pytestmark = [pytest.mark.trains, pytest.mark.filterwarnings("ignore::UserWarning")]
runner = CliRunner()


@pytest.fixture(scope="module")
def app(session_mlflow_uri: str) -> Iterator[object]:
    yield build()


def _subset(tmp: Path, dataset: str, rows: int, name: str, groups: bool = True) -> Path:
    frame = pd.read_csv(shipped_path(dataset)).sample(n=rows, random_state=0)
    if not groups:
        frame = frame.drop(columns=["group_id"], errors="ignore")
    path = tmp / f"{name}.csv"
    frame.to_csv(path, index=False)
    return path


def _invoke(app: object, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))  # type: ignore[arg-type]
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def pretrained(app: object, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("pretrain")
    source = _subset(tmp, "graphite", 60, "lab_graphite")
    code, out, err = _invoke(app, "train", "pretrain", "--data", str(source), "--target", "density_g_cm3",
                             "--preset", "quick", "--json")
    assert code == 0, err
    return {**json.loads(out.strip().splitlines()[-1]), "csv": str(source)}


def _check_methods(result: dict[str, Any], expected: set[str]) -> None:
    methods = result["methods"]
    assert set(methods) == expected
    for name, method in methods.items():
        assert method["n_splits"] == 3 and 0 < method["test_mape_pct_mean"] < 1000
        assert 0.0 <= method["coverage"] <= 1.0 and method["mean_relative_width"] > 0
        if name == result["main"]:
            assert method["vs_main"] is None
        else:
            paired = method["vs_main"]
            assert paired["low"] <= paired["mean"] <= paired["high"]
            assert paired["verdict"] in {"wins", "loses", "indistinguishable"}


def test_pretrain_json_contract(pretrained: dict[str, Any]) -> None:
    _check_methods(pretrained, {"pretrained", "mean", "linear", "random_forest"})
    assert pretrained["registered_model"] == "density_lab_graphite" and pretrained["groups"] < pretrained["rows"]
    assert pretrained["serving"]["endpoints"] == ["POST /predict/electrode (chemistry=lab_graphite)",
                                                  "POST /predict/density_lab_graphite_onnx"]
    assert pretrained["source_constant_features"] == ["coating_speed_m_min"]
    run = mlflow.tracking.MlflowClient().get_run(str(pretrained["run_id"]))
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_mape_pct"] == pytest.approx(float(pretrained["test_mape_pct"]), abs=1e-3)
    for key in ("train_mape_pct", "validation_mape_pct", "test_mae", "test_r2", "test_mape_pct_mean",
                "interval_coverage", "interval_mean_relative_width", "vs_random_forest_pct_points"):
        assert key in run.data.metrics
    assert run.data.params["nets.density.epochs"] == "5"
    assert run.data.tags["role"] == "pretrained" and len(run.data.tags["data_sha256"]) == 64
    assert run.data.tags["source_constant_features"] == "coating_speed_m_min"
    history = mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "train_loss_mape")
    assert [m.step for m in history] == list(range(5))
    artifacts = {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(run.info.run_id, "plots")}
    expected = {"loss_curves.png", "parity.png", "shap_waterfall.png", "shap_beeswarm.png",
                "input_distributions.png", "output_distribution.png", "learning_curve.png"}
    assert {p.split("/")[-1] for p in artifacts} == expected


def test_promotion_inputs_are_typed_and_carry_the_scaling(pretrained: dict[str, Any]) -> None:
    path = mlflow.artifacts.download_artifacts(run_id=str(pretrained["run_id"]),
                                               artifact_path=contracts.PROMOTION_INPUTS_ARTIFACT)
    inputs = contracts.PromotionInputs.model_validate_json(Path(path).read_text())
    speed = next(f for f in inputs.features if f.name == "coating_speed_m_min")
    assert speed.constant_in_source and (speed.scale_centre, speed.scale_width) == (1.0, 1.0)
    assert inputs.target.physical_min == 0.0
    assert inputs.metrics.validation_mape_pct is not None and inputs.conformal.measured_coverage is not None
    assert inputs.selection.method == "pretrained"
    # The served quantile is calibrated on one score per group of the first split's training part (out of fold).
    assert inputs.conformal.n_calibration < pretrained["groups"] and "group level" in inputs.conformal.method
    assert inputs.conformal.relative_quantile > 0 and inputs.metrics.out_of_fold_mape_pct is not None


def test_logged_model_reloads_with_same_predictions(pretrained: dict[str, Any]) -> None:
    client = mlflow.tracking.MlflowClient()
    run_id = str(pretrained["run_id"])
    shap_csv = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="shap/shap_values.csv"))
    table = pd.read_csv(shap_csv)
    model = mlflow.keras.load_model(str(pretrained["model_uri"]))
    version = client.get_model_version("density_lab_graphite", "1")
    assert version.tags["task"] == "density" and version.tags["git_commit"]
    frame = pd.read_csv(pretrained["csv"])
    x_test = frame.loc[table["row"], feature_columns("electrode")].to_numpy(dtype="float32")
    reloaded = np.asarray(model(x_test), dtype=float).reshape(-1)
    assert np.allclose(reloaded, table["prediction"].to_numpy(), rtol=1e-6)
    # SHAP values add up to the prediction (exact explainer).
    features = [c for c in table.columns if c not in ("row", "base_value", "prediction")]
    assert np.allclose(table[features].sum(axis=1) + table["base_value"], table["prediction"], rtol=1e-4)


def test_transfer_on_a_lab_csv_without_groups(app: object, pretrained: dict[str, Any], tmp_path: Path) -> None:
    target = _subset(tmp_path, "nmc", 40, "lab_nmc", groups=False)
    code, out, err = _invoke(app, "train", "transfer", "--base", "models:/density_lab_graphite/1", "--data",
                             str(target), "--target", "density", "--preset", "quick", "--seed", "5",
                             "--test-fraction", "0.25", "--json")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["role"] == "transfer" and result["registered_model"] == "density_lab_nmc"
    assert result["serving"]["chemistry"] == "lab_nmc" and result["serving"]["note"] is None
    # The base's source CSV is still where it was logged, so the pooled comparison runs too.
    _check_methods(result, {"transfer", "transfer_paper", "transfer_residual", "zero_shot", "zero_shot_recalibrated",
                            "pooled", "scratch", "mean", "linear", "random_forest"})
    assert result["groups"] < result["rows"]  # replicates (identical inputs) grouped
    version = mlflow.tracking.MlflowClient().get_model_version("density_lab_nmc", result["registered_version"])
    assert version.tags["base_model_name"] == "density_lab_graphite" and version.tags["base_model_version"] == "1"
    run = mlflow.tracking.MlflowClient().get_run(result["run_id"])
    assert run.data.params["test_fraction"] == "0.25" and run.data.params["seed"] == "5"
    assert "zero_shot_validation_mape_pct" in run.data.metrics and "out_of_fold_mape_pct" in run.data.metrics


def _run_count() -> int:
    return len(mlflow.search_runs(search_all_experiments=True))


def test_bad_csv_stops_before_any_run(app: object, tmp_path: Path) -> None:
    frame = pd.read_csv(shipped_path("graphite")).head(30)
    frame.loc[7, "roll_gap_um"] = -3
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    before = _run_count()
    code, _, err = _invoke(app, "train", "pretrain", "--data", str(bad), "--target", "density_g_cm3",
                           "--preset", "quick")
    assert code == 2
    assert "row 8 (line 9), roll_gap_um = -3.0 µm is physically impossible" in err
    assert _run_count() == before


def test_unknown_target_column(app: object, tmp_path: Path) -> None:
    source = _subset(tmp_path, "graphite", 30, "g")
    code, _, err = _invoke(app, "train", "pretrain", "--data", str(source), "--target", "porosity",
                           "--preset", "quick")
    assert code == 2 and "unknown target column 'porosity'" in err and "density_g_cm3" in err


def test_base_with_other_inputs_is_refused(app: object, pretrained: dict[str, Any], tmp_path: Path) -> None:
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
    assert code == 2 and "base model" in err and "no_such_model" in err


def test_transfer_under_a_dataset_name_is_served_as_that_chemistry(app: object, pretrained: dict[str, Any],
                                                                    tmp_path: Path) -> None:
    # issue 28: --name density_cunha on cunha_nmc_recipes.csv was served only at /predict/density_cunha_onnx.
    target = _subset(tmp_path, "nmc", 40, "cunha_nmc_recipes")
    code, out, err = _invoke(app, "train", "transfer", "--base", "models:/density_lab_graphite/1", "--data",
                             str(target), "--dataset", "cunha", "--target", "density_g_cm3", "--preset", "quick")
    assert code == 0, err
    assert "note:" not in err
    assert ("Once promoted (`cellmfg registry promote --model density_cunha`), chemistry cunha (electrode): answers "
            "at POST /predict/electrode (chemistry=cunha) and POST /predict/density_cunha_onnx") in out
    version = max(mlflow.tracking.MlflowClient().search_model_versions("name='density_cunha'"),
                  key=lambda v: int(v.version))
    run = mlflow.tracking.MlflowClient().get_run(version.run_id)
    assert run.data.params["dataset"] == "cunha" and run.data.params["data_source"] == str(target)
    path = mlflow.artifacts.download_artifacts(run_id=version.run_id,
                                               artifact_path=contracts.PROMOTION_INPUTS_ARTIFACT)
    assert contracts.PromotionInputs.model_validate_json(Path(path).read_text()).dataset == "cunha"


def test_a_name_the_service_does_not_look_up_is_said_before_training(app: object, tmp_path: Path) -> None:
    target = _subset(tmp_path, "nmc", 30, "cunha_nmc_recipes")
    code, _, err = _invoke(app, "train", "transfer", "--base", "models:/no_such_model/1", "--data", str(target),
                           "--name", "density_cunha", "--target", "density_g_cm3", "--preset", "quick")
    assert code == 2 and "no_such_model" in err  # stopped at the base, after the note
    assert "note: density_cunha answers only at POST /predict/density_cunha_onnx" in err
    assert "--dataset cunha" in err
