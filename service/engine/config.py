"""Service settings, read from environment variables once when the service starts (never at import)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from cellmfg.domain import MODEL_NAMES, model_name

DEFAULT_ALIAS = "champion"
DEFAULT_POLL_SECONDS = 30.0
DEFAULT_ORT_THREADS = 1
DEFAULT_MAX_ROWS = 10_000
# A connection must send a whole request's headers this soon after opening (or after its last answer), and a worker
# keeps at most this many connections open (service.web.patches.patch_uvicorn_connection_limits): uvicorn has neither.
DEFAULT_HEADER_TIMEOUT_SECONDS = 10.0
DEFAULT_MAX_CONNECTIONS = 256
# The prediction ledger (service.ledger): an SQLite file in CELLMFG_LEDGER_DIR unless CELLMFG_LEDGER_URL names a
# database. The default directory sits beside BentoML's own state ($BENTOML_HOME, else ~/bentoml), never in the
# source tree, so serving from a checkout leaves `git status` clean.
LEDGER_FILE = "ledger.sqlite3"
LEDGER_OFF = "off"
# NORMAL with WAL: a commit survives a killed process (kill -9: the WAL is in the OS page cache); only a power cut
# or kernel crash can lose the last commits. FULL also fsyncs every commit (~2x the per-request cost on one row).
DEFAULT_LEDGER_SQLITE_SYNC: Literal["NORMAL", "FULL"] = "NORMAL"
DEFAULT_LEDGER_REFRESH_SECONDS = 30.0

# The paper's eight nets, exported to ONNX. The service serves whatever its source's catalogue offers (these and a
# lab's own); this list is for tests, benchmarks and scripts that deal with the paper's set.
SERVED_MODEL_NAMES: tuple[str, ...] = tuple(f"{name}_onnx" for name in MODEL_NAMES)


def served_name(task: str, dataset: str) -> str:
    """Registered ONNX model that answers `task` on `dataset`, e.g. density_nmc_onnx."""
    return f"{model_name(task, dataset)}_onnx"


class ConfigError(ValueError):
    """A setting that cannot work; the message names the variable and what it needs."""


@dataclass(frozen=True)
class Settings:
    """Where models come from and how they are run.

    Environment variables:
      CELLMFG_BUNDLE        bundle directory (manifest.json, ONNX files, contracts)
      MLFLOW_TRACKING_URI   MLflow tracking/registry URI; preferred over the bundle when both are set
      CELLMFG_ALIAS         registry alias to serve (default champion)
      CELLMFG_POLL_SECONDS  how often to check whether an alias moved (default 30; 0 disables hot reload)
      CELLMFG_ORT_THREADS   onnxruntime intra-op threads per session (default 1)
      CELLMFG_MAX_ROWS      largest batch accepted in one request (default 10000)
      CELLMFG_REQUIRED_MODELS  comma-separated model names that must be served before /readyz says ready
                            (default none: ready once every model in the catalogue at start is loaded)
      CELLMFG_HEADER_TIMEOUT_SECONDS  seconds a connection may take to send a request's headers, from opening or
                            from its last answer, before it is closed (default 10)
      CELLMFG_MAX_CONNECTIONS  open connections per worker; more are closed at once (default 256)
      CELLMFG_LEDGER_URL    prediction ledger database: sqlite:///FILE or postgresql+psycopg://...; `off` keeps no
                            ledger (no prediction ids, no /outcomes); default: an SQLite file in CELLMFG_LEDGER_DIR
      CELLMFG_LEDGER_DIR    directory of the default SQLite ledger (default $BENTOML_HOME/cellmfg-ledger, where
                            BENTOML_HOME defaults to ~/bentoml)
      CELLMFG_LEDGER_RETENTION_DAYS  delete predictions older than this many days (default: keep all)
      CELLMFG_LEDGER_REFRESH_SECONDS  how often live accuracy, drift and ledger counts are recomputed for GET
                            /models and /metrics, and retention runs (default 30)
      CELLMFG_LEDGER_SQLITE_SYNC  NORMAL (default; survives kill -9, not a power cut) or FULL (fsync per commit)
      CELLMFG_LEDGER_SPOOL_DIR  with a PostgreSQL ledger: where answers are committed while the database is away
                            (an SQLite spool, forwarded once it is back; default CELLMFG_LEDGER_DIR's folder);
                            `off`: no spool, an outage turns answers into 503s
    Security (read by service.web.security): CELLMFG_API_TOKEN, CELLMFG_API_TOKEN_FILE, CELLMFG_OPEN_PATHS,
    CELLMFG_MAX_BODY_BYTES.
    """

    bundle: Path | None = None
    tracking_uri: str | None = None
    alias: str = DEFAULT_ALIAS
    poll_seconds: float = DEFAULT_POLL_SECONDS
    ort_threads: int = DEFAULT_ORT_THREADS
    max_rows: int = DEFAULT_MAX_ROWS
    required_models: tuple[str, ...] = ()
    header_timeout_seconds: float = DEFAULT_HEADER_TIMEOUT_SECONDS
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    # None: no ledger (the default for settings built in code, e.g. tests and `cellmfg predict`)
    ledger_url: str | None = None
    ledger_retention_days: float | None = None
    ledger_sqlite_sync: Literal["NORMAL", "FULL"] = DEFAULT_LEDGER_SQLITE_SYNC
    ledger_refresh_seconds: float = DEFAULT_LEDGER_REFRESH_SECONDS
    # The outage spool of a remote ledger (service.ledger.spool); None: none (an SQLite ledger needs none)
    ledger_spool_dir: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        variables = _Variables.read(env)
        bundle_text = variables.CELLMFG_BUNDLE
        tracking_uri = variables.MLFLOW_TRACKING_URI or None
        if not bundle_text and not tracking_uri:
            raise ConfigError("no model source: set CELLMFG_BUNDLE to a bundle directory or MLFLOW_TRACKING_URI "
                              "to an MLflow registry (for example `cellmfg serve --bundle DIR`)")
        bundle = Path(bundle_text).expanduser().resolve() if bundle_text else None
        if bundle is not None and not bundle.is_dir() and tracking_uri is None:
            raise ConfigError(f"CELLMFG_BUNDLE={bundle_text}: not a directory")
        return cls(
            bundle=bundle,
            tracking_uri=tracking_uri,
            alias=variables.CELLMFG_ALIAS or DEFAULT_ALIAS,
            poll_seconds=variables.CELLMFG_POLL_SECONDS,
            ort_threads=variables.CELLMFG_ORT_THREADS,
            max_rows=variables.CELLMFG_MAX_ROWS,
            required_models=tuple(name.strip() for name in variables.CELLMFG_REQUIRED_MODELS.split(",")
                                  if name.strip()),
            header_timeout_seconds=variables.CELLMFG_HEADER_TIMEOUT_SECONDS,
            max_connections=variables.CELLMFG_MAX_CONNECTIONS,
            ledger_url=ledger_url(variables, env),
            ledger_retention_days=variables.CELLMFG_LEDGER_RETENTION_DAYS,
            ledger_sqlite_sync=variables.CELLMFG_LEDGER_SQLITE_SYNC,
            ledger_refresh_seconds=variables.CELLMFG_LEDGER_REFRESH_SECONDS,
            ledger_spool_dir=ledger_spool_dir(variables, env),
        )


def ledger_url_from_env(env: Mapping[str, str]) -> str | None:
    """The ledger URL the service would use with `env` (for `cellmfg ledger export`, which needs no model source)."""
    return ledger_url(_Variables.read(env), env)


def ledger_url(variables: _Variables, env: Mapping[str, str]) -> str | None:
    """The ledger's database URL from the variables (None when CELLMFG_LEDGER_URL=off)."""
    if variables.CELLMFG_LEDGER_URL.lower() == LEDGER_OFF:
        return None
    if variables.CELLMFG_LEDGER_URL:
        return variables.CELLMFG_LEDGER_URL
    return f"sqlite:///{_ledger_folder(variables, env) / LEDGER_FILE}"  # the folder is made when the ledger opens


def _ledger_folder(variables: _Variables, env: Mapping[str, str]) -> Path:
    folder = Path(variables.CELLMFG_LEDGER_DIR).expanduser() if variables.CELLMFG_LEDGER_DIR else \
        Path(env.get("BENTOML_HOME") or Path.home() / "bentoml").expanduser() / "cellmfg-ledger"
    return folder.resolve()


def ledger_spool_dir(variables: _Variables, env: Mapping[str, str]) -> Path | None:
    """Where a remote ledger spools answers during an outage: None for no ledger, an SQLite ledger (a local file
    needs no spool) or CELLMFG_LEDGER_SPOOL_DIR=off."""
    url = ledger_url(variables, env)
    if url is None or url.startswith("sqlite") or variables.CELLMFG_LEDGER_SPOOL_DIR.lower() == LEDGER_OFF:
        return None
    if variables.CELLMFG_LEDGER_SPOOL_DIR:
        return Path(variables.CELLMFG_LEDGER_SPOOL_DIR).expanduser().resolve()
    return _ledger_folder(variables, env)


class EnvironmentVariables(BaseSettings):
    """Environment variables, typed and bounded by pydantic-settings; read from one mapping only (the process
    environment, or the one `cellmfg serve` builds for its server), so nothing else leaks in. Subclasses declare the
    variables; `KEEP_EMPTY` names those whose empty value means something (others: empty counts as unset)."""

    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", str_strip_whitespace=True)
    KEEP_EMPTY: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)  # `read` passes the mapping in; the process environment is not read behind it

    @classmethod
    def read(cls, env: Mapping[str, str]) -> Self:
        """The variables of `env`, or ConfigError naming the first bad one."""
        given: dict[str, Any] = {key: env[key] for key in cls.model_fields
                                 if env.get(key, "").strip() or (key in cls.KEEP_EMPTY and key in env)}
        try:
            return cls(**given)
        except ValidationError as error:
            first = error.errors(include_url=False)[0]
            key = str(first["loc"][0])
            text = given.get(key, "")
            kind = first["type"]
            if kind == "greater_than_equal":
                problem = f"must be at least {first['ctx']['ge']}"
            elif kind == "greater_than":
                problem = f"must be more than {first['ctx']['gt']}"
            elif kind.startswith("int"):
                problem = "not a valid int"
            elif kind.startswith("float") or kind == "finite_number":
                problem = "not a valid float"
            else:
                problem = first["msg"]
            raise ConfigError(f"{key}={text!r}: {problem}") from None


