"""Issue 22, the web and ops side: what an attacker on the lab network could do to /metrics, /models and the pages.

In process (fast tier): BentoML's request metrics get one series per route, never per client-chosen path (finding
1); /models shows no server path or credential (7); the docs at / load nothing from elsewhere and are readable in a
browser when a token is set, and the pages send CSP, framing and nosniff headers (9); `cellmfg serve` tells BentoML
not to report usage (9). With real servers (integration tier): two servers on one host keep their own metrics (5);
idle and half-sent-header connections are closed, and a worker holds a bounded number of connections (6).
"""

from __future__ import annotations

import os
import random
import re
import socket
import string
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY, generate_latest
from starlette.testclient import TestClient

from service.cli import server_environment
from service.engine.metrics import OTHER_ENDPOINT, RouteLabels
from service.engine.sources import BundleSource, RegistrySource, public_uri, without_credentials
from service.ui import UI_DIR
from service.web.open_paths import DOCS_PATHS
from testkit.fakes import example_rows, in_process_app

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TOKEN = "hardening-web-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXTERNAL_URL = re.compile(r"""(?:https?:)?//[\w.-]+\.[a-z]{2,}""")


@pytest.fixture(scope="module")
def guarded(bundle: Path) -> Iterator[TestClient]:
    """The in-process service with a token set in its environment, so its own security middleware (inside
    BentoML's metrics middleware, as in production) answers the 401s."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        for key in [k for k in os.environ if k.startswith("CELLMFG_") or k == "MLFLOW_TRACKING_URI"]:
            monkeypatch.delenv(key)
        monkeypatch.setenv("CELLMFG_BUNDLE", str(bundle))
        monkeypatch.setenv("CELLMFG_POLL_SECONDS", "0")
        monkeypatch.setenv("CELLMFG_API_TOKEN", TOKEN)
        monkeypatch.setenv("CELLMFG_LEDGER_URL", "off")  # no prediction ledger in ~/bentoml from a test
        with TestClient(in_process_app()) as client:
            yield client


def endpoint_series() -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    """Every sample of this process's Prometheus registry that has an `endpoint` label (BentoML's request metrics)."""
    return {(s.name, tuple(sorted(s.labels.items())))
            for family in REGISTRY.collect() for s in family.samples if "endpoint" in s.labels}


def random_paths(rng: random.Random, n: int) -> list[str]:
    """Paths an attacker might send: unknown, under real prefixes, nested, and one holding the token."""
    def word() -> str:
        return "".join(rng.choices(string.ascii_letters + string.digits + "-_~", k=rng.randint(1, 24)))

    shapes = ("/{}", "/predict/{}", "/ui/{}", "/static_content/{}", "/{}/{}/{}", "/predict/electrode/{}",
              "/models/{}", "/design/{}")
    return [rng.choice(shapes).format(word(), word(), word()) for _ in range(n)] + [f"/predict/electrode/{TOKEN}"]


# -- finding 1: /metrics does not grow with client-chosen paths

def test_random_paths_add_no_metric_series_and_no_path_reaches_a_label(guarded: TestClient) -> None:
    rng = random.Random(22)
    # One request of each kind first: a (route, status) pair met for the first time may add its series.
    for path in ("/nowhere", "/predict/nowhere", "/ui/nowhere", "/static_content/nowhere"):
        for method in ("GET", "POST"):
            for headers in ({}, AUTH):
                guarded.request(method, path, headers=headers)
    before = endpoint_series()
    paths = random_paths(rng, 1000)
    for i, path in enumerate(paths):
        response = guarded.request("GET" if i % 2 else "POST", path, headers=AUTH if i % 3 else {})
        assert 400 <= response.status_code < 500, (path, response.status_code)
    after = endpoint_series()
    assert after - before == set(), f"{len(after - before)} new series, e.g. {sorted(after - before)[:3]}"
    labels = {dict(series)["endpoint"] for _, series in after}
    assert OTHER_ENDPOINT in labels and "/predict/{model_name}" in labels
    leaked = {label for label in labels if TOKEN in label or label in paths[:-1]}
    assert not leaked, leaked
    # And in the exposition /metrics would send (in process it has no multiprocess directory to read from).
    assert TOKEN not in generate_latest(REGISTRY).decode()


def test_known_routes_keep_their_own_label_and_the_api_still_sees_the_real_path(guarded: TestClient) -> None:
    rows = example_rows("electrode", "nmc", 1)
    answer = guarded.post("/predict/electrode", json={"chemistry": "nmc", "rows": rows}, headers=AUTH)
    assert answer.status_code == 200, answer.text  # routed by its real path, not by its label
    named = guarded.post("/predict/density_nmc_onnx", json={"rows": rows}, headers=AUTH)
    assert named.status_code == 200, named.text
    counted = {(dict(series)["endpoint"], dict(series)["http_response_code"])
               for name, series in endpoint_series() if name.endswith("request_total")}
    assert {("/predict/electrode", "200"), ("/predict/{model_name}", "200")} <= counted


def test_route_labels_are_templates_exact_routes_first_everything_else_other() -> None:
    labels = RouteLabels(["/predict/electrode", "/predict/{model_name}", "/static_content/{asset}", "/models"])
    assert labels("/predict/electrode") == "/predict/electrode"
    assert labels("/predict/density_nmc_onnx") == "/predict/{model_name}"
    assert labels(f"/predict/{TOKEN}") == "/predict/{model_name}"
    assert labels("/predict/a/b") == OTHER_ENDPOINT
    assert labels("/models/x") == OTHER_ENDPOINT
    assert labels("/static_content/swagger-ui.css") == "/static_content/{asset}"
    assert labels.labels == {"/predict/electrode", "/predict/{model_name}", "/static_content/{asset}", "/models",
                             OTHER_ENDPOINT}


def test_every_route_of_the_service_is_its_own_label(guarded: TestClient) -> None:
    from service.service import route_templates

    labels = RouteLabels(route_templates())
    documented = guarded.get("/docs.json").json()["paths"]
    for path in [*documented, "/", "/docs.json", "/livez", "/readyz", "/metrics", "/models", "/ui/", "/docs"]:
        assert labels(path) in (path, "/predict/{model_name}"), path


def test_the_pinned_bentoml_and_uvicorn_are_the_code_the_fixes_were_written_for() -> None:
    # A fresh interpreter: this one has installed the patches already.
    check = ("from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware as M\n"
             "from uvicorn.protocols.http.auto import AutoHTTPProtocol\n"
             "from uvicorn.protocols.http.h11_impl import H11Protocol\n"
             "from cellmfg.patch_guard import source_sha256\n"
             "from service.web import patches\n"
             "assert source_sha256(M.__call__) == patches.METRICS_CALL_SHA256\n"
             "assert AutoHTTPProtocol is H11Protocol\n"
             "for name, sha256 in patches.H11_SOURCE_SHA256.items():\n"
             "    assert source_sha256(getattr(H11Protocol, name)) == sha256, name\n")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]


# -- finding 7: /models shows no server path and no credential

def test_models_shows_neither_the_bundle_path_nor_server_paths(guarded: TestClient, bundle: Path) -> None:
    listing = guarded.get("/models", headers=AUTH)
    assert listing.status_code == 200
    text = listing.text
    assert str(bundle) not in text and str(bundle.parent) not in text
    body = listing.json()
    assert body["source"] == f"bundle {bundle.name}"
    assert {m["source"] for m in body["models"]} == {f"{bundle.name}/{m['name']}.onnx" for m in body["models"]}
    # Kept: run ids, the git commit and data hashes identify a model's lineage and open nothing by themselves.
    assert all(m["lineage"]["run_id"] for m in body["models"])


@pytest.mark.parametrize("uri", ["https://alice:s3cret-pass@mlflow.lab:5000/api?token=s3cret-tok#s3cret-frag",
                                 "http://alice:s3cret-pass@10.0.0.5:5000"])
def test_a_registry_uri_never_shows_its_credentials(uri: str) -> None:
    source = RegistrySource(uri, "champion")
    for text in (source.description, source.public_description, source.redact(f"cannot reach {uri}: refused")):
        assert "s3cret" not in text and "alice" not in text, text
    assert "mlflow.lab:5000" in public_uri(uri) or "10.0.0.5:5000" in public_uri(uri)


def test_a_file_based_registry_is_named_by_its_scheme_and_a_bundle_by_its_folder_name(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    source = RegistrySource(uri, "champion")
    assert source.public_description == "MLflow registry sqlite store (alias 'champion')"
    assert str(tmp_path) not in source.redact(f"no such table in {uri}")
    assert without_credentials(uri) == uri  # the server's own log keeps the path (it has no credentials)
    bundle = BundleSource(tmp_path / "lab-bundle")
    assert bundle.public_description == "bundle lab-bundle"
    assert str(tmp_path) not in bundle.redact(f"{tmp_path}/lab-bundle/manifest.json: not valid")


# -- finding 9: the docs load nothing from elsewhere and open in a browser; the pages send security headers

def test_the_docs_page_has_no_tracker_and_loads_nothing_from_elsewhere(guarded: TestClient) -> None:
    page = guarded.get("/")
    assert page.status_code == 200 and 'id="swagger-ui"' in page.text
    assert "googletagmanager" not in page.text.lower() and "gtm" not in page.text.lower()
    assert not EXTERNAL_URL.findall(page.text), EXTERNAL_URL.findall(page.text)
    script = guarded.get("/ui/docs.js").text
    assert "validatorUrl: null" in script and not EXTERNAL_URL.findall(script)
    for asset in re.findall(r'(?:src|href)="\./([^"]+)"', page.text):
        assert guarded.get(f"/{asset}").status_code == 200, asset  # every asset is served here, without a token


def test_the_docs_open_in_a_browser_when_a_token_is_set_and_the_api_still_needs_it(guarded: TestClient) -> None:
    for path in DOCS_PATHS:
        assert guarded.get(path).status_code == 200, path  # a browser following "API docs" sends no token
    spec = guarded.get("/docs.json").json()
    assert "bearerAuth" in spec["components"]["securitySchemes"]  # Swagger's Authorize button asks for it
    assert guarded.get("/models").status_code == 401
    assert guarded.post("/predict/electrode", json={"chemistry": "nmc", "rows": []}).status_code == 401
    assert (UI_DIR / "index.html").read_text().count('href="../"') == 1  # the page's "API docs" link


@pytest.mark.parametrize("path", ["/ui/", "/ui/app.js", "/"])
def test_the_pages_send_csp_framing_and_nosniff_headers(guarded: TestClient, path: str) -> None:
    headers = guarded.get(path).headers
    policy = dict(part.strip().split(" ", 1) for part in headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'none'" and policy["script-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'" and policy["connect-src"] == "'self'"
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"


def test_the_page_needs_no_inline_script_or_style_its_policy_forbids() -> None:
    page = (UI_DIR / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page) and "<style" not in page
    assert not re.search(r"\sstyle=|\son[a-z]+=", page)
    assert ".style" not in (UI_DIR / "app.js").read_text()


def test_cellmfg_serve_tells_bentoml_not_to_report_usage() -> None:
    assert server_environment(base={})["BENTOML_DO_NOT_TRACK"] == "true"
    assert server_environment(base={"BENTOML_DO_NOT_TRACK": "false"})["BENTOML_DO_NOT_TRACK"] == "false"


# -- finding 5: two servers on one host keep their own metrics (real processes)

@pytest.mark.integration
def test_two_servers_on_one_host_keep_their_own_metrics(tmp_path: Path, bundle: Path) -> None:
    from testkit.processes import cellmfg_server, clean_env, metric, wait_for

    # One BENTOML_HOME for both, as two servers of one user: BentoML's shared metrics directory lived there.
    env = clean_env(BENTOML_HOME=str(tmp_path / "bentoml"), CELLMFG_POLL_SECONDS="0", TMPDIR=str(tmp_path))
    rows = example_rows("electrode", "nmc", 1)
    first = cellmfg_server(env, tmp_path / "first.log", bundle=bundle, port=3410).start()
    second = cellmfg_server(env, tmp_path / "second.log", bundle=bundle, port=3411)
    try:
        first.wait_ready(timeout=240)
        for _ in range(3):
            assert httpx.post(f"{first.url}/predict/electrode", json={"chemistry": "nmc", "rows": rows},
                              timeout=30).status_code == 200
        counted = metric(first.url, "cellmfg_predictions_total", model="density_nmc_onnx")
        assert counted == 3
        second.start().wait_ready(timeout=240)
        assert httpx.post(f"{second.url}/predict/electrode", json={"chemistry": "nmc", "rows": rows},
                          timeout=30).status_code == 200
        assert metric(first.url, "cellmfg_predictions_total", model="density_nmc_onnx") == 3, first.log_tail()
        assert metric(second.url, "cellmfg_predictions_total", model="density_nmc_onnx") == 1
        directories = sorted(tmp_path.glob("cellmfg-metrics-*"))
        assert len(directories) == 2 and all(any(d.iterdir()) for d in directories)
    finally:
        second.stop()
        first.stop()
    wait_for(lambda: not list(tmp_path.glob("cellmfg-metrics-*")), 30, "the servers to remove their metrics dirs")
    assert not (tmp_path / "bentoml" / "prometheus_multiproc_dir").exists()


# -- finding 6: slow-header connections are closed, and a worker holds a bounded number of them (real processes)

def _closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed `sock` (None if it was still open after `seconds`)."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - started


@pytest.mark.integration
def test_idle_and_half_sent_connections_are_closed_and_connections_are_limited(tmp_path: Path, bundle: Path) -> None:
    from testkit.processes import cellmfg_server, clean_env

    env = clean_env(BENTOML_HOME=str(tmp_path / "bentoml"), CELLMFG_POLL_SECONDS="0",
                    CELLMFG_HEADER_TIMEOUT_SECONDS="1", CELLMFG_MAX_CONNECTIONS="6")
    with cellmfg_server(env, tmp_path / "server.log", bundle=bundle, port=3412) as server:
        server.wait_ready(timeout=240)
        address = ("127.0.0.1", server.port)
        with socket.create_connection(address) as idle, socket.create_connection(address) as half:
            half.sendall(b"GET /livez HTTP/1.1\r\nHost: lab\r\nX-Slow: ")
            assert (_closed_within(idle, 8) or 99) < 4, "an idle connection stayed open"
            assert (_closed_within(half, 8) or 99) < 4, "a connection with half-sent headers stayed open"
        held = [socket.create_connection(address) for _ in range(6)]
        try:
            with socket.create_connection(address) as extra:
                assert (_closed_within(extra, 3) or 99) < 1, "a connection beyond the limit was kept"
        finally:
            for sock in held:
                sock.close()
        # Whole requests are answered as before, also on a kept-alive connection.
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for _ in range(3):
                assert client.get("/livez").status_code == 200
                time.sleep(0.5)
