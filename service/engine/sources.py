"""Where served models come from: the MLflow registry by alias, or a bundle directory.

A source lists its catalogue cheaply (every model it offers now, with the revision of each: one registry search or
one manifest read; the poller asks every interval) and fetches a model as a verified
`cellmfg.contract.LoadedModel`. The registry offers every `*_onnx` model holding the served alias; a bundle every
model in its manifest. Importing this module costs almost nothing (MLflow and the contract
code load on first use), so `cellmfg serve` can check the source before starting BentoML.

What a source says about itself comes in two forms. `description` (log lines, start-up errors) never holds the
credentials a tracking URI may carry (`https://user:password@host`, `?token=`). `public_description`, `origin` and
`redact` (GET /models, which anyone with the token may read) hold no server file path either: a bundle is named by
its directory's name, a file-based MLflow store (sqlite, file) by its scheme alone.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from service.engine.config import Settings

if TYPE_CHECKING:
    from cellmfg.contract import LoadedModel

log = logging.getLogger("cellmfg.service")

# Registered ONNX exports are named {keras model}_onnx (registry.promote); only those are served.
ONNX_SUFFIX = "_onnx"


class SourceUnavailableError(RuntimeError):
    """Neither the registry nor the bundle can provide models."""


def without_credentials(uri: str) -> str:
    """`uri` without user, password, query and fragment (where tokens are put): safe for logs."""
    parts = urlsplit(uri)
    if not parts.netloc:  # a file-based store (sqlite:////abs/path.db): no credentials, and rebuilding drops slashes
        return uri.partition("?")[0].partition("#")[0]
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def public_uri(uri: str) -> str:
    """`uri` as the API shows it: a server's address without credentials; a file-based store by its scheme only,
    since its path is a server file path."""
    parts = urlsplit(uri)
    if not parts.netloc or parts.scheme in ("", "file", "sqlite"):
        return f"{parts.scheme or 'file'} store"
    return without_credentials(uri)


def redact_strings(value: Any, redact: Callable[[str], str]) -> Any:
    """`value` (JSON-like: dicts, lists, strings, numbers) with `redact` applied to every string in it."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_strings(item, redact) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_strings(item, redact) for item in value]
    return value


class ModelSource(Protocol):
    description: str
    public_description: str

    def redact(self, text: str) -> str:
        """`text` (a problem, an error) without the server file paths and credentials this source knows of."""

    def check(self) -> None:
        """Raise SourceUnavailableError unless the source answers at all."""

    def catalogue(self) -> dict[str, str]:
        """Cheap: every model the source offers now, name -> an identifier of what `fetch` would return."""

    def revision_of(self, model: LoadedModel) -> str: ...

    def fetch(self, name: str) -> LoadedModel: ...

    def origin(self, model: LoadedModel) -> str: ...


class RegistrySource:
    """The model versions an MLflow registry alias points to."""

    def __init__(self, tracking_uri: str, alias: str) -> None:
        self.tracking_uri = tracking_uri
        self.alias = alias
        self.description = f"MLflow registry {without_credentials(tracking_uri)} (alias {alias!r})"
        self.public_description = f"MLflow registry {public_uri(tracking_uri)} (alias {alias!r})"
        self._mlflow_client: Any = None

    def _client(self) -> Any:
        # One client for the source's life: building one opens (and for SQL stores migrates) a store connection.
        if self._mlflow_client is None:
            from mlflow import MlflowClient

            self._mlflow_client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._mlflow_client

    def check(self) -> None:
        try:
            self._client().search_registered_models(max_results=1)
        except Exception as error:
            raise SourceUnavailableError(
                f"{self.description} is unreachable: {type(error).__name__}: {self.redact(str(error))[:300]}"
            ) from error

    def redact(self, text: str) -> str:
        public = public_uri(self.tracking_uri)
        for secret in (self.tracking_uri, without_credentials(self.tracking_uri)):
            text = text.replace(secret, public)
        return text

    def catalogue(self) -> dict[str, str]:
        # Registered models carry their aliases, so one paged search answers for every model at once.
        found: dict[str, str] = {}
        token = None
        while True:
            page = self._client().search_registered_models(max_results=200, page_token=token)
            for model in page:
                version = (model.aliases or {}).get(self.alias)
                if model.name.endswith(ONNX_SUFFIX) and version is not None:
                    found[model.name] = str(version)
            token = page.token
            if not token:
                return found

    def revision_of(self, model: LoadedModel) -> str:
        return model.version

    def fetch(self, name: str) -> LoadedModel:
        from cellmfg.contract import fetch_registered

        return fetch_registered(self.tracking_uri, name, self.alias)

    def origin(self, model: LoadedModel) -> str:
        return f"models:/{model.name}/{model.version} (@{self.alias}) at {public_uri(self.tracking_uri)}"


