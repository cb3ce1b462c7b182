"""`POST /models/{name}/challenge/promote` (issue 26, the page's "Promote challenger"): the gate of `cellmfg registry
promote --challenger` (one function, cellmfg.challenge_gate.promote_challenger) on the registry the service
follows. In process, on fake ONNX models in a real SQLite MLflow registry (testkit.registry), the service's ledger
an SQLite file: only with the API token; unknown model, no challenger, no outcomes, bad body and a bundle source are
clear errors that change nothing; a challenger not shown better is refused (409, why), and promoted with an
override whose reason is recorded; a better one is promoted and served from the next poll. ~10 s."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from cellmfg.domain import TASKS, feature_columns
from testkit.fakes import example_rows, fake_model, served_prediction, service_client, write_fake_bundle
from testkit.processes import wait_for
from testkit.registry import register_model, sqlite_tracking_uri

TOKEN = "promote-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NMC = [task for task in TASKS if task.dataset == "nmc"]
DENSITY = next(task for task in NMC if task.target.task == "density")
CHAMPIONS = {task.model_name: fake_model(task, version="1") for task in NMC}
CHALLENGER = fake_model(DENSITY, version="2", alias="challenger", salt=7)
MODEL = "density_nmc_onnx"
PROMOTE = "/models/density_nmc/challenge/promote"


@pytest.fixture(scope="module")
def registry_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry (champions v1, density challenger v2) built once; each test promotes in a copy of its database
    (the artifacts, only read, stay shared): creating an MLflow database costs seconds."""
    folder = tmp_path_factory.mktemp("promote-registry")
    uri = sqlite_tracking_uri(folder)
    for model in CHAMPIONS.values():
        register_model(uri, model, "champion", folder / "artifacts")
    register_model(uri, CHALLENGER, "challenger", folder / "artifacts")
    return folder / "mlflow.db"


