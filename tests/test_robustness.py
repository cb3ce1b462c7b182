"""Robustness and the lab-server security baseline: bad input, bearer-token auth, body-size limit, what the image
and the serving lock hold, and a short soak.

Fast tier (in-process): `service.web.security.SecurityMiddleware` alone on a tiny ASGI app, then around the service's
own ASGI app with its lifespan (fake ONNX models), where the whole bad-input catalogue (testkit.bad_inputs, which
scripts/soak.py mixes into its load too) is sent and the service must keep answering exactly as onnxruntime does.
Integration tier: the same against a real `bentoml serve` with a token configured (needs the middleware wired into
service/service.py), and `scripts/soak.py` for a few seconds.
"""

from __future__ import annotations

import ast
import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from starlette.testclient import TestClient

from service.engine.config import ConfigError
from service.formats.schemas import EXAMPLE_INPUT, GDL_EXAMPLE_INPUT
from service.web import security
from service.web.open_paths import DOCS_PATHS
from service.web.openapi import OpenAPIErrorDocs, document_errors
from service.web.security import DEFAULT_MAX_BODY_BYTES, SecurityMiddleware, SecuritySettings
from testkit.bad_inputs import MIB, BadInput, bad_inputs, electrode_row, refusal_problem
from testkit.fakes import (
    example_rows,
    fake_models,
    in_process_app,
    in_range_rows,
    onnx_predict,
    service_client,
    write_fake_bundle,
)
from testkit.processes import ServerProcess, cellmfg_server, clean_env

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::PendingDeprecationWarning")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TOKEN = "test-token-" + "x" * 24  # fixed for the in-process tests; the real server gets a random one
AUTH = {"Authorization": f"Bearer {TOKEN}"}


# ---------------------------------------------------------------------------------------------------------------
# The middleware alone


async def echo_app(scope: Any, receive: Any, send: Any) -> None:
    """Answers {"path", "bytes"}: how much body it was handed."""
    assert scope["type"] == "http"
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = json.dumps({"path": scope["path"], "bytes": size}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def _client(settings: SecuritySettings) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=SecurityMiddleware(echo_app, settings))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


def _run(coroutine: Any) -> Any:
    import anyio

    async def main() -> Any:
        return await coroutine

    return anyio.run(main)


def test_settings_default_to_auth_off_open_probes_and_a_16_mib_limit() -> None:
    settings = SecuritySettings.from_env({})
    assert settings.token is None and not settings.auth_enabled
    assert settings.open_paths == {"/livez", "/readyz", "/metrics",  # and the page's static files and the API docs:
                                   "/ui", "/ui/", "/ui/index.html", "/ui/app.js", "/ui/app.css", "/ui/docs.js",
                                   "/", "/docs", "/docs.json", *(p for p in DOCS_PATHS if p.startswith("/static_"))}
    assert settings.max_body_bytes == DEFAULT_MAX_BODY_BYTES == 16 * MIB
    assert "authentication off" in settings.describe()


def test_settings_read_the_token_from_the_environment_or_a_file(tmp_path: Path) -> None:
    assert SecuritySettings.from_env({"CELLMFG_API_TOKEN": f"  {TOKEN}\n"}).token == TOKEN.encode()
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    settings = SecuritySettings.from_env({"CELLMFG_API_TOKEN_FILE": str(secret), "CELLMFG_OPEN_PATHS": "",
                                          "CELLMFG_MAX_BODY_BYTES": "2048"})
    assert settings.token == TOKEN.encode() and settings.open_paths == frozenset()
    assert settings.max_body_bytes == 2048
    for text in (repr(settings), settings.describe()):
        assert TOKEN not in text
    assert "CELLMFG_API_TOKEN_FILE" in settings.describe()


