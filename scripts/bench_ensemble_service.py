"""What serving the ensemble costs end to end in the service (issue 24, item 1): single-row /predict and explained
rows with K-member ensemble graphs against single nets of the same shape, in the same run.

    .venv/bin/python scripts/bench_ensemble_service.py [--members 5] [--rounds 7] [--calls 400]

Two bundles that differ only in the NMC models (density and mass loading, the two models /predict/electrode answers
for NMC): (a) today's single transfer net, (b) the K-member ensemble graph, both exported by training's code
(`training.nets.transfer_model` / `transfer_ensemble_model`, `registry.promote.export_onnx`) from the same random
weights of the paper's sizes (a 2×32 base net on the six electrode inputs, 32-unit residual adapters; the cost
depends on the graph's shape, not on the values) and served with testkit contracts (the ensemble's interval scaled
by its spread, as a served ensemble's is). Each bundle is loaded into the service's own `Predictor`
(`service.commands.offline`, what `cellmfg predict` and the endpoints call), and timed in alternating rounds so load
from other processes falls on both alike:

  * one row, /predict's default (no interval), and with interval=true (the ensemble's spread fetched and used);
  * explained rows (explain=true, interval=true): 1 row and 100 rows per request.

Prints the median per call (median over rounds of each round's median) and the ratio ensemble / single net; the goal
(issue 24) is at most 1.2× for the single row and for explained rows.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# testkit is not installed (it stays out of the wheel): found beside this script, in the project.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GOAL_RATIO = 1.2
DATASET = "nmc"
LEVEL = {"density": 2.0, "mass_loading": 15.0}


def exported_graphs(members: int, seed: int = 0, head_width: int = 32) -> dict[str, tuple[bytes, bytes]]:
    """task -> (single-net ONNX bytes, K-member ensemble ONNX bytes), exported by training's code; the ensemble's
    adapters are `head_width` wide (the single net's adapter is always 32)."""
    from cellmfg.domain import feature_columns, feature_scaling
    from registry.promote import export_onnx
    from training import nets

    features, hidden, width = len(feature_columns("electrode")), 32, 32
    centre, scale = (np.asarray(v) for v in feature_scaling("electrode"))
    out = {}
    for index, (task, level) in enumerate(LEVEL.items()):
        rng = np.random.default_rng([seed, index])
        layers = [(rng.normal(0, 0.3, (features, hidden)), rng.normal(0, 0.1, hidden)),
                  (rng.normal(0, 0.3, (hidden, hidden)), rng.normal(0, 0.1, hidden)),
                  (rng.normal(0, 0.1 * level, (hidden, 1)), np.array([level]))]
        base = nets.mlp_model(centre, scale, np.ones(features), layers, f"{task}_base")
        single = nets.transfer_model(base, "residual", _head(rng, hidden, width, level), 1.0, f"{task}_single")
        heads = [_head(rng, hidden, head_width, level) for _ in range(members)]
        ensemble = nets.transfer_ensemble_model(base, "residual", heads, [1.0] * members, f"{task}_ensemble")
        out[task] = (export_onnx(single, features).SerializeToString(),
                     export_onnx(ensemble, features).SerializeToString())
    return out


def _head(rng: np.random.Generator, hidden: int, size: int, level: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Random weights of one residual adapter: Dense(size, ReLU) on the base's last hidden layer, then Dense(1)."""
    return [(rng.normal(0, 0.3, (hidden, size)), rng.normal(0, 0.1, size)),
            (rng.normal(0, 0.01 * level, (size, 1)), rng.normal(0, 0.01 * level, 1))]


def bundles(folder: Path, members: int, graphs: dict[str, tuple[bytes, bytes]]) -> dict[str, Path]:
    from cellmfg.domain import TASKS
    from testkit.ensembles import served_model, write_bundle_with

    tasks = {t.target.task: t for t in TASKS if t.dataset == DATASET}
    single = [served_model(tasks[task], graphs[task][0]) for task in LEVEL]
    ensemble = [served_model(tasks[task], graphs[task][1], members) for task in LEVEL]
    return {"single net": write_bundle_with(folder / "single", single),
            f"ensemble K={members}": write_bundle_with(folder / "ensemble", ensemble)}


def graph_floor(graphs: dict[str, tuple[bytes, bytes]], rows: int, rounds: int) -> dict[str, float]:
    """The compute floor of one explained row: onnxruntime alone (one thread, as the service runs it) on `rows`
    masked rows, the count exact SHAP sends per explained row, for each NMC model's single-net and ensemble graphs;
    median seconds per explained row (both models) over alternating rounds, and their ratio. No service code runs:
    whatever the service does around the graph, an explained row cannot cost the ensemble less than this ratio."""
    import onnxruntime as ort

    from cellmfg.domain import feature_scaling

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    centre, scale = (np.asarray(v, dtype=np.float32) for v in feature_scaling("electrode"))
    x = (centre + scale * np.random.default_rng(3).uniform(-1, 1, (rows, len(centre)))).astype(np.float32)
    sessions = {kind: [ort.InferenceSession(pair[index], options, providers=["CPUExecutionProvider"])
                       for pair in graphs.values()] for index, kind in enumerate(("single", "ensemble"))}

    def run(kind: str) -> None:
        for session in sessions[kind]:
            session.run(None, {session.get_inputs()[0].name: x})

    times: dict[str, list[float]] = {"single": [], "ensemble": []}
    for _ in range(rounds):
        for kind in times:
            times[kind].append(timed(functools.partial(run, kind), 50))
    single, ensemble = (float(np.median(times[kind])) for kind in ("single", "ensemble"))
    return {"rows": rows, "single_us": single * 1e6, "ensemble_us": ensemble * 1e6, "ratio": ensemble / single}


def timed(call: Callable[[], Any], calls: int) -> float:
    """Median seconds per call over `calls` calls."""
    times = np.empty(calls)
    for index in range(calls):
        started = time.perf_counter()
        call()
        times[index] = time.perf_counter() - started
    return float(np.median(times))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds (the median round is reported)")
    parser.add_argument("--calls", type=int, default=400, help="single-row calls per round (explained: fewer)")
    parser.add_argument("--head-width", type=int, default=32, help="the ensemble adapters' width (default 32, the "
                                                                    "single net's; smaller: what a narrower "
                                                                    "ensemble would cost)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from cellmfg_cli import quiet_libraries

    quiet_libraries()
    from service.commands.offline import offline_predictor, offline_settings
    from testkit.fakes import example_rows

    load_before = os.getloadavg()[0]
    graphs = exported_graphs(args.members, head_width=args.head_width)
    with tempfile.TemporaryDirectory(prefix="bench-ensemble-service-") as scratch:
        predictors = {name: offline_predictor(offline_settings(path))
                      for name, path in bundles(Path(scratch), args.members, graphs).items()}
    one = example_rows("electrode", DATASET, 1, seed=1)
    hundred = example_rows("electrode", DATASET, 100, seed=2)
    cases: dict[str, tuple[Callable[[Any], Any], int]] = {
        "1 row": (lambda p: p.predict("electrode", DATASET, one), args.calls),
        "1 row, interval": (lambda p: p.predict("electrode", DATASET, one, interval=True), args.calls),
        "1 row explained": (lambda p: p.predict("electrode", DATASET, one, explain=True, interval=True),
                            max(20, args.calls // 4)),
        "100 rows explained": (lambda p: p.predict("electrode", DATASET, hundred, explain=True, interval=True),
                               max(5, args.calls // 40)),
    }
    for predictor in predictors.values():  # warm-up, and both answer with their own models
        for run, _ in cases.values():
            for _ in range(5):
                answer = run(predictor)
        assert len(answer["predictions"]) == 100
    names = list(predictors)
    rounds: dict[tuple[str, str], list[float]] = {(c, n): [] for c in cases for n in names}
    for round_index in range(args.rounds):
        order = names if round_index % 2 == 0 else names[::-1]
        for case, (run, calls) in cases.items():
            for name in order:
                rounds[(case, name)].append(timed(functools.partial(run, predictors[name]), calls))
    spread_answer = predictors[names[1]].predict("electrode", DATASET, one, interval=True)
    results: dict[str, Any] = {"members": args.members, "head_width": args.head_width, "rounds": args.rounds,
                               "cpus": os.cpu_count(),
                               "load_before": load_before, "load_after": os.getloadavg()[0], "cases": {}}
    print(f"Service predict path (in-process Predictor), NMC electrode: two models per request; ensemble heads "
          f"{args.head_width} wide (single net 32); {args.rounds} "
          f"alternating rounds; load average {load_before:.1f} before, {results['load_after']:.1f} after")
    print(f"  the ensemble answers a spread: {sorted(spread_answer['predictions'][0].get('spread', {}))}")
    ok = True
    for case in cases:
        single, ensemble = (float(np.median(rounds[(case, n)])) for n in names)
        ratio = ensemble / single
        within = ratio <= GOAL_RATIO
        ok &= within
        results["cases"][case] = {"single_us": single * 1e6, "ensemble_us": ensemble * 1e6, "ratio": ratio,
                                  "rounds_single_us": [v * 1e6 for v in rounds[(case, names[0])]],
                                  "rounds_ensemble_us": [v * 1e6 for v in rounds[(case, names[1])]]}
        print(f"  {case:20s} single net {single * 1e6:9.1f} µs   ensemble K={args.members} {ensemble * 1e6:9.1f} µs"
              f"   ratio {ratio:.2f}  ({'within' if within else 'OVER'} {GOAL_RATIO}×)")
    single_predictor = predictors[names[0]]
    model = single_predictor.store.models()[0]
    floor = graph_floor(graphs, single_predictor.explainers.model_rows_per_row(model), args.rounds)
    results["graph_floor"] = floor
    print(f"  {'floor: graphs alone':20s} single net {floor['single_us']:9.1f} µs   ensemble K={args.members} "
          f"{floor['ensemble_us']:9.1f} µs   ratio {floor['ratio']:.2f}  (onnxruntime on the {floor['rows']:,} "
          f"masked rows of one explained row, no service code)")
    results["meets_goal"] = ok
    print(f"  goal: ensemble within {GOAL_RATIO}× of the single net for one row and for explained rows: "
          f"{'PASS' if ok else 'FAIL'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
