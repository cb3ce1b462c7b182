"""Deployment, with real parts: the Docker image, the compose file, MLflow on PostgreSQL, Prometheus.

- The Docker smoke test (scripts/docker_smoke.sh): build, run, /readyz, the README's example request, /metrics.
- A real PostgreSQL (initdb/pg_ctl in a temporary folder, free port) under a real `mlflow server` (artefacts proxied
  by the server), then train (quick preset) -> promote -> serve against it over HTTP: predictions equal the
  registered ONNX models' own, promotions and a rollback are picked up while serving, and the image built by the
  smoke test serves the same registry over HTTP with no file shared.
- A real Prometheus with deploy/prometheus.yml and its alert rules scraping a running service; a project metric
  and every Grafana dashboard query read back through Prometheus's HTTP API.
- `docker-compose config` accepts docker-compose.yml; `bentoml build` packages the service and a bundle; the
  README's deployment section shows the example request the smoke test posts and lists every setting.

Every server is started here on a free loopback port in a temporary folder and stopped by its own PID (or its own
process group) in a finalizer. Missing tools are installed by scripts/integration_deps.sh when this machine can
(root and apt-get); a test skips only when that is impossible, and says why.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import numpy as np
import pytest
import yaml

from cellmfg.domain import TASKS
from service.engine.config import SERVED_MODEL_NAMES
from testkit.fakes import example_rows, served_prediction, write_fake_bundle
from testkit.postgres import pg_binary, postgres_cluster
from testkit.processes import (
    PROJECT_ROOT,
    VENV_BIN,
    ServerProcess,
    cellmfg_server,
    clean_env,
    docker_container,
    free_port,
    metric,
    mlflow_server,
    wait_for,
)

pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")]

DEPS_SCRIPT = PROJECT_ROOT / "scripts" / "integration_deps.sh"
SMOKE_IMAGE = "cellmfg:deploy-test"
POLL_SECONDS = 1.0


# ---------------------------------------------------------------------------------------------------------------
# Helpers


_deps_ran = False


def _ensure_tools() -> None:
    """Run scripts/integration_deps.sh once per session, when anything it installs is missing."""
    global _deps_ran
    if _deps_ran:
        return
    _deps_ran = True
    if not (pg_binary("pg_ctl") and shutil.which("prometheus") and shutil.which("docker-compose")):
        subprocess.run(["bash", str(DEPS_SCRIPT)], cwd=PROJECT_ROOT, timeout=900, check=False)


def _tool(name: str, finder: Callable[[str], str | None] = shutil.which) -> str:
    path = finder(name)
    if path is None:
        _ensure_tools()
        path = finder(name)
    if path is None:
        pytest.skip(f"{name} is not installed and scripts/integration_deps.sh could not install it here "
                    "(needs root and apt-get)")
    return path


def _cli(args: list[str], env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "cellmfg"), *args], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def _last_json(result: subprocess.CompletedProcess[str]) -> Any:
    lines = [line for line in result.stdout.splitlines() if line.strip().startswith(("{", "["))]
    assert lines, f"no JSON on stdout (exit {result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return json.loads(lines[-1])


def _models(url: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/models", timeout=10)
    response.raise_for_status()
    return dict(response.json())


def _served_versions(url: str) -> dict[str, str]:
    return {m["name"]: m["version"] for m in _models(url)["models"]}


def _validation_mape(tracking_uri: str, name: str, version: str) -> float:
    """The validation MAPE logged by the run of a registered version (what `registry promote` chooses by)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)  # not a registry another test set
    metrics = client.get_run(client.get_model_version(name, version).run_id).data.metrics
    return float(metrics.get("validation_mape_pct", float("inf")))


def _onnx_predictions(tracking_uri: str, name: str, rows: list[dict[str, float]]) -> tuple[str, np.ndarray]:
    """What the ONNX model behind `champion` predicts for `rows`, computed here from the registry, not the service."""
    from cellmfg.contract import fetch_registered

    with mock.patch.dict(os.environ, {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}):  # no bars in test output
        model = fetch_registered(tracking_uri, name, "champion")
    x = np.array([[row[f] for f in model.contract.feature_names] for row in rows])
    return model.version, served_prediction(model, x)


# ---------------------------------------------------------------------------------------------------------------
# Docker image (runs first: the MLflow tests below reuse the image it builds)


def _docker_engine_up() -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "info"], capture_output=True, timeout=60, check=False).returncode == 0


