"""Benchmark the prediction service against onnxruntime alone and a minimal FastAPI app, in one run.

    .venv/bin/python scripts/bench_service.py [--bundle DIR] [--duration 5] [--workers 1] [--image cellmfg]
                                              [--explain-only | --throughput-only | --start-only | --ledger-only
                                               | --floor]
                                              [--json out.json]

Without --bundle it builds the fake bundle of testkit/fakes.py in a temporary directory; with one (for
example `cellmfg registry export-bundle` output) it measures the real models. The workload is the electrode
endpoint for NMC (two ONNX models per request). Reported, side by side:
  * single-row requests/s and p50/p99 latency at concurrency 1 and 32 (onnxruntime direct: concurrency 1 only);
  * the latency of one 10,000-row request;
  * the cost of `explain=true` at 1, 100, 1,000 and 10,000 rows: the same request with and without it, and the
    extra time per row (each row is explained by both models);
  * cold start to /readyz, as the machine is and with a warm Python bytecode cache (see --help), and to the first
    answered explain request (explanations need no warm-up: they are ready with the models);
  * with --image, the Docker image's size, and its cold starts: `docker run` (the bundle mounted read-only) to
    /readyz and to the first answered explain request, the deployment's start.
Goals: throughput ratio service/FastAPI >= 1, 10,000 rows < 100 ms; explain adds < 1 ms for one row and
< 0.3 ms/row at 1,000 rows, a 10,000-row explained request < 3 s; cold start < 3 s; image < 400 MB.
--explain-only measures the explain costs (and the image) only.

--floor measures what BentoML alone costs: the bare FastAPI app mounted in a BentoML service with our settings
(`scripts/bench_bare_bento.py`) beside the bare app and our service (single-row req/s, alternating rounds), then its
start to /readyz beside ours. Our service runs inside that much BentoML, so these bound the two goals of issue 28.

--throughput-only runs the side-by-side rounds alone; --start-only the start alone (issue 28): the worker's import
time in fresh interpreters, then --starts starts to /readyz on a new ledger and on an existing one (goal < 2 s on
an idle machine), each with the load average before it.

Servers run as subprocesses on free loopback ports and are stopped at the end; the load generator is wrk (Debian
`wrk`, keep-alive connections, a C client that leaves the CPU to the servers) when installed, else aiohttp in this
process; on a 2-core machine client and server share the CPU alike for both apps.
Both servers are measured in alternating rounds (and cold starts alternate too), so load from other processes on
a shared machine falls on both alike; verdicts use the medians over rounds, the best rounds are shown beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

# testkit is not installed (it stays out of the wheel): found beside this script, in the project.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testkit.fakes import example_rows, write_fake_bundle
from testkit.processes import (
    VENV_BIN,
    ServerProcess,
    cellmfg_server,
    clean_env,
    docker_container,
    free_port,
    wait_for,
)

DATASET = "nmc"
MODELS = ("density_nmc_onnx", "mass_loading_nmc_onnx")
GOAL_BATCH_MS = 100.0
GOAL_EXPLAIN_MS_PER_ROW = 0.3  # at 1,000 rows
GOAL_EXPLAIN_SINGLE_MS = 1.0
GOAL_EXPLAINED_10K_S = 3.0
GOAL_COLD_START_S = 3.0
GOAL_IMAGE_MB = 400.0
EXPLAIN_SIZES = {1: 31, 100: 9, 1_000: 5, 10_000: 3}  # rows -> timed repeats (the best is kept)


# ---------------------------------------------------------------------------------------------------------------
# The minimal FastAPI baseline: the same two ONNX models behind a bare endpoint (run with --serve-fastapi)


def benchmark_sessions(bundle: Path) -> list[tuple[Any, Any]]:
    """(onnxruntime session, contract) for each of MODELS, one thread each, as the service runs them."""
    import onnxruntime as ort

    from cellmfg.contract import load_bundle

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    models = {m.name: m for m in load_bundle(bundle)}
    return [(ort.InferenceSession(models[name].onnx_bytes, options, providers=["CPUExecutionProvider"]),
             models[name].contract) for name in MODELS]


class BaselineRequest(BaseModel):
    chemistry: str
    rows: list[dict[str, float]]


def fastapi_app(bundle: Path) -> Any:
    from fastapi import FastAPI

    sessions = benchmark_sessions(bundle)
    columns = sessions[0][1].feature_names

    app = FastAPI()

    @app.post("/predict/electrode")
    async def predict(request: BaselineRequest) -> dict[str, Any]:
        x = np.array([[row[c] for c in columns] for row in request.rows], dtype=np.float32)
        outputs = [s.run([c.output_name], {c.input_name: x})[0].reshape(-1).tolist() for s, c in sessions]
        return {"predictions": [{"density_g_cm3": d, "mass_loading_mg_cm2": m} for d, m in zip(*outputs,
                                                                                                  strict=True)]}

    @app.get("/readyz")
    def ready() -> str:
        return "ok"

    return app


def serve_fastapi(bundle: Path, port: int) -> None:
    import uvicorn

    uvicorn.run(fastapi_app(bundle), host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ---------------------------------------------------------------------------------------------------------------
# Measurements


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


async def _load(url: str, body: bytes, concurrency: int, duration: float, warmup: float) -> dict[str, float]:
    import aiohttp

    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker(until: float, record: bool) -> None:
            nonlocal errors
            while time.perf_counter() < until:
                started = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                if record:
                    latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker(time.perf_counter() + warmup, False) for _ in range(concurrency)))
        started = time.perf_counter()
        await asyncio.gather(*(worker(started + duration, True) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{errors} requests to {url} failed")
    return {"rps": len(latencies) / elapsed, "p50_ms": percentile(latencies, 50) * 1e3,
            "p99_ms": percentile(latencies, 99) * 1e3, "requests": len(latencies), "errors": errors}


# wrk (Debian package `wrk`), a C load generator: it costs the 2-CPU machine far less per request than the
# in-process aiohttp client, so the servers' own costs decide the figures. Without it, aiohttp generates the load.
WRK = shutil.which("wrk")
_WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open(os.getenv("BENCH_BODY"), "rb")
wrk.body = f:read("*a")
f:close()
"""


