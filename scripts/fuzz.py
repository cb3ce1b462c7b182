"""Fuzz the prediction service with schemathesis against its own OpenAPI schema (/docs.json), every operation.

    .venv/bin/python scripts/fuzz.py [--max-examples 100] [--max-time SECONDS] [--seed 0] [--workers 1]
                                     [--bundle DIR] [--url URL] [--auth] [--json out.json]

Without --url it starts `cellmfg serve` on a free 127.0.0.1 port on --bundle or (default) the fake bundle of
testkit/fakes.py, runs `schemathesis run` with every check (no 5xx, every response matching its documented
schema and status codes, schema-invalid input refused, schema-valid input accepted, unsupported methods refused,
...) and all its phases (examples, coverage, fuzzing), then checks that the
server still answers a valid request exactly as onnxruntime does, and stops it.

--max-examples bounds the cases per operation and phase; --max-time makes schemathesis keep fuzzing until that
many seconds are spent. --auth starts the server with a random CELLMFG_API_TOKEN and gives schemathesis the token
(through a config file reading it from the environment, never on a command line), so the documented 401s and
the `ignored_auth` check are exercised too; with --url (which needs the --bundle that server serves),
CELLMFG_API_TOKEN from the environment is used.

Prints `fuzz: N cases over K/K operations ...` and exits 0 when schemathesis found no failure and no error.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# testkit is not installed (it stays out of the wheel): found beside this script, in the project.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
# A schema-valid design or suggestion request can still be refused by what no schema holds: a bound outside the
# served models' training range, min above max, a parameter both fixed and bounded (400), or targets (a window) no
# recipe reaches (422, with the reachable range). Those answers are documented; schemathesis may expect them here.
DESIGN_CONFIG = """
[[operations]]
include-path-regex = "^/(design|suggest)/"
checks.positive_data_acceptance.expected-statuses = [200, 400, 401, 422]
"""
# The outcomes a QC lab posts refer to answered predictions: a schema-valid body naming an id the service never
# answered is refused (400, every problem listed), which no schema can express.
OUTCOMES_CONFIG = """
[[operations]]
include-path-regex = "^/outcomes$"
checks.positive_data_acceptance.expected-statuses = [200, 400, 401, 404]
"""
# A model with no challenger (or none served) is answered 404 naming it; no schema says which models have one.
CHALLENGE_CONFIG = """
[[operations]]
include-path-regex = "^/models/[^/]+/challenge$"
checks.positive_data_acceptance.expected-statuses = [200, 401, 404]
"""
# Promotion: override and reason go together (400 otherwise), which OpenAPI 3.0 cannot express; the gate refuses
# with 409; a server without a token answers 403.
PROMOTE_CONFIG = """
[[operations]]
include-path-regex = "^/models/[^/]+/challenge/promote$"
checks.positive_data_acceptance.expected-statuses = [200, 400, 401, 403, 404, 409]
"""


def still_answers_correctly(url: str, bundle: Path, headers: dict[str, str]) -> str | None:
    """None if a valid request is answered exactly as onnxruntime answers it, else the problem."""
    import httpx
    import numpy as np

    from cellmfg.contract import load_bundle
    from testkit.fakes import OnnxReference

    reference = OnnxReference(load_bundle(bundle))
    rows = [{"am_wt_pct": 94.0, "solid_content_pct": 60.0, "coating_speed_m_min": 0.5, "comma_gap_um": 200.0,
             "roll_speed_m_min": 0.4, "roll_gap_um": 100.0}]
    response = httpx.post(f"{url}/predict/electrode", json={"chemistry": "nmc", "rows": rows}, headers=headers,
                          timeout=60)
    if response.status_code != 200:
        return f"a valid request got {response.status_code}: {response.text[:300]}"
    x = np.array([list(rows[0].values())])
    got = response.json()["predictions"][0]["density_g_cm3"]
    want = float(reference.predict("density_nmc_onnx", x)[0])
    return None if got == want else f"density {got} != onnxruntime {want}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-examples", type=int, default=100, help="cases per operation and phase (default 100)")
    parser.add_argument("--max-time", type=int, help="keep fuzzing until this many seconds are spent")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="schemathesis workers (default 1)")
    parser.add_argument("--bundle", type=Path, help="bundle the server serves (default: the fake bundle)")
    parser.add_argument("--url", help="a running server (127.0.0.1 only) instead of starting one")
    parser.add_argument("--auth", action="store_true", help="start the server with a random bearer token")
    parser.add_argument("--timeout", type=float, default=1800, help="hard limit on the schemathesis run (s)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    from testkit.fakes import write_fake_bundle
    from testkit.processes import LOOPBACK_PREFIXES, start_local_server

    if args.url and not args.url.startswith(LOOPBACK_PREFIXES):
        parser.error("--url must be a loopback address: this script only fuzzes local servers")
    if args.url and args.bundle is None:
        parser.error("--url needs --bundle: the answers afterwards are checked against the ONNX files it serves")

    tmp = tempfile.TemporaryDirectory(prefix="cellmfg-fuzz-")
    folder = Path(tmp.name)
    token = os.environ.get("CELLMFG_API_TOKEN", "").strip()
    if args.auth and not args.url:
        token = secrets.token_urlsafe(32)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    bundle = args.bundle
    if bundle is None:
        bundle = write_fake_bundle(folder / "bundle")

    server = None
    url = args.url
    try:
        if url is None:
            try:
                server, ready = start_local_server(folder, bundle, token)
            except (RuntimeError, TimeoutError) as error:
                print(f"fuzz: server did not start: {error}", file=sys.stderr)
                return 2
            url = server.url
            print(f"fuzz: server ready in {ready:.1f} s at {url} (auth {'on' if token else 'off'})", flush=True)

        report = folder / "report.json"
        config = folder / "schemathesis.toml"
        # The token reaches schemathesis through its environment, named in the config file: never in argv.
        config.write_text(('headers = { Authorization = "Bearer ${CELLMFG_FUZZ_TOKEN}" }\n' if token else "")
                          + DESIGN_CONFIG + OUTCOMES_CONFIG + CHALLENGE_CONFIG
                          + PROMOTE_CONFIG)
        command = [str(SCHEMATHESIS), "--no-color", "--config-file", str(config), "run", f"{url}/docs.json",
                   "--checks", "all", "--max-examples", str(args.max_examples), "--seed", str(args.seed),
                   "--workers", str(args.workers), "--request-timeout", "120", "--report", "json",
                   "--report-json-path", str(report), "--suppress-health-check", "too_slow,data_too_large"]
        if args.max_time:
            command += ["--max-time", str(args.max_time)]
        env = {**os.environ, "CELLMFG_FUZZ_TOKEN": token}
        env.pop("CELLMFG_API_TOKEN", None)
        started = time.monotonic()
        print(f"fuzz: schemathesis run {url}/docs.json --checks all --max-examples {args.max_examples}"
              + (f" --max-time {args.max_time:g}" if args.max_time else "") + f" --seed {args.seed}", flush=True)
        result = subprocess.run(command, env=env, cwd=folder, capture_output=True, text=True, timeout=args.timeout,
                                check=False)
        seconds = time.monotonic() - started
        if not report.exists():
            print(result.stdout[-6000:] + result.stderr[-3000:], file=sys.stderr)
            print("fuzz: FAIL: schemathesis wrote no report", flush=True)
            return 1
        data: dict[str, Any] = json.loads(report.read_text())
        after = still_answers_correctly(url, bundle, headers)
        alive = server is None or (server.process is not None and server.process.poll() is None)
    finally:
        if server is not None:
            server.stop()
        tmp.cleanup()

    cases = data["test_cases"]
    operations = data["operations"]
    failures = data.get("failures", [])
    errors = data.get("errors", [])
    figures = {
        "cases": cases["generated"], "cases_with_failures": cases["with_failures"],
        "unique_failures": cases["unique_failures"], "errored_cases": cases.get("errored", 0),
        "operations_tested": operations["tested"], "operations_total": operations["total"],
        "phases": {name: phase["status"] for name, phase in data["phases"].items()},
        "failures": failures, "errors": errors, "seconds": seconds, "schemathesis_exit_code": result.returncode,
        "answers_correctly_after": after is None, "server_alive_after": alive, "auth": bool(token),
        "seed": args.seed, "max_examples": args.max_examples, "max_time": args.max_time,
    }
    if failures or errors or result.returncode != 0:
        print(result.stdout[-12000:], flush=True)
    phases = ", ".join(f"{name} {status}" for name, status in figures["phases"].items())
    print(f"fuzz: {cases['generated']} cases over {operations['tested']}/{operations['total']} operations in "
          f"{seconds:.0f} s (phases: {phases}; auth {'on' if token else 'off'})")
    print(f"fuzz: {cases['with_failures']} cases with failures ({cases['unique_failures']} unique), "
          f"{len(errors)} errors: " + (", ".join(f"{f['code']} {f['title']} x{f['count']}" for f in failures)
                                       or "none"))
    print(f"fuzz: afterwards the server {'answers correctly' if after is None else 'FAILS: ' + str(after)}"
          f"{'' if alive else ' (server exited)'}")
    passed = (not failures and not errors and result.returncode == 0 and after is None and alive
              and operations["tested"] == operations["total"] and cases["generated"] > 0)
    figures["passed"] = passed
    print(f"fuzz: {'PASS' if passed else 'FAIL'}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
