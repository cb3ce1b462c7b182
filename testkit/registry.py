"""Fake models in an MLflow registry, with the layout `cellmfg.contract.fetch_registered` reads: a model version
whose `model/` artefact holds the ONNX file, and the run artefact `contract.json`.

Only MlflowClient calls: MLflow's fluent API would set the process-wide tracking and registry URIs (and export them
as MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI to every later subprocess, servers included).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from cellmfg.contract import CONTRACT_ARTIFACT, LoadedModel
from testkit.fakes import fake_models

EXPERIMENT = "cellmfg-service-tests"


def sqlite_tracking_uri(directory: Path) -> str:
    return f"sqlite:///{(directory / 'mlflow.db').resolve()}"


def register_model(tracking_uri: str, model: LoadedModel, alias: str | None = "champion",
                   artifact_root: Path | None = None, raw: bool = False) -> str:
    """Log `model` as a new registered version (ONNX flavour + run artifact contract.json) and point `alias` at it
    (None: leave the aliases alone). Returns the new version number.

    `raw=True` stores the ONNX bytes untouched as `model/model.onnx`, without the flavour: saving the flavour parses
    the graph, which a corrupt file would not survive.
    """
    import onnx
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        location = (artifact_root or Path(tempfile.mkdtemp(prefix="mlruns-"))).resolve().as_uri()
        experiment_id = client.create_experiment(EXPERIMENT, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    run_id = client.create_run(experiment_id).info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        contract_path = Path(tmp) / CONTRACT_ARTIFACT
        contract_path.write_text(model.contract.to_json())
        client.log_artifact(run_id, str(contract_path))
        folder = Path(tmp) / "model"
        if raw:
            folder.mkdir()
            (folder / "model.onnx").write_bytes(model.onnx_bytes)
        else:
            import mlflow.onnx

            # External data would move the weights out of model.onnx and break the contract's sha256; explicit
            # requirements skip MLflow's slow inference of them.
            mlflow.onnx.save_model(onnx.load_from_string(model.onnx_bytes), str(folder),
                                   save_as_external_data=False, pip_requirements=["onnx", "onnxruntime"])
        client.log_artifacts(run_id, str(folder), artifact_path="model")
    client.set_terminated(run_id)
    try:
        client.create_registered_model(model.name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = str(client.create_model_version(model.name, source=f"runs:/{run_id}/model", run_id=run_id).version)
    if alias is not None:
        move_alias(tracking_uri, model.name, alias, version)
    return version


def move_alias(tracking_uri: str, name: str, alias: str, version: str) -> None:
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).set_registered_model_alias(name, alias, version)


def register_fakes(tracking_uri: str, alias: str = "champion", salt: int = 0,
                   artifact_root: Path | None = None) -> dict[str, str]:
    """Register all eight fakes; returns name -> version."""
    return {m.name: register_model(tracking_uri, m, alias, artifact_root) for m in fake_models(salt=salt)}