def load(url: str, body: dict[str, Any], concurrency: int, duration: float) -> dict[str, float]:
    if WRK is not None:
        return wrk_load(url, json.dumps(body).encode(), concurrency, duration)
    return asyncio.run(_load(url, json.dumps(body).encode(), concurrency, duration, warmup=min(1.0, duration / 3)))


def wrk_load(url: str, body: bytes, concurrency: int, duration: float) -> dict[str, float]:
    """Requests/s and p50/p99 latency of POSTing `body` to `url` with wrk: `concurrency` keep-alive connections
    over min(2, concurrency) threads for `duration` seconds, after a warm-up of a third of that (at most 1 s)."""
    assert WRK is not None
    folder = Path(tempfile.mkdtemp(prefix="bench-wrk-"))
    (folder / "body.json").write_bytes(body)
    (folder / "post.lua").write_text(_WRK_SCRIPT)
    env = {**os.environ, "BENCH_BODY": str(folder / "body.json")}

    def run(seconds: float) -> str:
        command = [WRK, f"-t{min(2, concurrency)}", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--latency",
                   "-s", str(folder / "post.lua"), url]
        return subprocess.run(command, env=env, capture_output=True, text=True, check=True,
                              timeout=seconds + 60).stdout

    run(min(1.0, duration / 3))
    out = run(duration)
    # "Non-2xx or 3xx responses: N" and "Socket errors: connect N, read N, write N, timeout N" appear only if any
    errors = sum(int(n) for line in out.splitlines() if line.strip().startswith(("Non-2xx", "Socket errors"))
                 for n in re.findall(r"\d+", line.split(":", 1)[1]))
    if errors:
        raise RuntimeError(f"wrk: failed requests to {url}:\n{out}")
    latency = {line.split()[0]: _wrk_ms(line.split()[1]) for line in out.splitlines()
               if line.strip().startswith(("50%", "99%"))}
    requests = int(next(line.split()[0] for line in out.splitlines() if "requests in" in line))
    rps = float(next(line.split()[-1] for line in out.splitlines() if line.startswith("Requests/sec")))
    return {"rps": rps, "p50_ms": latency["50%"], "p99_ms": latency["99%"], "requests": requests, "errors": 0}


def _wrk_ms(text: str) -> float:
    """wrk's latency figure ("812.00us", "1.23ms", "2.01s") in milliseconds."""
    for unit, factor in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)


def timed_posts(url: str, body: dict[str, Any], repeats: int) -> list[float]:
    import httpx

    payload = json.dumps(body).encode()
    times = []
    with httpx.Client(timeout=300) as client:
        client.post(url, content=payload, headers={"Content-Type": "application/json"})  # warm the path
        for _ in range(repeats):
            started = time.perf_counter()
            response = client.post(url, content=payload, headers={"Content-Type": "application/json"})
            times.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text[:300]
    return times


def onnxruntime_direct(bundle: Path, duration: float) -> dict[str, float]:
    sessions = benchmark_sessions(bundle)
    x = np.asarray([list(example_rows("electrode", DATASET, 1)[0].values())], dtype=np.float32)

    def call(batch: np.ndarray) -> None:
        for session, contract in sessions:
            session.run([contract.output_name], {contract.input_name: batch})

    for _ in range(200):
        call(x)
    latencies = []
    until = time.perf_counter() + duration
    while time.perf_counter() < until:
        started = time.perf_counter()
        call(x)
        latencies.append(time.perf_counter() - started)
    big = np.asarray([list(r.values()) for r in example_rows("electrode", DATASET, 10_000)], dtype=np.float32)
    batch_times = []
    for _ in range(7):
        started = time.perf_counter()
        call(big)
        batch_times.append(time.perf_counter() - started)
    return {"rps": len(latencies) / sum(latencies), "p50_ms": percentile(latencies, 50) * 1e3,
            "p99_ms": percentile(latencies, 99) * 1e3, "batch_10k_ms": statistics.median(batch_times) * 1e3}


