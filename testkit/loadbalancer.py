"""Replicas behind HAProxy on one machine, for tests and benchmarks: the compose stack's own `haproxy.cfg` with
loopback servers instead of Docker's DNS, Debian's `haproxy`, and `wrk` as the load (each found on PATH).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from testkit.processes import PROJECT_ROOT, ServerProcess

HAPROXY_CONFIG = PROJECT_ROOT / "deploy" / "haproxy" / "haproxy.cfg"
_SERVER_TEMPLATE = re.compile(r"^(\s*)server-template .*$", re.MULTILINE)
_RESOLVERS = re.compile(r"^# Docker's embedded DNS.*?(?=^\S|\Z)|^resolvers .*?(?=^\S|\Z)", re.MULTILINE | re.DOTALL)

# wrk's Lua hooks: POST one JSON body; at the end one JSON line with counts and latency percentiles (µs).
_WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[{body}]==]
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, '
    .. '"timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def local_config(template: str, backend_ports: list[int]) -> str:
    """`template` (the compose stack's haproxy.cfg) with its Docker-DNS servers replaced by loopback ones."""
    match = _SERVER_TEMPLATE.search(template)
    if match is None:
        raise ValueError("the HAProxy configuration has no server-template line to replace")
    indent = match.group(1)
    servers = "\n".join(f"{indent}server replica{i} 127.0.0.1:{port} check" for i, port in enumerate(backend_ports))
    text = _SERVER_TEMPLATE.sub(lambda _: servers, template, count=1)
    return _RESOLVERS.sub("", text).rstrip() + "\n"


def haproxy_binary() -> str | None:
    """Debian installs haproxy in /usr/sbin, which a non-root PATH may lack."""
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")


def haproxy_server(folder: Path, backend_ports: list[int], port: int) -> ServerProcess:
    """Debian's haproxy on 127.0.0.1:`port` with the project's configuration in front of `backend_ports`."""
    binary = haproxy_binary()
    if binary is None:
        raise FileNotFoundError("haproxy is not on PATH (scripts/integration_deps.sh installs Debian's package)")
    config = folder / "haproxy.cfg"
    config.write_text(local_config(HAPROXY_CONFIG.read_text(), backend_ports))
    env = {"PATH": "/usr/sbin:/usr/bin:/bin", "HAPROXY_BIND": f"127.0.0.1:{port}"}
    return ServerProcess("haproxy", [binary, "-W", "-db", "-f", str(config)], folder / "haproxy.log", port, env=env,
                         stop_timeout=10)


@dataclass(frozen=True)
class LoadResult:
    """What wrk saw: requests, failures by kind (non-2xx/3xx answers are `status`), latency in milliseconds."""

    requests: int
    seconds: float
    connect_errors: int
    read_errors: int
    write_errors: int
    status_errors: int
    timeouts: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def failures(self) -> int:
        return self.connect_errors + self.read_errors + self.write_errors + self.status_errors + self.timeouts

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds


def start_wrk(url: str, body: Mapping[str, object], seconds: int, connections: int, threads: int, folder: Path,
              headers: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """wrk POSTing `body` to `url` for `seconds`; read its result with `wrk_result` once it exits."""
    binary = shutil.which("wrk")
    if binary is None:
        raise FileNotFoundError("wrk is not on PATH (scripts/integration_deps.sh installs Debian's package)")
    script = folder / "post.lua"
    script.write_text(_WRK_SCRIPT.format(body=json.dumps(body)))
    args = [binary, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script)]
    for name, value in (headers or {}).items():
        args += ["-H", f"{name}: {value}"]
    return subprocess.Popen([*args, url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wrk_result(process: subprocess.Popen[str], timeout: float) -> LoadResult:
    """Wait for a wrk started by `start_wrk` and parse its closing JSON line."""
    output, _ = process.communicate(timeout=timeout)
    line = next((line for line in output.splitlines() if line.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result (exit {process.returncode}): {output[-2000:]}")
    raw = json.loads(line.removeprefix("WRK_JSON "))
    return LoadResult(requests=raw["requests"], seconds=raw["duration_us"] / 1e6, connect_errors=raw["connect"],
                      read_errors=raw["read"], write_errors=raw["write"], status_errors=raw["status"],
                      timeouts=raw["timeout"], p50_ms=raw["p50_us"] / 1e3, p90_ms=raw["p90_us"] / 1e3,
                      p99_ms=raw["p99_us"] / 1e3, max_ms=raw["max_us"] / 1e3)
