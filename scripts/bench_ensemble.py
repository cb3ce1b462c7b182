"""What the ensemble costs a single-row prediction: onnxruntime on the exported single-adapter transfer graph against
the K-member ensemble graph (the base once, the K heads fused), as the service runs them (one thread, one session
call, the spread fetched with the prediction).

    .venv/bin/python scripts/bench_ensemble.py [--members 5] [--calls 5000]

Random weights of the paper's sizes (a 2×32 base net on the six electrode inputs, a 32-unit residual adapter): the
cost depends on the graph's shape, not on the values. Prints the median and 90th percentile microseconds per call
and the ratio (issue 24 asks for at most 1.2× today's single-row cost). The same comparison end to end through the
service's predict path, single rows and explained rows: scripts/bench_ensemble_service.py.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _timed(run: object, calls: int) -> np.ndarray:
    times = np.empty(calls)
    for index in range(calls):
        started = time.perf_counter()
        run()  # type: ignore[operator]
        times[index] = time.perf_counter() - started
    return times * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()

    from cellmfg_cli import quiet_libraries

    quiet_libraries()
    import onnxruntime as ort

    from registry.promote import export_onnx
    from service.engine.model_store import session_options
    from training import nets

    rng = np.random.default_rng(0)
    features, hidden, width = 6, 32, 32
    layers = [(rng.normal(0, 0.3, (features, hidden)), rng.normal(0, 0.1, hidden)),
              (rng.normal(0, 0.3, (hidden, hidden)), rng.normal(0, 0.1, hidden)),
              (rng.normal(0, 0.1, (hidden, 1)), np.array([2.0]))]
    base = nets.mlp_model(np.zeros(features), np.ones(features), np.ones(features), layers, "base")
    members = [[(rng.normal(0, 0.3, (hidden, width)), rng.normal(0, 0.1, width)),
                (rng.normal(0, 0.1, (width, 1)), rng.normal(0, 0.1, 1))] for _ in range(args.members)]
    single = nets.transfer_model(base, "residual", members[0], 1.0, "single")
    ensemble = nets.transfer_ensemble_model(base, "residual", members, [1.0] * args.members, "ensemble")
    x = rng.normal(0, 1, (1, features)).astype(np.float32)
    sessions = {name: ort.InferenceSession(export_onnx(model, features).SerializeToString(), session_options(1),
                                           providers=["CPUExecutionProvider"])
                for name, model in (("single", single), ("ensemble", ensemble))}
    runs = {
        "single net, prediction": lambda: sessions["single"].run(["prediction"], {"features": x}),
        f"ensemble K={args.members}, prediction": lambda: sessions["ensemble"].run(["prediction"], {"features": x}),
        f"ensemble K={args.members}, prediction + spread":
            lambda: sessions["ensemble"].run(["prediction", "spread"], {"features": x}),
    }
    for run in runs.values():  # warm-up
        _timed(run, 200)
    medians = {}
    for name, run in runs.items():
        times = _timed(run, args.calls)
        medians[name] = float(np.median(times))
        print(f"{name:40s} median {medians[name]:7.1f} µs   p90 {np.percentile(times, 90):7.1f} µs")
    today = medians["single net, prediction"]
    for name, median in list(medians.items())[1:]:
        print(f"{name:40s} {median / today:.2f}× the single net")


if __name__ == "__main__":
    main()