def best(runs: list[dict[str, float]]) -> dict[str, float]:
    """The round with the highest throughput, plus the median throughput over all rounds."""
    top = max(runs, key=lambda r: r["rps"])
    return {**top, "rps_median": statistics.median(r["rps"] for r in runs), "rounds": len(runs)}


def cold_start(bundle: Path, env: dict[str, str], log_path: Path) -> tuple[float, float]:
    """Seconds from `cellmfg serve` (the CLI's code path) to the first 200 from /readyz, and to the first answer
    of a one-row explain request sent right then; fresh BentoML home."""
    import httpx

    home = Path(tempfile.mkdtemp(prefix="bench-home-"))
    run_env = {**env, "BENTOML_HOME": str(home), "CELLMFG_POLL_SECONDS": "0"}
    body = {"chemistry": DATASET, "rows": example_rows("electrode", DATASET, 1), "explain": True}
    with cellmfg_server(run_env, log_path, bundle=bundle) as server:
        ready = server.wait_ready(timeout=180)
        response = httpx.post(f"{server.url}/predict/electrode", json=body, timeout=60)
        if response.status_code != 200:
            raise RuntimeError(f"explain right after /readyz answered {response.status_code}: {response.text[:300]}")
        return ready, time.monotonic() - server.started_at


def explain_costs(url: str) -> dict[str, dict[str, float]]:
    """Per request size: the best plain and explained request (ms) and the extra ms per row of explain=true."""
    costs = {}
    for n, repeats in EXPLAIN_SIZES.items():
        body = {"chemistry": DATASET, "rows": example_rows("electrode", DATASET, n, seed=n)}
        plain = min(timed_posts(url, body, repeats))
        explained = min(timed_posts(url, {**body, "explain": True}, repeats))
        costs[str(n)] = {"plain_ms": plain * 1e3, "explained_ms": explained * 1e3,
                         "explain_ms_per_row": (explained - plain) / n * 1e3}
        print(f"explain at {n} rows: {costs[str(n)]}", flush=True)
    return costs


def image_size_mb(image: str) -> float:
    out = subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", image], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    return int(out.strip()) / 1e6


def image_cold_start(image: str, bundle: Path) -> tuple[float, float]:
    """Seconds from `docker run` of the image (the bundle mounted read-only) to the first 200 from /readyz, and to
    the answer of a one-row explain request sent right then. The container uses the host's network on a free
    loopback port and is removed afterwards."""
    import httpx

    port = free_port()
    name = f"cellmfg-bench-{os.getpid()}-{port}"
    body = {"chemistry": DATASET, "rows": example_rows("electrode", DATASET, 1), "explain": True}
    started = time.monotonic()
    with docker_container(name, ["-e", "BENTOML_HOST=127.0.0.1", "-e", f"BENTOML_PORT={port}",
                                 "-e", "CELLMFG_BUNDLE=/bundle", "-e", "CELLMFG_POLL_SECONDS=0",
                                 "-v", f"{bundle}:/bundle:ro", image]):
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{url}/readyz", timeout=2).status_code == 200, timeout=180,
                 what=f"{image} to be ready", interval=0.05)
        ready = time.monotonic() - started
        response = httpx.post(f"{url}/predict/electrode", json=body, timeout=60)
        if response.status_code != 200:
            raise RuntimeError(f"explain right after /readyz answered {response.status_code}: {response.text[:300]}")
        return ready, time.monotonic() - started


def image_figures(image: str, bundle: Path, cold_starts: int) -> dict[str, Any]:
    """The image's size and its cold starts (`docker run` to /readyz and to the first explained answer)."""
    image_cold_start(image, bundle)  # the first run also pays for the page cache; not counted
    starts = [image_cold_start(image, bundle) for _ in range(cold_starts)]
    return {"size_mb": image_size_mb(image), "cold_start_s": [ready for ready, _ in starts],
            "first_explained_s": [explained for _, explained in starts]}


def fastapi_server(bundle: Path, env: dict[str, str], log_path: Path) -> ServerProcess:
    """The FastAPI baseline (this script with --serve-fastapi) on a free port."""
    port = free_port()
    return ServerProcess("FastAPI baseline", [sys.executable, __file__, "--serve-fastapi", "--port", str(port),
                                              "--bundle", str(bundle)], log_path, port, env=env)


def fastapi_cold_start(bundle: Path, env: dict[str, str], log_path: Path) -> float:
    with fastapi_server(bundle, env, log_path) as server:
        return server.wait_ready(timeout=120)


