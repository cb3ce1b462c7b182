#!/usr/bin/env python3
"""Throughput of 1 against N replicas behind HAProxy on this machine (issue 27), single-row /predict/electrode:

    .venv/bin/python scripts/bench_scale.py [--bundle DIR] [--replicas 3] [--seconds 20] [--connections 32]

Each configuration: N `cellmfg serve` processes (one worker each) on the bundle (default: the fake bundle),
Debian's haproxy with the compose stack's configuration in front, wrk POSTing the README's NMC row. One replica
direct (no balancer) is measured too, for the balancer's own cost. On a 2-core machine N replicas share the same two
cores with HAProxy and wrk, so more replicas cannot raise throughput here; the figures say how much they cost.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testkit.bad_inputs import electrode_row
from testkit.fakes import write_fake_bundle
from testkit.loadbalancer import LoadResult, haproxy_server, start_wrk, wrk_result
from testkit.processes import ServerProcess, cellmfg_server, clean_env, free_port


def _measure(folder: Path, bundle: Path, replicas: int, balanced: bool, seconds: int,
             connections: int) -> LoadResult:
    folder.mkdir(parents=True, exist_ok=True)
    servers: list[ServerProcess] = []
    balancer: ServerProcess | None = None
    try:
        for i in range(replicas):
            env = clean_env(BENTOML_HOME=str(folder / f"bentoml-{i}"), CELLMFG_POLL_SECONDS="0")
            servers.append(cellmfg_server(env, folder / f"replica-{i}.log", bundle=bundle).start())
        for server in servers:
            server.wait_ready(timeout=240)
        url = servers[0].url
        if balanced:
            balancer = haproxy_server(folder, [s.port for s in servers], free_port()).start()
            balancer.wait_ready(timeout=30)
            time.sleep(3)  # every replica in rotation
            url = balancer.url
        body = {"chemistry": "nmc", "rows": [electrode_row()]}
        # A short warm-up, not counted.
        wrk_result(start_wrk(f"{url}/predict/electrode", body, 3, connections, 2, folder), timeout=60)
        return wrk_result(start_wrk(f"{url}/predict/electrode", body, seconds, connections, 2, folder),
                          timeout=seconds + 60)
    finally:
        if balancer is not None:
            balancer.stop()
        for server in servers:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="bundle to serve (default: the fake bundle)")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        folder = Path(tmp)
        bundle = args.bundle or write_fake_bundle(folder / "bundle")
        configurations = [("1 replica, direct", 1, False), ("1 replica behind HAProxy", 1, True),
                          (f"{args.replicas} replicas behind HAProxy", args.replicas, True)]
        print(f"| configuration | req/s | p50 ms | p99 ms | failed | (wrk {args.seconds} s, c={args.connections}) |")
        print("|---|---|---|---|---|---|")
        rates = []
        for label, replicas, balanced in configurations:
            result = _measure(folder / f"run-{len(rates)}", bundle, replicas, balanced, args.seconds,
                              args.connections)
            rates.append(result.requests_per_second)
            print(f"| {label} | {result.requests_per_second:.0f} | {result.p50_ms:.1f} | {result.p99_ms:.1f} "
                  f"| {result.failures} | |", flush=True)
        print(f"\n{args.replicas} replicas / 1 replica behind HAProxy: {rates[2] / rates[1]:.2f}x on this machine "
              f"({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
