"""Kubernetes manifests (deploy/k8s/): a Kustomize base with the overlays lab-server and plant.

- Every overlay renders with `kubectl kustomize`, and every rendered resource of a built-in kind passes the
  Kubernetes 1.32 schemas of `kubernetes-validate` in strict mode (unknown fields fail, not only wrong types).
  The ServiceMonitor is a Prometheus Operator CRD, for which that package has no schema: it is checked against
  `SERVICE_MONITOR_SCHEMA` below, a strict subset transcribed from the operator's CRD (v0.84.1), which accepts only
  the fields these manifests use.
- Manifests broken on purpose (an unknown field, a wrong type) fail the same checks, so the checks can fail.
- Structural facts: probes, the Service, the Ingress and the ServiceMonitor point at the container's named port;
  the probes answer without the token on the real in-process service configured from the rendered ConfigMap and
  Secret, while predictions need it, and /metrics is an open path; the placeholder token stops the service;
  settings are the service's own variables; writable paths are emptyDirs; the plant has autoscaling, a disruption
  budget, an Ingress.
- The prediction ledger: PostgreSQL in the base and the plant (URL in the ConfigMap without a password, PGPASSWORD
  from a Secret); the lab-server's SQLite file on a PersistentVolumeClaim, in one pod only (one replica, Recreate).
- The README's recipe for the real token (an overlay of one's own with `behavior: replace`) renders as documented.
- Integration tier: the service (two workers) serves predictions and /metrics from a read-only root with only the
  Deployment's emptyDir and ledger-volume paths writable (a private mount namespace; needs root and unshare).

Rendering needs kubectl with its built-in kustomize (here v1.32 with kustomize v5.5): without it these tests skip
and say so. No cluster is involved: the manifests are rendered and validated, not applied.
"""

from __future__ import annotations

import base64
import copy
import functools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import httpx
import jsonschema
import pytest
import yaml

from service.engine.config import Settings
from service.web.security import ConfigError, SecuritySettings
from testkit.fakes import example_rows, write_fake_bundle
from testkit.processes import CLI_LAUNCHER, PROJECT_ROOT, clean_env, free_port, wait_for

kubernetes_validate = pytest.importorskip("kubernetes_validate",
                                          reason="kubernetes-validate (requirements/train.lock) is not installed")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::PendingDeprecationWarning")

K8S_DIR = PROJECT_ROOT / "deploy" / "k8s"
OVERLAYS = ("lab-server", "plant")
# The schemas validated against; kubectl's client is 1.32 too, and kubernetes-validate 1.37.0 ships 1.25 to 1.37.
KUBERNETES_VERSION = "1.32"
TOKEN = "k8s-test-token-0123456789abcdef"

_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_META = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "namespace": {
    "type": "string"}, "labels": _LABELS, "annotations": _LABELS}, "additionalProperties": False}
# monitoring.coreos.com/v1 ServiceMonitor, from prometheus-operator's CRD (example/prometheus-operator-crd/
# monitoring.coreos.com_servicemonitors.yaml, operator 0.84.1): the same types, patterns and required fields for
# the fields used here, and `additionalProperties: false` everywhere, as the API server's strict field validation
# would reject a misspelt field. A field the CRD allows but this subset lacks fails too: add it here when used.
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": _META,
        "spec": {
            "type": "object",
            "required": ["endpoints", "selector"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                    "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}},
                "selector": {"type": "object", "additionalProperties": False, "properties": {
                    "matchLabels": _LABELS,
                    "matchExpressions": {"type": "array", "items": {
                        "type": "object", "required": ["key", "operator"], "additionalProperties": False,
                        "properties": {"key": {"type": "string"}, "operator": {"type": "string"},
                                       "values": {"type": "array", "items": {"type": "string"}}}}}}},
                "endpoints": {"type": "array", "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "port": {"type": "string"},
                        "path": {"type": "string"},
                        "scheme": {"enum": ["http", "https"]},
                        "interval": {"type": "string", "pattern": _DURATION},
                        "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                        "honorLabels": {"type": "boolean"},
                    }}},
            },
        },
    },
}
CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR_SCHEMA}


# ---------------------------------------------------------------------------------------------------------------
# Rendering and validation