# ---------------------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="bundle directory (default: fake models in a temp dir)")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per throughput measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of FastAPI / service measurements")
    parser.add_argument("--workers", type=int, default=1, help="worker processes of our service (FastAPI: 1)")
    parser.add_argument("--cold-starts", type=int, default=3, help="cold starts measured per configuration")
    parser.add_argument("--image", help="also report this Docker image's size and cold starts, serving the bundle "
                                        "mounted read-only (e.g. cellmfg; --cold-starts runs)")
    parser.add_argument("--explain-only", action="store_true",
                        help="measure only the cost of explain=true (and the image): no throughput rounds, no "
                             "local cold starts")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--ledger-only", action="store_true",
                        help="only compare the prediction ledger off, on (SQLite synchronous=NORMAL, the default) "
                             "and on with FULL: single-row req/s and a 10,000-row request, same run")
    parser.add_argument("--start-only", action="store_true",
                        help="only the start: the worker's import time in fresh interpreters, then --starts starts "
                             "to /readyz (each on a fresh BentoML home, i.e. a new ledger, alternated with a restart "
                             "on an existing one), with the load average before each")
    parser.add_argument("--throughput-only", action="store_true",
                        help="only the side-by-side rounds (single-row requests/s at c=1 and c=32, the 10,000-row "
                             "request): no explain costs, cold starts or design")
    parser.add_argument("--floor", action="store_true",
                        help="only what BentoML alone costs (issue 28): the bare FastAPI app mounted in a BentoML "
                             "service (scripts/bench_bare_bento.py) beside the bare app and our service, "
                             "single-row req/s in alternating rounds, then --starts starts to /readyz of it and of "
                             "ours, alternated")
    parser.add_argument("--starts", type=int, default=5, help="starts per configuration with --start-only")
    parser.add_argument("--serve-fastapi", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-service-"))
    bundle = args.bundle.resolve() if args.bundle else write_fake_bundle(work / "bundle")
    if args.serve_fastapi:
        serve_fastapi(bundle, args.port)
        return 0

    env = clean_env()
    if args.explain_only:
        return explain_only(bundle, env, work, args)
    if args.ledger_only:
        return ledger_only(bundle, env, work, args)
    if args.start_only:
        return start_only(bundle, env, work, args)
    if args.floor:
        return floor_only(bundle, env, work, args)
    single = {"chemistry": DATASET, "rows": example_rows("electrode", DATASET, 1)}
    batch = {"chemistry": DATASET, "rows": example_rows("electrode", DATASET, 10_000, seed=1)}
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                           "load_average_at_start": os.getloadavg()},
                               "bundle": str(bundle), "workers": args.workers}
    print(f"bundle {bundle}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} at start", flush=True)

    results["onnxruntime"] = onnxruntime_direct(bundle, args.duration)
    print("onnxruntime direct:", results["onnxruntime"], flush=True)

    fastapi = fastapi_server(bundle, env, work / "fastapi.log").start()
    service_env = {**env, "BENTOML_HOME": str(work / "bentoml-home"), "CELLMFG_POLL_SECONDS": "0"}
    server = cellmfg_server(service_env, work / "service.log", workers=args.workers, bundle=bundle)
    try:
        server.start()
        fastapi.wait_ready(timeout=120)
        server.wait_ready(timeout=180)
        urls = {"fastapi": f"{fastapi.url}/predict/electrode",
                "service": f"{server.url}/predict/electrode"}
        # Both servers stay up and are measured in alternation, round after round, so that load from other
        # processes on a shared machine falls on both alike; each figure is the best round, the median is kept.
        rounds: dict[str, dict[str, list[dict[str, float]]]] = {app: {"c1": [], "c32": []} for app in urls}
        batch_ms: dict[str, list[float]] = {app: [] for app in urls}
        loads = []
        for _ in range(args.rounds):
            for app, url in urls.items():
                loads.append(os.getloadavg()[0])
                for c in (1, 32):
                    rounds[app][f"c{c}"].append(load(url, single, c, args.duration))
                batch_ms[app] += [t * 1e3 for t in timed_posts(url, batch, 3)]
        for app in urls:
            results[app] = {key: best(runs) for key, runs in rounds[app].items()}
            results[app]["batch_10k_ms"] = min(batch_ms[app])
            results[app]["batch_10k_ms_median"] = statistics.median(batch_ms[app])
            print(app, results[app], flush=True)
        results["machine"]["load_average_during_rounds"] = [min(loads), max(loads)]
        results["load_generator"] = "wrk" if WRK is not None else "aiohttp"
        if not args.throughput_only:
            results["service"]["explain"] = explain_costs(urls["service"])
    finally:
        server.stop()
        fastapi.stop()
    if args.throughput_only:
        report_throughput(results)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        return 0

    # Cold start: as this machine is (the venv ships no .pyc and PYTHONDONTWRITEBYTECODE=1, so every start
    # compiles bentoml & co. from source), and with a warm bytecode cache, as an image built with
    # `--compile-bytecode` would start.
    cache_env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    cache_env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    cold_start(bundle, cache_env, work / "cold-fill.log")  # fills the cache
    fastapi_cold_start(bundle, cache_env, work / "cold-fill-fastapi.log")
    cold: dict[str, list[float]] = {"as_is": [], "bytecode_cache": [], "fastapi_as_is": [],
                                    "fastapi_bytecode_cache": [], "explained_as_is": [], "explained_bytecode_cache": []}
    for i in range(args.cold_starts):  # alternated, like the throughput rounds
        for key, run_env in (("as_is", env), ("bytecode_cache", cache_env)):
            ready, explained = cold_start(bundle, run_env, work / f"cold-{key}-{i}.log")
            cold[key].append(ready)
            cold[f"explained_{key}"].append(explained)
        cold["fastapi_as_is"].append(fastapi_cold_start(bundle, env, work / f"cold-fastapi-{i}.log"))
        cold["fastapi_bytecode_cache"].append(fastapi_cold_start(bundle, cache_env, work / f"cold-fastapi-c-{i}.log"))
    results["cold_start_s"] = cold
    print("cold start:", cold, flush=True)
    if args.image:
        results["image"] = image_figures(args.image, bundle, args.cold_starts)
    results["machine"]["load_average_at_end"] = os.getloadavg()

    report(results)
    results["design"] = design_benchmark(bundle)  # design
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


