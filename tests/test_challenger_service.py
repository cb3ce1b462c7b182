"""Champion and challenger in the service (issue 26): the challenger (the registry's `challenger` alias) is scored in
shadow beside every request, recorded in the ledger linked to the champion's row, shown only when asked, and
`GET /models/{name}/challenge` compares the two on the rows the lab measured. In process, on fake ONNX models in
an SQLite MLflow registry; the paired comparison itself is checked by hand."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from cellmfg.challenge import MIN_GROUPS, paired_comparison, promotion_verdict
from cellmfg.domain import TASKS, feature_columns
from service.engine.config import ledger_url_from_env
from service.ledger import Ledger
from service.ledger.tables import OutputRow, PredictionRow
from testkit.fakes import example_rows, fake_model, served_prediction, service_client
from testkit.registry import register_model, sqlite_tracking_uri

NMC = [task for task in TASKS if task.dataset == "nmc"]
DENSITY = next(task for task in NMC if task.target.task == "density")
CHAMPIONS = {task.model_name: fake_model(task, version="1") for task in NMC}
CHALLENGER = fake_model(DENSITY, version="2", alias="challenger", salt=7)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("challenger-registry")
    uri = sqlite_tracking_uri(folder)
    for model in CHAMPIONS.values():
        register_model(uri, model, "champion", folder / "artifacts")
    register_model(uri, CHALLENGER, "challenger", folder / "artifacts")
    return uri


@pytest.fixture(scope="module")
def client(registry: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    # An empty bundle folder: the registry (MLFLOW_TRACKING_URI) is the source, so the challenger alias exists.
    bundle = tmp_path_factory.mktemp("unused-bundle")
    with service_client(bundle, env={"MLFLOW_TRACKING_URI": registry}, ledger=True) as test_client:
        yield test_client


def _rows(n: int, seed: int) -> list[dict[str, Any]]:
    rows = example_rows("electrode", "nmc", n, seed=seed)
    for i, row in enumerate(rows):
        row["group_id"] = f"sheet-{seed}-{i // 2}"  # two punches per sheet
        row["sample_id"] = f"s-{seed}-{i}"
    return rows


def _x(rows: list[dict[str, Any]]) -> np.ndarray:
    return np.array([[row[c] for c in feature_columns("electrode")] for row in rows])


def test_the_answer_is_the_champions_and_shows_the_challenger_only_when_asked(client: TestClient) -> None:
    rows = _rows(6, seed=1)
    plain = client.post("/predict/electrode", json={"chemistry": "nmc", "rows": rows})
    assert plain.status_code == 200, plain.text
    body = plain.json()
    assert "challengers" not in body and all("shadow" not in row for row in body["predictions"])
    champion = served_prediction(CHAMPIONS["density_nmc"], _x(rows))
    assert np.allclose([row["density_g_cm3"] for row in body["predictions"]], champion, rtol=1e-6)
    assert body["models"]["density"]["version"] == "1"

    shown = client.post("/predict/electrode?shadow=true", json={"chemistry": "nmc", "rows": rows}).json()
    challenger = served_prediction(CHALLENGER, _x(rows))
    assert not np.allclose(challenger, champion, rtol=1e-3)  # two different nets, or the test proves nothing
    assert shown["challengers"] == {"density": {"name": "density_nmc_onnx", "version": "2", "alias": "challenger"}}
    assert np.allclose([row["shadow"]["density_g_cm3"] for row in shown["predictions"]], challenger, rtol=1e-6)
    assert np.allclose([row["density_g_cm3"] for row in shown["predictions"]], champion, rtol=1e-6)
    assert all("mass_loading_mg_cm2" not in row["shadow"] for row in shown["predictions"])  # no challenger there


def test_both_predictions_are_recorded_the_shadow_row_linked_to_the_answered_one(client: TestClient) -> None:
    rows = _rows(4, seed=2)
    answer = client.post("/predict/electrode", json={"chemistry": "nmc", "rows": rows}).json()
    ids = [uuid.UUID(row["prediction_id"]) for row in answer["predictions"]]
    url = ledger_url_from_env(os.environ)  # the service's ledger (service_client set its folder)
    assert url is not None
    with Ledger.open(url) as ledger, ledger.engine.connect() as connection:
        shadows = connection.execute(
            select(PredictionRow.prediction_id, PredictionRow.shadow_of, PredictionRow.sample_id,
                   PredictionRow.group_id, OutputRow.model_version, OutputRow.model_alias, OutputRow.value)
            .join(OutputRow, OutputRow.prediction_id == PredictionRow.prediction_id)
            .where(PredictionRow.shadow_of.in_(ids))).all()
    assert sorted(s.shadow_of for s in shadows) == sorted(ids)  # one shadow row per answered row (density only)
    assert {(s.model_version, s.model_alias, s.sample_id, s.group_id) for s in shadows} == {("2", "challenger",
                                                                                              None, None)}
    by_champion = {s.shadow_of: s.value for s in shadows}
    assert np.allclose([by_champion[i] for i in ids], served_prediction(CHALLENGER, _x(rows)), rtol=1e-6)


def test_the_challenge_compares_the_two_on_the_measured_rows(client: TestClient) -> None:
    before = client.get("/models/density_nmc/challenge")
    assert before.status_code == 200, before.text
    assert before.json()["promotable"] is False
    rows = _rows(40, seed=3)
    answer = client.post("/predict/electrode", json={"chemistry": "nmc", "rows": rows}).json()
    truth = served_prediction(CHALLENGER, _x(rows)) * (1 + np.random.default_rng(0).normal(0, 0.002, len(rows)))
    outcomes = [{"prediction_id": row["prediction_id"], "values": {"density_g_cm3": float(value)}}
                for row, value in zip(answer["predictions"], truth, strict=True)]
    posted = client.post("/outcomes", json={"outcomes": outcomes})
    assert posted.status_code == 200, posted.text
    result = client.get("/models/density_nmc_onnx/challenge").json()
    champion = served_prediction(CHAMPIONS["density_nmc"], _x(rows))
    expected = paired_comparison(truth, champion, served_prediction(CHALLENGER, _x(rows)),
                                 np.array([row["group_id"] for row in rows], dtype=object))
    assert result["n"] == 40 and result["n_groups"] == 20
    assert result["difference_pct"] == pytest.approx(expected.difference_pct, rel=1e-6)
    assert result["interval_pct"] == pytest.approx(list(expected.interval_pct or ()), rel=1e-6)
    assert result["interval_pct"][1] < 0 and result["promotable"] is True
    assert result["champion"]["version"] == "1" and result["challenger"]["version"] == "2"


def test_a_model_without_a_challenger_or_not_served_is_a_clear_404(client: TestClient) -> None:
    none = client.get("/models/mass_loading_nmc/challenge")
    assert none.status_code == 404 and "no challenger" in none.json()["error"]
    unknown = client.get("/models/density_xyz/challenge")
    assert unknown.status_code == 404 and "not served" in unknown.json()["error"]


def test_paired_comparison_by_hand() -> None:
    measured = np.array([2.0, 2.0, 4.0, 4.0])
    champion = np.array([2.2, 1.8, 4.4, 4.0])  # APE 10, 10, 10, 0
    challenger = np.array([2.0, 2.1, 4.2, 4.0])  # APE 0, 5, 5, 0
    result = paired_comparison(measured, champion, challenger, np.array(["a", "a", "b", "b"], dtype=object))
    assert result.n == 4 and result.n_groups == 2
    assert result.champion_mape_pct == pytest.approx(7.5) and result.challenger_mape_pct == pytest.approx(2.5)
    assert result.difference_pct == pytest.approx(-5.0)
    # Two groups with mean differences -7.5 (a) and -2.5 (b): the resamples span exactly these extremes.
    assert result.interval_pct == pytest.approx((-7.5, -2.5))
    # An interval over two sheets "excludes 0" whenever both agree: the gate wants MIN_GROUPS groups first.
    promote, reason = promotion_verdict(result)
    assert not promote and f"too few groups to judge: 2 (the gate needs {MIN_GROUPS}" in reason
    many = paired_comparison(np.tile(measured, 5), np.tile(champion, 5), np.tile(challenger, 5),
                             np.array([f"{g}{k}" for k in range(5) for g in "aabb"], dtype=object))
    assert many.n_groups == MIN_GROUPS and many.interval_pct is not None and many.interval_pct[1] < 0
    assert promotion_verdict(many)[0] is True
    one_group = paired_comparison(measured, champion, challenger, np.array(["a"] * 4, dtype=object))
    assert one_group.interval_pct is None and promotion_verdict(one_group)[0] is False
    promote, reason = promotion_verdict(paired_comparison(measured[:0], champion[:0], challenger[:0]))
    assert not promote and "no outcomes yet" in reason