@pytest.mark.parametrize(("env", "fragment"), [
    ({"CELLMFG_API_TOKEN": "short-secret"}, "at least 16"),
    ({"CELLMFG_API_TOKEN": "a token with spaces inside"}, "visible ASCII"),
    ({"CELLMFG_API_TOKEN_FILE": "/nonexistent/token"}, "cannot read the token file"),
    ({"CELLMFG_MAX_BODY_BYTES": "lots"}, "not a valid int"),
    ({"CELLMFG_MAX_BODY_BYTES": "10"}, "at least 1024"),
    ({"CELLMFG_OPEN_PATHS": "livez"}, "must start with '/'"),
])
def test_bad_settings_fail_naming_the_variable_but_never_the_token(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as error:
        SecuritySettings.from_env(env)
    assert fragment in str(error.value) and "CELLMFG_" in str(error.value)
    for value in env.values():
        if "secret" in value or "token with" in value:
            assert value not in str(error.value)


def test_without_a_token_everything_passes() -> None:
    async def go() -> None:
        async with _client(SecuritySettings()) as client:
            response = await client.post("/predict/electrode", content=b"{}")
            assert response.status_code == 200 and response.json()["bytes"] == 2

    _run(go())


def test_a_token_is_required_except_on_the_open_paths() -> None:
    async def go() -> None:
        settings = SecuritySettings(token=TOKEN.encode())
        async with _client(settings) as client:
            for path in ("/livez", "/readyz", "/metrics", "/docs.json", "/"):  # probes, metrics, the API docs
                assert (await client.get(path)).status_code == 200, path
            missing = await client.post("/predict/electrode", content=b"{}")
            assert missing.status_code == 401
            assert missing.headers["www-authenticate"] == 'Bearer realm="cellmfg"'
            assert "Authorization: Bearer" in missing.json()["error"] and missing.json()["detail"] == []
            for path in ("/models", "/docs.json/", "/healthz", "/livez/", "/metrics/x", "/static_content/x.js"):
                assert (await client.get(path)).status_code == 401, path
            wrong = await client.post("/predict/electrode", content=b"{}",
                                      headers={"Authorization": "Bearer wrong-token-but-long-enough"})
            assert wrong.status_code == 401
            assert wrong.headers["www-authenticate"] == 'Bearer realm="cellmfg", error="invalid_token"'
            for response in (missing, wrong):
                assert TOKEN not in response.text and "wrong-token" not in response.text
            for header in (f"Basic {TOKEN}", TOKEN, "Bearer", "Bearer ", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}"):
                response = await client.get("/models", headers={"Authorization": header})
                assert response.status_code == 401, header
            for header in (f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER   {TOKEN}  "):
                response = await client.post("/predict/gdl", content=b"[]", headers={"Authorization": header})
                assert response.status_code == 200, header

    _run(go())


def test_tokens_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = security.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", spy)

    async def go() -> None:
        async with _client(SecuritySettings(token=TOKEN.encode())) as client:
            assert (await client.get("/models", headers=AUTH)).status_code == 200
            assert (await client.get("/models", headers={"Authorization": "Bearer x"})).status_code == 401

    _run(go())
    # Digests of equal length, whatever was sent: neither the content nor the length of the token leaks.
    assert len(calls) == 2 and all(len(a) == len(b) == 32 for a, b in calls)


def test_bodies_over_the_limit_are_refused_announced_or_chunked() -> None:
    limit = 64 * 1024

    async def chunks(n: int, size: int) -> AsyncIterator[bytes]:
        for _ in range(n):
            yield b"x" * size

    async def go() -> None:
        async with _client(SecuritySettings(max_body_bytes=limit)) as client:
            fits = await client.post("/p", content=b"x" * limit)
            assert fits.status_code == 200 and fits.json()["bytes"] == limit
            over = await client.post("/p", content=b"x" * (limit + 1))
            assert over.status_code == 413
            assert f"{limit + 1} bytes" in over.json()["error"] and "CELLMFG_MAX_BODY_BYTES" in over.json()["error"]
            streamed = await client.post("/p", content=chunks(4, limit // 4))
            assert streamed.status_code == 200 and streamed.json()["bytes"] == limit, "a chunked body that fits"
            streamed_over = await client.post("/p", content=chunks(8, limit // 4))
            assert streamed_over.status_code == 413 and "chunked" in streamed_over.json()["error"]
            for value in ("lots", "-1", "1, 2"):
                bad = await client.post("/p", content=b"{}", headers={"Content-Length": value})
                assert bad.status_code == 400 and "Content-Length" in bad.json()["error"], value

    _run(go())


def test_lifespan_rereads_the_environment_and_fails_start_up_on_bad_settings(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    async def inner(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.complete"})

    async def start(middleware: SecurityMiddleware) -> list[Any]:
        sent: list[Any] = []

        async def receive() -> dict[str, Any]:
            return {"type": "lifespan.startup"}

        async def send(message: Any) -> None:
            sent.append(message)

        await middleware({"type": "lifespan"}, receive, send)
        return sent

    monkeypatch.delenv("CELLMFG_API_TOKEN", raising=False)
    monkeypatch.delenv("CELLMFG_API_TOKEN_FILE", raising=False)
    middleware = SecurityMiddleware(inner)
    assert not middleware.settings.auth_enabled
    monkeypatch.setenv("CELLMFG_API_TOKEN", TOKEN)
    caplog.set_level("INFO", logger="cellmfg")
    assert _run(start(middleware)) == [{"type": "lifespan.startup.complete"}]
    assert middleware.settings.auth_enabled, "the worker enforces the environment it starts with"
    monkeypatch.setenv("CELLMFG_API_TOKEN", "too-short")
    failed = _run(start(SecurityMiddleware(inner)))
    assert failed[0]["type"] == "lifespan.startup.failed" and "at least 16" in failed[0]["message"]
    assert "authentication on" in caplog.text
    assert TOKEN not in caplog.text and "too-short" not in caplog.text


# ---------------------------------------------------------------------------------------------------------------
# Around the service's own app (in-process): the bad-input catalogue


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The service with fake models behind the middleware with a token and its default body limit. (Once the
    middleware is wired into service/service.py it runs there too, with auth off: this outer one decides.)"""
    bundle = write_fake_bundle(tmp_path_factory.mktemp("bundle"))
    settings = SecuritySettings(token=TOKEN.encode())
    with service_client(bundle, wrap=lambda app: SecurityMiddleware(app, settings), headers=AUTH) as client:
        yield client


def _send(client: Any, body: Any, content_type: str, path: str = "/predict/electrode") -> Any:
    content = body if isinstance(body, bytes) else body.encode() if isinstance(body, str) else json.dumps(body).encode()
    return client.post(path, content=content, headers={"Content-Type": content_type})


def _send_case(client: Any, case: BadInput) -> Any:
    return _send(client, case.body, case.content_type, case.path)


def _assert_refused(response: Any, status: int, fragments: tuple[str, ...] | list[str], case: str) -> None:
    problem = refusal_problem(response.status_code, response.text, status, fragments)
    assert problem is None, (case, problem)


def _assert_answers_correctly(client: Any) -> None:
    for dataset, kind, field in (("nmc", "electrode", "chemistry"), ("gdl1000", "gdl", "dataset")):
        response = client.post(f"/predict/{kind}", json={field: dataset, "rows": example_rows(kind, dataset, 7)})
        assert response.status_code == 200, response.text
        answer = response.json()
        x = in_range_rows(dataset, 7)
        for ref in answer["models"].values():
            model = next(m for m in fake_models() if m.name == ref["name"])
            column = model.contract.target.column
            got = np.array([row[column] for row in answer["predictions"]])
            np.testing.assert_array_equal(got, onnx_predict(model, x))


@pytest.mark.parametrize("case", bad_inputs(), ids=[c.name for c in bad_inputs()])
def test_bad_input_is_a_4xx_with_a_message(service: TestClient, case: BadInput) -> None:
    _assert_refused(_send_case(service, case), case.status, case.fragments, case.name)


def test_after_the_whole_catalogue_the_service_still_answers_correctly(service: TestClient) -> None:
    for case in bad_inputs():
        assert _send_case(service, case).status_code == case.status, case.name
    assert service.get("/livez").status_code == 200
    assert service.get("/readyz").status_code == 200
    _assert_answers_correctly(service)


@pytest.mark.parametrize("flag", ["explain", "interval"])
@pytest.mark.parametrize("value", [0, 1, "true", "yes"])
def test_flags_must_be_json_booleans(service: TestClient, flag: str, value: Any) -> None:
    """Needs patch P3 (strict booleans in service/formats/schemas.py): pydantic's lax mode reads 0, 1, "true" and "yes"
    as booleans although the schema says boolean; schemathesis reports it as 'schema-violating request accepted'."""
    response = service.post("/predict/electrode", json={**EXAMPLE_INPUT, flag: value})
    _assert_refused(response, 400, [flag], f"{flag}={value!r}")


# ---------------------------------------------------------------------------------------------------------------
# The OpenAPI document lists the errors really sent


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with the document's components available to jsonschema's $ref resolution."""
    return {**schema, "components": spec["components"]}


def test_docs_describe_the_errors_the_service_sends(service: TestClient) -> None:
    import jsonschema_rs  # schemathesis's own validator

    settings = SecuritySettings(token=TOKEN.encode())
    app = OpenAPIErrorDocs(SecurityMiddleware(in_process_app(), settings), settings=settings)
    client = TestClient(app, headers=AUTH)  # no context: the service instance of the `service` fixture answers
    spec = client.get("/docs.json").json()
    electrode = spec["paths"]["/predict/electrode"]["post"]
    assert electrode["requestBody"]["required"] is True
    assert {"400", "401", "413", "415", "503"} <= set(electrode["responses"])
    assert electrode["security"] == [{"bearerAuth": []}]
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert spec["paths"]["/livez"]["get"]["security"] == [] and "401" not in spec["paths"]["/livez"]["get"]["responses"]
    assert "401" in spec["paths"]["/models"]["get"]["responses"]
    for status, body, content_type in (
            ("400", {"chemistry": "lfp", "rows": [electrode_row(am_wt_pct=-1)]}, "application/json"),
            ("413", {"chemistry": "nmc", "rows": [electrode_row()] * 10_001}, "application/json"),
            ("415", b"x", "text/plain")):
        response = _send(client, body, content_type)
        assert str(response.status_code) == status, response.text
        schema = electrode["responses"][status]["content"]["application/json"]["schema"]
        jsonschema_rs.validate(_resolve(spec, schema), response.json())
    unauthorised = TestClient(app).post("/predict/electrode", json=EXAMPLE_INPUT)
    schema = electrode["responses"]["401"]["content"]["application/json"]["schema"]
    jsonschema_rs.validate(_resolve(spec, schema), unauthorised.json())


def test_without_auth_the_docs_claim_no_security() -> None:
    spec = document_errors({"paths": {"/models": {"get": {"responses": {}}}}}, SecuritySettings())
    assert "security" not in spec["paths"]["/models"]["get"] and "securitySchemes" not in spec["components"]


# ---------------------------------------------------------------------------------------------------------------
# What ships: the image and the serving lock


def test_the_image_runs_as_a_non_root_user_and_bakes_in_no_secret() -> None:
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.MULTILINE)
    assert users, "the Dockerfile sets no USER: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"the container runs as {users[-1]}"
    assert re.search(rf"useradd\b[^\n]*\b{re.escape(user)}\b", dockerfile.replace("\\\n", " ")), user
    for instruction in re.findall(r"^(?:ENV|ARG|LABEL)\s.*?(?<!\\)$", dockerfile.replace("\\\n", " "),
                                  flags=re.MULTILINE):
        assert not re.search(r"(TOKEN|SECRET|PASSWORD|API_KEY)\w*\s*=", instruction, flags=re.IGNORECASE), \
            instruction
    ignore = [line.strip() for line in (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*", "the build context must start from nothing and list what it needs"
    assert not any(re.search(r"\.env|secret|token|mlflow\.db|mlruns", line) for line in ignore if line.startswith("!"))


def test_compose_and_entrypoint_take_the_token_from_outside() -> None:
    for path in ("docker-compose.yml", "deploy/entrypoint.sh", "bentofile.yaml"):
        text = (PROJECT_ROOT / path).read_text()
        for match in re.finditer(r"CELLMFG_API_TOKEN\w*\s*[:=]\s*(\S+)", text):
            assert match.group(1).startswith(("${", "$", '""', "''")), f"{path} sets a token: {match.group(0)}"


def _requirements(path: Path) -> dict[str, set[str]]:
    """Each requirement's canonical name with the extras it asks for (`psycopg[binary]`: {"binary"})."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: dict[str, set[str]] = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            requirement = Requirement(line)
            found.setdefault(canonicalize_name(requirement.name), set()).update(requirement.extras)
    return found


def _requirement_names(path: Path) -> set[str]:
    return set(_requirements(path))


def test_the_serving_lock_holds_only_what_serving_imports() -> None:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lock = _requirement_names(PROJECT_ROOT / "requirements" / "serve.lock")
    root_extras = _requirements(PROJECT_ROOT / "requirements" / "serve.in")
    roots = set(root_extras)
    training_only = {"tensorflow", "tensorflow-cpu", "keras", "tf-keras", "tf2onnx", "h5py", "scikit-image",
                     "matplotlib", "torch", "jax", "mlflow",
                     "flask", "gunicorn", "pytest", "hypothesis", "schemathesis"}
    assert not lock & training_only, sorted(lock & training_only)

    # The lock is exactly its roots and what they require (as installed here), nothing left over.
    closure: dict[str, set[str]] = {}
    stack = sorted(roots)
    while stack:
        name = stack.pop()
        if name in closure:
            continue
        requires = set()
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            extras = root_extras.get(name, set()) | {""}
            if requirement.marker is None or any(requirement.marker.evaluate({"extra": e}) for e in extras):
                requires.add(canonicalize_name(requirement.name))
        closure[name] = requires
        stack.extend(requires - set(closure))
    assert set(closure) == lock, {"in the lock, needed by nothing": sorted(lock - set(closure)),
                                  "needed, missing from the lock": sorted(set(closure) - lock)}

    # Every root is imported by the code the image ships (service/, cellmfg/), or required by one that is.
    imported: set[str] = set()
    # (service/ledger/ included: the prediction ledger serves with SQLAlchemy and Alembic)
    for path in [*(PROJECT_ROOT / "service").rglob("*.py"), *(PROJECT_ROOT / "cellmfg").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
    # The ledger's PostgreSQL driver is imported by SQLAlchemy, by the name the ledger gives it.
    from service.ledger.migrate import POSTGRES_DRIVER

    imported.add(POSTGRES_DRIVER)
    distributions = metadata.packages_distributions()
    used = {canonicalize_name(d) for module in imported for d in distributions.get(module, [])}
    needed_by_used = set().union(*(closure.get(name, set()) for name in used))
    assert roots <= used | needed_by_used, sorted(roots - used - needed_by_used)


# ---------------------------------------------------------------------------------------------------------------
# A real server with a token (integration; needs patch P1: the middleware wired into service/service.py)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("secured")
    bundle = write_fake_bundle(folder / "bundle")
    token = secrets.token_urlsafe(32)
    env = clean_env(CELLMFG_API_TOKEN=token, CELLMFG_POLL_SECONDS="0", BENTOML_HOME=str(folder / "home"))
    server = cellmfg_server(env, folder / "server.log", bundle=bundle)
    with server:
        server.wait_ready(timeout=180)
        yield {"server": server, "token": token, "bundle": bundle, "headers": {"Authorization": f"Bearer {token}"}}


def _workers(server: ServerProcess) -> set[int]:
    import psutil

    assert server.process is not None
    return {p.pid for p in psutil.Process(server.process.pid).children(recursive=True)}


@pytest.mark.integration
def test_real_server_requires_the_token_except_on_probes_and_metrics(secured: dict[str, Any]) -> None:
    url, headers = secured["server"].url, secured["headers"]
    for path in ("/livez", "/readyz", "/metrics", "/docs.json", "/"):  # and the API docs (issue 22)
        assert httpx.get(url + path, timeout=30).status_code == 200, path
    for method, path in (("POST", "/predict/electrode"), ("POST", "/predict/gdl"), ("GET", "/models"),
                         ("POST", "/design/gdl")):
        response = httpx.request(method, url + path, json=EXAMPLE_INPUT if method == "POST" else None, timeout=30)
        assert response.status_code == 401, (path, response.status_code, response.text[:300])
        assert response.headers["www-authenticate"].startswith("Bearer")
        wrong = httpx.request(method, url + path, headers={"Authorization": "Bearer not-the-token-at-all-0000"},
                              json=EXAMPLE_INPUT if method == "POST" else None, timeout=30)
        assert wrong.status_code == 401 and "invalid_token" in wrong.headers["www-authenticate"]
    client = httpx.Client(base_url=url, headers=headers, timeout=60)
    assert client.get("/models").json()["ready"] is True
    _assert_answers_correctly(client)


@pytest.mark.integration
def test_real_server_refuses_bad_input_and_keeps_answering(secured: dict[str, Any]) -> None:
    server = secured["server"]
    workers = _workers(server)
    client = httpx.Client(base_url=server.url, headers=secured["headers"], timeout=120)

    def chunked(n: int, size: int) -> Iterator[bytes]:
        for _ in range(n):
            yield b" " * size

    chosen = {"NaN number", "NaN string", "missing feature", "extra field", "negative gap", "huge value",
              "10,001 rows", "50 MB body", "deeply nested lists", "binary garbage", "unknown chemistry", "multipart"}
    for case in bad_inputs():
        if case.name in chosen:
            _assert_refused(_send_case(client, case), case.status, case.fragments, case.name)
    streamed = client.post("/predict/electrode", content=chunked(50, MIB), headers={"Content-Type": "application/json"})
    _assert_refused(streamed, 413, ["chunked", "CELLMFG_MAX_BODY_BYTES"], "50 MB chunked")
    assert httpx.get(f"{server.url}/livez", timeout=30).status_code == 200
    _assert_answers_correctly(client)
    assert _workers(server) == workers, "a worker died or was restarted"


@pytest.mark.integration
def test_refusals_are_counted_and_no_token_reaches_the_log(secured: dict[str, Any]) -> None:
    server = secured["server"]
    for _ in range(3):
        httpx.post(f"{server.url}/predict/gdl", json=GDL_EXAMPLE_INPUT,
                   headers={"Authorization": "Bearer guessed-token-guessed-token"}, timeout=30)
    metrics_text = httpx.get(f"{server.url}/metrics", timeout=30).text
    refused = [line for line in metrics_text.splitlines()
               if line.startswith("bentoml_service_request_total") and 'http_response_code="401"' in line]
    assert refused and sum(float(line.rsplit(" ", 1)[1]) for line in refused) >= 3, refused
    log = server.log_path.read_text(errors="replace")
    assert "authentication on" in log
    assert secured["token"] not in log and "guessed-token" not in log
    assert secured["token"] not in metrics_text


@pytest.mark.integration
def test_invalid_requests_cost_one_log_line_each(secured: dict[str, Any]) -> None:
    """Needs patch P7: BentoML logs each 400 at ERROR with a 25-line traceback and an excerpt of the body."""
    server = secured["server"]
    before = server.log_path.read_text(errors="replace")
    client = httpx.Client(base_url=server.url, headers=secured["headers"], timeout=60)
    for _ in range(20):
        refused = client.post("/predict/electrode", json={"chemistry": "lfp", "rows": [electrode_row()]})
        assert refused.status_code == 400
    added = server.log_path.read_text(errors="replace")[len(before):]
    assert "Traceback" not in added and "input_value" not in added, added[:3000]
    assert len(added.splitlines()) <= 20, added[:3000]


@pytest.mark.integration
def test_soak_smoke(secured: dict[str, Any]) -> None:
    """scripts/soak.py for a few seconds at 32 clients; the real run is 5 minutes (see the script)."""
    server = secured["server"]
    assert server.process is not None
    env = {**os.environ, "CELLMFG_API_TOKEN": secured["token"]}
    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "scripts" / "soak.py"), "--url", server.url, "--pid",
         str(server.process.pid), "--bundle", str(secured["bundle"]), "--duration", "10", "--warmup", "5",
         "--concurrency", "32"], env=env, capture_output=True, text=True, timeout=300, check=False)
    output = result.stdout + result.stderr
    print(output)
    assert result.returncode == 0 and "soak: PASS" in output, output[-4000:]
    assert secured["token"] not in output