# --- design: the recipe-design benchmark of scripts/bench_design.py, printed with this report ---
def design_benchmark(bundle: Path) -> dict[str, Any]:
    from bench_design import report_design, run_design_benchmark

    results = run_design_benchmark(bundle)
    report_design(results)
    return results
# --- end design ---


def report(r: dict[str, Any]) -> None:
    report_throughput(r)
    cold, ours, median = r["cold_start_s"], r["service"], statistics.median
    report_explain(ours["explain"])

    def runs(values: list[float]) -> str:
        return f"median {median(values):.2f} s (runs {', '.join(f'{v:.2f}' for v in values)})"

    print(f"cold start to /readyz, as is: {runs(cold['as_is'])}; with a bytecode cache: "
          f"{runs(cold['bytecode_cache'])}")
    print(f"  FastAPI baseline, as is: {runs(cold['fastapi_as_is'])}; cached: {runs(cold['fastapi_bytecode_cache'])}")
    print(f"  (goal < {GOAL_COLD_START_S:.0f} s: as is {verdict(median(cold['as_is']) < GOAL_COLD_START_S)}, "
          f"with a bytecode cache {verdict(median(cold['bytecode_cache']) < GOAL_COLD_START_S)})")
    print(f"  first explain request answered: as is {runs(cold['explained_as_is'])}; with a bytecode cache: "
          f"{runs(cold['explained_bytecode_cache'])}")
    report_image(r.get("image"))


