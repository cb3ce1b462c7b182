"""Model references as MLflow users write them, parsed and resolved to one registered version (or run).

Accepted forms, wherever a command names a model (`--base`, `registry promote`, `rollback`, `retire`):

    models:/density_graphite/3          version 3
    models:/density_graphite/latest     the highest version number
    models:/density_graphite@champion   the version an alias points to
    runs:/<run_id>/model                a model logged in a run (registered or not)
    density_graphite                    a bare name, where the command says what a bare name means

`parse_reference` is pure; `resolve_reference` asks an `MlflowClient` (passed in, so this module imports no MLflow
and each caller keeps its own tracking URI). Every failure is a `ModelReferenceError` whose message quotes the
reference and says what would work.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

RefKind = Literal["version", "latest", "alias", "run", "name"]

FORMS = ("models:/NAME/VERSION, models:/NAME/latest, models:/NAME@ALIAS, runs:/RUN_ID/PATH")
_NAME = re.compile(r"^[^/@\s]+$")
_ALIAS = re.compile(r"^[A-Za-z0-9_\-]+$")
_RUN_ID = re.compile(r"^[A-Za-z0-9_\-]+$")


class ModelReferenceError(ValueError):
    """A reference that cannot be parsed or does not name an existing model version."""


@dataclass(frozen=True)
class ModelReference:
    """A parsed reference; which fields are set depends on `kind`."""

    text: str
    kind: RefKind
    name: str | None = None
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    path: str | None = None


@dataclass(frozen=True)
class ResolvedModel:
    """A reference pinned to what it names now: a registered version (name and version set) or a run's model."""

    reference: ModelReference
    run_id: str
    load_uri: str  # what MLflow loads: models:/NAME/VERSION (pinned) or runs:/RUN_ID/PATH
    name: str | None = None
    version: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


def parse_reference(text: str, allow_bare: bool = False) -> ModelReference:
    """Parse one reference; a bare name is accepted only with `allow_bare`."""
    ref = text.strip()
    if ref.startswith("models:/"):
        body = ref.removeprefix("models:/")
        if "@" in body:
            name, alias = body.split("@", 1)
            _check_name(name, ref)
            if not _ALIAS.match(alias):
                raise ModelReferenceError(f"{ref!r}: alias {alias!r} is not valid (letters, digits, _ and -)")
            return ModelReference(ref, "alias", name=name, alias=alias)
        name, slash, version = body.partition("/")
        _check_name(name, ref)
        if not slash or not version:
            raise ModelReferenceError(f"{ref!r}: no version; write models:/{name}/<version>, models:/{name}/latest "
                                      f"or models:/{name}@<alias>")
        if version == "latest":
            return ModelReference(ref, "latest", name=name)
        if not version.isdigit() or int(version) < 1:
            raise ModelReferenceError(f"{ref!r}: version {version!r} is not a positive whole number or 'latest'")
        return ModelReference(ref, "version", name=name, version=str(int(version)))
    if ref.startswith("runs:/"):
        run_id, slash, path = ref.removeprefix("runs:/").partition("/")
        if not run_id or not _RUN_ID.match(run_id) or not slash or not path.strip("/"):
            raise ModelReferenceError(f"{ref!r}: write runs:/<run_id>/<artifact path>, e.g. runs:/<run_id>/model")
        return ModelReference(ref, "run", run_id=run_id, path=path.strip("/"))
    if ":" in ref or not allow_bare:
        raise ModelReferenceError(f"{ref!r} is not a model reference; use one of {FORMS}")
    _check_name(ref, ref)
    return ModelReference(ref, "name", name=ref)


def _check_name(name: str, ref: str) -> None:
    if not name or not _NAME.match(name):
        raise ModelReferenceError(f"{ref!r}: {name!r} is not a registered model name")


def resolve_reference(reference: ModelReference | str, client: Any, allow_bare: bool = False) -> ResolvedModel:
    """The version (or run) a reference names now. A bare name resolves like models:/NAME/latest."""
    from mlflow.exceptions import MlflowException

    ref = reference if isinstance(reference, ModelReference) else parse_reference(reference, allow_bare)
    try:
        if ref.kind == "run":
            return _resolve_run(ref, client)
        assert ref.name is not None
        if ref.kind == "alias":
            try:
                found = client.get_model_version_by_alias(ref.name, ref.alias)
            except MlflowException as error:
                raise ModelReferenceError(f"{ref.text!r}: {ref.name} has no alias {ref.alias!r} "
                                          f"({_aliases_text(client, ref.name)})") from error
        elif ref.kind == "version":
            try:
                found = client.get_model_version(ref.name, ref.version)
            except MlflowException as error:
                raise ModelReferenceError(f"{ref.text!r}: no version {ref.version} of {ref.name} "
                                          f"({_versions_text(client, ref.name)})") from error
        else:
            versions = client.search_model_versions(f"name='{ref.name}'")
            if not versions:
                raise ModelReferenceError(f"{ref.text!r}: no registered model {ref.name!r} with any version")
            found = max(versions, key=lambda v: int(v.version))
    except MlflowException as error:
        raise ModelReferenceError(f"{ref.text!r}: {str(error).splitlines()[0]}") from error
    version = str(found.version)
    return ResolvedModel(ref, str(found.run_id or ""), f"models:/{found.name}/{version}", str(found.name), version,
                         dict(found.tags or {}))


def _resolve_run(ref: ModelReference, client: Any) -> ResolvedModel:
    from mlflow.exceptions import MlflowException

    assert ref.run_id is not None and ref.path is not None
    try:
        run = client.get_run(ref.run_id)
    except MlflowException as error:
        raise ModelReferenceError(f"{ref.text!r}: no run {ref.run_id!r} in this tracking store") from error
    registered = [v for v in client.search_model_versions(f"run_id='{ref.run_id}'")
                  if ref.path in str(v.source or "")]  # covers a source that ends with the path
    if registered:
        found = max(registered, key=lambda v: int(v.version))
        return ResolvedModel(ref, ref.run_id, ref.text, str(found.name), str(found.version),
                             {**dict(run.data.tags), **dict(found.tags or {})})
    return ResolvedModel(ref, ref.run_id, ref.text, None, None, dict(run.data.tags))


def _aliases_text(client: Any, name: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        aliases = dict(client.get_registered_model(name).aliases or {})
    except MlflowException:
        return f"no registered model {name!r}"
    if not aliases:
        return "it has no aliases; `cellmfg registry promote` sets champion"
    return "aliases: " + ", ".join(f"{a} -> v{v}" for a, v in sorted(aliases.items()))


def _versions_text(client: Any, name: str) -> str:
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    return f"versions: {', '.join(map(str, versions))}" if versions else f"no registered model {name!r}"
