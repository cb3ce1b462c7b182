"""Model references as MLflow users write them, and the registry's alias commands that take them (retire,
rollback, the Keras `champion` that follows the served ONNX version)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from cellmfg.modelref import ModelReferenceError, parse_reference, resolve_reference


@pytest.mark.parametrize(("text", "kind", "fields"), [
    ("models:/density_graphite/3", "version", {"name": "density_graphite", "version": "3"}),
    ("models:/density_graphite/latest", "latest", {"name": "density_graphite"}),
    ("models:/density_graphite@champion", "alias", {"name": "density_graphite", "alias": "champion"}),
    ("runs:/0123abcd/model", "run", {"run_id": "0123abcd", "path": "model"}),
    ("runs:/0123abcd/nested/model/", "run", {"run_id": "0123abcd", "path": "nested/model"}),
    (" models:/a.b-c/1 ", "version", {"name": "a.b-c", "version": "1"}),
])
def test_references_parse(text: str, kind: str, fields: dict[str, str]) -> None:
    ref = parse_reference(text)
    assert ref.kind == kind
    for key, value in fields.items():
        assert getattr(ref, key) == value


@pytest.mark.parametrize(("text", "fragment"), [
    ("models:/density_graphite", "no version"),
    ("models:/density_graphite/", "no version"),
    ("models:/density_graphite/v3", "not a positive whole number or 'latest'"),
    ("models:/density_graphite/0", "not a positive whole number"),
    ("models:/@champion", "not a registered model name"),
    ("models:/density_graphite@", "alias '' is not valid"),
    ("runs:/abc", "runs:/<run_id>/<artifact path>"),
    ("s3://bucket/model", "is not a model reference"),
    ("density_graphite", "is not a model reference"),
])
def test_bad_references_say_what_works(text: str, fragment: str) -> None:
    with pytest.raises(ModelReferenceError) as error:
        parse_reference(text)
    assert fragment in str(error.value) and text.strip() in str(error.value)


def test_a_bare_name_only_where_allowed() -> None:
    assert parse_reference("density_nmc", allow_bare=True).kind == "name"


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowClient]:
    """Keras-like models density_lfp v1..v3 and their ONNX exports, as the registry stage tags them."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("refs", artifact_location=(tmp_path / "artifacts").as_uri())
    for name in ("density_lfp", "density_lfp_onnx"):
        client.create_registered_model(name)
    for _ in range(3):
        run = client.create_run(experiment, tags={"dataset": "lfp", "features": "a,b"}).info.run_id
        client.create_model_version("density_lfp", f"runs:/{run}/model", run_id=run, tags={"dataset": "lfp"})
    for keras_version in ("1", "3"):
        run = client.create_run(experiment).info.run_id
        client.create_model_version("density_lfp_onnx", f"runs:/{run}/model", run_id=run, tags={
            "keras_model_name": "density_lfp", "keras_model_version": keras_version})
    yield client
    mlflow.set_tracking_uri(previous)
    mlflow.set_registry_uri(os.environ.get("MLFLOW_REGISTRY_URI") or previous)


def test_references_resolve_to_one_version(registry: MlflowClient) -> None:
    latest = resolve_reference("models:/density_lfp/latest", registry)
    assert (latest.name, latest.version, latest.load_uri) == ("density_lfp", "3", "models:/density_lfp/3")
    assert latest.tags["dataset"] == "lfp"
    registry.set_registered_model_alias("density_lfp", "challenger", "2")
    assert resolve_reference("models:/density_lfp@challenger", registry).version == "2"
    assert resolve_reference("models:/density_lfp/1", registry).load_uri == "models:/density_lfp/1"
    run_id = registry.get_model_version("density_lfp", "2").run_id
    by_run = resolve_reference(f"runs:/{run_id}/model", registry)
    assert (by_run.name, by_run.version, by_run.load_uri) == ("density_lfp", "2", f"runs:/{run_id}/model")
    assert by_run.tags["features"] == "a,b", "a run's own tags travel with it"
    assert resolve_reference("density_lfp", registry, allow_bare=True).version == "3"


