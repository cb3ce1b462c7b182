"""The ledger's store tests (tests/test_ledger.py) and its SIGKILL durability test on a real PostgreSQL: a
throwaway cluster (initdb/pg_ctl in a temporary folder, as tests/test_deploy.py starts one, on a port in
5450-5459, fsync on) with a fresh database per test, stopped by its own PID file."""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_deploy import _pg_bin, _tool, _user_exists

# The store tests and their fixtures, collected again here with `ledger_url` overridden below.
from test_ledger import (  # noqa: F401
    ledger,
    slow_first_commit,
    test_a_caller_with_a_repeated_id_fails_alone_in_its_batch,
    test_a_closed_ledger_flushes_what_was_queued_and_refuses_more,
    test_a_columnar_batch_stores_the_same_rows_as_records,
    test_a_post_with_bad_items_lists_every_problem_and_writes_nothing,
    test_an_outcome_resolves_by_sample_id_within_its_dataset,
    test_concurrent_callers_share_a_group_commit,
    test_identical_posts_racing_store_one_row,
    test_ledgers_opened_at_once_on_a_new_database_migrate_it_once,
    test_limits_come_from_the_caller,
    test_live_report_of_a_version_joins_predictions_outcomes_and_recent_inputs,
    test_measured_rows_export_in_the_dataset_csv_schema_and_load_as_training_data,
    test_record_async_awaits_the_commit,
    test_recorded_rows_read_back_with_utc_times_inputs_and_one_output_per_target,
    test_reposting_is_idempotent_and_a_correction_is_a_new_revision_that_counts,
    test_retention_deletes_old_predictions_with_their_outputs_and_outcomes,
    test_scored_rows_are_per_version_and_recent_inputs_follow_the_model,
    test_sigkill_during_a_stream_loses_no_acknowledged_prediction_or_outcome,
    test_stats_count_rows_and_the_store_grows,
    test_the_migrated_schema_equals_the_table_models_at_the_head_revision,
    test_two_processes_writing_one_ledger_at_once_keep_everything_through_sigkill,
)

from testkit.processes import tail

pytestmark = pytest.mark.integration

PORTS = range(5450, 5460)
SHARED_TESTS = (
    test_a_caller_with_a_repeated_id_fails_alone_in_its_batch,
    test_a_closed_ledger_flushes_what_was_queued_and_refuses_more,
    test_a_columnar_batch_stores_the_same_rows_as_records,
    test_a_post_with_bad_items_lists_every_problem_and_writes_nothing,
    test_an_outcome_resolves_by_sample_id_within_its_dataset,
    test_concurrent_callers_share_a_group_commit,
    test_identical_posts_racing_store_one_row,
    test_ledgers_opened_at_once_on_a_new_database_migrate_it_once,
    test_limits_come_from_the_caller,
    test_live_report_of_a_version_joins_predictions_outcomes_and_recent_inputs,
    test_measured_rows_export_in_the_dataset_csv_schema_and_load_as_training_data,
    test_record_async_awaits_the_commit,
    test_recorded_rows_read_back_with_utc_times_inputs_and_one_output_per_target,
    test_reposting_is_idempotent_and_a_correction_is_a_new_revision_that_counts,
    test_retention_deletes_old_predictions_with_their_outputs_and_outcomes,
    test_scored_rows_are_per_version_and_recent_inputs_follow_the_model,
    test_sigkill_during_a_stream_loses_no_acknowledged_prediction_or_outcome,
    test_stats_count_rows_and_the_store_grows,
    test_the_migrated_schema_equals_the_table_models_at_the_head_revision,
    test_two_processes_writing_one_ledger_at_once_keep_everything_through_sigkill,
)


def _free_port_in(ports: range) -> int:
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip(f"no free port in {ports.start}-{ports.stop - 1} for the ledger's PostgreSQL")


@pytest.fixture(scope="module")
def ledger_postgres() -> Iterator[int]:
    """A PostgreSQL cluster on 127.0.0.1 (port in 5450-5459), user `cellmfg`, trust auth; yields the port."""
    initdb, pg_ctl = _tool("initdb", _pg_bin), _tool("pg_ctl", _pg_bin)
    folder = Path(tempfile.mkdtemp(prefix="cellmfg-ledger-pg-"))  # under /tmp: reachable by the server's user
    user: str | None = None
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        user = "postgres" if _user_exists("postgres") else "nobody"
        entry = pwd.getpwnam(user)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    data, log, port = folder / "data", folder / "postgres.log", _free_port_in(PORTS)

    def run(args: list[str]) -> None:
        result = subprocess.run(args, user=user, capture_output=True, text=True, timeout=120, check=False,
                                cwd=folder)
        assert result.returncode == 0, f"{args[0]} failed: {result.stdout}{result.stderr}{tail(log, 3000)}"

    started = False
    try:
        run([initdb, "-D", str(data), "-U", "cellmfg", "--auth=trust", "-E", "UTF8", "--no-instructions",
             "--no-sync"])
        # fsync stays on: acknowledged commits are meant to be on disk.
        options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={folder}"
        run([pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"])
        started = True
        yield port
    finally:
        if started:
            # immediate: no shutdown checkpoint (tens of seconds with fsync on); the cluster is deleted anyway
            stopped = subprocess.run([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "-t", "30", "stop"], user=user,
                                     capture_output=True, timeout=60, check=False).returncode == 0
            pid_file = data / "postmaster.pid"
            if not stopped and pid_file.exists():  # this cluster's own postmaster, by the PID it recorded
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)


_databases = itertools.count(1)


@pytest.fixture
def ledger_url(ledger_postgres: int) -> str:
    """A fresh database per test; `postgresql://` as an operator would write it (the ledger adds the driver)."""
    import psycopg

    name = f"ledger_{next(_databases)}"
    with psycopg.connect(host="127.0.0.1", port=ledger_postgres, user="cellmfg", dbname="postgres",
                         autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return f"postgresql://cellmfg@127.0.0.1:{ledger_postgres}/{name}"


def test_every_store_test_but_the_sqlite_ones_is_collected_here() -> None:
    import inspect

    import test_ledger

    on_a_store = {"ledger_url", "ledger", "slow_first_commit"}
    store_tests = {name for name, value in vars(test_ledger).items()
                   if name.startswith("test_") and not name.startswith("test_sqlite_") and inspect.isfunction(value)
                   and on_a_store & set(inspect.signature(value).parameters)}
    assert store_tests == {test.__name__ for test in SHARED_TESTS}
