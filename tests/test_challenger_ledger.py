"""Shadow rows in the prediction ledger (issue 26): a challenger's predictions are stored as rows linked to the
champion's answered rows (predictions.shadow_of, Alembic revision 0002), in the same transaction, on both insert
paths; `paired_outcomes` joins them with the lab's latest measurement; a ledger written before the revision is
upgraded in place with its rows kept."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import select, text

from service.ledger import Ledger, ModelOutputs, OutcomeItem, PredictionBatch, PredictionOutput, PredictionRecord
from service.ledger.ids import new_prediction_ids
from service.ledger.migrate import (
    HEAD_REVISION,
    MIGRATIONS_DIR,
    create_ledger_engine,
    current_revision,
    write_engine,
)
from service.ledger.shadow import paired_outcomes
from service.ledger.tables import PredictionRow

FEATURES = ["am_wt_pct", "solid_content_pct", "coating_speed_m_min", "comma_gap_um", "roll_speed_m_min",
            "roll_gap_um"]
ROW = [94.0, 60.0, 0.5, 200.0, 0.4, 100.0]


def _outputs(version: str, alias: str, values: list[float]) -> list[ModelOutputs]:
    return [ModelOutputs(target="density_g_cm3", unit="g/cm3", model_name="density_nmc_onnx", model_version=version,
                         model_alias=alias, values=values, interval_low=[v * 0.9 for v in values],
                         interval_high=[v * 1.1 for v in values])]


def _batch(ids: list[uuid.UUID], values: list[float], groups: list[str | None]) -> PredictionBatch:
    now = datetime.now(UTC)
    champion = PredictionBatch(created_at=now, dataset="nmc", endpoint="json", prediction_ids=ids,
                               sample_ids=[f"s-{i}" for i in range(len(ids))], group_ids=groups,
                               feature_columns=FEATURES, inputs=[ROW] * len(ids), in_domain=[True] * len(ids),
                               outputs=_outputs("1", "champion", values))
    shadow = PredictionBatch(created_at=now, dataset="nmc", endpoint="json",
                             prediction_ids=new_prediction_ids(len(ids)), feature_columns=FEATURES,
                             inputs=[ROW] * len(ids), in_domain=[True] * len(ids),
                             outputs=_outputs("2", "challenger", [v * 1.05 for v in values]), shadow_of=ids)
    return champion.with_shadow(shadow)


@pytest.mark.parametrize("raw", [True, False], ids=["sqlite-tuples", "core-executemany"])
def test_shadow_rows_are_linked_and_paired_with_the_latest_outcome(tmp_path: Path, raw: bool) -> None:
    with Ledger.open(f"sqlite:///{tmp_path / 'ledger.sqlite'}") as ledger:
        # The Core path is PostgreSQL's; forced here on SQLite so both insert paths write the link.
        ledger._predictions.raw = ledger._outputs.raw = raw
        ids = new_prediction_ids(4)
        ledger.record(_batch(ids, [2.0, 2.0, 3.0, 3.0], ["a", "a", "b", None]))
        with ledger.engine.connect() as connection:
            links = dict(connection.execute(select(PredictionRow.shadow_of, PredictionRow.sample_id)
                                            .where(PredictionRow.shadow_of.is_not(None))).all())
        assert set(links) == set(ids) and set(links.values()) == {None}
        assert paired_outcomes(ledger.engine, "density_nmc_onnx", "2").measured.size == 0  # nothing measured yet
        # By sample id: unambiguous, since shadow rows carry no client fields.
        ledger.post_outcomes([OutcomeItem(sample_id="s-0", dataset="nmc", values={"density_g_cm3": 2.2}),
                              OutcomeItem(prediction_id=ids[2], values={"density_g_cm3": 3.0})])
        ledger.post_outcomes([OutcomeItem(prediction_id=ids[2], values={"density_g_cm3": 3.3})])  # a correction
        pairs = paired_outcomes(ledger.engine, "density_nmc_onnx", "2", champion_version="1")
        assert pairs.measured.tolist() == [2.2, 3.3]
        assert np.allclose(pairs.champion, [2.0, 3.0]) and np.allclose(pairs.challenger, [2.1, 3.15])
        assert pairs.groups.tolist() == ["a", "b"]
        assert len(paired_outcomes(ledger.engine, "density_nmc_onnx", "3")) == 0  # another challenger version
        assert len(paired_outcomes(ledger.engine, "density_nmc_onnx", "2", champion_version="7")) == 0
        assert ledger.outcomes("density_nmc_onnx").column("sample_id") == [str(ids[0]), str(ids[2])]


def test_a_shadow_record_links_by_field_too(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    answered, shadow = uuid.uuid4(), uuid.uuid4()
    output = PredictionOutput(target="density_g_cm3", unit="g/cm3", model_name="density_nmc_onnx", model_version="1",
                              value=2.0)
    with Ledger.open(f"sqlite:///{tmp_path / 'ledger.sqlite'}") as ledger:
        ledger.record([PredictionRecord(prediction_id=answered, created_at=now, dataset="nmc", endpoint="design",
                                        group_id=None, inputs=dict(zip(FEATURES, ROW, strict=True)), in_domain=True,
                                        outputs=(output,)),
                       PredictionRecord(prediction_id=shadow, created_at=now, dataset="nmc", endpoint="design",
                                        group_id=None, inputs=dict(zip(FEATURES, ROW, strict=True)), in_domain=True,
                                        outputs=(output.model_copy(update={"model_version": "2"}),),
                                        shadow_of=answered)])
        with ledger.engine.connect() as connection:
            assert connection.execute(select(PredictionRow.shadow_of)
                                      .where(PredictionRow.prediction_id == shadow)).scalar_one() == answered


def test_a_ledger_from_before_shadows_is_upgraded_in_place(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    engine = create_ledger_engine(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with write_engine(engine).begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
    answered = uuid.uuid4()
    with write_engine(engine).begin() as connection:
        connection.execute(text("INSERT INTO predictions (prediction_id, created_at, dataset, endpoint, inputs, "
                                "in_domain) VALUES (:id, '2026-01-01 00:00:00', 'nmc', 'json', '{}', 1)"),
                           {"id": answered.hex})
    assert current_revision(engine) == "0001"
    engine.dispose()
    with Ledger.open(url) as ledger:
        assert current_revision(ledger.engine) == HEAD_REVISION
        with ledger.engine.connect() as connection:
            rows = connection.execute(select(PredictionRow.prediction_id, PredictionRow.shadow_of)).all()
        assert rows == [(answered, None)]


# ---------------------------------------------------------------------------------------------------------------
# On PostgreSQL: the service's own shadow rows, and GET /models/{name}/challenge reading them back


@pytest.mark.integration
def test_the_service_writes_linked_shadow_rows_to_postgresql_and_the_challenge_reads_them(tmp_path: Path) -> None:
    """An in-process service (fake champion v1 and challenger v2 in an SQLite MLflow registry) whose ledger is a
    real PostgreSQL cluster: every answered row gets a challenger row with shadow_of pointing at it, and the
    comparison over the measured rows is the one computed by hand. ~10 s (initdb and the registry)."""
    from cellmfg.challenge import paired_comparison
    from cellmfg.domain import TASKS, feature_columns
    from testkit.fakes import example_rows, fake_model, served_prediction, service_client
    from testkit.postgres import pg_binary, postgres_cluster
    from testkit.processes import free_port
    from testkit.registry import register_model, sqlite_tracking_uri

    initdb, pg_ctl = pg_binary("initdb"), pg_binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL's initdb/pg_ctl are not installed (scripts/integration_deps.sh installs them)")
    density = next(t for t in TASKS if t.dataset == "nmc" and t.target.task == "density")
    champion, challenger = fake_model(density, "1"), fake_model(density, "2", alias="challenger", salt=7)
    uri = sqlite_tracking_uri(tmp_path)
    register_model(uri, champion, "champion", tmp_path / "artifacts")
    register_model(uri, challenger, "challenger", tmp_path / "artifacts")
    rows = example_rows("electrode", "nmc", 12, seed=5)
    for i, row in enumerate(rows):
        row["group_id"] = f"sheet-{i // 2}"
    x = np.array([[row[c] for c in feature_columns("electrode")] for row in rows])
    with postgres_cluster(initdb, pg_ctl, free_port(), fsync=False) as cluster:
        cluster.create_database("ledger")
        env = {"MLFLOW_TRACKING_URI": uri, "CELLMFG_LEDGER_URL": cluster.url("ledger")}
        with service_client(tmp_path / "unused-bundle", env=env) as client:
            answer = client.post("/predict/electrode", json={"chemistry": "nmc", "rows": rows})
            assert answer.status_code == 200, answer.text
            ids = [uuid.UUID(p["prediction_id"]) for p in answer.json()["predictions"]]
            measured = served_prediction(challenger, x) * (1 + np.random.default_rng(0).normal(0, 0.002, len(rows)))
            posted = client.post("/outcomes", json={"outcomes": [
                {"prediction_id": str(i), "values": {"density_g_cm3": float(v)}}
                for i, v in zip(ids, measured, strict=True)]})
            assert posted.status_code == 200, posted.text
            comparison = client.get("/models/density_nmc/challenge")
        with Ledger.open(cluster.url("ledger")) as ledger, ledger.engine.connect() as connection:
            assert ledger.engine.dialect.name == "postgresql"
            shadows = connection.execute(select(PredictionRow.shadow_of, PredictionRow.group_id)
                                         .where(PredictionRow.shadow_of.is_not(None))).all()
            answered = connection.execute(select(PredictionRow.prediction_id)
                                          .where(PredictionRow.shadow_of.is_(None))).scalars().all()
    assert sorted(s.shadow_of for s in shadows) == sorted(ids) and sorted(answered) == sorted(ids)
    assert {s.group_id for s in shadows} == {None}  # client fields stay on the answered row
    assert comparison.status_code == 200, comparison.text
    result = comparison.json()
    expected = paired_comparison(measured, served_prediction(champion, x), served_prediction(challenger, x),
                                 np.array([row["group_id"] for row in rows], dtype=object))
    assert (result["n"], result["n_groups"]) == (12, 6)
    assert result["difference_pct"] == pytest.approx(expected.difference_pct, rel=1e-6)
    assert result["interval_pct"] == pytest.approx(list(expected.interval_pct or ()), rel=1e-6)
    assert (result["champion"]["version"], result["challenger"]["version"]) == ("1", "2")