@pytest.mark.parametrize(("text", "fragment"), [
    ("models:/density_lfp@champion", "has no alias 'champion' (aliases: challenger -> v2)"),
    ("models:/density_lfp/9", "no version 9 of density_lfp (versions: 1, 2, 3)"),
    ("models:/density_lfq/latest", "no registered model 'density_lfq'"),
    ("runs:/ffffffffffffffffffffffffffffffff/model", "no run"),
])
def test_unresolvable_references_say_what_exists(registry: MlflowClient, text: str, fragment: str) -> None:
    registry.set_registered_model_alias("density_lfp", "challenger", "2")
    with pytest.raises(ModelReferenceError) as error:
        resolve_reference(text, registry)
    assert fragment in str(error.value), str(error.value)


def _aliases(client: MlflowClient, name: str) -> dict[str, str]:
    return {alias: str(version) for alias, version in client.get_registered_model(name).aliases.items()}


def test_keras_champion_follows_the_served_onnx_and_retire_and_rollback(registry: MlflowClient) -> None:
    from registry import promote

    promote.move_aliases("density_lfp_onnx", "1")
    assert _aliases(registry, "density_lfp") == {"champion": "1"}
    promote.move_aliases("density_lfp_onnx", "2")  # exported from Keras v3
    assert _aliases(registry, "density_lfp_onnx") == {"champion": "2", "previous": "1"}
    assert _aliases(registry, "density_lfp") == {"champion": "3"}
    assert resolve_reference("models:/density_lfp@champion", registry).version == "3"

    assert promote.rollback("density_lfp") == ("2", "1")
    assert _aliases(registry, "density_lfp") == {"champion": "1"}
    assert promote.rollback("density_lfp_onnx", to_version="2") == ("1", "2")
    assert promote.onnx_version_for("density_lfp", "3") == "2"
    with pytest.raises(promote.GateError, match="version 2 was never promoted"):
        promote.onnx_version_for("density_lfp", "2")

    assert promote.retire("density_lfp") == "2"
    assert _aliases(registry, "density_lfp_onnx") == {"previous": "2"}
    assert _aliases(registry, "density_lfp") == {}, "no served ONNX: the Keras champion goes too"
    with pytest.raises(promote.GateError, match="no version holds alias 'champion'"):
        promote.retire("density_lfp")
    assert promote.rollback("density_lfp") == (None, "2"), "rollback after retire serves it again"
    assert _aliases(registry, "density_lfp_onnx") == {"champion": "2"}
    assert _aliases(registry, "density_lfp") == {"champion": "3"}


def _cli(args: list[str]) -> Any:
    from registry.cli import app

    return CliRunner().invoke(app, args)


def test_registry_commands_take_references(registry: MlflowClient) -> None:
    from registry import promote

    promote.move_aliases("density_lfp_onnx", "1")
    promote.move_aliases("density_lfp_onnx", "2")
    result = _cli(["rollback", "--model", "models:/density_lfp/1", "--json"])  # Keras v1 -> its ONNX export v1
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[-1]) == {"model": "density_lfp_onnx", "champion": "1",
                                                          "previous": "2"}
    result = _cli(["retire", "--model", "models:/density_lfp@champion", "--model", "density_nmc", "--json"])
    assert result.exit_code == 1, result.output  # density_nmc has nothing to retire: said, and the rest done
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["retired"] == [{"model": "density_lfp_onnx", "version": "1", "alias": "champion"}]
    assert "density_nmc_onnx" in report["failed"][0]["error"]
    assert "champion" not in _aliases(registry, "density_lfp_onnx")

    bad = _cli(["promote", "--model", "models:/density_lfp/latest", "--version", "1"])
    assert bad.exit_code == 2 and "names version 3 but --version says 1" in bad.output
    bad = _cli(["promote", "--model", "models:/density_lfp@nope"])
    assert bad.exit_code == 2 and "has no alias 'nope'" in bad.output
    bad = _cli(["promote", "--model", "models:/density_lfp_onnx/1"])
    assert bad.exit_code == 2 and "promote takes the Keras model" in bad.output
