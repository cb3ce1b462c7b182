"""Champion and challenger in training and the registry (issue 26), on tiny quick-preset nets in a throwaway MLflow
store: `train from-ledger` builds its rows from the champion's data plus the ledger's measured rows and registers a
challenger with its lineage; `registry promote --alias challenger` exports it beside the champion;
`registry promote --challenger` promotes only on a live comparison that shows it better (or an override with a
reason), and bad input changes nothing."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from typer.testing import CliRunner

from cellmfg.challenge import LiveComparison
from cellmfg.dataio import load_shipped, shipped_path
from cellmfg.domain import GROUP_ID, SAMPLE_ID, TARGETS, TASKS, feature_columns
from cellmfg_cli import build
from registry import promote
from service.ledger.ids import new_prediction_ids
from testkit.fakes import fake_model
from testkit.registry import register_model
from training import from_ledger, jobs, tracking
from training.config import load_config

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning")]
# The tests that train nets (the registry fixture) carry `trains`; the data assembly tests are fast.
trains = pytest.mark.trains
runner = CliRunner()
DENSITY = TARGETS["density"]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """density_graphite (pretrained) and density_nmc v1 (its transfer), promoted: density_nmc_onnx v1 @champion."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('challenger-mlflow') / 'mlflow.db'}"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    # MLflow's process-wide state this fixture changes (tracking and registry URI, active experiment, and the
    # registry URI and experiment id MLflow exports to the environment): restored after, so a later test in this process
    # does not read this store's registry or start runs in an experiment its own store lacks.
    import mlflow.tracking._model_registry.utils as registry_state
    import mlflow.tracking._tracking_service.utils as tracking_state
    import mlflow.tracking.fluent as fluent_state

    saved = (tracking_state._tracking_uri, registry_state._registry_uri, fluent_state._active_experiment_id,
             {k: os.environ.get(k) for k in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_REGISTRY_URI")})
    os.environ["MLFLOW_TRACKING_URI"] = uri
    tracking.configure()
    mlflow.set_experiment("challenger-test")
    config = dataclasses.replace(load_config("quick", 1), repeats=2)
    source = jobs.prepare(load_shipped("graphite"), DENSITY, "graphite")
    with tracking.run("pretrain"):
        base = jobs.run_source(source, config, "density_graphite")
    target = jobs.prepare(load_shipped("nmc"), DENSITY, "nmc")
    with tracking.run("transfer"):
        jobs.run_target(target, jobs.BaseRef(base.model, "density_graphite", "1", "graphite", source), config,
                        "density_nmc")
    try:
        promote.promote("density_nmc")
    except promote.ZeroShotGateError:  # a quick net may not beat its base: the base then serves, as in production
        promote.promote_zero_shot("density_nmc")
    yield uri
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous
    tracking_state._tracking_uri, registry_state._registry_uri, fluent_state._active_experiment_id = saved[:3]
    for key, value in saved[3].items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _client() -> Any:
    return mlflow.tracking.MlflowClient()


def _state() -> dict[str, Any]:
    """Every registered model's versions and aliases: what "nothing changed" compares."""
    client = _client()
    return {m.name: (sorted(int(v.version) for v in client.search_model_versions(f"name='{m.name}'")),
                     dict(m.aliases or {})) for m in client.search_registered_models()}


def _invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(build(), list(args))
    return result.exit_code, result.stdout, result.stderr


def _ledger_csv(folder: Path, shift: float = 1.06, sheets: int = 8) -> Path:
    """What GET /outcomes exports for a drifted batch: nmc recipes measured 6 % denser, prediction ids as sample
    ids, the client's sheet ids as group ids (two punches per sheet), mass loading not measured."""
    frame = pd.read_csv(shipped_path("nmc")).head(2 * sheets)
    out = pd.DataFrame({SAMPLE_ID: [str(i) for i in new_prediction_ids(len(frame))],
                        GROUP_ID: [f"line-sheet-{i // 2}" for i in range(len(frame))]})
    for column in feature_columns("electrode"):
        out[column] = frame[column].to_numpy()
    out["density_g_cm3"] = (frame["density_g_cm3"] * shift).round(4).to_numpy()
    out["mass_loading_mg_cm2"] = ""
    path = folder / "ledger.csv"
    out.to_csv(path, index=False)
    return path


def test_combine_keeps_ledger_groups_whole_and_never_counts_a_row_twice(tmp_path: Path) -> None:
    original = load_shipped("nmc").frame
    ledger = pd.read_csv(_ledger_csv(tmp_path), dtype=str, keep_default_na=False)
    combined = from_ledger.combine(original, "electrode", "density_g_cm3", ledger, "test")
    assert combined.original_rows == len(original) and combined.ledger_rows == 16 and combined.ledger_groups == 8
    added = combined.frame.iloc[len(original):]
    assert set(added[GROUP_ID]) == {f"ledger:line-sheet-{i}" for i in range(8)}  # never merged with a data group
    assert not set(added[GROUP_ID]) & set(combined.frame.iloc[:len(original)][GROUP_ID])
    first, last = combined.first_predicted_at, combined.last_predicted_at
    assert first is not None and last is not None and first <= last
    # A champion trained from the ledger already holds those rows: a second round does not add them again.
    again = from_ledger.combine(combined.frame, "electrode", "density_g_cm3", ledger, "test")
    assert again.ledger_rows == 0 and again.already_in_data == 16


def test_combine_keeps_a_ledger_row_repeating_another_exactly_once(tmp_path: Path) -> None:
    """Two punches of a sheet measured alike to the lab's last digit: the training data refuses exact duplicates
    (cellmfg.dataio), so the combined rows keep one and the lineage says how many were dropped."""
    from cellmfg.dataio import load_csv

    original = load_shipped("nmc").frame
    ledger = pd.read_csv(_ledger_csv(tmp_path), dtype=str, keep_default_na=False)
    target = ledger["density_g_cm3"].to_numpy().copy()
    target[1] = target[0]  # sheet 0's second punch: the same inputs, now the same value
    ledger["density_g_cm3"] = target
    assert (ledger.loc[0, feature_columns("electrode")] == ledger.loc[1, feature_columns("electrode")]).all()
    combined = from_ledger.combine(original, "electrode", "density_g_cm3", ledger, "test")
    assert combined.ledger_rows == 15 and combined.exact_duplicates == 1
    assert combined.lineage()["ledger_exact_duplicates_dropped"] == "1"
    path = tmp_path / "combined.csv"
    combined.frame.to_csv(path, index=False)
    # What `train from-ledger` reads back: no duplicate refused.
    assert len(load_csv(path, ["density_g_cm3"], kind="electrode").frame) == len(original) + 15


def test_combine_refuses_a_ledger_without_measured_target(tmp_path: Path) -> None:
    ledger = pd.read_csv(_ledger_csv(tmp_path), dtype=str, keep_default_na=False)
    ledger["density_g_cm3"] = ""
    with pytest.raises(from_ledger.FromLedgerError, match="no outcomes yet"):
        from_ledger.combine(load_shipped("nmc").frame, "electrode", "density_g_cm3", ledger, "test")


@trains
def test_from_ledger_bad_input_changes_nothing(registry: str, tmp_path: Path) -> None:
    before = _state()
    code, _, err = _invoke("train", "from-ledger", "--model", "density_xyz", "--ledger-csv",
                           str(_ledger_csv(tmp_path)), "--preset", "quick")
    assert code == 2 and "no registered Keras model" in err and "density_nmc" in err
    empty = _ledger_csv(tmp_path)
    frame = pd.read_csv(empty, dtype=str, keep_default_na=False)
    frame["density_g_cm3"] = ""
    frame.to_csv(empty, index=False)
    code, _, err = _invoke("train", "from-ledger", "--model", "density_nmc", "--ledger-csv", str(empty),
                           "--preset", "quick", "--out-dir", str(tmp_path / "runs"))
    assert code == 2 and "no outcomes yet" in err
    code, _, err = _invoke("train", "from-ledger", "--model", "density_nmc", "--ledger-url", "http://127.0.0.1:9",
                           "--preset", "quick")
    assert code == 2 and "cannot read the ledger" in err
    assert _state() == before


@pytest.fixture(scope="module")
def challenger(registry: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("from-ledger")
    code, out, err = _invoke("train", "from-ledger", "--model", "density_nmc", "--ledger-csv",
                             str(_ledger_csv(folder)), "--since", "2026-01-01T00:00:00Z", "--preset", "quick",
                             "--out-dir", str(folder / "runs"), "--json")
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1])


@trains
def test_from_ledger_registers_a_challenger_with_its_lineage(registry: str, challenger: dict[str, Any]) -> None:
    client = _client()
    version = str(challenger["registered_version"])
    assert str(client.get_model_version_by_alias("density_nmc", "challenger").version) == version
    tags = client.get_model_version("density_nmc", version).tags
    assert tags["ledger_rows"] == "16" and tags["ledger_groups"] == "8"
    assert tags["ledger_since"] == "2026-01-01T00:00:00+00:00" and tags["ledger_first_predicted_at"]
    assert tags["parent_champion_onnx_version"] == "1" and tags["base_model_name"] == "density_graphite"
    data = pd.read_csv(challenger["data"])
    assert len(data) == len(load_shipped("nmc").frame) + 16
    # The champion is untouched: the challenger only holds its own alias.
    assert str(client.get_model_version_by_alias("density_nmc_onnx", "champion").version) == "1"


def _comparison(low: float, high: float, n: int = 100) -> LiveComparison:
    return LiveComparison(n=n, n_groups=n // 4, champion_mape_pct=6.0, challenger_mape_pct=6.0 + (low + high) / 2,
                          difference_pct=(low + high) / 2, interval_pct=(low, high))


@pytest.fixture(scope="module")
def shadowed(challenger: dict[str, Any], monkeypatch_module: pytest.MonkeyPatch) -> str:
    """The challenger exported beside the champion: density_nmc_onnx @challenger. The metric gate's zero-shot
    part is held open: a quick 5-epoch net need not beat its base, and that gate is not what is tested here."""
    monkeypatch_module.setattr(promote, "metric_gate", lambda *args: None)
    code, _, err = _invoke("registry", "promote", "--model", "models:/density_nmc@challenger", "--alias",
                             "challenger")
    assert code == 0, err
    return str(_client().get_model_version_by_alias("density_nmc_onnx", "challenger").version)


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@trains
def test_the_challenger_is_exported_beside_the_champion(shadowed: str) -> None:
    client = _client()
    assert shadowed == "2"
    assert str(client.get_model_version_by_alias("density_nmc_onnx", "champion").version) == "1"
    contract = promote.registered_contract("density_nmc", "challenger")
    assert contract is not None and contract.feature_names == feature_columns("electrode")


@trains
def test_the_live_gate_refuses_says_why_and_an_override_promotes_with_its_reason(
        shadowed: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from registry import cli as registry_cli

    answers = {"comparison": _comparison(-0.8, 0.3)}
    monkeypatch.setattr(registry_cli, "live_comparison",
                        lambda url, model, token: (answers["comparison"], ("1", shadowed)))
    before = _state()
    code, _, err = _invoke("registry", "promote", "--challenger", "density_nmc")
    assert code == 1 and "not promoted" in err and "n = 100" in err and "interval includes 0" in err
    assert _state() == before  # no alias moved
    run_id = _client().get_model_version("density_nmc_onnx", shadowed).run_id
    assert _client().get_run(run_id).data.metrics["live_difference_pct"] == pytest.approx(-0.25)

    code, _, err = _invoke("registry", "promote", "--challenger", "density_nmc", "--override")
    assert code == 2 and "--reason" in err
    code, out, err = _invoke("registry", "promote", "--challenger", "density_nmc", "--override", "--reason",
                             "binder lot 7 is the new normal")
    assert code == 0, err
    client = _client()
    assert str(client.get_model_version_by_alias("density_nmc_onnx", "champion").version) == shadowed
    assert str(client.get_model_version_by_alias("density_nmc_onnx", "previous").version) == "1"
    assert "challenger" not in client.get_registered_model("density_nmc_onnx").aliases
    tags = client.get_model_version("density_nmc_onnx", shadowed).tags
    assert tags["promotion_override_reason"] == "binder lot 7 is the new normal" and tags["promoted_by"] == "override"
    # Rollback as today.
    code, _, err = _invoke("registry", "rollback", "--model", "density_nmc")
    assert code == 0, err
    assert str(client.get_model_version_by_alias("density_nmc_onnx", "champion").version) == "1"

    # The same challenger again, now shown better: promoted without an override.
    client.set_registered_model_alias("density_nmc_onnx", "challenger", shadowed)
    answers["comparison"] = _comparison(-3.0, -1.0)
    code, out, err = _invoke("registry", "promote", "--challenger", "density_nmc")
    assert code == 0, err
    assert "the challenger is better" in out
    assert str(client.get_model_version_by_alias("density_nmc_onnx", "champion").version) == shadowed
    assert client.get_model_version("density_nmc_onnx", shadowed).tags["promoted_by"] == "live_comparison"
    promote.rollback("density_nmc")


@trains
def test_challenger_bad_input_changes_nothing(shadowed: str, registry: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from registry import cli as registry_cli

    monkeypatch.setattr(registry_cli, "live_comparison", lambda url, model, token: (
        LiveComparison(n=0, n_groups=0, champion_mape_pct=None, challenger_mape_pct=None, difference_pct=None,
                       interval_pct=None), ("1", shadowed)))
    client = _client()
    client.set_registered_model_alias("density_nmc_onnx", "challenger", shadowed)
    before = _state()
    code, _, err = _invoke("registry", "promote", "--challenger", "density_xyz")
    assert code == 2 and "no registered model density_xyz_onnx" in err
    code, _, err = _invoke("registry", "promote", "--challenger", "density_nmc")
    assert code == 2 and "no outcomes yet" in err
    assert _state() == before
    # A challenger whose contract reads other features than the champion's (a GDL net under the NMC name).
    other = fake_model(next(t for t in TASKS if t.dataset == "gdl1000"))
    other = other.model_copy(update={"name": "density_nmc_onnx",
                                     "contract": other.contract.model_copy(update={"name": "density_nmc_onnx"})})
    register_model(registry, other, alias="challenger")
    before = _state()
    code, _, err = _invoke("registry", "promote", "--challenger", "density_nmc")
    assert code == 2 and "differ from the champion's" in err
    assert _state() == before