class _Variables(EnvironmentVariables):
    """The service's model-source and capacity variables (see `Settings`)."""

    CELLMFG_BUNDLE: str = ""
    MLFLOW_TRACKING_URI: str = ""
    CELLMFG_ALIAS: str = ""
    CELLMFG_POLL_SECONDS: float = Field(DEFAULT_POLL_SECONDS, ge=0, allow_inf_nan=False)
    CELLMFG_ORT_THREADS: int = Field(DEFAULT_ORT_THREADS, ge=1)
    CELLMFG_MAX_ROWS: int = Field(DEFAULT_MAX_ROWS, ge=1)
    CELLMFG_REQUIRED_MODELS: str = ""
    CELLMFG_HEADER_TIMEOUT_SECONDS: float = Field(DEFAULT_HEADER_TIMEOUT_SECONDS, gt=0, allow_inf_nan=False)
    CELLMFG_MAX_CONNECTIONS: int = Field(DEFAULT_MAX_CONNECTIONS, ge=1)
    CELLMFG_LEDGER_URL: str = ""
    CELLMFG_LEDGER_DIR: str = ""
    CELLMFG_LEDGER_RETENTION_DAYS: float | None = Field(None, gt=0, allow_inf_nan=False)
    CELLMFG_LEDGER_REFRESH_SECONDS: float = Field(DEFAULT_LEDGER_REFRESH_SECONDS, gt=0, allow_inf_nan=False)
    CELLMFG_LEDGER_SQLITE_SYNC: Literal["NORMAL", "FULL"] = DEFAULT_LEDGER_SQLITE_SYNC
    CELLMFG_LEDGER_SPOOL_DIR: str = ""
