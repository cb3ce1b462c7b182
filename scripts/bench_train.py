"""Benchmark `cellmfg train all`: total wall time and a per-stage breakdown, into a throwaway MLflow store.

    .venv/bin/python scripts/bench_train.py [--preset paper] [--keep DIR]

Goal: the paper preset under 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--keep", type=Path, help="keep the MLflow store in this folder")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="cellmfg-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"

    # The same environment as `cellmfg train all` (its library settings, oneDNN included, change the last digits).
    from cellmfg_cli import quiet_libraries

    quiet_libraries()
    started = time.perf_counter()
    from training import jobs, tracking
    from training.config import load_config

    tracking.configure()
    imported = time.perf_counter() - started
    watch = jobs.Stopwatch({"import TensorFlow, MLflow": imported})
    load_before = os.getloadavg()[0]
    results = jobs.train_all(load_config(args.preset), stopwatch=watch)
    total = time.perf_counter() - started
    used = os.times()
    print(f"cellmfg train all --preset {args.preset}: {len(results)} registered models in {total:.1f} s "
          f"(goal for paper: < 300 s) on {os.cpu_count()} cores; load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after (1-min); this process used {used.user + used.system:.0f} CPU-seconds")
    for stage, seconds in watch.laps.items():
        print(f"  {seconds:7.1f} s  {stage}")
    print(f"MLflow store: {folder}")


if __name__ == "__main__":
    main()