def report_throughput(r: dict[str, Any]) -> None:
    """The side-by-side table of the rounds and its two verdicts (throughput ratio, 10,000-row request)."""
    ort_, fast, ours = r["onnxruntime"], r["fastapi"], r["service"]
    line = "{:<38}{:>14}{:>14}{:>14}"
    print()
    low, high = r["machine"]["load_average_during_rounds"]
    print(f"Electrode NMC, single-row requests ({r.get('load_generator', 'aiohttp')}), {r['workers']} service "
          f"worker(s); 1-min load average {low:.2f}-{high:.2f} during the rounds (2 CPUs; other processes running too)")
    print(line.format("", "onnxruntime", "FastAPI", "our service"))
    print(line.format("c=1   requests/s (best round)", f"{ort_['rps']:.0f}", f"{fast['c1']['rps']:.0f}",
                      f"{ours['c1']['rps']:.0f}"))
    print(line.format("c=1   requests/s (median)", "-", f"{fast['c1']['rps_median']:.0f}",
                      f"{ours['c1']['rps_median']:.0f}"))
    print(line.format("c=1   p50 / p99 ms", f"{ort_['p50_ms']:.3f}/{ort_['p99_ms']:.3f}",
                      f"{fast['c1']['p50_ms']:.2f}/{fast['c1']['p99_ms']:.2f}",
                      f"{ours['c1']['p50_ms']:.2f}/{ours['c1']['p99_ms']:.2f}"))
    print(line.format("c=32  requests/s (best round)", "-", f"{fast['c32']['rps']:.0f}",
                      f"{ours['c32']['rps']:.0f}"))
    print(line.format("c=32  requests/s (median)", "-", f"{fast['c32']['rps_median']:.0f}",
                      f"{ours['c32']['rps_median']:.0f}"))
    print(line.format("c=32  p50 / p99 ms", "-", f"{fast['c32']['p50_ms']:.1f}/{fast['c32']['p99_ms']:.1f}",
                      f"{ours['c32']['p50_ms']:.1f}/{ours['c32']['p99_ms']:.1f}"))
    print(line.format("one 10,000-row request ms (best)", f"{ort_['batch_10k_ms']:.1f}",
                      f"{fast['batch_10k_ms']:.1f}", f"{ours['batch_10k_ms']:.1f}"))
    print(line.format("one 10,000-row request ms (median)", "-", f"{fast['batch_10k_ms_median']:.1f}",
                      f"{ours['batch_10k_ms_median']:.1f}"))
    print()
    ratio1 = ours["c1"]["rps"] / fast["c1"]["rps"]
    ratio32 = ours["c32"]["rps"] / fast["c32"]["rps"]
    median_ratios = (ours["c1"]["rps_median"] / fast["c1"]["rps_median"],
                     ours["c32"]["rps_median"] / fast["c32"]["rps_median"])
    print(f"throughput ratio service/FastAPI, medians: c=1 {median_ratios[0]:.2f}, c=32 {median_ratios[1]:.2f}; "
          f"best rounds: c=1 {ratio1:.2f}, c=32 {ratio32:.2f}  (goal >= 1: {verdict(min(median_ratios) >= 1)})")
    print(f"10,000-row request: median {ours['batch_10k_ms_median']:.1f} ms, best {ours['batch_10k_ms']:.1f} ms  "
          f"(goal < {GOAL_BATCH_MS:.0f} ms: {verdict(ours['batch_10k_ms_median'] < GOAL_BATCH_MS)})")


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report_explain(costs: dict[str, dict[str, float]]) -> None:
    print(f"explain=true, electrode {DATASET} (two models per row), best of several requests:")
    line = "{:>8}{:>14}{:>16}{:>18}{:>20}"
    print(line.format("rows", "plain ms", "explained ms", "extra ms/row", "extra ms/model-row"))
    for n, c in costs.items():
        print(line.format(n, f"{c['plain_ms']:.1f}", f"{c['explained_ms']:.1f}", f"{c['explain_ms_per_row']:.4f}",
                          f"{c['explain_ms_per_row'] / len(MODELS):.4f}"))
    single, thousand, big = costs["1"], costs["1000"], costs["10000"]
    print(f"  goals: one row +{single['explain_ms_per_row']:.2f} ms (< {GOAL_EXPLAIN_SINGLE_MS} ms: "
          f"{verdict(single['explain_ms_per_row'] < GOAL_EXPLAIN_SINGLE_MS)}); 1,000 rows "
          f"+{thousand['explain_ms_per_row']:.3f} ms/row (< {GOAL_EXPLAIN_MS_PER_ROW} ms: "
          f"{verdict(thousand['explain_ms_per_row'] < GOAL_EXPLAIN_MS_PER_ROW)}); 10,000 explained rows "
          f"{big['explained_ms'] / 1e3:.2f} s end to end (< {GOAL_EXPLAINED_10K_S:.0f} s: "
          f"{verdict(big['explained_ms'] / 1e3 < GOAL_EXPLAINED_10K_S)})")


def report_image(image: dict[str, Any] | None) -> None:
    if image is None:
        return
    size, ready, explained = image["size_mb"], image["cold_start_s"], image["first_explained_s"]
    print(f"image: {size:.1f} MB = {size * 1e6 / 2**20:.1f} MiB (goal < {GOAL_IMAGE_MB:.0f} MB: "
          f"{verdict(size < GOAL_IMAGE_MB)})")
    print(f"image cold start, docker run to /readyz: median {statistics.median(ready):.2f} s (runs "
          f"{', '.join(f'{v:.2f}' for v in ready)}; goal < {GOAL_COLD_START_S:.0f} s: "
          f"{verdict(statistics.median(ready) < GOAL_COLD_START_S)}); to the first explained answer: median "
          f"{statistics.median(explained):.2f} s")


def explain_only(bundle: Path, env: dict[str, str], work: Path, args: argparse.Namespace) -> int:
    service_env = {**env, "BENTOML_HOME": str(work / "bentoml-home"), "CELLMFG_POLL_SECONDS": "0"}
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()},
                               "bundle": str(bundle), "workers": args.workers}
    print(f"bundle {bundle}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} at start", flush=True)
    with cellmfg_server(service_env, work / "service.log", workers=args.workers, bundle=bundle) as server:
        server.wait_ready(timeout=180)
        results["explain"] = explain_costs(f"{server.url}/predict/electrode")
    if args.image:
        results["image"] = image_figures(args.image, bundle, args.cold_starts)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    print()
    report_explain(results["explain"])
    report_image(results.get("image"))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


# --- the start (issue 28) ---
# What the worker imports before it loads a model: the service's definition and the answers (service.answers).
WORKER_IMPORTS = "service.service, service.answers"
GOAL_READY_S = 2.0


