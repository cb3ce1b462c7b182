"""Where the offline commands (`cellmfg predict`, `cellmfg design`) take their models from: one rule for both.

`--bundle DIR` wins; else CELLMFG_BUNDLE; else MLFLOW_TRACKING_URI's registry; else the project's own SQLite store
(what `cellmfg train` and `cellmfg registry` wrote to). An explicit bundle is what the user wants answered with, so
a registry set in the environment is ignored then.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.commands.serve import PROJECT_ROOT, server_environment

DEFAULT_TRACKING_DB = PROJECT_ROOT / "mlflow.db"  # the store `cellmfg train` and `registry` use when unset


def offline_settings(bundle: Path | None) -> Any:
    """Service settings for a command that loads models without a server, by the rule in this module's docstring."""
    from service.engine.config import Settings

    env = server_environment(bundle=bundle)
    if not env.get("CELLMFG_BUNDLE") and not env.get("MLFLOW_TRACKING_URI") and DEFAULT_TRACKING_DB.is_file():
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{DEFAULT_TRACKING_DB}"
    if bundle is not None:
        env.pop("MLFLOW_TRACKING_URI", None)  # an explicit bundle is what the user wants scored with
    return Settings.from_env(env)


def offline_predictor(settings: Any) -> Any:
    """The service's Predictor over the source's whole catalogue, loaded once, no polling."""
    from service.engine.explain import Explainers
    from service.engine.model_store import ModelStore
    from service.engine.predict import Predictor
    from service.engine.sources import open_source

    store = ModelStore(open_source(settings), None, settings.ort_threads, required=settings.required_models)
    store.load_all()
    return Predictor(store, Explainers(), settings)
