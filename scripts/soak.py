"""Bounded soak test of the prediction service on the loopback interface.

    .venv/bin/python scripts/soak.py [--duration 300] [--concurrency 32] [--warmup 30] [--bundle DIR]
                                     [--workers 1] [--url URL --pid PID] [--json out.json]

Without --url it starts `cellmfg serve` on a free 127.0.0.1 port, serving --bundle or (default) the fake bundle of
testkit/fakes.py written to a temporary folder, and stops it at the end. With --url it loads a running
server (which must serve --bundle, since answers are checked against those ONNX files); give --pid (BentoML's
supervisor) to measure its memory and file descriptors. With CELLMFG_API_TOKEN in the environment every request
carries it as a bearer token (the token is never printed).

--concurrency clients (aiohttp, one keep-alive connection each) send a fixed mix for --duration seconds:
  * 55 % valid predictions (1-64 rows, sometimes 1,000; in and out of the training domain; with intervals);
  * 15 % valid predictions with explain=true (1-4 rows);
  * 30 % invalid requests from the bad-input catalogue (testkit/bad_inputs.py, which tests/test_robustness.py
    sends too; bodies over 4 MiB left out), each expecting a specific 4xx with a message.
Every 200 is checked against onnxruntime run here on the same ONNX files: predictions equal, in_domain flags and
intervals right, SHAP values adding up to the prediction. Server memory (RSS, summed over BentoML's supervisor and
workers) and open file descriptors are measured at rest after the warm-up and again after the run.

Pass: zero 5xx, zero wrong answers, zero transport errors, RSS growth under 10 % and no file-descriptor growth.
Exit status 0 on pass, 1 on fail, 2 if the server could not be started.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# testkit is not installed (it stays out of the wheel): found beside this script, in the project.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cellmfg.contract import load_bundle
from cellmfg.domain import DATASETS, feature_columns, targets_for
from testkit.bad_inputs import MIB, bad_inputs, parsed_answer, refusal_problem
from testkit.fakes import OnnxReference, write_fake_bundle
from testkit.processes import LOOPBACK_PREFIXES, start_local_server

RSS_GROWTH_LIMIT_PCT = 10.0
REQUEST_TIMEOUT_S = 120.0
POOL_SIZE = 600


# ---------------------------------------------------------------------------------------------------------------
# Requests and the answers expected


@dataclass
class Case:
    kind: str  # valid | explain | invalid
    path: str
    body: bytes
    content_type: str = "application/json"
    expect_status: int = 200
    # valid and explain: target column -> (model name, predictions, relative conformal quantile)
    expected: dict[str, tuple[str, np.ndarray, float]] = field(default_factory=dict)
    in_domain: list[bool] = field(default_factory=list)
    interval: bool = False
    fragments: tuple[str, ...] = ()  # invalid: texts the error message must contain


def _rows(rng: np.random.Generator, dataset: str, n: int, outside: bool) -> np.ndarray:
    spec = DATASETS[dataset]
    lows = np.array([spec.ranges[q.column][0] for q in spec.features])
    highs = np.array([spec.ranges[q.column][1] for q in spec.features])
    x = lows + rng.random((n, len(lows))) * (highs - lows)
    if outside:  # push one feature of some rows past the training range, inside the physical bounds
        phys_hi = np.array([q.physical_max for q in spec.features])
        for i in rng.choice(n, size=max(1, n // 3), replace=False):
            j = int(rng.integers(len(lows)))
            x[i, j] = min(highs[j] + (highs[j] - lows[j] + 1.0) * 0.5, phys_hi[j])
    return np.round(x, 4)


def _valid_case(rng: np.random.Generator, ref: OnnxReference, explain: bool) -> Case:
    dataset = str(rng.choice(sorted(DATASETS)))
    spec = DATASETS[dataset]
    kind = spec.kind
    n = int(rng.integers(1, 5)) if explain else 1000 if rng.random() < 0.05 else int(rng.integers(1, 65))
    x = _rows(rng, dataset, n, outside=bool(rng.random() < 0.3))
    columns = feature_columns(kind)
    interval = bool(rng.random() < 0.5) and not explain
    field_name = "chemistry" if kind == "electrode" else "dataset"
    body = {field_name: dataset, "rows": [dict(zip(columns, map(float, row), strict=True)) for row in x],
            "explain": explain, "interval": interval}
    expected = {}
    for target in targets_for(kind):
        name = f"{target.task}_{dataset}_onnx"
        contract = ref.models[name].contract
        expected[target.column] = (name, ref.predict(name, x), contract.conformal.relative_quantile)
    first = ref.models[next(iter(expected.values()))[0]].contract
    low = np.array([f.train_min for f in first.features])
    high = np.array([f.train_max for f in first.features])
    outside = np.asarray(((x < low) | (x > high)).any(axis=1))
    in_domain = [not bool(v) for v in outside]
    return Case(kind="explain" if explain else "valid", path=f"/predict/{kind}", body=json.dumps(body).encode(),
                expected=expected, in_domain=in_domain, interval=interval)


def invalid_catalogue(max_body_bytes: int = 4 * MIB) -> list[Case]:
    """The bad-input catalogue's cases with bodies up to `max_body_bytes`: a 50 MB body in the mix would measure
    the loopback's bandwidth rather than the service."""
    return [Case(kind="invalid", path=c.path, body=c.body, content_type=c.content_type, expect_status=c.status,
                 fragments=c.fragments) for c in bad_inputs() if len(c.body) <= max_body_bytes]


