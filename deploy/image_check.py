"""Build-time check of the cellmfg image, run by the Dockerfile in its builder stage.

1. Imports what the server imports before it is ready. Besides proving the slimmed virtualenv still works, this
   writes byte code for exactly those modules; the rest of the virtualenv ships without any (image size).
2. When a bundle is baked in, verifies it (manifest, checksums, contracts) and runs every model once through
   onnxruntime on its contract's own background rows, as the service does before serving a model.
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

# The service and the code paths `bentoml serve` takes to start it (supervisor, HTTP worker), and the MLflow client
# the registry source uses. BentoML's internals move between releases: a missing one is reported, not fatal.
REQUIRED = ["service.cli", "service.service", "cellmfg.contract", "onnxruntime"]
WARM = ["bentoml_cli.cli", "_bentoml_impl.server.serving", "_bentoml_impl.worker.service", "uvicorn",
        "mlflow.tracking", "mlflow.artifacts"]
BUNDLE = Path("/opt/cellmfg/bundle")


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

    if not (BUNDLE / "manifest.json").is_file():
        print("image-check: no bundle baked in; the container needs MLFLOW_TRACKING_URI or CELLMFG_BUNDLE",
              file=sys.stderr)
        return 0
    import numpy as np
    import onnxruntime as ort

    from cellmfg.contract import load_bundle

    models = load_bundle(BUNDLE)
    for model in models:
        contract = model.contract
        session = ort.InferenceSession(model.onnx_bytes, providers=["CPUExecutionProvider"])
        rows = np.asarray(contract.shap_background, dtype=np.float32)
        out = np.asarray(session.run([contract.output_name], {contract.input_name: rows})[0])
        if out.shape[0] != len(rows) or not np.all(np.isfinite(out)):
            print(f"image-check: {model.name} v{model.version}: bad predictions on its background rows",
                  file=sys.stderr)
            return 1
    print("image-check: bundle OK: " + ", ".join(f"{m.name} v{m.version}" for m in models), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