def _mlflow(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _state(uri: str) -> dict[str, Any]:
    """Every registered model's versions, aliases and version tags: what "nothing changed" compares."""
    client = _mlflow(uri)
    return {m.name: ({a: str(v) for a, v in (m.aliases or {}).items()}, {v.version: dict(v.tags or {})
                                             for v in client.search_model_versions(f"name='{m.name}'")})
            for m in client.search_registered_models()}


@pytest.fixture()
def served(tmp_path: Path, registry_template: Path) -> Iterator[tuple[TestClient, str]]:
    """The service following a fresh registry (champions v1, density challenger v2), with an API token, polling
    every second. The promote path is listed in CELLMFG_OPEN_PATHS, as an operator might by mistake: the middleware
    lets it through without a token, so the 401s below are the endpoint's own check."""
    shutil.copyfile(registry_template, tmp_path / "mlflow.db")
    uri = sqlite_tracking_uri(tmp_path)
    env = {"MLFLOW_TRACKING_URI": uri, "CELLMFG_API_TOKEN": TOKEN, "CELLMFG_OPEN_PATHS": f"/livez,{PROMOTE}"}
    with service_client(tmp_path / "unused-bundle", poll_seconds=1, headers=AUTH, env=env, ledger=True) as client:
        yield client, uri


def _measure(client: TestClient, truth_of: Any, n: int = 40, seed: int = 3) -> None:
    """Answer `n` NMC rows (two punches per sheet) and post their measured density: `truth_of(x)`."""
    rows = example_rows("electrode", "nmc", n, seed=seed)
    for i, row in enumerate(rows):
        row["group_id"] = f"sheet-{seed}-{i // 2}"
    answer = client.post("/predict/electrode", json={"chemistry": "nmc", "rows": rows})
    assert answer.status_code == 200, answer.text
    x = np.array([[row[c] for c in feature_columns("electrode")] for row in rows])
    noise = 1 + np.random.default_rng(seed).normal(0, 0.002, n)
    outcomes = [{"prediction_id": p["prediction_id"], "values": {"density_g_cm3": float(v)}}
                for p, v in zip(answer.json()["predictions"], truth_of(x) * noise, strict=True)]
    posted = client.post("/outcomes", json={"outcomes": outcomes})
    assert posted.status_code == 200, posted.text


def test_promotion_needs_the_token_a_served_model_a_challenger_and_outcomes(
        served: tuple[TestClient, str], monkeypatch: pytest.MonkeyPatch) -> None:
    client, uri = served
    before = _state(uri)
    missing = client.post(PROMOTE, json={"override": False}, headers={"Authorization": ""})
    assert missing.status_code == 401 and "www-authenticate" in missing.headers
    wrong = client.post(PROMOTE, json={"override": False}, headers={"Authorization": "Bearer not-the-token-at-all"})
    assert wrong.status_code == 401 and "not valid" in wrong.json()["error"]
    with monkeypatch.context() as unset:  # a service configured without a token: promotion over HTTP is off
        unset.delenv("CELLMFG_API_TOKEN")
        off = client.post(PROMOTE, json={"override": False})
    assert off.status_code == 403 and "CELLMFG_API_TOKEN" in off.json()["error"]

    unknown = client.post("/models/density_xyz/challenge/promote", json={"override": False})
    assert unknown.status_code == 404 and "not served" in unknown.json()["error"]
    none = client.post("/models/mass_loading_nmc/challenge/promote", json={"override": False})
    assert none.status_code == 404 and "no challenger" in none.json()["error"]
    for body, says in (({"override": True}, "needs a reason"), ({"override": True, "reason": "  "}, "needs a reason"),
                       ({"reason": "why"}, "reason goes with override"), ({"force": True}, "invalid body"),
                       ([], "invalid body")):
        bad = client.post(PROMOTE, json=body)
        assert bad.status_code == 400 and says in bad.json()["error"], (body, bad.text)
    assert client.post(PROMOTE).status_code == 400  # no body
    early = client.post(PROMOTE, json={"override": False})
    assert early.status_code == 409 and "no outcomes yet" in early.json()["error"], early.text
    assert early.json()["overridable"] is False  # nothing to override: no comparison yet
    assert _state(uri) == before  # nothing moved, nothing tagged

    # The lab measures what the challenger predicts: it is better, and the gate promotes it.
    _measure(client, lambda x: served_prediction(CHALLENGER, x))
    promoted = client.post(PROMOTE, json={"override": False})
    assert promoted.status_code == 200, promoted.text
    result = promoted.json()
    assert (result["champion_version"], result["previous_version"], result["promoted_by"]) == ("2", "1",
                                                                                               "live_comparison")
    assert result["comparison"]["n"] == 40 and result["comparison"]["interval_pct"][1] < 0
    registry = _mlflow(uri)
    assert _aliases(registry) == {"champion": "2", "previous": "1"}
    version = registry.get_model_version(MODEL, "2")
    assert version.tags["promoted_by"] == "live_comparison" and "promotion_override_reason" not in version.tags
    assert registry.get_run(version.run_id).data.metrics["live_n"] == 40
    # The service swaps the new champion in at its next poll, without a restart, and has no challenger left.
    wait_for(lambda: _served_version(client) == "2", timeout=30, what="the new champion served")
    wait_for(lambda: client.get("/models/density_nmc/challenge").status_code == 404, timeout=30,
             what="the challenger unloaded")


def test_the_gate_refuses_a_challenger_not_shown_better_and_an_override_promotes_it_with_its_reason(
        served: tuple[TestClient, str]) -> None:
    client, uri = served
    # The lab measures what the champion predicts: the challenger is worse.
    _measure(client, lambda x: served_prediction(CHAMPIONS["density_nmc"], x))
    before = _state(uri)
    refused = client.post(PROMOTE, json={"override": False})
    assert refused.status_code == 409, refused.text
    body = refused.json()
    assert "not promoted" in body["error"] and "the challenger is worse" in body["error"] and "n = 40" in body["error"]
    assert body["comparison"]["interval_pct"][0] > 0 and body["overridable"] is True
    after = _state(uri)
    assert after[MODEL][0] == before[MODEL][0]  # no alias moved ...
    registry = _mlflow(uri)
    version = registry.get_model_version(MODEL, "2")
    # ... and the comparison is logged on the version, as the CLI logs it.
    assert float(version.tags["live_difference_pct"]) == pytest.approx(body["comparison"]["difference_pct"],
                                                                       rel=1e-5)
    assert registry.get_run(version.run_id).data.metrics["live_difference_low_pct"] > 0

    override = client.post(PROMOTE, json={"override": True, "reason": "binder lot 7 is the new normal"})
    assert override.status_code == 200, override.text
    assert override.json()["promoted_by"] == "override"
    assert override.json()["override_reason"] == "binder lot 7 is the new normal"
    assert _aliases(registry) == {"champion": "2", "previous": "1"}
    tags = registry.get_model_version(MODEL, "2").tags
    assert tags["promotion_override_reason"] == "binder lot 7 is the new normal" and tags["promoted_by"] == "override"


def test_a_bundle_has_no_registry_to_promote_in(tmp_path: Path) -> None:
    bundle = write_fake_bundle(tmp_path / "bundle")
    with service_client(bundle, headers=AUTH, env={"CELLMFG_API_TOKEN": TOKEN}, ledger=True) as client:
        answer = client.post(PROMOTE, json={"override": False})
    assert answer.status_code == 409 and "no registry to promote in" in answer.json()["error"], answer.text


def test_the_endpoint_is_documented(tmp_path: Path) -> None:
    bundle = write_fake_bundle(tmp_path / "bundle")
    with service_client(bundle, headers=AUTH, env={"CELLMFG_API_TOKEN": TOKEN}) as client:
        spec = client.get("/docs.json").json()
    operation = spec["paths"]["/models/{model_name}/challenge/promote"]["post"]
    assert {"200", "400", "401", "403", "404", "409", "503"} <= set(operation["responses"])
    assert operation["security"] == [{"bearerAuth": []}]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == {"override", "reason"}


def _aliases(registry: Any) -> dict[str, str]:
    return {alias: str(version) for alias, version in registry.get_registered_model(MODEL).aliases.items()}


def _served_version(client: TestClient) -> str | None:
    models = client.get("/models").json()["models"]
    return next((str(m["version"]) for m in models if m["name"] == MODEL), None)
