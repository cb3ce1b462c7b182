"""A remote ledger's outage (issue 27: PostgreSQL restarted under load): while PostgreSQL cannot commit, answers are
committed to the local SQLite spool (service.ledger.spool) and keep going out; once it is back the spool is
forwarded, in order and idempotently on prediction_id, and emptied: no answered row lost, none stored twice."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, func, select

from service.formats.schemas import EXAMPLE_INPUT
from service.ledger import ModelOutputs, PredictionBatch, new_prediction_id
from service.ledger.migrate import upgrade_to_head
from service.ledger.spool import Spool, SpooledBatch, forward, spool_path
from service.ledger.store import _batch_parameters
from service.ledger.tables import OutputRow, PredictionRow

ROW = EXAMPLE_INPUT["rows"][0]
FEATURES = list(ROW)
# This file's ports (servers 3400-3419, PostgreSQL 5440-5449).
SERVER_PORT = 3401
PG_PORT = 5441


def _batch(n: int, created_at: datetime | None = None) -> PredictionBatch:
    return PredictionBatch(
        created_at=created_at or datetime.now(UTC), dataset="nmc", endpoint="json", operator="ann",
        prediction_ids=[new_prediction_id() for _ in range(n)], sample_ids=[f"s{i}" for i in range(n)],
        feature_columns=FEATURES, inputs=[[float(ROW[f]) + i for f in FEATURES] for i in range(n)],
        in_domain=[i % 2 == 0 for i in range(n)],
        outputs=[ModelOutputs(target="density_g_cm3", unit="g/cm³", model_name="density_nmc_onnx",
                              model_version="3", model_alias="champion", values=[2.0 + i / 10 for i in range(n)],
                              interval_low=[1.9] * n, interval_high=[2.2 + i for i in range(n)])])


def _stored(engine: Any) -> tuple[dict[str, Any], int]:
    """prediction_id -> (created_at, inputs, sample_id) of every stored prediction; and the number of outputs."""
    with engine.connect() as connection:
        rows = connection.execute(select(PredictionRow.prediction_id, PredictionRow.created_at, PredictionRow.inputs,
                                         PredictionRow.sample_id)).all()
        outputs = connection.execute(select(func.count()).select_from(OutputRow)).scalar_one()
    return {str(r[0]): (r[1], r[2], r[3]) for r in rows}, int(outputs)


def test_forwarding_twice_or_after_a_crash_stores_every_spooled_row_once(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    upgrade_to_head(engine)
    spool = Spool(spool_path(tmp_path / "spool", "postgresql+psycopg://cellmfg:secret@db:5432/ledger"))
    assert "secret" not in spool.path.name
    first, second = _batch(3), _batch(2)
    for batch in (first, second):
        spool.append(*_batch_parameters(batch))
    assert spool.rows() == 5

    def crash(batches: list[SpooledBatch]) -> None:  # the database committed; the spool's delete never ran
        raise RuntimeError("killed between the database's commit and the spool's delete")

    with pytest.raises(RuntimeError, match="killed"):
        forward(spool, engine, after_commit=crash)
    assert spool.rows() == 5 and len(_stored(engine)[0]) == 5
    assert forward(spool, engine) == 5  # replayed: nothing stored twice, the spool emptied
    assert spool.rows() == 0 and forward(spool, engine) == 0
    # A commit whose acknowledgement the outage lost: the rows reached the database and were spooled as well.
    spool.append(*_batch_parameters(first))
    assert forward(spool, engine) == 3
    stored, outputs = _stored(engine)
    assert len(stored) == 5 and outputs == 5 and spool.rows() == 0
    # What comes back is what was spooled: ids, aware times, inputs, client fields.
    created, inputs, sample = stored[str(second.prediction_ids[1])]
    assert created == second.created_at and sample == "s1"
    assert inputs == {f: float(ROW[f]) + 1 for f in FEATURES}
    spool.close()


def test_the_spool_replays_in_the_order_it_was_written_and_in_bounded_transactions(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite3")
    batches = [_batch(4) for _ in range(5)]
    for batch in batches:
        spool.append(*_batch_parameters(batch))
    oldest = spool.oldest(max_rows=10)
    assert [b.rows for b in oldest] == [4, 4]  # about max_rows, whole batches only
    assert [p["prediction_id"] for b in oldest for p in b.predictions] == \
        [*batches[0].prediction_ids, *batches[1].prediction_ids]
    assert len(spool.oldest(max_rows=1)) == 1  # a batch larger than the bound still goes
    spool.close()


# ---------------------------------------------------------------------------------------------------------------
# PostgreSQL restarted under load on a real `cellmfg serve`


class _Restartable:
    """Stop (fast shutdown: clients are disconnected, the server checkpoints and exits) and start again a cluster of
    testkit.postgres, with the options it was started with."""

    def __init__(self, pg_ctl: str, cluster: Any) -> None:
        self.pg_ctl, self.data = pg_ctl, cluster.folder / "data"
        self.options = (f"-p {cluster.port} -c listen_addresses=127.0.0.1 "
                        f"-c unix_socket_directories={cluster.folder} -c fsync=off")
        # initdb and postgres refuse to run as root: testkit.postgres runs them as `postgres` (else `nobody`)
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres" if _user_exists("postgres") else "nobody"

    def _run(self, *args: str) -> None:
        result = subprocess.run([self.pg_ctl, "-D", str(self.data), *args], user=self.user, capture_output=True,
                                text=True, timeout=90, check=False, cwd=self.data.parent)
        assert result.returncode == 0, f"pg_ctl {args[0]}: {result.stdout}{result.stderr}"

    def stop(self) -> None:
        self._run("stop", "-m", "fast", "-w", "-t", "60")

    def start(self) -> None:
        self._run("start", "-l", str(self.data.parent / "postgres.log"), "-o", self.options, "-w", "-t", "60")


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture
def cluster() -> Iterator[tuple[Any, _Restartable]]:
    from testkit.postgres import pg_binary, postgres_cluster

    initdb, pg_ctl = pg_binary("initdb"), pg_binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL's initdb/pg_ctl are not installed (scripts/integration_deps.sh installs them)")
    # fsync off: durability across a crash of PostgreSQL is not under test, and a fast shutdown checkpoints anyway
    with postgres_cluster(initdb, pg_ctl, PG_PORT, fsync=False) as running:
        running.create_database("ledger")
        yield running, _Restartable(pg_ctl, running)


@pytest.mark.integration
def test_postgresql_restarted_under_load_loses_no_answer_and_no_ledger_row(
        bundle: Path, tmp_path: Path, cluster: tuple[Any, _Restartable]) -> None:
    from testkit.processes import cellmfg_server, clean_env, metric

    pg, restartable = cluster
    url = pg.url("ledger")
    spool_dir = tmp_path / "spool"
    env = clean_env(BENTOML_HOME=str(tmp_path / "bentoml"), CELLMFG_POLL_SECONDS="0", CELLMFG_LEDGER_URL=url,
                    CELLMFG_LEDGER_SPOOL_DIR=str(spool_dir))
    answered: list[str] = []
    failures: list[str] = []
    outage_outcomes: list[httpx.Response] = []
    spooled_seen = 0.0
    stop = threading.Event()
    server = cellmfg_server(env, tmp_path / "server.log", bundle=bundle, port=SERVER_PORT).start()
    try:
        server.wait_ready(timeout=120)

        def stream() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                while not stop.is_set():
                    try:
                        answer = http.post("/predict/electrode", json={**EXAMPLE_INPUT, "rows": [ROW]})
                    except httpx.HTTPError as error:
                        failures.append(repr(error))
                        continue
                    if answer.status_code != 200:
                        failures.append(f"{answer.status_code}: {answer.text[:200]}")
                        continue
                    answered.append(answer.json()["predictions"][0]["prediction_id"])

        threads = [threading.Thread(target=stream) for _ in range(3)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        time.sleep(5)
        before_outage = len(answered)
        restartable.stop()
        stopped_at = time.monotonic()
        while time.monotonic() - stopped_at < 5:
            spooled_seen = max(spooled_seen, metric(server.url, "cellmfg_ledger_spooled_rows"))
            if not outage_outcomes and answered:
                outage_outcomes.append(httpx.post(f"{server.url}/outcomes", timeout=30, json={"outcomes": [
                    {"prediction_id": answered[-1], "values": {"density_g_cm3": 2.0}}]}))
            time.sleep(0.5)
        during_outage = len(answered) - before_outage
        restartable.start()
        time.sleep(max(0.0, 20 - (time.monotonic() - started)))
        stop.set()
        for thread in threads:
            thread.join(timeout=60)

        assert not failures, f"{len(failures)} failed predictions, e.g. {failures[:3]}\n{server.log_tail()}"
        assert during_outage > 0 and spooled_seen > 0, "the outage never reached the spool"
        assert outage_outcomes[0].status_code == 503 and "cannot be reached" in outage_outcomes[0].text
        engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        try:
            deadline = time.monotonic() + 30
            while True:
                stored, outputs = _stored(engine)
                missing = set(answered) - set(stored)
                if not missing or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert not missing, f"{len(missing)} of {len(answered)} answered ids never reached PostgreSQL"
            assert len(answered) == len(set(answered))
            assert len(stored) == len(answered) and outputs == 2 * len(answered)  # density and mass loading
        finally:
            engine.dispose()
        spool = Spool(spool_path(spool_dir, url))
        try:
            assert spool.rows() == 0
        finally:
            spool.close()
        # the gauge follows (the forwarder sets it after its last replay)
        assert metric(server.url, "cellmfg_ledger_spooled_rows") == 0
        # and the service goes on answering straight into PostgreSQL
        answer = httpx.post(f"{server.url}/predict/electrode", json=EXAMPLE_INPUT, timeout=10)
        assert answer.status_code == 200
        assert answer.json()["predictions"][0]["prediction_id"] in _stored_now(url)
    finally:
        stop.set()
        server.stop()
    print(json.dumps({"answered": len(answered), "during_outage": during_outage, "spooled_max": spooled_seen}))


def _stored_now(url: str) -> set[str]:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        return set(_stored(engine)[0])
    finally:
        engine.dispose()


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_registry_polling_resumes_after_postgresql_restarts(tmp_path: Path, cluster: tuple[Any, _Restartable]) -> None:
    """The registry on the same PostgreSQL (as in compose: MLflow's database beside the ledger's): while it is down
    the service keeps answering with the models it holds; once it is back, an alias moved in the registry reaches
    the service within the poll interval + 5 s, and the ledger takes that version's answers."""
    from mlflow import MlflowClient

    from cellmfg.domain import TASKS
    from testkit.fakes import fake_model
    from testkit.processes import cellmfg_server, clean_env, mlflow_server, wait_for
    from testkit.registry import EXPERIMENT, move_alias, register_fakes, register_model

    pg, restartable = cluster
    pg.create_database("mlflow")
    name = "density_nmc_onnx"
    task = next(t for t in TASKS if f"{t.model_name}_onnx" == name)
    tracking = mlflow_server(tmp_path, pg.url("mlflow", "psycopg"),
                             ["--serve-artifacts", "--artifacts-destination", str(tmp_path / "artifacts")])
    with tracking:
        tracking.wait_ready(timeout=180)
        uri = tracking.url
        MlflowClient(tracking_uri=uri, registry_uri=uri).create_experiment(EXPERIMENT)
        register_fakes(uri)
        env = clean_env(BENTOML_HOME=str(tmp_path / "bentoml"), MLFLOW_TRACKING_URI=uri, CELLMFG_POLL_SECONDS="1",
                        CELLMFG_LEDGER_URL=pg.url("ledger"), CELLMFG_LEDGER_SPOOL_DIR=str(tmp_path / "spool"),
                        MLFLOW_DISABLE_TELEMETRY="true")
        server = cellmfg_server(env, tmp_path / "server.log").start()
        try:
            server.wait_ready(timeout=240)

            def served() -> str | None:
                models = httpx.get(f"{server.url}/models", timeout=10).json()["models"]
                return next((m["version"] for m in models if m["name"] == name), None)

            assert served() == "1"
            restartable.stop()
            for _ in range(5):  # registry and ledger both away: the held models answer
                answer = httpx.post(f"{server.url}/predict/electrode", json={**EXAMPLE_INPUT, "rows": [ROW]},
                                    timeout=30)
                assert answer.status_code == 200, answer.text
                time.sleep(1)
            restartable.start()

            def registry_answers() -> bool:
                try:  # this server's registry, whatever registry URI another test left in the process
                    MlflowClient(tracking_uri=uri, registry_uri=uri).get_registered_model(name)
                except Exception as error:  # the server's pool may first hand out a connection of the old cluster
                    problems.append(repr(error))
                    return False
                return True

            problems: list[str] = []
            wait_for(registry_answers, timeout=60, what="the registry to answer again", interval=0.5,
                     on_timeout=lambda: "; ".join(problems[-3:]) + tracking.log_tail(3000))
            new = register_model(uri, fake_model(task, version="2", salt=11), alias=None)
            move_alias(uri, name, "champion", new)
            moved = time.monotonic()
            wait_for(lambda: served() == new, timeout=1 + 5, what=f"the service to serve {name} version {new}",
                     interval=0.1, on_timeout=server.log_tail)
            print(f"\nalias moved after the restart reached the service in {time.monotonic() - moved:.1f} s")
            answer = httpx.post(f"{server.url}/predict/electrode", json=EXAMPLE_INPUT, timeout=10).json()
            assert answer["models"]["density"]["version"] == new
            wait_for(lambda: answer["predictions"][0]["prediction_id"] in _stored_now(pg.url("ledger")),
                     timeout=30, what="the new version's answer in the ledger", interval=0.5)
        finally:
            server.stop()