@pytest.fixture(scope="session")
def smoke_image() -> Iterator[dict[str, Any]]:
    """scripts/docker_smoke.sh, once: its outcome and the tag of the image it left. A Docker engine that the
    script's helper started for this session is stopped at the end, by the PID it recorded."""
    helper = PROJECT_ROOT.parent / "shared" / "tools" / "local-base-image.sh"
    engine_was_up = _docker_engine_up()
    if not helper.exists() and not engine_was_up:
        pytest.skip("no Docker engine answers and there is no ../shared/tools/local-base-image.sh to start one")
    if not engine_was_up and os.geteuid() != 0 and shutil.which("dockerd") is None:
        pytest.skip("../shared/tools/local-base-image.sh needs root to install and start a Docker engine")
    started = time.monotonic()
    try:
        result = subprocess.run(["bash", "scripts/docker_smoke.sh"], cwd=PROJECT_ROOT, capture_output=True,
                                text=True, env=clean_env(IMAGE=SMOKE_IMAGE, KEEP_DOCKER_ENGINE="1"),
                                timeout=1800, check=False)
        yield {"result": result, "seconds": time.monotonic() - started, "image": SMOKE_IMAGE}
    finally:
        pid_file = Path("/var/run/docker.pid")
        if not engine_was_up and pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError, PermissionError):
                pid = int(pid_file.read_text().strip())
                os.kill(pid, signal.SIGTERM)
                wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout=60, what="dockerd to stop")


@pytest.mark.timeout(1900)
def test_docker_smoke_builds_serves_and_reports_size_and_time_to_ready(smoke_image: dict[str, Any]) -> None:
    result = smoke_image["result"]
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"scripts/docker_smoke.sh failed:\n{output[-5000:]}"
    summary = re.search(r"docker-smoke: PASS image \S+ (\d+) MB \(limit (\d+) MB\), built in (\d+) s, "
                        r"ready in ([\d.]+) s", output)
    assert summary, output[-3000:]
    image_mb, limit_mb, build_s, ready_s = (float(g) for g in summary.groups())
    assert image_mb < limit_mb <= 450  # ~399 MB: no shap, numba, TensorFlow or onnx package in the image
    print(f"\ndocker smoke: {image_mb:.0f} MB image, built in {build_s:.0f} s, ready in {ready_s} s "
          f"(whole script {smoke_image['seconds']:.0f} s)")


def _image_available(smoke_image: dict[str, Any]) -> bool:
    return smoke_image["result"].returncode == 0 and subprocess.run(
        ["docker", "image", "inspect", smoke_image["image"]], capture_output=True, check=False).returncode == 0


# ---------------------------------------------------------------------------------------------------------------
# docker-compose.yml


