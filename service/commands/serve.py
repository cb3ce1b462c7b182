"""`cellmfg serve`: start the prediction service under `bentoml serve`.

Only typer and the standard library are imported at module level, so `cellmfg --help` stays instant; the model
source is checked (and BentoML started) only when the command runs.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import typer

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SERVICE_TARGET = "service.service:CellMfgService"
SERVICE_NAME = "cellmfg"  # the name given in @bentoml.service; BentoML config is keyed by it


def server_environment(bundle: Path | None = None, workers: int = 1, alias: str | None = None,
                       base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment `bentoml serve` needs for these options, on top of `base` (default: this process's)."""
    env = dict(os.environ if base is None else base)
    if bundle is not None:
        env["CELLMFG_BUNDLE"] = str(Path(bundle).expanduser().resolve())
    if alias is not None:
        env["CELLMFG_ALIAS"] = alias
    # `bentoml serve` has no --workers flag in 1.4; the worker count is service config, overridable as JSON.
    overrides = json.loads(env.get("BENTOML_CONFIG_OVERRIDES") or "{}")
    overrides.setdefault("services", {}).setdefault(SERVICE_NAME, {})["workers"] = workers
    env["BENTOML_CONFIG_OVERRIDES"] = json.dumps(overrides)
    # BentoML reports usage to its makers unless told not to; an offline lab server should not call out (the image
    # sets it too). An operator's explicit choice is kept.
    env.setdefault("BENTOML_DO_NOT_TRACK", "true")
    return env


def server_command(port: int, host: str | None = None) -> list[str]:
    """argv that starts the service with this interpreter's BentoML, from the project root, with a Prometheus
    multiprocess directory of its own (`bentoml_serve`)."""
    command = [sys.executable, "-m", "service.cli", "serve", SERVICE_TARGET, "--port", str(port),
               "--working-dir", str(PROJECT_ROOT)]
    if host is not None:
        command += ["--host", host]
    return command


def bentoml_serve(argv: list[str]) -> None:
    """Run `bentoml <argv>` (BentoML's own command line) in this process with a fresh Prometheus multiprocess
    directory, removed when the server stops.

    BentoML 1.4 always uses $BENTOML_HOME/prometheus_multiproc_dir and empties it when a server starts: a second
    server on the same host deleted the first one's metric files, whose /metrics then showed a dead process's
    numbers. The directory is BentoML's `prometheus_multiproc_dir` setting, which only code can change; the
    supervisor hands it to every worker as PROMETHEUS_MULTIPROC_DIR. A server killed with SIGKILL leaves its
    (small) directory under the temp dir behind."""
    import shutil
    import tempfile

    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml_cli.cli import cli

    directory = tempfile.mkdtemp(prefix="cellmfg-metrics-")
    BentoMLContainer.prometheus_multiproc_dir.set(directory)
    try:
        cli.main(args=argv, prog_name="bentoml")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def check_source(env: Mapping[str, str]) -> str:
    """Fail fast, before BentoML starts workers that would crash one after another: the description of the
    model source and security settings the service will use, or ConfigError / SourceUnavailableError with the
    reason (which never contains the token)."""
    from service.engine.config import Settings
    from service.engine.sources import open_source
    from service.web.security import SecuritySettings

    security = SecuritySettings.from_env(env)  # a bad token setting would fail every worker's start-up
    return f"{open_source(Settings.from_env(env)).description}; {security.describe()}"


def serve(
    port: Annotated[int, typer.Option("--port", "-p", help="HTTP port to listen on.")] = 3000,
    bundle: Annotated[Path | None, typer.Option(
        help="Bundle directory to serve from (sets CELLMFG_BUNDLE). With MLFLOW_TRACKING_URI also set, the "
             "registry is preferred and the bundle is the fallback.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes, each with its own model sessions.")] = 1,
    alias: Annotated[str | None, typer.Option(
        envvar="CELLMFG_ALIAS",
        help="Registry alias to serve and follow (default: CELLMFG_ALIAS, else champion).")] = None,
) -> None:
    """Start the prediction service (BentoML + onnxruntime) on PORT.

    Models come from the MLflow registry (MLFLOW_TRACKING_URI) by ALIAS, or from a bundle directory; they are
    verified on load and hot-swapped when the alias moves (every CELLMFG_POLL_SECONDS, default 30). Swagger UI
    is at http://localhost:PORT/, metrics at /metrics.
    """
    from service.engine.config import ConfigError
    from service.engine.sources import SourceUnavailableError

    env = server_environment(bundle=bundle, workers=workers, alias=alias)
    try:
        source = check_source(env)
    except (ConfigError, SourceUnavailableError) as error:
        typer.echo(f"cellmfg serve: cannot start: {error}", err=True)
        raise typer.Exit(code=2) from error
    typer.echo(f"cellmfg serve: models from {source}; {workers} worker(s) on port {port}", err=True)
    command = server_command(port)
    os.chdir(PROJECT_ROOT)
    # exec, not a child: signals (Ctrl-C, SIGTERM from an orchestrator) reach BentoML's supervisor directly (it runs
    # in the exec'd process, `bentoml_serve`).
    os.execve(command[0], command, env)