def worker_import_seconds(env: dict[str, str]) -> float:
    """Seconds to import the worker's modules in a fresh interpreter, as the worker does (timed inside it, so the
    interpreter's own start is not counted): a proxy for the start that a busy machine disturbs less."""
    code = (f"import time; t = time.perf_counter(); import {WORKER_IMPORTS}; "
            "print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    return float(out.strip().splitlines()[-1])


def timed_start(bundle: Path, env: dict[str, str], home: Path, log_path: Path) -> dict[str, float]:
    """One `cellmfg serve` (the CLI's code path) to the first 200 from /readyz on BentoML home `home`, with the
    1-minute load average just before it."""
    load_before = os.getloadavg()[0]
    run_env = {**env, "BENTOML_HOME": str(home), "CELLMFG_POLL_SECONDS": "0"}
    with cellmfg_server(run_env, log_path, bundle=bundle) as server:
        ready = server.wait_ready(timeout=180)
    return {"ready_s": ready, "load_1min": load_before}


def start_only(bundle: Path, env: dict[str, str], work: Path, args: argparse.Namespace) -> int:
    """The start alone, as the machine is (no bytecode written: every start compiles the project's modules):
    `first` on a fresh BentoML home (the ledger is created), `restart` on the home of an earlier start (the ledger
    exists, at the schema's head), alternated so load from other processes falls on both alike."""
    imports = [worker_import_seconds(env) for _ in range(args.starts)]
    print(f"worker import ({WORKER_IMPORTS}), fresh interpreters: median {statistics.median(imports):.3f} s "
          f"(runs {', '.join(f'{t:.3f}' for t in imports)}; load {os.getloadavg()[0]:.2f})", flush=True)
    restart_home = work / "home-restart"
    timed_start(bundle, env, restart_home, work / "start-fill.log")  # creates the restarts' ledger; not counted
    starts: dict[str, list[dict[str, float]]] = {"first": [], "restart": []}
    for i in range(args.starts):
        starts["first"].append(timed_start(bundle, env, work / f"home-first-{i}", work / f"start-first-{i}.log"))
        starts["restart"].append(timed_start(bundle, env, restart_home, work / f"start-restart-{i}.log"))
        print(f"start {i + 1}: first {starts['first'][-1]}, restart {starts['restart'][-1]}", flush=True)
    for name, runs in starts.items():
        median = statistics.median(r["ready_s"] for r in runs)
        shown = ", ".join(f"{r['ready_s']:.2f} @ load {r['load_1min']:.2f}" for r in runs)
        print(f"{name:8s} start to /readyz: median {median:.2f} s (runs {shown}); goal < "
              f"{GOAL_READY_S:.0f} s on an idle machine: {verdict(median < GOAL_READY_S)}")
    if args.json:
        args.json.write_text(json.dumps({"worker_import_s": imports, "starts": starts, "bundle": str(bundle)},
                                        indent=2))
    return 0


# --- the prediction ledger's cost (issue 25) ---
LEDGER_CONFIGS = {"off": {"CELLMFG_LEDGER_URL": "off"}, "normal": {"CELLMFG_LEDGER_SQLITE_SYNC": "NORMAL"},
                  "full": {"CELLMFG_LEDGER_SQLITE_SYNC": "FULL"}}


def ledger_only(bundle: Path, env: dict[str, str], work: Path, args: argparse.Namespace) -> int:
    """Three services up at once (ledger off, on with NORMAL, on with FULL), measured in alternation round after
    round like the main comparison; each figure is the best round."""
    single = {"chemistry": DATASET, "rows": example_rows("electrode", DATASET, 1)}
    batch = {"chemistry": DATASET, "rows": example_rows("electrode", DATASET, 10_000, seed=1)}
    servers = {name: cellmfg_server({**env, "BENTOML_HOME": str(work / f"home-{name}"), "CELLMFG_POLL_SECONDS": "0",
                                     "CELLMFG_LEDGER_DIR": str(work / f"ledger-{name}"), **extra},
                                    work / f"service-{name}.log", workers=args.workers, bundle=bundle)
               for name, extra in LEDGER_CONFIGS.items()}
    rounds: dict[str, dict[str, list[dict[str, float]]]] = {name: {"c1": [], "c32": []} for name in servers}
    batch_ms: dict[str, list[float]] = {name: [] for name in servers}
    try:
        for server in servers.values():
            server.start()
        for server in servers.values():
            server.wait_ready(timeout=180)
        for _ in range(args.rounds):
            for name, server in servers.items():
                url = f"{server.url}/predict/electrode"
                for c in (1, 32):
                    rounds[name][f"c{c}"].append(load(url, single, c, args.duration))
                batch_ms[name] += [t * 1e3 for t in timed_posts(url, batch, 3)]
    finally:
        for server in servers.values():
            server.stop()
    results: dict[str, Any] = {}
    for name in servers:
        results[name] = {key: best(runs) for key, runs in rounds[name].items()}
        results[name]["batch_10k_ms"] = min(batch_ms[name])
    off = results["off"]
    print(f"{'ledger':8s} {'c1 req/s':>9s} {'c1 p50 ms':>10s} {'c32 req/s':>10s} {'10k rows ms':>12s}  "
          "vs off (c1, c32)")
    for name, r in results.items():
        print(f"{name:8s} {r['c1']['rps']:9.0f} {r['c1']['p50_ms']:10.2f} {r['c32']['rps']:10.0f} "
              f"{r['batch_10k_ms']:12.0f}  {r['c1']['rps'] / off['c1']['rps']:.2f}x, "
              f"{r['c32']['rps'] / off['c32']['rps']:.2f}x")
    ratio = results["normal"]["c1"]["rps"] / off["c1"]["rps"]
    print(f"single-row req/s with the ledger (default, NORMAL) / without: {ratio:.2f} (target >= 0.85): "
          f"{verdict(ratio >= 0.85)}; a 10,000-row request costs "
          f"{results['normal']['batch_10k_ms'] - off['batch_10k_ms']:.0f} ms more")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


# --- the floor BentoML sets (issue 28) ---
def bare_bento_server(bundle: Path, env: dict[str, str], home: Path, log_path: Path) -> ServerProcess:
    """`bentoml serve` of scripts/bench_bare_bento.py (the bare FastAPI app mounted in BentoML) on a free port."""
    port = free_port()
    scripts = Path(__file__).resolve().parent
    run_env = {**env, "BENCH_BUNDLE": str(bundle), "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    return ServerProcess("bare app in BentoML", [str(VENV_BIN / "bentoml"), "serve", "bench_bare_bento:BareService",
                                                 "--port", str(port), "--working-dir", str(scripts)],
                         log_path, port, env=run_env, cwd=scripts, stop_timeout=20)


