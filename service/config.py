"""Service settings, read from environment variables once when the service starts (never at import)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cellmfg.___domain import MODEL_NAMES, model_name

DEFAULT_ALIAS = "champion"
DEFAULT_POLL_SECONDS = 30.0
DEFAULT_ORT_THREADS = 1
DEFAULT_MAX_ROWS = 10_000

# The eight served models: each pretrained/transfer net of the paper, exported to ONNX.
SERVED_MODEL_NAMES: tuple[str, ...] = tuple(f"{name}_onnx" for name in MODEL_NAMES)


def served_name(task: str, dataset: str) -> str:
    """Registered ONNX model that answers `task` on `dataset`, e.g. density_nmc_onnx."""
    return f"{model_name(task, dataset)}_onnx"


N = TypeVar("N", int, float)


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
    Security (read by service.security): CELLMFG_API_TOKEN, CELLMFG_API_TOKEN_FILE, CELLMFG_OPEN_PATHS,
    CELLMFG_MAX_BODY_BYTES.
    """

    bundle: Path | None = None
    tracking_uri: str | None = None
    alias: str = DEFAULT_ALIAS
    poll_seconds: float = DEFAULT_POLL_SECONDS
    ort_threads: int = DEFAULT_ORT_THREADS
    max_rows: int = DEFAULT_MAX_ROWS

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        bundle_text = env.get("CELLMFG_BUNDLE", "").strip()
        tracking_uri = env.get("MLFLOW_TRACKING_URI", "").strip() or None
        if not bundle_text and not tracking_uri:
            raise ConfigError("no model source: set CELLMFG_BUNDLE to a bundle directory or MLFLOW_TRACKING_URI "
                              "to an MLflow registry (for example `cellmfg serve --bundle DIR`)")
        bundle = Path(bundle_text).expanduser().resolve() if bundle_text else None
        if bundle is not None and not bundle.is_dir() and tracking_uri is None:
            raise ConfigError(f"CELLMFG_BUNDLE={bundle_text}: not a directory")
        alias = env.get("CELLMFG_ALIAS", DEFAULT_ALIAS).strip() or DEFAULT_ALIAS
        return cls(
            bundle=bundle,
            tracking_uri=tracking_uri,
            alias=alias,
            poll_seconds=_number(env, "CELLMFG_POLL_SECONDS", DEFAULT_POLL_SECONDS, float, minimum=0.0),
            ort_threads=_number(env, "CELLMFG_ORT_THREADS", DEFAULT_ORT_THREADS, int, minimum=1),
            max_rows=_number(env, "CELLMFG_MAX_ROWS", DEFAULT_MAX_ROWS, int, minimum=1),
        )


def _number(env: Mapping[str, str], key: str, default: N, kind: type[N], minimum: N) -> N:
    text = env.get(key, "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        raise ConfigError(f"{key}={text!r}: not a valid {kind.__name__}") from None
    if value < minimum:
        raise ConfigError(f"{key}={text!r}: must be at least {minimum}")
    return value
