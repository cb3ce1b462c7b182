"""A throwaway PostgreSQL cluster for tests: initdb and pg_ctl from the machine (Debian keeps them in
/usr/lib/postgresql/N/bin), a temporary folder under /tmp, loopback only, user `cellmfg` with trust auth; stopped by
pg_ctl, or by the PID its postmaster recorded.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from testkit.processes import tail


def pg_binary(name: str) -> str | None:
    """`name` (initdb, pg_ctl, …) on PATH, else the newest of Debian's versioned folders, else None."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    return str(candidates[-1]) if candidates else None


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@dataclass(frozen=True)
class Cluster:
    port: int
    folder: Path

    def url(self, database: str, driver: str = "") -> str:
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://cellmfg@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="cellmfg", dbname="postgres",
                             autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")


@contextlib.contextmanager
def postgres_cluster(initdb: str, pg_ctl: str, port: int, fsync: bool) -> Iterator[Cluster]:
    """A running cluster on 127.0.0.1:`port`. `fsync=False` is faster where durability is not under test;
    with fsync on the cluster stops `immediate` (no shutdown checkpoint: tens of seconds), as it is deleted anyway."""
    folder = Path(tempfile.mkdtemp(prefix="cellmfg-pg-"))  # under /tmp: reachable by the server's user
    user: str | None = None
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        user = "postgres" if user_exists("postgres") else "nobody"
        entry = pwd.getpwnam(user)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    data, log = folder / "data", folder / "postgres.log"

    def run(args: list[str]) -> None:
        result = subprocess.run(args, user=user, capture_output=True, text=True, timeout=120, check=False,
                                cwd=folder)
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {result.stdout}{result.stderr}{tail(log, 3000)}")

    started = False
    try:
        run([initdb, "-D", str(data), "-U", "cellmfg", "--auth=trust", "-E", "UTF8", "--no-instructions",
             *([] if fsync else ["--no-sync"])])
        options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={folder}"
        if not fsync:
            options += " -c fsync=off"
        run([pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"])
        started = True
        yield Cluster(port=port, folder=folder)
    finally:
        if started:
            mode = "fast" if not fsync else "immediate"
            stopped = subprocess.run([pg_ctl, "-D", str(data), "-m", mode, "-w", "-t", "30", "stop"], user=user,
                                     capture_output=True, timeout=60, check=False).returncode == 0
            pid_file = data / "postmaster.pid"
            if not stopped and pid_file.exists():  # this cluster's own postmaster, by the PID it recorded
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)