class BundleSource:
    """A bundle directory; rewriting the bundle (the manifest goes last) is picked up like a moved alias."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.description = f"bundle {directory}"
        self.public_description = f"bundle {directory.name}"

    def redact(self, text: str) -> str:
        return text.replace(str(self.directory), self.directory.name)

    def _manifest(self) -> dict[str, Any]:
        text = (self.directory / "manifest.json").read_text()
        return {entry["name"]: entry for entry in json.loads(text)["models"]}

    def check(self) -> None:
        try:
            self._manifest()
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise SourceUnavailableError(f"{self.description}: no readable manifest.json ({error})") from error

    def catalogue(self) -> dict[str, str]:
        return {name: _bundle_revision(entry) for name, entry in self._manifest().items()}

    def revision_of(self, model: LoadedModel) -> str:
        return f"{model.version}@{(model.contract.onnx_sha256 or '')[:16]}"

    def fetch(self, name: str) -> LoadedModel:
        """The one model `name`, verified on its own: a broken entry beside it (a lab's new model with a bad
        contract) must not stop the others from loading."""
        from cellmfg.contract import MANIFEST_NAME, ContractError, Manifest, load_bundle_entry

        manifest_path = self.directory / MANIFEST_NAME
        try:
            manifest = Manifest.model_validate_json(manifest_path.read_bytes())
        except ValueError as error:
            raise ContractError(f"{manifest_path}: not a valid bundle manifest: {str(error)[:300]}") from error
        entry = next((e for e in manifest.models if e.name == name), None)
        if entry is None:
            raise ContractError(f"{manifest_path}: no model {name!r} in the bundle")
        return load_bundle_entry(self.directory, entry)

    def origin(self, model: LoadedModel) -> str:
        return f"{self.directory.name}/{model.name}.onnx"


def _bundle_revision(entry: dict[str, Any]) -> str:
    return f"{entry['version']}@{entry['onnx_sha256'][:16]}"


def open_source(settings: Settings) -> ModelSource:
    """The registry when configured and reachable, else the bundle; raise SourceUnavailableError naming both."""
    problems = []
    if settings.tracking_uri:
        # MLflow's default HTTP retries take minutes against a dead server; start-up should fail (or fall back)
        # quickly, and the poller simply tries again next interval.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        # Our MLflow calls pass this URI explicitly; the process-wide registry URI (MLFLOW_REGISTRY_URI, which
        # mlflow.set_registry_uri exports to child processes) is pinned too, so nothing MLflow resolves on its own
        # (a models:/ URI) can reach another registry.
        registry_env = os.environ.get("MLFLOW_REGISTRY_URI")
        if registry_env and registry_env != settings.tracking_uri:
            log.warning("MLFLOW_REGISTRY_URI=%s differs from MLFLOW_TRACKING_URI; serving from %s", registry_env,
                        settings.tracking_uri)
        os.environ["MLFLOW_REGISTRY_URI"] = settings.tracking_uri
        registry = RegistrySource(settings.tracking_uri, settings.alias)
        try:
            registry.check()
            return registry
        except SourceUnavailableError as error:
            problems.append(str(error))
            if settings.bundle is None:
                raise SourceUnavailableError(f"{error}; set CELLMFG_BUNDLE to serve from a bundle instead") from error
            log.warning("%s; falling back to bundle %s", error, settings.bundle)
    if settings.bundle is not None:
        bundle = BundleSource(settings.bundle)
        try:
            bundle.check()
            return bundle
        except SourceUnavailableError as error:
            problems.append(str(error))
    raise SourceUnavailableError("no usable model source: " + "; ".join(problems))