def _kubectl() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not on PATH; it renders the overlays")
    return kubectl


def render(directory: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize DIRECTORY`, parsed; a failure shows kustomize's message."""
    result = subprocess.run([_kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@functools.cache
def _rendered_overlay(name: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(K8S_DIR / "overlays" / name))


def rendered(name: str) -> list[dict[str, Any]]:
    """The overlay's resources, rendered once per session; callers get their own copy to change."""
    return copy.deepcopy(list(_rendered_overlay(name)))


def validate(resource: dict[str, Any]) -> None:
    """Strict validation against Kubernetes `KUBERNETES_VERSION`, or the local schema of a known CRD; raises
    jsonschema.ValidationError (kubernetes_validate's error is one) on the first problem."""
    crd_schema = CRD_SCHEMAS.get((resource["apiVersion"], resource["kind"]))
    if crd_schema is not None:
        jsonschema.Draft202012Validator(crd_schema).validate(resource)
        return
    checked = kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    assert checked == KUBERNETES_VERSION  # the package fell back to no other schema version


def only(resources: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [r for r in resources if r["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container(resources: list[dict[str, Any]]) -> dict[str, Any]:
    containers = only(resources, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["cellmfg"]
    return dict(containers[0])


def named_port(resources: list[dict[str, Any]], name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in container(resources)["ports"]}
    assert name in ports, f"no container port named {name!r}: {sorted(ports)}"
    return int(ports[name])


def dockerfile_env(name: str) -> str:
    """A variable the image sets with ENV (the Dockerfile's one multi-line ENV instruction)."""
    match = re.search(rf"\b{name}=(\S+)", (PROJECT_ROOT / "Dockerfile").read_text())
    assert match, f"the Dockerfile sets no {name}"
    return match.group(1)


def configmap_env(resources: list[dict[str, Any]]) -> dict[str, str]:
    """The container's environment from its ConfigMap (envFrom), after which its explicit `env` entries."""
    spec = container(resources)
    sources = [s["configMapRef"]["name"] for s in spec.get("envFrom", [])]
    maps = {r["metadata"]["name"]: r["data"] for r in resources if r["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for source in sources:
        assert source in maps, f"envFrom names ConfigMap {source}, which the overlay does not render"
        env.update(maps[source])
    env.update({e["name"]: e["value"] for e in spec.get("env", []) if "value" in e})
    return env


def secret_env(resources: list[dict[str, Any]]) -> dict[str, tuple[dict[str, Any], str]]:
    """The container's variables read from a Secret: name -> (its secretKeyRef, the value in the rendered Secret);
    fails when the Secret or its key is not rendered."""
    secrets = {r["metadata"]["name"]: r for r in resources if r["kind"] == "Secret"}
    found = {}
    for entry in container(resources).get("env", []):
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref is None:
            continue
        assert ref["name"] in secrets, f"{entry['name']} reads Secret {ref['name']}, which the overlay does not render"
        data = secrets[ref["name"]]["data"]
        assert ref["key"] in data, f"{entry['name']} reads key {ref['key']!r} of Secret {ref['name']}: no such key"
        found[entry["name"]] = (ref, base64.b64decode(data[ref["key"]]).decode())
    return found


def token_secret(resources: list[dict[str, Any]]) -> tuple[dict[str, Any], str, str]:
    """The Secret mounted for the token, the token file's path in the container and the token it holds."""
    spec = only(resources, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    token_file = PurePosixPath(configmap_env(resources)["CELLMFG_API_TOKEN_FILE"])
    mounts = [m for m in container(resources)["volumeMounts"] if PurePosixPath(m["mountPath"]) == token_file.parent]
    assert len(mounts) == 1, f"no volume is mounted at {token_file.parent}, where CELLMFG_API_TOKEN_FILE points"
    secret_name = volumes[mounts[0]["name"]]["secret"]["secretName"]
    secrets = {r["metadata"]["name"]: r for r in resources if r["kind"] == "Secret"}
    assert secret_name in secrets, f"the token volume names Secret {secret_name}, which the overlay does not render"
    secret = secrets[secret_name]
    assert token_file.name in secret["data"], f"Secret {secret_name} has no key {token_file.name}"
    return secret, str(token_file), base64.b64decode(secret["data"][token_file.name]).decode()


# ---------------------------------------------------------------------------------------------------------------
# Every overlay renders and validates


def test_the_overlays_are_the_documented_ones() -> None:
    assert sorted(p.name for p in (K8S_DIR / "overlays").iterdir() if p.is_dir()) == sorted(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_resource_passes_strict_schema_validation(overlay: str) -> None:
    resources = rendered(overlay)
    kinds = sorted(r["kind"] for r in resources)
    for kind in ("ConfigMap", "Deployment", "Namespace", "Secret", "Service"):
        assert kind in kinds
    for resource in resources:
        try:
            validate(resource)
        except jsonschema.ValidationError as error:
            path = ".".join(map(str, error.absolute_path))
            pytest.fail(f"{overlay}: {resource['kind']}/{resource['metadata']['name']} at {path}: {error.message}")
    # One namespace for everything namespaced, the overlay's own.
    namespace = only(resources, "Namespace")["metadata"]["name"]
    assert {r["metadata"].get("namespace") for r in resources if r["kind"] != "Namespace"} == {namespace}


def _set(path: tuple[str | int, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(resource: dict[str, Any]) -> None:
        target: Any = resource
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


_POD = ("spec", "template", "spec")
_CONTAINER = (*_POD, "containers", 0)
BREAKAGES: dict[str, tuple[str, Callable[[dict[str, Any]], None], str]] = {
    "misspelt probe field": ("Deployment", _set((*_CONTAINER, "readinessProbe", "httpGet", "pth"), "/readyz"),
                             "'pth' was unexpected"),
    "unknown spec field": ("Deployment", _set(("spec", "replica"), 3), "'replica' was unexpected"),
    "port as a string": ("Deployment", _set((*_CONTAINER, "ports", 0, "containerPort"), "3000"),
                         "is not of type 'integer'"),
    "grace period as a string": ("Deployment", _set((*_POD, "terminationGracePeriodSeconds"), "75"),
                                 "is not of type 'integer'"),
    "HPA replicas as a string": ("HorizontalPodAutoscaler", _set(("spec", "minReplicas"), "3"),
                                 "is not of type 'integer'"),
    "ServiceMonitor unknown field": ("ServiceMonitor", _set(("spec", "endpoints", 0, "intervall"), "15s"),
                                     "'intervall' was unexpected"),
    "ServiceMonitor bad interval": ("ServiceMonitor", _set(("spec", "endpoints", 0, "interval"), "15 seconds"),
                                    "does not match"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_manifest_broken_on_purpose_fails_validation(breakage: str) -> None:
    kind, change, message = BREAKAGES[breakage]
    resource = only(rendered("plant"), kind)
    validate(copy.deepcopy(resource))  # intact, it passes
    change(resource)
    with pytest.raises(jsonschema.ValidationError, match=re.escape(message)):
        validate(resource)


def test_strict_mode_is_what_catches_unknown_fields() -> None:
    """Without strict mode the schemas accept any extra field: the tests above rely on strict=True."""
    resource = only(rendered("plant"), "Deployment")
    _set((*_CONTAINER, "readinessProbe", "httpGet", "pth"), "/readyz")(resource)
    assert kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=False) == KUBERNETES_VERSION
    with pytest.raises(jsonschema.ValidationError):
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


# ---------------------------------------------------------------------------------------------------------------
# Structure: what points at what


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_and_selectors_line_up(overlay: str) -> None:
    resources = rendered(overlay)
    image_port = int(dockerfile_env("BENTOML_PORT"))
    assert re.search(rf"^EXPOSE {image_port}$", (PROJECT_ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert named_port(resources, "http") == image_port
    assert configmap_env(resources).get("BENTOML_PORT", str(image_port)) == str(image_port)
    pod_labels = only(resources, "Deployment")["spec"]["template"]["metadata"]["labels"]
    deployment_selector = only(resources, "Deployment")["spec"]["selector"]["matchLabels"]
    assert deployment_selector.items() <= pod_labels.items()

    service = only(resources, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert service_ports["http"]["targetPort"] == "http"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container(resources)[probe]["httpGet"]["port"] in ("http", image_port)

    for resource in resources:
        if resource["kind"] == "Ingress":
            for rule in resource["spec"]["rules"]:
                for path in rule["http"]["paths"]:
                    backend = path["backend"]["service"]
                    assert backend["name"] == service["metadata"]["name"]
                    assert backend["port"].get("name") in service_ports or backend["port"].get("number") in [
                        p["port"] for p in service_ports.values()]
        if resource["kind"] == "ServiceMonitor":
            assert resource["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
            assert {e["port"] for e in resource["spec"]["endpoints"]} <= set(service_ports)
        if resource["kind"] == "PodDisruptionBudget":
            assert resource["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        if resource["kind"] == "HorizontalPodAutoscaler":
            target = resource["spec"]["scaleTargetRef"]
            assert (target["kind"], target["name"]) == ("Deployment", only(resources, "Deployment")["metadata"]["name"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_answer_without_the_token_on_the_real_service(
        overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process service, configured by the overlay's ConfigMap (the fake bundle standing in for MLflow and a
    real token in the Secret's file): every probe path answers 200 with no token, while a prediction without it is
    refused, so authentication was on. The ServiceMonitor's path is open too (its answer is checked by the
    integration test below: in-process, BentoML's /metrics needs the multiprocess folder its server creates)."""
    from starlette.testclient import TestClient

    from testkit.fakes import in_process_app

    resources = rendered(overlay)
    spec = container(resources)
    probe_paths = {spec[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert spec["readinessProbe"]["httpGet"]["path"] == "/readyz"
    scraped = {e.get("path", "/metrics") for r in resources if r["kind"] == "ServiceMonitor"
               for e in r["spec"]["endpoints"]}

    token_file = tmp_path / "api_token"
    token_file.write_text(TOKEN)
    for key in [k for k in os.environ if k.startswith("CELLMFG_") or k == "MLFLOW_TRACKING_URI"]:
        monkeypatch.delenv(key)
    env = configmap_env(resources)
    env.pop("MLFLOW_TRACKING_URI")
    env.pop("BENTOML_PORT", None)
    env |= {"CELLMFG_BUNDLE": str(write_fake_bundle(tmp_path / "bundle")), "CELLMFG_POLL_SECONDS": "0",
            "CELLMFG_API_TOKEN_FILE": str(token_file),
            # The overlay's ledger (a PostgreSQL server, a PVC path) is not here: a file of the test's own.
            "CELLMFG_LEDGER_URL": f"sqlite:///{tmp_path / 'ledger' / 'ledger.sqlite3'}"}
    security = SecuritySettings.from_env(env)
    assert security.auth_enabled
    assert probe_paths | scraped <= security.open_paths
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    body = {"chemistry": "nmc", "rows": example_rows("electrode", "nmc", 1)}
    with TestClient(in_process_app()) as client:
        for path in sorted(probe_paths):
            assert client.get(path).status_code == 200, path
        assert client.post("/predict/electrode", json=body).status_code == 401
        answer = client.post("/predict/electrode", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_are_the_services_own_and_valid(overlay: str) -> None:
    """Each ConfigMap key is a variable the image reads (a misspelt one would be silently ignored), and the values
    pass the service's own parsing."""
    from service.engine.config import _Variables
    from service.web.security import _SecurityVariables

    resources = rendered(overlay)
    env = configmap_env(resources)
    # CELLMFG_WORKERS and BENTOML_PORT are read by the image's entry point (deploy/entrypoint.sh).
    known = set(_Variables.model_fields) | set(_SecurityVariables.model_fields) | {"CELLMFG_WORKERS", "BENTOML_PORT"}
    assert set(env) <= known, f"unknown settings: {sorted(set(env) - known)}"
    assert "CELLMFG_API_TOKEN" not in env, "the token belongs in the Secret, not the ConfigMap"
    assert "CELLMFG_OPEN_PATHS" not in env, "the default keeps probes and /metrics open; an override must too"
    settings = Settings.from_env(env)
    assert settings.tracking_uri and settings.tracking_uri.startswith("http")
    assert int(env["CELLMFG_WORKERS"]) >= 1
    # The Secret's key is the file CELLMFG_API_TOKEN_FILE names; every Secret rendered is mounted or read by the
    # container's environment (the ledger's password).
    secret, _, _ = token_secret(resources)
    used = {secret["metadata"]["name"], *(ref["name"] for ref, _ in secret_env(resources).values())}
    assert sorted(r["metadata"]["name"] for r in resources if r["kind"] == "Secret") == sorted(used)


def test_the_placeholder_token_stops_the_service(tmp_path: Path) -> None:
    """The committed Secret is a placeholder the service refuses, naming the variable: a deployment that forgot to
    replace it fails closed instead of serving behind a token published in git."""
    _, token_path, placeholder = token_secret(rendered("plant"))
    token_file = tmp_path / PurePosixPath(token_path).name
    token_file.write_text(placeholder)
    with pytest.raises(ConfigError, match="CELLMFG_API_TOKEN_FILE"):
        SecuritySettings.from_env({"CELLMFG_API_TOKEN_FILE": str(token_file)})


def test_the_readme_recipe_replaces_the_token(tmp_path: Path) -> None:
    """README "Kubernetes": its own overlay, outside git, replaces the token's and the ledger password's Secrets
    from files and sets MLflow, the ledger and the image; rendered here as written there (only its path to the
    repository changed)."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    match = re.search(r"cat > kustomization.yaml <<'EOF'\n(.*?)\nEOF\n", readme, re.DOTALL)
    assert match, "README.md has no kustomization.yaml for an overlay of one's own"
    recipe = yaml.safe_load(match.group(1))
    own = tmp_path / "my-plant"
    own.mkdir()
    (own / "api_token").write_text(TOKEN + "\n")  # as `print` writes it: the service strips the newline
    (own / "ledger_password").write_text("ledger-password-0123")  # as `printf '%s'` writes it
    base = recipe["resources"][0]
    overlay = base[base.index("deploy/k8s/"):]
    recipe["resources"] = [os.path.relpath(PROJECT_ROOT / overlay, own)]
    (own / "kustomization.yaml").write_text(yaml.safe_dump(recipe))
    resources = render(own)
    for resource in resources:
        validate(resource)
    _, _, token = token_secret(resources)
    assert token.strip() == TOKEN
    settings = {r["metadata"]["name"].rsplit("-", 1)[0]: r["data"] for r in resources if r["kind"] == "ConfigMap"}
    wanted_uri = recipe["configMapGenerator"][0]["literals"][0].split("=", 1)[1]
    assert settings["cellmfg-settings"]["MLFLOW_TRACKING_URI"] == wanted_uri
    wanted_ledger = recipe["configMapGenerator"][0]["literals"][1].split("=", 1)[1]
    assert settings["cellmfg-settings"]["CELLMFG_LEDGER_URL"] == wanted_ledger
    assert secret_env(resources)["PGPASSWORD"][1] == "ledger-password-0123"
    image = recipe["images"][0]
    assert container(resources)["image"] == f"{image['newName']}:{image['newTag']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pod_runs_as_the_image_user_on_a_read_only_root(overlay: str) -> None:
    resources = rendered(overlay)
    pod = only(resources, "Deployment")["spec"]["template"]["spec"]
    spec = container(resources)
    uid = int(re.findall(r"useradd --system --uid (\d+)", (PROJECT_ROOT / "Dockerfile").read_text())[0])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid
    assert pod["automountServiceAccountToken"] is False
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["securityContext"]["allowPrivilegeEscalation"] is False
    assert spec["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # Where the service writes: BENTOML_HOME (Prometheus multiprocess files) and the temporary folder (models
    # downloaded from MLflow); both must be on an emptyDir.
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    writable = [PurePosixPath(m["mountPath"]) for m in spec["volumeMounts"] if m["name"] in empty_dirs]
    for path in (PurePosixPath(dockerfile_env("BENTOML_HOME")), PurePosixPath("/tmp")):
        assert any(path == w or w in path.parents for w in writable), f"{path} is not on an emptyDir"
    assert spec["resources"]["requests"].keys() == {"cpu", "memory"}
    assert spec["resources"]["limits"].keys() == {"cpu", "memory"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_leaves_time_to_drain(overlay: str) -> None:
    """The grace period covers the preStop pause and the longest request the service allows."""
    from service.service import CellMfgService

    resources = rendered(overlay)
    pod = only(resources, "Deployment")["spec"]["template"]["spec"]
    command = container(resources)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    service: Any = CellMfgService  # bentoml.service returns a Service object; its stubs say the class
    request_timeout = float(service.config["traffic"]["timeout"])
    assert pod["terminationGracePeriodSeconds"] >= float(command[1]) + request_timeout
    strategy = only(resources, "Deployment")["spec"]["strategy"]
    if overlay == "lab-server":  # its SQLite ledger must never be open in two pods (test_the_ledger_...)
        assert strategy == {"type": "Recreate"}
    else:
        assert strategy["rollingUpdate"]["maxUnavailable"] == 0


def test_the_lab_server_runs_one_replica_without_autoscaling() -> None:
    resources = rendered("lab-server")
    assert only(resources, "Deployment")["spec"]["replicas"] == 1
    kinds = {r["kind"] for r in resources}
    # A budget over one replica would block every drain; no autoscaler or Ingress on one machine.
    assert not kinds & {"HorizontalPodAutoscaler", "PodDisruptionBudget", "Ingress", "ServiceMonitor"}


def test_the_ledger_is_postgresql_with_its_password_from_a_secret_in_the_base_and_the_plant() -> None:
    """Issue 25: the prediction ledger's URL is in the ConfigMap, without a password (a ConfigMap is readable by
    anyone who may read the namespace); libpq reads the password as PGPASSWORD from a Secret."""
    for resources in (render(K8S_DIR / "base"), rendered("plant")):
        env = configmap_env(resources)
        url = env["CELLMFG_LEDGER_URL"]
        settings = Settings.from_env(env)
        assert settings.ledger_url == url and url.startswith("postgresql+psycopg://")
        parts = urlsplit(url)
        assert parts.password is None and parts.username and parts.path == "/ledger"
        password = secret_env(resources)["PGPASSWORD"][1]
        assert password and password not in url
        assert "PGPASSWORD" not in env, "the password belongs in the Secret, not the ConfigMap"
    # The plant's own server, not the base's placeholder host.
    assert urlsplit(configmap_env(rendered("plant"))["CELLMFG_LEDGER_URL"]).hostname != "postgres"


def test_the_lab_server_keeps_its_ledger_in_sqlite_on_a_volume_claim_in_one_pod() -> None:
    """SQLite is safe for the processes of one pod, not across pods: one replica, Recreate (no second pod during a
    rollout), and the file on a PersistentVolumeClaim mounted where CELLMFG_LEDGER_URL points (an emptyDir would
    lose the ledger with the pod)."""
    resources = rendered("lab-server")
    url = configmap_env(resources)["CELLMFG_LEDGER_URL"]
    assert Settings.from_env(configmap_env(resources)).ledger_url == url
    assert url.startswith("sqlite:////"), url  # an absolute path
    folder = PurePosixPath(url.removeprefix("sqlite:///")).parent
    deployment = only(resources, "Deployment")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = [m for m in container(resources)["volumeMounts"] if PurePosixPath(m["mountPath"]) == folder]
    assert len(mounts) == 1 and not mounts[0].get("readOnly"), f"nothing writable is mounted at {folder}"
    claim = volumes[mounts[0]["name"]]["persistentVolumeClaim"]["claimName"]
    pvc = only(resources, "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == claim and pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert deployment["spec"]["template"]["spec"]["securityContext"]["fsGroup"] == 10001  # the volume is writable


def test_the_plant_scales_and_survives_disruptions() -> None:
    resources = rendered("plant")
    deployment = only(resources, "Deployment")
    # The autoscaler owns the count: a replicas field would reset it at every apply.
    assert "replicas" not in deployment["spec"]
    hpa = only(resources, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["minReplicas"] >= 3
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert "cpu" in container(resources)["resources"]["requests"]  # utilisation is relative to the request
    pdb = only(resources, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    # At least one pod may always be evicted, and never so many that fewer than two serve.
    assert 2 <= pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]
    assert only(resources, "Ingress")["apiVersion"] == "networking.k8s.io/v1"
    monitor = only(resources, "ServiceMonitor")
    assert [e["path"] for e in monitor["spec"]["endpoints"]] == ["/metrics"]
    assert deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]


# ---------------------------------------------------------------------------------------------------------------
# Integration: the read-only root, for real


@pytest.fixture
def read_only_server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """`cellmfg serve` in a mount namespace where / is read-only and only the lab-server Deployment's emptyDir
    and PersistentVolumeClaim mount paths are writable (tmpfs), as in the pod; yields its URL and token. Needs root
    and unshare(1)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to mount a read-only root in a private mount namespace")
    resources = rendered("lab-server")
    pod = only(resources, "Deployment")["spec"]["template"]["spec"]
    # The emptyDirs and the ledger's PersistentVolumeClaim: fresh tmpfs mounts here (their mount points made first).
    volumes = {v["name"] for v in pod["volumes"] if "emptyDir" in v or "persistentVolumeClaim" in v}
    writable = [m["mountPath"] for m in container(resources)["volumeMounts"] if m["name"] in volumes]
    made = [Path(path) for path in writable if not Path(path).exists()]
    # Outside every writable path, since those are fresh tmpfs mounts in the namespace.
    folder = Path("/var/tmp") / f"cellmfg-k8s-{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    write_fake_bundle(folder / "bundle")
    (folder / "api_token").write_text(TOKEN)
    port = free_port()
    env = clean_env(**{k: v for k, v in configmap_env(resources).items() if k != "MLFLOW_TRACKING_URI"})
    env |= {"CELLMFG_BUNDLE": str(folder / "bundle"), "CELLMFG_API_TOKEN_FILE": str(folder / "api_token"),
            "BENTOML_HOME": dockerfile_env("BENTOML_HOME"), "HOME": "/home/cellmfg", "CELLMFG_WORKERS": "2"}
    mounts = "".join(f"mkdir -p {path} && mount -t tmpfs -o size=256m,mode=1777 tmpfs {path} && "
                     for path in writable)
    keep = unhide = ""
    if any(PROJECT_ROOT.is_relative_to(path) for path in writable):
        # A checkout under /tmp (CI's may be) would vanish under the pod's fresh /tmp: kept through a bind mount
        # made before, and put back read-only after (it is the image's code, not a writable path).
        (folder / "project").mkdir(parents=True)
        keep = f"mount --bind {PROJECT_ROOT} {folder}/project && "
        unhide = (f"mkdir -p {PROJECT_ROOT} && mount --bind {folder}/project {PROJECT_ROOT} && "
                  f"mount -o remount,bind,ro {PROJECT_ROOT} && ")
    # `test -w` is false on a read-only mount even for root (EROFS): the server starts only if / really is.
    script = f'{keep}{mounts}{unhide}mount -o remount,bind,ro / && ! test -w {PROJECT_ROOT} && exec "$@"'
    command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", sys.executable,
               "-c", CLI_LAUNCHER, "--port", str(port), "--workers", env["CELLMFG_WORKERS"]]
    log_path = tmp_path / "server.log"
    url = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log:
        process = subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: process.poll() is None and httpx.get(f"{url}/readyz", timeout=2).status_code == 200,
                     timeout=120, what="/readyz of the server on a read-only root",
                     on_timeout=lambda: log_path.read_text()[-3000:])
            yield url, TOKEN
        finally:
            process.terminate()  # the server itself: unshare and sh exec'd into it
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            shutil.rmtree(folder, ignore_errors=True)
            for path in made:  # the empty mount points made on the host
                if path.exists():
                    path.rmdir()


@pytest.mark.integration
def test_the_service_serves_from_a_read_only_root(read_only_server: tuple[str, str]) -> None:
    url, token = read_only_server
    body = {"chemistry": "nmc", "rows": example_rows("electrode", "nmc", 2), "interval": True}
    answer = httpx.post(f"{url}/predict/electrode", json=body, headers={"Authorization": f"Bearer {token}"},
                        timeout=30)
    assert answer.status_code == 200, answer.text
    assert httpx.post(f"{url}/predict/electrode", json=body, timeout=30).status_code == 401
    # The ServiceMonitor's path, without the token: the multiprocess metrics of both workers live under /tmp.
    metrics = httpx.get(f"{url}/metrics", timeout=10)
    assert metrics.status_code == 200 and "cellmfg_predictions_total" in metrics.text