DEFAULT_MIX = {"valid": 55.0, "explain": 15.0, "invalid": 30.0}


def parse_mix(text: str) -> dict[str, float]:
    """'valid=55,explain=15,invalid=30' -> weights (kinds left out get 0)."""
    mix = dict.fromkeys(DEFAULT_MIX, 0.0)
    for part in text.split(","):
        kind, _, weight = part.partition("=")
        if kind.strip() not in mix:
            raise ValueError(f"unknown request kind {kind!r}; use {', '.join(mix)}")
        mix[kind.strip()] = float(weight)
    if sum(mix.values()) <= 0:
        raise ValueError("the mix needs a positive weight")
    return mix


def build_pool(ref: OnnxReference, size: int, seed: int, mix: dict[str, float] = DEFAULT_MIX) -> list[Case]:
    rng = np.random.default_rng(seed)
    catalogue = invalid_catalogue()
    total = sum(mix.values())
    valid_below, explain_below = mix["valid"] / total, (mix["valid"] + mix["explain"]) / total
    pool: list[Case] = []
    for i in range(size):
        draw = rng.random()
        if draw < valid_below:
            pool.append(_valid_case(rng, ref, explain=False))
        elif draw < explain_below:
            pool.append(_valid_case(rng, ref, explain=True))
        else:
            pool.append(catalogue[i % len(catalogue)])
    return pool


# ---------------------------------------------------------------------------------------------------------------
# Checking answers


def check(case: Case, status: int, text: str) -> str | None:
    """None if the answer is right, else what is wrong."""
    if case.kind == "invalid":
        return refusal_problem(status, text, case.expect_status, case.fragments)
    answer, problem = parsed_answer(status, text, case.expect_status)
    if problem is not None:
        return problem
    predictions = answer.get("predictions")
    n = len(case.in_domain)
    if not isinstance(predictions, list) or len(predictions) != n:
        return f"{len(predictions) if isinstance(predictions, list) else 'no'} predictions for {n} rows"
    for column, (name, expected, quantile) in case.expected.items():
        got = np.array([row[column] for row in predictions], dtype=np.float64)
        if not np.array_equal(got, expected):
            worst = int(np.argmax(np.abs(got - expected)))
            return f"{column} row {worst}: {got[worst]!r} != onnxruntime {expected[worst]!r} ({name})"
        if case.interval:
            half = np.abs(expected) * quantile
            bounds = np.array([row["interval"][column] for row in predictions], dtype=np.float64)
            if not np.allclose(bounds[:, 0], expected - half, rtol=1e-12, atol=0) or \
                    not np.allclose(bounds[:, 1], expected + half, rtol=1e-12, atol=0):
                return f"{column}: interval differs from prediction +- {quantile} * |prediction|"
        if case.kind == "explain":
            for i, row in enumerate(predictions):
                explanation = row["explanation"][column]
                total = explanation["base_value"] + sum(explanation["contributions"].values())
                if not math.isclose(total, expected[i], rel_tol=1e-5, abs_tol=0):
                    return f"{column} row {i}: SHAP values add up to {total}, prediction {expected[i]}"
    flags = [row["in_domain"] for row in predictions]
    if flags != case.in_domain:
        return f"in_domain flags {flags[:10]} differ from the training ranges' {case.in_domain[:10]}"
    for row, inside in zip(predictions, case.in_domain, strict=True):
        if inside == bool(row["out_of_domain"]):
            return f"out_of_domain {row['out_of_domain']} contradicts in_domain={inside}"
    return None


# ---------------------------------------------------------------------------------------------------------------
# Load