def floor_only(bundle: Path, env: dict[str, str], work: Path, args: argparse.Namespace) -> int:
    """Single-row req/s of the bare FastAPI app, the same app inside BentoML, and our service (alternating rounds,
    medians), then starts to /readyz of the bare BentoML service and of ours (alternated, medians)."""
    single = {"chemistry": DATASET, "rows": example_rows("electrode", DATASET, 1)}
    servers = {"fastapi": fastapi_server(bundle, env, work / "fastapi.log"),
               "bentoml": bare_bento_server(bundle, env, work / "home-bare", work / "bare.log"),
               "service": cellmfg_server({**env, "BENTOML_HOME": str(work / "home-service"),
                                          "CELLMFG_POLL_SECONDS": "0"}, work / "service.log", bundle=bundle)}
    rounds: dict[str, dict[str, list[float]]] = {name: {"c1": [], "c32": []} for name in servers}
    loads = []
    try:
        for server in servers.values():
            server.start()
        for server in servers.values():
            server.wait_ready(timeout=180)
        urls = {name: f"{server.url}/predict/electrode" for name, server in servers.items()}
        for url in urls.values():  # the lazy app builds on its first request; every server warms up alike
            timed_posts(url, single, 20)
        for index in range(args.rounds):
            for name in (list(urls) if index % 2 == 0 else list(urls)[::-1]):
                loads.append(os.getloadavg()[0])
                for c in (1, 32):
                    rounds[name][f"c{c}"].append(load(urls[name], single, c, args.duration)["rps"])
    finally:
        for server in servers.values():
            server.stop()
    rps = {name: {key: statistics.median(values) for key, values in by_c.items()} for name, by_c in rounds.items()}
    print(f"Single-row POST /predict/electrode (NMC, two models), median req/s over {args.rounds} alternating rounds "
          f"of {args.duration:g} s; load average {min(loads):.2f}-{max(loads):.2f}; "
          f"{'wrk' if WRK is not None else 'aiohttp'}")
    print(f"{'':34s} {'c=1':>8s} {'c=32':>8s}")
    labels = {"fastapi": "bare FastAPI app (uvicorn)", "bentoml": "the same app inside BentoML",
              "service": "our service"}
    for name, label in labels.items():
        print(f"{label:34s} {rps[name]['c1']:8.0f} {rps[name]['c32']:8.0f}")
    for c in ("c1", "c32"):
        print(f"{c}: BentoML floor / bare app {rps['bentoml'][c] / rps['fastapi'][c]:.2f}; our service / BentoML "
              f"floor {rps['service'][c] / rps['bentoml'][c]:.2f}; our service / bare app "
              f"{rps['service'][c] / rps['fastapi'][c]:.2f}")

    starts: dict[str, list[float]] = {"bentoml": [], "service": []}
    for i in range(args.starts):
        with bare_bento_server(bundle, env, work / f"home-bare-{i}", work / f"start-bare-{i}.log") as bare:
            starts["bentoml"].append(bare.wait_ready(timeout=180))
        starts["service"].append(timed_start(bundle, env, work / f"home-start-{i}", work / f"start-{i}.log")["ready_s"])
    for name, label in (("bentoml", "bare app inside BentoML"), ("service", "our service (8 models)")):
        print(f"start to /readyz, {label:26s}: median {statistics.median(starts[name]):.2f} s "
              f"(runs {', '.join(f'{t:.2f}' for t in starts[name])})")
    print(f"goal < {GOAL_READY_S:.0f} s leaves our service "
          f"{GOAL_READY_S - statistics.median(starts['bentoml']):.2f} s beyond BentoML's own start; it takes "
          f"{statistics.median(starts['service']) - statistics.median(starts['bentoml']):.2f} s")
    if args.json:
        args.json.write_text(json.dumps({"rps": rps, "rounds": rounds, "starts": starts, "loads": loads}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
