"""A faster start and a faster single-row path (issue 28), with the same answers: the ledger skips Alembic when its
schema is at the newest revision, the worker imports neither SQLAlchemy nor Alembic before /readyz (the ledger
opens in a thread of its own and an early answer waits for it), small JSON predictions skip BentoML's dispatch
(service.hotpath) and JSON answers are encoded by orjson (service.formats.jsonresp), byte for byte as before.

Costs: ~1-3 s for the import check (a fresh interpreter), the rest well under a second each."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic_core import to_json

from service import hotpath
from service.engine.config import Settings
from service.formats.jsonresp import json_bytes
from service.formats.schemas import EXAMPLE_INPUT
from service.ledger import Ledger, ModelOutputs, PredictionBatch, new_prediction_id
from service.ledger.migrate import HEAD_REVISION, MIGRATIONS_DIR, create_ledger_engine, stored_revision
from service.ledger.recording import LedgerUnavailableError, Recorder
from testkit.fakes import service_client

ROW = EXAMPLE_INPUT["rows"][0]
FEATURES = list(ROW)
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _batch() -> PredictionBatch:
    return PredictionBatch(created_at=datetime.now(UTC), dataset="nmc", endpoint="json",
                           prediction_ids=[new_prediction_id()], feature_columns=FEATURES,
                           inputs=[[ROW[f] for f in FEATURES]], in_domain=[True],
                           outputs=[ModelOutputs(target="density_g_cm3", unit="g/cm³", model_name="m",
                                                 model_version="1", values=[2.0])])


def test_the_head_revision_constant_is_alembics_head() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert ScriptDirectory.from_config(config).get_current_head() == HEAD_REVISION


def test_a_ledger_at_the_head_opens_without_alembic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    assert stored_revision(create_ledger_engine(url)) is None  # a new file: nothing applied
    with Ledger.open(url) as ledger:  # migrates
        ledger.record(_batch())
    assert stored_revision(create_ledger_engine(url)) == HEAD_REVISION

    import alembic.command

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("Alembic ran on a ledger already at its head")

    monkeypatch.setattr(alembic.command, "upgrade", refuse)
    with Ledger.open(url) as ledger:
        assert ledger.stats().predictions == 1


def test_the_worker_imports_no_sqlalchemy_before_it_opens_the_ledger() -> None:
    code = ("import sys, service.service, service.answers; "
            "print(sorted(m for m in ('sqlalchemy', 'alembic', 'service.ledger.store') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True,
                         timeout=120).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_an_answer_right_after_the_start_waits_for_the_ledger_and_is_recorded(tmp_path: Path, bundle: Path) -> None:
    settings = Settings(bundle=bundle, ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    recorder = Recorder(settings, list)
    try:
        asyncio.run(recorder.record(_batch()))  # sent before the opener thread has finished (it migrates a new file)
        assert not recorder.failed
        assert recorder.ledger.stats().predictions == 1
    finally:
        recorder.close()


def test_a_ledger_that_cannot_open_refuses_answers_and_says_not_ready(tmp_path: Path, bundle: Path) -> None:
    blocked = tmp_path / "ledger.sqlite3"
    blocked.mkdir()  # a directory where the database file should be: SQLite cannot open it
    recorder = Recorder(Settings(bundle=bundle, ledger_url=f"sqlite:///{blocked}"), list)
    try:
        with pytest.raises(LedgerUnavailableError):
            asyncio.run(recorder.record(_batch()))
        assert recorder.failed
        assert recorder.stats() is None  # GET /models shows no live figures, and does not fail
    finally:
        recorder.close()


def _float_payload() -> list[Any]:
    rng = np.random.default_rng(7)
    values = np.concatenate([rng.normal(0, 1, 2000), 10.0 ** rng.uniform(-30, 30, 2000),
                             [0.0, -0.0, 1e16, 1e15, 1e-7, 5.551e-17, 2.0 ** 53, 100.0]])
    return values.tolist()


@pytest.mark.parametrize("body", [
    _float_payload(),
    {"s": "µm ü \u2028 \x1f \" \\ / é 😀", "i": [1, -5, 2 ** 63 - 1], "b": [True, False], "e": {}, "l": []},
    {"with_none": None, "x": 1.5},
    [float("nan"), float("inf"), -float("inf"), 1.0],
    {"numpy": np.float64(2.5), "big": 2 ** 70},
    {"text": "null", "v": 0.1},
], ids=["floats", "strings", "none", "non-finite", "numpy-and-big-int", "the-word-null"])
def test_json_answers_are_the_bytes_pydantic_core_writes(body: Any) -> None:
    assert json_bytes(body) == to_json(body)


def test_the_hot_path_answers_what_bentomls_dispatch_answers(bundle: Path) -> None:
    single = {"chemistry": "nmc", "rows": [ROW], "interval": True, "explain": True}
    gdl = {"dataset": "gdl200", "rows": [{"fiber_diameter_um": 8.0, "fiber_concentration_pct": 15.0,
                                          "binder_concentration_pct": 7.0, "thickness_um": 200.0,
                                          "compression_factor": 0.2}]}
    bad = {"chemistry": "nmc", "rows": [{**ROW, "am_wt_pct": "x"}]}
    requests: list[tuple[str, dict[str, Any], dict[str, str]]] = [
        ("/predict/electrode", single, {}), ("/predict/electrode?shadow=true", single, {}),
        ("/predict/gdl", gdl, {}), ("/predict/electrode", single, {"Accept": "text/csv"}),
        ("/predict/electrode", bad, {}), ("/predict/electrode", {"chemistry": "lfp", "rows": [ROW]}, {}),
    ]
    with service_client(bundle) as client:
        assert hotpath._answers is not None, "the service instance serves the hot path"
        hot = [client.post(path, content=json.dumps(body), headers=headers) for path, body, headers in requests]
        answers = hotpath._answers
        hotpath.serve(None)  # every request through BentoML's dispatch
        try:
            dispatched = [client.post(path, content=json.dumps(body), headers=headers)
                          for path, body, headers in requests]
        finally:
            hotpath.serve(answers)
    for (path, _, _), a, b in zip(requests, hot, dispatched, strict=True):
        assert (a.status_code, a.content) == (b.status_code, b.content), path
        for header in ("content-type", "server", "x-cellmfg-models"):
            assert a.headers.get(header) == b.headers.get(header), (path, header)
    assert [r.status_code for r in hot] == [200, 200, 200, 200, 400, 400]
    assert hot[0].headers["server"] == hotpath.SERVER_HEADER


def test_the_hot_path_is_left_when_the_service_stops(bundle: Path) -> None:
    with service_client(bundle):
        assert hotpath._answers is not None
    deadline = time.monotonic() + 5
    while hotpath._answers is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert hotpath._answers is None


def test_answers_of_one_loop_turn_share_a_commit_and_fail_apart(tmp_path: Path) -> None:
    """Eight answers awaited together are committed by one transaction; an answer whose row cannot be stored (its
    id is in the ledger already) fails alone, the others are stored; a dropped request's rows are not."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    with Ledger.open(url) as ledger:
        taken = _batch()
        ledger.record(taken)
        commits: list[int] = []
        commit_inline = ledger._commit_inline

        def counting(predictions: list[Any], outputs: list[Any]) -> bool:
            commits.append(len(predictions))
            return commit_inline(predictions, outputs)

        ledger._commit_inline = counting  # type: ignore[method-assign]

        async def answers() -> list[BaseException | None]:
            together = [asyncio.ensure_future(ledger.record_grouped(_batch())) for _ in range(8)]
            results = await asyncio.gather(*together, return_exceptions=True)
            duplicate = [_batch() for _ in range(3)]
            duplicate[1] = taken  # stored already: the grouped commit fails, then this answer alone
            results += await asyncio.gather(*(ledger.record_grouped(b) for b in duplicate), return_exceptions=True)
            dropped = asyncio.ensure_future(ledger.record_grouped(_batch()))
            await asyncio.sleep(0)  # queued for this turn's commit ...
            dropped.cancel()  # ... and the request is gone before it runs
            await asyncio.sleep(0.01)
            return [r if isinstance(r, BaseException) else None for r in results]

        results = asyncio.run(answers())
        assert commits[0] == 8, "the eight answers of one turn share one transaction"
        assert results[:8] == [None] * 8
        assert results[8] is None and results[10] is None and isinstance(results[9], Exception)
        assert ledger.stats().predictions == 1 + 8 + 2
