"""Benchmark the prediction service against onnxruntime alone and a minimal FastAPI app, in one run.

    .venv/bin/python scripts/bench_service.py [--bundle DIR] [--duration 5] [--workers 1] [--json out.json]

Without --bundle it builds the fake bundle of tests/service_fakes.py in a temporary directory; with one (for
example `cellmfg registry export-bundle` output) it measures the real models. The workload is the electrode
endpoint for NMC (two ONNX models per request). Reported, side by side:
  * single-row requests/s and p50/p99 latency at concurrency 1 and 32 (onnxruntime direct: concurrency 1 only);
  * the latency of one 10,000-row request;
  * the extra cost per row of `explain` (batches of 100 rows, and one row);
  * cold start to /readyz, as the machine is and with a warm Python bytecode cache (see --help).
Goals: throughput ratio service/FastAPI >= 1, 10,000 rows < 100 ms, explain < 2 ms/row, cold start < 5 s.

Servers run as subprocesses on free loopback ports and are stopped at the end; the load generator (aiohttp,
keep-alive) runs in this process, so on a 2-core machine client and server share the CPU alike for both apps.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from service_fakes import ServerProcess, example_rows, free_port, write_fake_bundle  # noqa: E402

DATASET = "nmc"
MODELS = ("density_nmc_onnx", "mass_loading_nmc_onnx")
GOAL_BATCH_MS = 100.0
GOAL_EXPLAIN_MS_PER_ROW = 2.0
GOAL_COLD_START_S = 5.0


# ---------------------------------------------------------------------------------------------------------------
# The minimal FastAPI baseline: the same two ONNX models behind a bare endpoint (run with --serve-fastapi)


class BaselineRequest(BaseModel):
    chemistry: str
    rows: list[dict[str, float]]


def fastapi_app(bundle: Path) -> Any:
    import onnxruntime as ort
    from fastapi import FastAPI

    from cellmfg.contract import load_bundle

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    models = {m.name: m for m in load_bundle(bundle)}
    sessions = [(ort.InferenceSession(models[name].onnx_bytes, options, providers=["CPUExecutionProvider"]),
                 models[name].contract) for name in MODELS]
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


def load(url: str, body: dict[str, Any], concurrency: int, duration: float) -> dict[str, float]:
    return asyncio.run(_load(url, json.dumps(body).encode(), concurrency, duration, warmup=min(1.0, duration / 3)))


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
    import onnxruntime as ort

    from cellmfg.contract import load_bundle

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    models = {m.name: m for m in load_bundle(bundle)}
    sessions = [(ort.InferenceSession(models[n].onnx_bytes, options, providers=["CPUExecutionProvider"]),
                 models[n].contract) for n in MODELS]
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


def wait_explanations(url: str, timeout: float = 180) -> float:
    import httpx

    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if httpx.get(f"{url}/models", timeout=10).json().get("explanations_ready"):
            return time.perf_counter() - started
        time.sleep(0.5)
    raise TimeoutError("explanations never became ready")


def cold_start(bundle: Path, env: dict[str, str], repeats: int, log_dir: Path) -> list[float]:
    times = []
    for i in range(repeats):
        home = Path(tempfile.mkdtemp(prefix="bench-home-"))
        run_env = {**env, "BENTOML_HOME": str(home), "CELLMFG_POLL_SECONDS": "0"}
        with ServerProcess(run_env, log_dir / f"cold-{i}.log", bundle=bundle) as server:
            times.append(server.wait_ready(timeout=180))
    return times


def fastapi_cold_start(bundle: Path, env: dict[str, str], log_dir: Path) -> float:
    import httpx

    port = free_port()
    started = time.perf_counter()
    with open(log_dir / "fastapi-cold.log", "wb") as log:
        process = subprocess.Popen([sys.executable, __file__, "--serve-fastapi", "--port", str(port), "--bundle",
                                    str(bundle)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.perf_counter() - started > 120:
                raise RuntimeError("FastAPI baseline did not start")
            time.sleep(0.02)
    finally:
        process.terminate()
        process.wait(timeout=20)


# ---------------------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="bundle directory (default: fake models in a temp dir)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per throughput measurement")
    parser.add_argument("--workers", type=int, default=1, help="worker processes of our service (FastAPI: 1)")
    parser.add_argument("--cold-starts", type=int, default=3, help="cold starts measured per configuration")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--serve-fastapi", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-service-"))
    bundle = args.bundle.resolve() if args.bundle else write_fake_bundle(work / "bundle")
    if args.serve_fastapi:
        serve_fastapi(bundle, args.port)
        return 0

    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELLMFG_", "BENTOML_", "MLFLOW_", "PROMETHEUS_"))}
    single = {"chemistry": DATASET, "rows": example_rows("electrode", DATASET, 1)}
    batch = {"chemistry": DATASET, "rows": example_rows("electrode", DATASET, 10_000, seed=1)}
    hundred = {"chemistry": DATASET, "rows": example_rows("electrode", DATASET, 100, seed=2)}
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                           "load_average_at_start": os.getloadavg()},
                               "bundle": str(bundle), "workers": args.workers}
    print(f"bundle {bundle}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} at start", flush=True)

    results["onnxruntime"] = onnxruntime_direct(bundle, args.duration)
    print("onnxruntime direct:", results["onnxruntime"], flush=True)

    port = free_port()
    with open(work / "fastapi.log", "wb") as log:
        fastapi = subprocess.Popen([sys.executable, __file__, "--serve-fastapi", "--port", str(port), "--bundle",
                                    str(bundle)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        import httpx

        deadline = time.perf_counter() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.perf_counter() > deadline:
                    raise
                time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/predict/electrode"
        results["fastapi"] = {f"c{c}": load(url, single, c, args.duration) for c in (1, 32)}
        results["fastapi"]["batch_10k_ms"] = statistics.median(timed_posts(url, batch, 5)) * 1e3
        print("minimal FastAPI:", results["fastapi"], flush=True)
    finally:
        fastapi.terminate()
        fastapi.wait(timeout=20)

    service_env = {**env, "BENTOML_HOME": str(work / "bentoml-home"), "CELLMFG_POLL_SECONDS": "0"}
    with ServerProcess(service_env, work / "service.log", workers=args.workers, bundle=bundle) as server:
        server.wait_ready(timeout=180)
        wait_explanations(server.url)  # shap loads in the background; keep it out of the throughput figures
        url = f"{server.url}/predict/electrode"
        ours: dict[str, Any] = {f"c{c}": load(url, single, c, args.duration) for c in (1, 32)}
        ours["batch_10k_ms"] = statistics.median(timed_posts(url, batch, 5)) * 1e3
        plain_100 = statistics.median(timed_posts(url, hundred, 7))
        explained_100 = statistics.median(timed_posts(url, {**hundred, "explain": True}, 7))
        plain_1 = statistics.median(timed_posts(url, single, 21))
        explained_1 = statistics.median(timed_posts(url, {**single, "explain": True}, 21))
        ours["explain_ms_per_row_batch100"] = (explained_100 - plain_100) / 100 * 1e3
        ours["explain_ms_single_row"] = (explained_1 - plain_1) * 1e3
        results["service"] = ours
        print("our service:", ours, flush=True)

    # Cold start: as this machine is (the venv ships no .pyc and PYTHONDONTWRITEBYTECODE=1, so every start
    # compiles bentoml & co. from source), and with a warm bytecode cache, as an image built with
    # `--compile-bytecode` would start.
    cache_env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    cache_env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    cold_start(bundle, cache_env, 1, work)  # fills the cache
    results["cold_start_s"] = {
        "as_is": cold_start(bundle, env, args.cold_starts, work),
        "bytecode_cache": cold_start(bundle, cache_env, args.cold_starts, work),
        "fastapi_as_is": fastapi_cold_start(bundle, env, work),
        "fastapi_bytecode_cache": fastapi_cold_start(bundle, cache_env, work),
    }
    print("cold start:", results["cold_start_s"], flush=True)
    results["machine"]["load_average_at_end"] = os.getloadavg()

    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def report(r: dict[str, Any]) -> None:
    ort_, fast, ours, cold = r["onnxruntime"], r["fastapi"], r["service"], r["cold_start_s"]
    line = "{:<34}{:>14}{:>14}{:>14}"
    print()
    print(f"Electrode NMC, single-row requests, {r['workers']} service worker(s), load average "
          f"{r['machine']['load_average_at_start'][0]:.2f} -> {r['machine']['load_average_at_end'][0]:.2f}")
    print(line.format("", "onnxruntime", "FastAPI", "our service"))
    print(line.format("c=1   requests/s", f"{ort_['rps']:.0f}", f"{fast['c1']['rps']:.0f}", f"{ours['c1']['rps']:.0f}"))
    print(line.format("c=1   p50 / p99 ms", f"{ort_['p50_ms']:.3f}/{ort_['p99_ms']:.3f}",
                      f"{fast['c1']['p50_ms']:.2f}/{fast['c1']['p99_ms']:.2f}",
                      f"{ours['c1']['p50_ms']:.2f}/{ours['c1']['p99_ms']:.2f}"))
    print(line.format("c=32  requests/s", "-", f"{fast['c32']['rps']:.0f}", f"{ours['c32']['rps']:.0f}"))
    print(line.format("c=32  p50 / p99 ms", "-", f"{fast['c32']['p50_ms']:.1f}/{fast['c32']['p99_ms']:.1f}",
                      f"{ours['c32']['p50_ms']:.1f}/{ours['c32']['p99_ms']:.1f}"))
    print(line.format("one 10,000-row request ms", f"{ort_['batch_10k_ms']:.1f}", f"{fast['batch_10k_ms']:.1f}",
                      f"{ours['batch_10k_ms']:.1f}"))
    print()
    ratio1 = ours["c1"]["rps"] / fast["c1"]["rps"]
    ratio32 = ours["c32"]["rps"] / fast["c32"]["rps"]
    median = statistics.median

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    print(f"throughput ratio service/FastAPI: c=1 {ratio1:.2f}, c=32 {ratio32:.2f}  (goal >= 1: "
          f"{verdict(min(ratio1, ratio32) >= 1)})")
    print(f"10,000-row request: {ours['batch_10k_ms']:.1f} ms  (goal < {GOAL_BATCH_MS:.0f} ms: "
          f"{verdict(ours['batch_10k_ms'] < GOAL_BATCH_MS)})")
    print(f"explain: +{ours['explain_ms_per_row_batch100']:.2f} ms/row in batches of 100, "
          f"+{ours['explain_ms_single_row']:.2f} ms for a single row  (goal < {GOAL_EXPLAIN_MS_PER_ROW} ms/row: "
          f"{verdict(ours['explain_ms_per_row_batch100'] < GOAL_EXPLAIN_MS_PER_ROW)})")
    print(f"cold start to /readyz: {median(cold['as_is']):.2f} s as is, {median(cold['bytecode_cache']):.2f} s "
          f"with a bytecode cache (runs: {', '.join(f'{t:.2f}' for t in cold['as_is'] + cold['bytecode_cache'])});"
          f" FastAPI baseline {cold['fastapi_as_is']:.2f} / {cold['fastapi_bytecode_cache']:.2f} s  "
          f"(goal < {GOAL_COLD_START_S:.0f} s: as is {verdict(median(cold['as_is']) < GOAL_COLD_START_S)}, "
          f"cached {verdict(median(cold['bytecode_cache']) < GOAL_COLD_START_S)})")


if __name__ == "__main__":
    sys.exit(main())
