"""What shadow scoring costs: single-row requests/s with a challenger scored beside the champion, against none.

    .venv/bin/python scripts/bench_shadow.py [--duration 5] [--rounds 3] [--json out.json]

Three services up at once, each on its own SQLite MLflow registry of the fake NMC models (testkit) with the
prediction ledger on (its default, SQLite NORMAL): no challenger; a challenger for density (the issue's case); a
challenger for both NMC models. They are measured in alternating rounds (single-row JSON requests to
/predict/electrode, concurrency 1 and 32), so load from other processes falls on all alike; each figure is the
best round. Goal (issue 26): single-row req/s with a shadow >= 0.8 x without, same run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_service import best, load

from cellmfg.domain import TASKS
from testkit.fakes import example_rows, fake_model
from testkit.processes import cellmfg_server, clean_env
from testkit.registry import register_model, sqlite_tracking_uri

GOAL_RATIO = 0.8
NMC = [task for task in TASKS if task.dataset == "nmc"]
CONFIGS = {"none": (), "density": ("density",), "both": ("density", "mass_loading")}


def registry(folder: Path, challenged: tuple[str, ...]) -> str:
    """An SQLite registry with the NMC champions, and a challenger (other weights) for each task in `challenged`."""
    folder.mkdir(parents=True, exist_ok=True)
    uri = sqlite_tracking_uri(folder)
    for task in NMC:
        register_model(uri, fake_model(task), "champion", folder / "artifacts")
        if task.target.task in challenged:
            register_model(uri, fake_model(task, version="2", alias="challenger", salt=7), "challenger",
                           folder / "artifacts")
    return uri


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per throughput measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    single = {"chemistry": "nmc", "rows": example_rows("electrode", "nmc", 1)}
    with tempfile.TemporaryDirectory(prefix="bench-shadow-") as tmp:
        work = Path(tmp)
        servers = {}
        for name, challenged in CONFIGS.items():
            env = clean_env(MLFLOW_TRACKING_URI=registry(work / f"mlflow-{name}", challenged),
                            BENTOML_HOME=str(work / f"home-{name}"), CELLMFG_POLL_SECONDS="0",
                            CELLMFG_LEDGER_DIR=str(work / f"ledger-{name}"))
            servers[name] = cellmfg_server(env, work / f"service-{name}.log")
        rounds: dict[str, dict[str, list[dict[str, float]]]] = {name: {"c1": [], "c32": []} for name in servers}
        try:
            for server in servers.values():
                server.start()
            for server in servers.values():
                server.wait_ready(timeout=240)
            for name, server in servers.items():  # the shadow is really there (or not)
                import httpx

                shown = httpx.post(f"{server.url}/predict/electrode?shadow=true", json=single).json()
                assert set(shown.get("challengers", {})) == set(CONFIGS[name]), (name, shown)
            for _ in range(args.rounds):
                for name, server in servers.items():
                    for c in (1, 32):
                        rounds[name][f"c{c}"].append(load(f"{server.url}/predict/electrode", single, c,
                                                          args.duration))
        finally:
            for server in servers.values():
                server.stop()
    results: dict[str, Any] = {name: {key: best(runs) for key, runs in figures.items()}
                               for name, figures in rounds.items()}
    base = results["none"]
    print(f"{'challengers':12s} {'c1 req/s':>9s} {'c1 p50 ms':>10s} {'c32 req/s':>10s}  vs none (c1, c32)")
    for name, r in results.items():
        print(f"{name:12s} {r['c1']['rps']:9.0f} {r['c1']['p50_ms']:10.2f} {r['c32']['rps']:10.0f}  "
              f"{r['c1']['rps'] / base['c1']['rps']:.2f}x, {r['c32']['rps'] / base['c32']['rps']:.2f}x")
    ratio = results["density"]["c1"]["rps"] / base["c1"]["rps"]
    print(f"single-row req/s with a density challenger in shadow / without: {ratio:.2f} (target >= {GOAL_RATIO}): "
          f"{'PASS' if ratio >= GOAL_RATIO else 'FAIL'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if ratio >= GOAL_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