@pytest.mark.timeout(120)
def test_docker_compose_config_accepts_the_stack() -> None:
    compose = _tool("docker-compose")
    quiet = subprocess.run([compose, "config", "-q"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                           env=clean_env(), timeout=60, check=False)
    assert quiet.returncode == 0, quiet.stderr
    resolved = subprocess.run([compose, "config"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              env=clean_env(), timeout=60, check=True).stdout
    services = yaml.safe_load(resolved)["services"]
    assert set(services) == {"postgres", "mlflow", "cellmfg", "haproxy", "prometheus", "grafana"}
    mlflow_args = " ".join(services["mlflow"]["command"])
    assert "--backend-store-uri=postgresql+psycopg://" in mlflow_args and "--serve-artifacts" in mlflow_args
    assert services["cellmfg"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert services["cellmfg"]["build"]["context"] == str(PROJECT_ROOT)
    assert services["cellmfg"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    # Replicas publish no host port (so `--scale cellmfg=3` cannot collide); HAProxy owns the API port.
    assert "ports" not in services["cellmfg"]
    assert services["haproxy"]["build"]["context"] == str(PROJECT_ROOT / "deploy" / "haproxy")
    (published,) = services["haproxy"]["ports"]
    assert (str(published["published"]), str(published["target"])) == ("3000", "3000")
    mounts = " ".join(services["prometheus"]["volumes"] if isinstance(services["prometheus"]["volumes"][0], str)
                      else [f"{v['source']}:{v['target']}" for v in services["prometheus"]["volumes"]])
    assert "deploy/prometheus.yml" in mounts and "deploy/cellmfg-rules.yml" in mounts


def _deploy_docs() -> str:
    """The deployment section of README.md."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert "\n## Deploy" in readme, "README.md has no Deploy section"
    return readme.split("\n## Deploy", 1)[1]


def test_the_readme_documents_the_example_request_and_every_setting() -> None:
    """The smoke test posts service.formats.schemas.EXAMPLE_INPUT: the README's curl example must be that request, and
    its table must list every variable the service, the image and the compose stack read."""
    from service.engine.config import Settings
    from service.formats.schemas import EXAMPLE_INPUT

    docs = _deploy_docs()
    example = re.search(r"/predict/electrode .*?-d '(\{.*?\})'", docs, re.S)
    assert example, "no curl example for /predict/electrode"
    assert json.loads(example.group(1)) == EXAMPLE_INPUT
    table = {m.group(1) for m in re.finditer(r"^\| `([A-Z_]+)` \|", docs, re.M)}
    from_service = set(re.findall(r"\b(CELLMFG_[A-Z_]+|MLFLOW_TRACKING_URI)\b", Settings.__doc__ or ""))
    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    from_compose = set(compose["services"]["cellmfg"]["environment"])
    from_image = set(re.findall(r"\$\{(CELLMFG_[A-Z_]+|BENTOML_[A-Z_]+)", (PROJECT_ROOT / "deploy" /
                                                                         "entrypoint.sh").read_text()))
    assert from_service and from_service | from_compose | from_image <= table, \
        sorted((from_service | from_compose | from_image) - table)


# ---------------------------------------------------------------------------------------------------------------
# PostgreSQL + MLflow server: train -> promote -> serve over HTTP


@pytest.fixture(scope="module")
def postgres() -> Iterator[dict[str, Any]]:
    """A throwaway PostgreSQL cluster on a free loopback port, with a database `mlflow` (fsync off: durability is
    not what these tests check)."""
    initdb, pg_ctl = _tool("initdb", pg_binary), _tool("pg_ctl", pg_binary)
    _ensure_tools()
    with postgres_cluster(initdb, pg_ctl, free_port(), fsync=False) as cluster:
        cluster.create_database("mlflow")
        # The driver named explicitly, as in docker-compose.yml: SQLAlchemy's default for postgresql:// changed.
        yield {"port": cluster.port, "uri": cluster.url("mlflow", driver="psycopg"), "folder": cluster.folder}


@pytest.fixture(scope="module")
def tracking_server(postgres: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`mlflow server` on the PostgreSQL store; artefacts proxied by the server (clients never see its files)."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    artifacts = folder / "artifacts"
    server = mlflow_server(folder, postgres["uri"], ["--serve-artifacts", "--artifacts-destination",
                                                     artifacts.as_uri()]).start()
    try:
        server.wait_ready(timeout=240, interval=0.5)
        yield {"url": server.url, "artifacts": artifacts, "server": server, "postgres": postgres}
    finally:
        server.stop()


@pytest.fixture(scope="module")
def registry_stack(tracking_server: dict[str, Any],
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Train all eight models (quick preset) and a second density_graphite, promote the worse of the two, and
    start the service on the registry: it serves that one model and waits for the others."""
    uri = tracking_server["url"]
    env = clean_env(MLFLOW_TRACKING_URI=uri, TF_CPP_MIN_LOG_LEVEL="3", MLFLOW_DISABLE_TELEMETRY="true")
    timings: dict[str, float] = {}

    started = time.monotonic()
    trained = _cli(["train", "all", "--preset", "quick", "--json"], env, timeout=1500)
    assert trained.returncode == 0, trained.stderr[-5000:]
    timings["train all --preset quick"] = time.monotonic() - started
    started = time.monotonic()
    second = _cli(["train", "pretrain", "--data", "data/graphite.csv", "--target", "density_g_cm3",
                   "--name", "density_graphite", "--preset", "quick", "--seed", "7", "--json"], env, timeout=600)
    assert second.returncode == 0, second.stderr[-5000:]
    timings["train pretrain (second density_graphite)"] = time.monotonic() - started

    listing = _last_json(_cli(["registry", "list", "--json"], env, timeout=300))
    versions = next(row["versions"] for row in listing if row["name"] == "density_graphite")
    assert len(versions) == 2, versions
    # `promote` picks the lowest validation MAPE of the version's run (ties: the newer version); promote the other
    # one first, by hand.
    best = min(versions, key=lambda v: (_validation_mape(uri, "density_graphite", v["version"]), -int(v["version"])))
    worse = next(v for v in versions if v is not best)
    started = time.monotonic()
    first = _cli(["registry", "promote", "--model", "density_graphite", "--version", worse["version"], "--json"],
                 env, timeout=600)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-5000:]
    timings["promote one model"] = time.monotonic() - started

    print("\nregistry stack timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    home = tmp_path_factory.mktemp("bentoml-home")
    service_env = clean_env(MLFLOW_TRACKING_URI=uri, CELLMFG_POLL_SECONDS=str(POLL_SECONDS),
                             BENTOML_HOME=str(home), MLFLOW_DISABLE_TELEMETRY="true")
    service = cellmfg_server(service_env, home / "service.log", workers=1)
    with service:
        wait_for(lambda: "density_graphite_onnx" in _served_versions(service.url), timeout=180,
                  what="the service to load density_graphite_onnx from the registry",
                  on_timeout=lambda: service.log_tail())
        yield {"uri": uri, "env": env, "service": service, "keras": {"best": best, "worse": worse},
               "timings": timings, "mlflow": tracking_server}
    print("\nregistry stack timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))


@pytest.mark.timeout(4200)  # with the fixture's training
def test_the_service_follows_the_registry_first_champion_then_promote_all_then_rollback(
        registry_stack: dict[str, Any]) -> None:
    """One life of a registry while the service serves it, in the order it happens: the first champion alone is
    the whole catalogue; `promote --all` adds the others and replaces it by the better version; a rollback brings
    the first back. Each step checks the answers against the registered ONNX models' own."""
    url, uri, env = registry_stack["service"].url, registry_stack["uri"], registry_stack["env"]

    # 1. The first champion is served, and the service is ready with it.
    described = _models(url)
    assert described["source"].startswith(f"MLflow registry {uri}")
    served = {m["name"]: m for m in described["models"]}
    assert set(served) == {"density_graphite_onnx"}
    assert served["density_graphite_onnx"]["version"] == "1"
    assert served["density_graphite_onnx"]["lineage"]["keras_model_version"] == registry_stack["keras"]["worse"][
        "version"]
    # The open catalogue: the one promoted model is the whole catalogue, loaded, so the service is ready.
    assert described["ready"] is True and described["missing"] == {}
    assert described["datasets"] == {"electrode": ["graphite"], "gdl": []}
    assert httpx.get(f"{url}/livez", timeout=5).status_code == 200
    assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200

    # 2. `promote --all` is picked up while serving; predictions equal the registered ONNX models'.
    started = time.monotonic()
    promoted = _cli(["registry", "promote", "--all", "--json"], env, timeout=900)
    registry_stack["timings"]["promote --all"] = time.monotonic() - started
    report = _last_json(promoted)
    # A gate may refuse a model (e.g. a 5-epoch transfer not better than zero-shot): then the exit code says so and
    # that model has no champion. Everything promoted must be served; the pretrained nets always pass.
    assert promoted.returncode == (1 if report["failed"] else 0), promoted.stderr[-3000:]
    failed = {f["name"] for f in report["failed"]}
    assert not failed & {"density_graphite", "mass_loading_graphite", "tortuosity_gdl200"}, report["failed"]
    expected = {f"{r['name']}_onnx": r["onnx_version"] for r in report["promoted"]}
    assert expected["density_graphite_onnx"] == "2", report  # the better Keras version, a new ONNX version

    wait_for(lambda: _served_versions(url) == expected, timeout=120,
             what=f"the service to serve {expected}", on_timeout=lambda: f"served {_served_versions(url)}")
    swapped_after = time.monotonic() - started
    assert metric(url, "cellmfg_model_reloads_total", model="density_graphite_onnx") >= 1
    assert metric(url, "cellmfg_model_info", model="density_graphite_onnx", version="2", alias="champion") == 1
    described = _models(url)
    # A model refused by a gate has no champion, so it is not in the catalogue: nothing is missing, all is ready.
    assert described["ready"] is True and described["missing"] == {}
    assert not {f"{name}_onnx" for name in failed} & set(_served_versions(url))
    assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200

    rows = example_rows("electrode", "graphite", 6, seed=3)
    answer = httpx.post(f"{url}/predict/electrode", json={"chemistry": "graphite", "rows": rows}, timeout=60)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    for task, column in (("density", "density_g_cm3"), ("mass_loading", "mass_loading_mg_cm2")):
        version, expected_values = _onnx_predictions(uri, f"{task}_graphite_onnx", rows)
        assert body["models"][task] == {"name": f"{task}_graphite_onnx", "version": version, "alias": "champion"}
        np.testing.assert_allclose([p[column] for p in body["predictions"]], expected_values, rtol=1e-6)
    gdl_rows = example_rows("gdl", "gdl200", 4, seed=5)
    answer = httpx.post(f"{url}/predict/gdl", json={"dataset": "gdl200", "rows": gdl_rows}, timeout=60)
    assert answer.status_code == 200, answer.text
    version, expected_values = _onnx_predictions(uri, "tortuosity_gdl200_onnx", gdl_rows)
    assert answer.json()["models"]["tortuosity"]["version"] == version
    np.testing.assert_allclose([p["tortuosity"] for p in answer.json()["predictions"]], expected_values, rtol=1e-6)
    print(f"\npromote --all: {len(expected)} promoted, refused: {sorted(failed) or 'none'}; all served "
          f"{swapped_after:.0f} s after the promotion started")

    # 3. A rollback is picked up while serving.
    before = metric(url, "cellmfg_model_reloads_total", model="density_graphite_onnx")
    rolled = _cli(["registry", "rollback", "--model", "density_graphite", "--json"], env, timeout=300)
    assert rolled.returncode == 0, rolled.stderr[-3000:]
    assert _last_json(rolled)["champion"] == "1"
    wait_for(lambda: _served_versions(url).get("density_graphite_onnx") == "1", timeout=60,
             what="the service to swap density_graphite_onnx back to version 1")
    assert metric(url, "cellmfg_model_reloads_total", model="density_graphite_onnx") == before + 1
    rows = example_rows("electrode", "graphite", 3, seed=4)
    body = httpx.post(f"{url}/predict/electrode", json={"chemistry": "graphite", "rows": rows}, timeout=60).json()
    version, expected_values = _onnx_predictions(uri, "density_graphite_onnx", rows)
    assert version == "1" and body["models"]["density"]["version"] == "1"
    np.testing.assert_allclose([p["density_g_cm3"] for p in body["predictions"]], expected_values, rtol=1e-6)


@pytest.mark.timeout(300)
def test_mlflow_keeps_runs_and_models_in_postgres_and_artefacts_behind_the_server(
        registry_stack: dict[str, Any]) -> None:
    import psycopg
    from mlflow import MlflowClient

    postgres = registry_stack["mlflow"]["postgres"]
    with psycopg.connect(host="127.0.0.1", port=postgres["port"], user="cellmfg", dbname="mlflow") as connection:
        names = {row[0] for row in connection.execute("SELECT name FROM registered_models").fetchall()}
        (runs,) = connection.execute("SELECT count(*) FROM runs").fetchone() or (0,)
    assert {"density_graphite", "density_graphite_onnx", "tortuosity_gdl1000"} <= names and runs >= len(TASKS)
    client = MlflowClient(tracking_uri=registry_stack["uri"])
    locations = {e.artifact_location for e in client.search_experiments() if e.name.startswith("cellmfg-")}
    assert locations and all(loc.startswith("mlflow-artifacts:") for loc in locations), locations
    assert any(registry_stack["mlflow"]["artifacts"].rglob("*.onnx"))


@pytest.mark.timeout(600)
def test_the_image_serves_the_registry_over_http(registry_stack: dict[str, Any],
                                                 smoke_image: dict[str, Any]) -> None:
    """The image built by the smoke test, with MLFLOW_TRACKING_URI set: models come from the registry over HTTP
    (the registry is preferred over the baked-in bundle); the container shares no file with the MLflow server."""
    if not _image_available(smoke_image):
        pytest.skip("the Docker smoke test did not leave an image (see its failure)")
    url, uri = registry_stack["service"].url, registry_stack["uri"]
    expected = _served_versions(url)
    port = free_port()
    name = f"cellmfg-deploy-test-{os.getpid()}"
    with docker_container(name, ["-e", "BENTOML_HOST=127.0.0.1", "-e", f"BENTOML_PORT={port}",
                                 "-e", f"MLFLOW_TRACKING_URI={uri}", "-e", "CELLMFG_POLL_SECONDS=2",
                                 smoke_image["image"]]):
        container = f"http://127.0.0.1:{port}"

        def logs() -> str:
            return subprocess.run(["docker", "logs", "--tail", "40", name], capture_output=True, text=True,
                                  check=False).stdout

        wait_for(lambda: _served_versions(container) == expected, timeout=180,
                  what=f"the container to serve {expected}", on_timeout=logs)
        assert _models(container)["source"].startswith(f"MLflow registry {uri}")
        rows = example_rows("gdl", "gdl200", 3, seed=8)
        body = httpx.post(f"{container}/predict/gdl", json={"dataset": "gdl200", "rows": rows}, timeout=60).json()
        _, expected_values = _onnx_predictions(uri, "tortuosity_gdl200_onnx", rows)
        np.testing.assert_allclose([p["tortuosity"] for p in body["predictions"]], expected_values, rtol=1e-6)


@pytest.mark.timeout(1200)
def test_the_compose_mlflow_image_runs_on_postgres_with_proxied_artefacts(postgres: dict[str, Any],
                                                                          smoke_image: dict[str, Any]) -> None:
    """deploy/mlflow/Dockerfile (the compose stack's MLflow), built and run against the test PostgreSQL: a client
    logs a run and an artefact over HTTP, and the artefact lands in the container's artefact volume."""
    import psycopg
    from mlflow import MlflowClient

    if not _image_available(smoke_image):
        pytest.skip("no Docker engine (see the Docker smoke test)")
    helper = PROJECT_ROOT.parent / "shared" / "tools" / "local-base-image.sh"
    base = os.environ.get("BASE_IMAGE") or (subprocess.run(["bash", str(helper)], capture_output=True, text=True,
                                                           check=True, timeout=600).stdout.strip()
                                            if helper.exists() else "")
    image = "cellmfg-mlflow:deploy-test"
    build = ["docker", "build", "--network", "host", "-t", image] + (["--build-arg", f"BASE_IMAGE={base}"] if base
                                                                     else []) + ["deploy/mlflow"]
    built = subprocess.run(build, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=1100, check=False)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    with psycopg.connect(host="127.0.0.1", port=postgres["port"], user="cellmfg", dbname="postgres",
                         autocommit=True) as connection:
        connection.execute("CREATE DATABASE mlflow_image")
    port, name = free_port(), f"cellmfg-mlflow-test-{os.getpid()}"
    with docker_container(name, [image, "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                                 "--backend-store-uri",
                                 f"postgresql+psycopg://cellmfg@127.0.0.1:{postgres['port']}/mlflow_image",
                                 "--serve-artifacts", "--artifacts-destination", "/mlflow/artifacts"]):
        url = f"http://127.0.0.1:{port}"

        def logs() -> str:
            return subprocess.run(["docker", "logs", "--tail", "30", name], capture_output=True, text=True,
                                  check=False).stdout

        wait_for(lambda: httpx.get(f"{url}/health", timeout=5).status_code == 200, timeout=180,
                  what="the MLflow container's /health", interval=0.5, on_timeout=logs)
        # The client API with an explicit URI: MLflow's fluent API would leave a global active experiment behind.
        client = MlflowClient(tracking_uri=url)
        experiment_id = client.create_experiment("cellmfg-image-check")
        run = client.create_run(experiment_id)
        note = Path(tempfile.mkdtemp()) / "note.txt"
        note.write_text("stored behind the server")
        client.log_artifact(run.info.run_id, str(note))
        client.set_terminated(run.info.run_id)
        assert client.get_experiment(experiment_id).artifact_location.startswith("mlflow-artifacts:")
        stored = subprocess.run(["docker", "exec", name, "find", "/mlflow/artifacts", "-name", "note.txt"],
                                capture_output=True, text=True, check=True, timeout=60).stdout
        assert run.info.run_id in stored, stored
        assert subprocess.run(["docker", "exec", name, "id", "-u"], capture_output=True, text=True,
                              check=True, timeout=60).stdout.strip() != "0"


# ---------------------------------------------------------------------------------------------------------------
# bentofile.yaml


@pytest.mark.timeout(300)
def test_bentoml_build_packages_the_service_and_a_bundle_that_it_then_serves(tmp_path: Path) -> None:
    """`bentoml build` with the project's bentofile.yaml on a copy of what a clone has after the main job (the
    bundle here is the fakes'), in a private BentoML home; then `bentoml serve` of the built Bento."""
    context = tmp_path / "clone"
    for folder in ("cellmfg", "service"):
        shutil.copytree(PROJECT_ROOT / folder, context / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (context / "requirements").mkdir()
    shutil.copy(PROJECT_ROOT / "requirements" / "serve.lock", context / "requirements" / "serve.lock")
    shutil.copy(PROJECT_ROOT / "bentofile.yaml", context / "bentofile.yaml")
    write_fake_bundle(context / "bundle")
    home = tmp_path / "bentoml-home"
    env = clean_env(BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="true")
    built = subprocess.run([str(VENV_BIN / "bentoml"), "build", "--output", "tag", str(context)], cwd=context,
                           env=env, capture_output=True, text=True, timeout=240, check=False)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    bento = next((home / "bentos" / "cellmfg").glob("*/bento.yaml")).parent
    packaged = {str(p.relative_to(bento / "src")) for p in (bento / "src").rglob("*") if p.is_file()}
    assert {"service/service.py", "cellmfg/contract.py", "bundle/manifest.json",
            "bundle/density_nmc_onnx.onnx"} <= packaged
    assert not [p for p in packaged if p.startswith(("training/", "registry/", "tests/", "data/"))]
    requirements = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "onnxruntime==" in requirements and "tensorflow" not in requirements

    port = free_port()
    server = ServerProcess("bentoml serve", [str(VENV_BIN / "bentoml"), "serve", "cellmfg:latest", "--host",
                                             "127.0.0.1", "--port", str(port)],
                           tmp_path / "bento-serve.log", port, env={**env, "CELLMFG_BUNDLE": "bundle"},
                           cwd=tmp_path).start()
    try:
        url = server.url
        server.wait_ready(timeout=120, interval=0.25)
        assert _models(url)["source"] == "bundle bundle"  # the folder's name: /models shows no server path
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------------------------
# Prometheus with the project's scrape configuration


@pytest.fixture(scope="module")
def bundle_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("prometheus-target")
    bundle = write_fake_bundle(folder / "bundle")
    env = clean_env(BENTOML_HOME=str(folder / "bentoml-home"))
    service = cellmfg_server(env, folder / "service.log", workers=1, bundle=bundle)
    with service:
        service.wait_ready(timeout=180)
        yield service


def _prometheus_config(service_port: int, own_port: int) -> dict[str, Any]:
    """deploy/prometheus.yml with the cellmfg job pointed at the test service and 1 s intervals."""
    config = yaml.safe_load((PROJECT_ROOT / "deploy" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"cellmfg", "prometheus"}
    cellmfg = jobs["cellmfg"]
    assert cellmfg.pop("dns_sd_configs"), "the cellmfg job discovers replicas by DNS"
    cellmfg.update(static_configs=[{"targets": [f"127.0.0.1:{service_port}"]}], scrape_interval="1s",
                   scrape_timeout="1s")
    jobs["prometheus"]["static_configs"] = [{"targets": [f"127.0.0.1:{own_port}"]}]
    return dict(config)


@pytest.fixture(scope="module")
def prometheus(bundle_service: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = _tool("prometheus")
    folder = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    (folder / "prometheus.yml").write_text(yaml.safe_dump(_prometheus_config(bundle_service.port, port)))
    shutil.copy(PROJECT_ROOT / "deploy" / "cellmfg-rules.yml", folder / "cellmfg-rules.yml")
    daemon = ServerProcess("prometheus", [
        binary, f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
    ], folder / "prometheus.log", port, cwd=folder, ready_path="/-/ready").start()
    try:
        daemon.wait_ready(timeout=60, interval=0.25)
        yield daemon.url
    finally:
        daemon.stop()


def _query(prometheus_url: str, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert body["status"] == "success", (expr, body)
    return list(body["data"]["result"])


@pytest.mark.timeout(120)
def test_prometheus_config_and_alert_rules_pass_promtool() -> None:
    promtool = _tool("promtool")
    for args in (["check", "config", "deploy/prometheus.yml"], ["check", "rules", "deploy/cellmfg-rules.yml"]):
        result = subprocess.run([promtool, *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
                                check=False)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(300)
def test_prometheus_scrapes_the_service_and_reads_back_project_metrics(bundle_service: ServerProcess,
                                                                      prometheus: str) -> None:
    url = bundle_service.url
    body = {"chemistry": "nmc", "rows": example_rows("electrode", "nmc", 3, seed=1)}
    body["rows"][0]["roll_gap_um"] = 290.0  # outside NMC's training range: counted as out of domain
    for _ in range(5):
        assert httpx.post(f"{url}/predict/electrode", json=body, timeout=60).status_code == 200
    gdl = {"dataset": "gdl1000", "rows": example_rows("gdl", "gdl1000", 2), "explain": True}
    assert httpx.post(f"{url}/predict/gdl", json=gdl, timeout=120).status_code == 200

    def scraped() -> list[dict[str, Any]]:
        result = _query(prometheus, 'cellmfg_predictions_total{job="cellmfg", model="density_nmc_onnx"}')
        return result if result and float(result[0]["value"][1]) >= 5 else []

    result = wait_for(scraped, timeout=60, what="cellmfg_predictions_total >= 5 in Prometheus")
    assert result[0]["metric"]["version"] == "1"
    assert result[0]["metric"]["instance"] == f"127.0.0.1:{bundle_service.port}"
    rows = _query(prometheus, 'sum(cellmfg_predicted_rows_total{job="cellmfg", model="density_nmc_onnx"})')
    assert float(rows[0]["value"][1]) >= 15
    out_of_domain = _query(prometheus, 'cellmfg_out_of_domain_rows_total{model="density_nmc_onnx", '
                                       'feature="roll_gap_um"}')
    assert float(out_of_domain[0]["value"][1]) >= 5
    assert float(_query(prometheus, 'up{job="cellmfg"}')[0]["value"][1]) == 1
    served = _query(prometheus, 'count(cellmfg_model_info{job="cellmfg"} == 1)')
    assert float(served[0]["value"][1]) == len(SERVED_MODEL_NAMES)
    catalogue = {r["metric"]["state"]: float(r["value"][1])
                 for r in _query(prometheus, 'cellmfg_catalogue_models{job="cellmfg"}')}
    assert catalogue == {"served": len(SERVED_MODEL_NAMES), "missing": 0}, catalogue

    def health() -> dict[str, str]:
        targets = httpx.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        return {t["labels"]["job"]: t["health"] for t in targets}

    # A target reads "unknown" until its first scrape (Prometheus scrapes itself on its own schedule).
    wait_for(lambda: "unknown" not in health().values(), timeout=60, what="every target's first scrape",
             on_timeout=lambda: str(health()))
    assert health() == {"cellmfg": "up", "prometheus": "up"}
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert {"CellmfgReplicaDown", "CellmfgModelsMissing", "CellmfgModelVersionRejected", "CellmfgServerErrors",
            "CellmfgManyOutOfDomainInputs"} <= set(rules)
    assert all(rule["health"] in ("ok", "unknown") for rule in rules.values()), rules
    for name in ("CellmfgReplicaDown", "CellmfgModelsMissing", "CellmfgServerErrors"):
        assert rules[name]["state"] == "inactive", rules[name]


@pytest.mark.timeout(300)
def test_every_grafana_dashboard_query_runs_in_prometheus(bundle_service: ServerProcess, prometheus: str) -> None:
    dashboard = json.loads((PROJECT_ROOT / "deploy" / "grafana" / "dashboards" / "cellmfg.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(exprs) >= 10
    body = {"chemistry": "si_gra", "rows": example_rows("electrode", "si_gra", 2)}
    assert httpx.post(f"{bundle_service.url}/predict/electrode", json=body, timeout=60).status_code == 200
    wait_for(lambda: _query(prometheus, 'cellmfg_predictions_total{model="density_si_gra_onnx"}'), timeout=60,
              what="the si_gra prediction in Prometheus")
    # A rate needs two scrapes of the series: the dashboard's rate panels show data once this one does.
    wait_for(lambda: _query(prometheus, 'rate(cellmfg_predicted_rows_total{job="cellmfg", '
                                        'model="density_si_gra_onnx"}[5m])'), timeout=60,
             what="a 5-minute rate of the si_gra rows")
    empty = []
    for expr in exprs:
        if not _query(prometheus, expr):  # each one parses and evaluates (status success)
            empty.append(expr)
    # Rates over 5 minutes need two scrapes of a changed counter; the always-present series must show data now.
    for must in ("up{", "cellmfg_model_info", "cellmfg_predicted_rows_total"):
        assert not [e for e in empty if must in e], f"no data for {[e for e in empty if must in e]}"