@dataclass
class Tally:
    statuses: Counter[int] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    wrong: int = 0
    transport_errors: int = 0
    examples: list[str] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"valid": [], "explain": [], "invalid": []})

    @property
    def requests(self) -> int:
        return sum(self.statuses.values()) + self.transport_errors

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    def note(self, text: str) -> None:
        if len(self.examples) < 10:
            self.examples.append(text)


async def run_load(url: str, pool: list[Case], concurrency: int, duration: float, tally: Tally, seed: int,
                   headers: dict[str, str]) -> None:
    import aiohttp

    deadline = time.monotonic() + duration
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)

    async def client(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            while time.monotonic() < deadline:
                case = pool[rng.randrange(len(pool))]
                started = time.perf_counter()
                try:
                    async with session.post(url + case.path, data=case.body,
                                            headers={**headers, "Content-Type": case.content_type}) as response:
                        text = await response.text(errors="replace")
                        status = response.status
                except (TimeoutError, aiohttp.ClientError) as error:
                    tally.transport_errors += 1
                    tally.note(f"{case.kind} {case.path}: {type(error).__name__}: {error}")
                    continue
                tally.latencies[case.kind].append(time.perf_counter() - started)
                tally.statuses[status] += 1
                tally.kinds[case.kind] += 1
                problem = check(case, status, text)
                if problem is not None:
                    if status < 500:
                        tally.wrong += 1
                    tally.note(f"{case.kind} {case.path}: {problem}")

    await asyncio.gather(*(client(i) for i in range(concurrency)))


# ---------------------------------------------------------------------------------------------------------------
# Server resources


def server_processes(pid: int) -> list[Any]:
    import psutil

    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def resources(pid: int | None) -> tuple[float, int] | None:
    """(RSS in MB, open file descriptors), summed over the supervisor and its workers."""
    if pid is None:
        return None
    import psutil

    rss, fds = 0, 0
    for process in server_processes(pid):
        try:
            rss += process.memory_info().rss
            fds += process.num_fds()
        except psutil.NoSuchProcess:
            continue
    return rss / 2**20, fds


async def settle(seconds: float = 1.5) -> None:
    """Let the server close idle connections and finish background work before measuring."""
    await asyncio.sleep(seconds)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


# ---------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of measured load (default 300)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds of load before the baseline is measured (default: 10 %% of --duration, "
                             "5-30 s)")
    parser.add_argument("--bundle", type=Path, help="bundle the server serves (default: the fake bundle)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--url", help="a running server (127.0.0.1 only) instead of starting one")
    parser.add_argument("--pid", type=int, help="with --url: the server's PID, to measure RSS and descriptors")
    parser.add_argument("--mix", type=parse_mix, default=DEFAULT_MIX,
                        help="request kinds and weights (default valid=55,explain=15,invalid=30)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    warmup = args.warmup if args.warmup is not None else min(30.0, max(5.0, args.duration / 10))

    if args.url and not args.url.startswith(LOOPBACK_PREFIXES):
        parser.error("--url must be a loopback address: this script only loads local servers")
    token = os.environ.get("CELLMFG_API_TOKEN", "").strip()
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    tmp = tempfile.TemporaryDirectory(prefix="cellmfg-soak-")
    bundle = args.bundle
    if bundle is None:
        if args.url:
            parser.error("--url needs --bundle: the answers are checked against the ONNX files the server serves")
        bundle = write_fake_bundle(Path(tmp.name) / "bundle")
    reference = OnnxReference(load_bundle(bundle))
    pool = build_pool(reference, POOL_SIZE, args.seed, args.mix)

    server = None
    url, pid = args.url, args.pid
    if url is None:
        try:
            server, ready = start_local_server(Path(tmp.name), bundle, token, args.workers)
        except (RuntimeError, TimeoutError) as error:
            print(f"soak: server did not start: {error}", file=sys.stderr)
            return 2
        url = server.url
        assert server.process is not None
        pid = server.process.pid
        print(f"soak: server ready in {ready:.1f} s at {url} ({args.workers} worker(s), bundle {bundle})",
              flush=True)
    assert url is not None
    try:
        print(f"soak: warm-up {warmup:.0f} s, then {args.duration:.0f} s at {args.concurrency} clients", flush=True)
        warm = Tally()
        asyncio.run(run_load(url, pool, args.concurrency, warmup, warm, args.seed + 1, headers))
        asyncio.run(settle())
        gc.collect()
        before = resources(pid)
        tally = Tally()
        samples: list[tuple[float, float, int]] = []  # (seconds into the run, RSS MB, fds) every 5 s

        elapsed = 0.0

        async def measured() -> None:
            nonlocal elapsed
            started = time.monotonic()
            load = asyncio.ensure_future(run_load(url, pool, args.concurrency, args.duration, tally, args.seed,
                                                  headers))
            while not load.done():
                await asyncio.wait([load], timeout=5)
                now = resources(pid)
                if now is not None:
                    samples.append((time.monotonic() - started, now[0], now[1]))
            await load
            elapsed = time.monotonic() - started
            await settle()

        asyncio.run(measured())
        after = resources(pid)
        alive = server is None or (server.process is not None and server.process.poll() is None)
    finally:
        if server is not None:
            server.stop()
        tmp.cleanup()

    figures: dict[str, Any] = {
        "duration_s": args.duration, "concurrency": args.concurrency, "warmup_s": warmup, "url": url,
        "requests": tally.requests, "requests_per_s": tally.requests / elapsed,
        "by_kind": dict(tally.kinds), "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "server_errors_5xx": tally.server_errors, "wrong_answers": tally.wrong,
        "transport_errors": tally.transport_errors, "warmup_requests": warm.requests,
        "warmup_5xx": warm.server_errors, "warmup_wrong_answers": warm.wrong,
        "warmup_transport_errors": warm.transport_errors, "server_alive_at_end": alive,
        "latency_ms": {kind: {"p50": percentile(v, 50), "p95": percentile(v, 95), "p99": percentile(v, 99),
                              "max": percentile(v, 100)} for kind, v in tally.latencies.items()},
        "examples": warm.examples + tally.examples,
    }
    failures = []
    if tally.requests == 0:
        failures.append("no requests completed")
    if tally.server_errors or warm.server_errors:
        failures.append(f"{tally.server_errors + warm.server_errors} responses were 5xx")
    if tally.wrong or warm.wrong:
        failures.append(f"{tally.wrong + warm.wrong} wrong answers")
    if tally.transport_errors or warm.transport_errors:
        failures.append(f"{tally.transport_errors + warm.transport_errors} transport errors")
    if not alive:
        failures.append("the server exited")
    if before is not None and after is not None:
        growth = (after[0] - before[0]) / before[0] * 100
        figures.update({"rss_mb_after_warmup": before[0], "rss_mb_end": after[0], "rss_growth_pct": growth,
                        "rss_mb_peak": max([s[1] for s in samples] + [after[0]]), "fds_after_warmup": before[1],
                        "fds_end": after[1], "samples": samples})
        if growth >= RSS_GROWTH_LIMIT_PCT:
            failures.append(f"RSS grew {growth:.1f} % (limit {RSS_GROWTH_LIMIT_PCT:.0f} %)")
        if after[1] > before[1]:
            failures.append(f"file descriptors grew from {before[1]} to {after[1]}")
    figures["passed"] = not failures
    figures["failures"] = failures

    kinds = ", ".join(f"{k} {v}" for k, v in sorted(tally.kinds.items()))
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(tally.statuses.items()))
    print(f"soak: {tally.requests} requests in {elapsed:.0f} s ({figures['requests_per_s']:.1f}/s) at "
          f"{args.concurrency} clients: {kinds}")
    print(f"soak: statuses {statuses}")
    print(f"soak: 5xx {tally.server_errors}, wrong answers {tally.wrong}, transport errors "
          f"{tally.transport_errors} (warm-up: {warm.requests} requests, {warm.server_errors} 5xx, {warm.wrong} "
          f"wrong, {warm.transport_errors} transport errors)")
    for kind, values in figures["latency_ms"].items():
        print(f"soak: latency {kind:8s} p50 {values['p50']:7.1f} ms  p95 {values['p95']:7.1f} ms  "
              f"p99 {values['p99']:7.1f} ms  max {values['max']:7.1f} ms")
    if "rss_mb_end" in figures:
        print(f"soak: RSS after warm-up {figures['rss_mb_after_warmup']:.1f} MB, at end {figures['rss_mb_end']:.1f} "
              f"MB ({figures['rss_growth_pct']:+.2f} %), peak {figures['rss_mb_peak']:.1f} MB; open fds after "
              f"warm-up {figures['fds_after_warmup']}, at end {figures['fds_end']}")
        if samples:  # under load, so higher than at rest: the shape says plateau or leak
            quarters = [samples[min(len(samples) - 1, round(q * (len(samples) - 1)))] for q in (0, 0.25, 0.5, 0.75, 1)]
            print("soak: RSS under load " + ", ".join(f"{t:.0f} s {rss:.0f} MB" for t, rss, _ in quarters))
    else:
        print("soak: RSS and file descriptors not measured (no --pid)")
    for example in figures["examples"]:
        print(f"soak: problem: {example}")
    print(f"soak: {'PASS' if not failures else 'FAIL: ' + '; '.join(failures)}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
