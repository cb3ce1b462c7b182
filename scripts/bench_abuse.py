#!/usr/bin/env python3
"""What an oversized /design body costs the service and everyone else (issue 22, finding 2):

    .venv/bin/python scripts/bench_abuse.py [--bundle DIR] [--keys 200000] [--rounds 10]

A real `cellmfg serve` on the bundle (default: the fake bundle) gets a /design/electrode body whose `fixed` holds
`--keys` unknown parameters (200,000 keys: about 3 MB), `--rounds` times, while single-row /predict/electrode requests
run one after another on another connection. Prints the design answers' status and size and both latency
distributions. Goals: the design answer bounded and under 100 ms; the concurrent predictions under 50 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testkit.bad_inputs import electrode_row
from testkit.fakes import write_fake_bundle
from testkit.processes import start_local_server


def _ms(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1000:.1f} ms, max {max(values) * 1000:.1f} ms (n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-abuse-") as tmp:
        folder = Path(tmp)
        server, _ = start_local_server(folder, args.bundle or write_fake_bundle(folder / "bundle"))
        try:
            url = server.url
            body = json.dumps({"chemistry": "nmc", "targets": {"density_g_cm3": {"value": 3.0}},
                               "fixed": {f"k{i}": 1.0 for i in range(args.keys)}}).encode()
            prediction = {"chemistry": "nmc", "rows": [electrode_row()]}
            with httpx.Client() as client:
                for _ in range(20):  # warm-up
                    client.post(f"{url}/predict/electrode", json=prediction).raise_for_status()
            design_seconds: list[float] = []
            answers: set[tuple[int, int]] = set()
            predict_seconds: list[float] = []

            def oversized() -> None:
                with httpx.Client(timeout=60) as client:
                    for _ in range(args.rounds):
                        started = time.perf_counter()
                        answer = client.post(f"{url}/design/electrode", content=body,
                                             headers={"content-type": "application/json"})
                        design_seconds.append(time.perf_counter() - started)
                        answers.add((answer.status_code, len(answer.content)))

            attacker = threading.Thread(target=oversized)
            attacker.start()
            with httpx.Client() as client:
                while attacker.is_alive():
                    started = time.perf_counter()
                    client.post(f"{url}/predict/electrode", json=prediction).raise_for_status()
                    predict_seconds.append(time.perf_counter() - started)
            attacker.join()
        finally:
            server.stop()
    print(f"design body {len(body):,} bytes ({args.keys:,} unknown keys in `fixed`); answers (status, bytes): "
          f"{sorted(answers)}")
    print(f"design answer: {_ms(design_seconds)}  (goal < 100 ms)")
    print(f"concurrent single-row /predict: {_ms(predict_seconds)}  (goal < 50 ms)")


if __name__ == "__main__":
    main()
