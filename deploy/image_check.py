"""Build-time check of the cellmfg image, run by the Dockerfile in its builder stage.

1. Imports what the server imports before it is ready. Besides proving the slimmed virtualenv still works, this
   writes byte code for exactly those modules; the rest of the virtualenv ships without any (image size).
2. shap, numba and llvmlite are not installed: the service computes its SHAP values itself (service.engine.shapley).
3. When a bundle is baked in, verifies it (manifest, checksums, contracts), runs every model once through
   onnxruntime on its contract's own background rows with the service's own checks (`build_served`), and explains
   two of those rows: base value + contributions must equal the prediction.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import time
from pathlib import Path

# The service and the code paths `bentoml serve` takes to start it (supervisor, HTTP worker; the worker alone
# imports service.answers, with numpy and onnxruntime), and the MLflow client the registry source uses. BentoML's
# internals move between releases: a missing one is reported, not fatal.
REQUIRED = ["service.cli", "service.service", "service.answers", "cellmfg.contract", "onnxruntime"]
WARM = ["bentoml_cli.cli", "_bentoml_impl.server.serving", "_bentoml_impl.worker.service", "uvicorn",
        "mlflow.tracking", "mlflow.artifacts"]
BUNDLE = Path("/opt/cellmfg/bundle")
NOT_SHIPPED = ["shap", "numba", "llvmlite"]


def main() -> int:
    started = time.perf_counter()
    for name in REQUIRED:
        importlib.import_module(name)
    for name in WARM:
        try:
            importlib.import_module(name)
        except ImportError as error:
            print(f"image-check: (not pre-compiled) {name}: {error}", file=sys.stderr)
    print(f"image-check: start-up imports OK in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    shipped = [name for name in NOT_SHIPPED if importlib.util.find_spec(name) is not None]
    if shipped:
        print(f"image-check: {', '.join(shipped)} should not be in the serving image", file=sys.stderr)
        return 1

    if not (BUNDLE / "manifest.json").is_file():
        print("image-check: no bundle baked in; the container needs MLFLOW_TRACKING_URI or CELLMFG_BUNDLE",
              file=sys.stderr)
        return 0
    import numpy as np

    from cellmfg.contract import load_bundle
    from service.engine.model_store import ModelLoadError, build_served
    from service.engine.shapley import MAX_FEATURES, make_plan, shapley_values

    models = load_bundle(BUNDLE)
    for model in models:
        try:  # the service's own checks: graph against contract, finite predictions on the background rows
            served = build_served(model, model.name, 1, "the baked-in bundle", revision="")
        except ModelLoadError as error:
            print(f"image-check: {error}", file=sys.stderr)
            return 1
        rows = served.background.astype(np.float32)
        if rows.shape[1] > MAX_FEATURES:
            continue  # the service refuses to explain this model; nothing to check
        plan = make_plan(served.predict, rows)
        values = shapley_values(served.predict, plan, rows[:2])
        if not np.allclose(plan.base_value + values.sum(axis=1), served.predict(rows[:2]), rtol=1e-5, atol=0):
            print(f"image-check: {model.name} v{model.version}: explanations do not add up to the predictions",
                  file=sys.stderr)
            return 1
    print("image-check: bundle OK: " + ", ".join(f"{m.name} v{m.version}" for m in models), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
