#!/usr/bin/env bash
# Docker smoke test of the serving image: build it, run it, wait for /readyz, post the README's example request and
# check the answer, load the page at /ui, check /metrics and the HEALTHCHECK, stop it, and report image size and
# time to ready.
#
#   scripts/docker_smoke.sh
#   BASE_IMAGE=python:3.11-slim BUNDLE_DIR=bundle scripts/docker_smoke.sh
#
# Settings (environment):
#   BASE_IMAGE     base image for the build. Unset: ../shared/tools/local-base-image.sh when it exists (it starts a
#                  local Docker engine and prints a base image, for machines without Docker Hub), else the
#                  Dockerfile's default (python:3.11-slim).
#   BUNDLE_DIR     bundle to bake in, a folder inside the build context: `bundle` (written by
#                  `cellmfg registry export-bundle`) or build/docker-smoke/bundle. Unset: a bundle of eight small
#                  but real ONNX models with valid contracts (testkit/fakes.py) is written there.
#   IMAGE          tag to build (default cellmfg:smoke); it is left in place for reuse.
#   MAX_IMAGE_MB   fail above this image size (default 450; the image is ~399 MB on the local Debian base).
#   READY_TIMEOUT  seconds to wait for /readyz (default 180).
#   KEEP_DOCKER_ENGINE=1  leave running a Docker engine that the helper started for this run (default: stop it,
#                  by the PID in /var/run/docker.pid, so that the machine is left as it was found).
# The container runs with --network host on a free loopback port (BENTOML_HOST=127.0.0.1), so nothing listens
# beyond this machine. The last line is `docker-smoke: PASS ...` or the script exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
IMAGE="${IMAGE:-cellmfg:smoke}"
MAX_IMAGE_MB="${MAX_IMAGE_MB:-450}"
READY_TIMEOUT="${READY_TIMEOUT:-180}"
log() { echo "docker-smoke: $*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

# The host side (fake bundle, example request, checks) uses the project's virtualenv.
python=.venv/bin/python
if ! [ -x "$python" ] || ! "$python" -c 'import onnx, service.formats.schemas' >/dev/null 2>&1; then
  log "setting up .venv (scripts/setup.sh train)"
  scripts/setup.sh train
fi

# 1. Docker engine and base image
engine_was_up=false
docker info >/dev/null 2>&1 && engine_was_up=true
stop_engine() {
  local pidfile=/var/run/docker.pid pid
  if [ "$engine_was_up" = false ] && [ "${KEEP_DOCKER_ENGINE:-0}" != 1 ] && [ -f "$pidfile" ]; then
    pid=$(cat "$pidfile")
    log "stopping the Docker engine this run started (pid $pid)"
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
  fi
}
trap stop_engine EXIT
if [ -z "${BASE_IMAGE:-}" ]; then
  helper="$root/../shared/tools/local-base-image.sh"
  if [ -f "$helper" ]; then
    BASE_IMAGE=$(bash "$helper") || fail "$helper could not provide a base image"
    log "base image $BASE_IMAGE (from $helper)"
  fi
fi
docker info >/dev/null 2>&1 || fail "no Docker engine answers (docker info); start one, or set BASE_IMAGE after \
running ../shared/tools/local-base-image.sh"
build_args=(--network host -t "$IMAGE")
[ -n "${BASE_IMAGE:-}" ] && build_args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")

# 2. Bundle
if [ -z "${BUNDLE_DIR:-}" ]; then
  BUNDLE_DIR=build/docker-smoke/bundle
  manifest="$BUNDLE_DIR/manifest.json"
  # Rewritten only when its sources changed: an unchanged bundle keeps Docker's build cache warm.
  if [ -f "$manifest" ] && ! [ testkit/fakes.py -nt "$manifest" ] && ! [ cellmfg/contract.py -nt "$manifest" ] \
      && "$python" -c "import sys; from cellmfg.contract import load_bundle; load_bundle(sys.argv[1])" "$BUNDLE_DIR" \
        >/dev/null 2>&1; then
    log "reusing the fake bundle in $BUNDLE_DIR"
  else
    rm -rf "$BUNDLE_DIR"
    "$python" - "$BUNDLE_DIR" <<'PY'
import sys
from pathlib import Path

from testkit.fakes import write_fake_bundle

write_fake_bundle(Path(sys.argv[1]))
PY
    log "wrote a bundle of fake (small, real) ONNX models to $BUNDLE_DIR"
  fi
fi
[ -f "$BUNDLE_DIR/manifest.json" ] || fail "$BUNDLE_DIR/manifest.json missing: not a bundle"
build_args+=(--build-arg "BUNDLE_DIR=$BUNDLE_DIR")

# 3. Build
log "docker build ${build_args[*]} ."
old_id=$(docker image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
build_start=$(date +%s.%N)
build_log=$(mktemp /tmp/cellmfg-docker-build.XXXXXX.log)
if ! docker build "${build_args[@]}" . >"$build_log" 2>&1; then
  tail -40 "$build_log" >&2
  fail "docker build failed; full log: $build_log"
fi
build_seconds=$(awk "BEGIN {printf \"%.0f\", $(date +%s.%N) - $build_start}")
grep -oE '(slim-venv|image-check|builder): .*' "$build_log" | sed 's/^/  /' >&2 || true
rm -f "$build_log"
# The image this tag pointed to before, if nothing else uses it now: ~650 MB per code change otherwise.
if [ -n "$old_id" ] && [ "$old_id" != "$(docker image inspect --format '{{.Id}}' "$IMAGE")" ] \
    && [ "$(docker image inspect --format '{{len .RepoTags}}' "$old_id" 2>/dev/null)" = 0 ]; then
  docker rmi "$old_id" >/dev/null 2>&1 || true
fi
size_bytes=$(docker image inspect --format '{{.Size}}' "$IMAGE")
image_mb=$(( size_bytes / 1000000 ))
user=$(docker image inspect --format '{{.Config.User}}' "$IMAGE")
log "built $IMAGE in ${build_seconds} s: ${image_mb} MB, user '${user}'"
case "$user" in ""|root|0|0:*|root:*) fail "the image runs as root (USER '$user')" ;; esac

# 4. Run on a free loopback port
port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
name="cellmfg-smoke-$$"
cleanup() {
  if docker container inspect "$name" >/dev/null 2>&1; then
    docker rm -f "$name" >/dev/null 2>&1 || true
  fi
  stop_engine
}
trap cleanup EXIT
run_start=$(date +%s.%N)
docker run -d --name "$name" --network host \
  -e BENTOML_HOST=127.0.0.1 -e BENTOML_PORT="$port" -e CELLMFG_POLL_SECONDS=5 \
  --health-interval 2s --health-timeout 5s --health-retries 3 \
  "$IMAGE" >/dev/null
url="http://127.0.0.1:$port"
log "container $name on $url; waiting for /readyz (at most ${READY_TIMEOUT} s)"
ready_seconds=""
while :; do
  now=$(date +%s.%N)
  elapsed=$(awk "BEGIN {print $now - $run_start}")
  if [ "$(docker inspect --format '{{.State.Running}}' "$name")" != true ]; then
    docker logs "$name" 2>&1 | tail -40 >&2
    fail "the container exited (code $(docker inspect --format '{{.State.ExitCode}}' "$name"))"
  fi
  if "$python" -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('$url/readyz', timeout=2).status != 200)" \
      >/dev/null 2>&1; then
    ready_seconds=$(awk "BEGIN {printf \"%.1f\", $elapsed}")
    break
  fi
  if awk "BEGIN {exit !($elapsed > $READY_TIMEOUT)}"; then
    docker logs "$name" 2>&1 | tail -40 >&2
    fail "not ready after ${READY_TIMEOUT} s"
  fi
  sleep 0.2
done
log "ready in ${ready_seconds} s"

# 5. The README's example request, the answer, /models and /metrics
"$python" - "$url" <<'PY' || { docker logs "$name" 2>&1 | tail -40 >&2; fail "API checks failed"; }
import json
import math
import sys
import urllib.request

from service.formats.schemas import EXAMPLE_INPUT

url = sys.argv[1]


def call(path: str, body: dict | None = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, response.read()


status, raw = call("/predict/electrode", EXAMPLE_INPUT)
answer = json.loads(raw)
assert status == 200, (status, raw[:500])
chemistry = EXAMPLE_INPUT["chemistry"]
models = {ref["name"] for ref in answer["models"].values()}
assert models == {f"density_{chemistry}_onnx", f"mass_loading_{chemistry}_onnx"}, answer["models"]
rows, predictions = EXAMPLE_INPUT["rows"], answer["predictions"]
assert len(predictions) == len(rows), answer
_, raw_models = call("/models")
# --- page: the page at /ui is in the image, with its script and style sheet ---
for path, needle in (("/ui/", b'src="app.js"'), ("/ui/app.js", b"predict/electrode"), ("/ui/app.css", b".feature")):
    status, raw = call(path)
    assert status == 200 and needle in raw, f"{path}: the page is not served from the image (HTTP {status})"
# --- end page ---
served = {m["name"]: m for m in json.loads(raw_models)["models"]}
ranges = {f["name"]: (f["train_min"], f["train_max"]) for f in served[f"density_{chemistry}_onnx"]["features"]}
for row, prediction in zip(rows, predictions, strict=True):
    for column in ("density_g_cm3", "mass_loading_mg_cm2"):
        value = prediction[column]
        assert math.isfinite(value) and value > 0, prediction
        if EXAMPLE_INPUT.get("interval"):
            low, high = prediction["interval"][column]
            assert low <= value <= high, prediction
    outside = sorted(name for name, value in row.items() if not ranges[name][0] <= value <= ranges[name][1])
    assert prediction["in_domain"] == (not outside), (prediction, outside)
    assert sorted(item["feature"] for item in prediction["out_of_domain"]) == outside, (prediction, outside)
status, raw = call("/metrics")
text = raw.decode()
needle = f'cellmfg_predictions_total{{model="density_{chemistry}_onnx"'
assert status == 200 and any(line.startswith(needle) and float(line.split()[-1]) >= 1 for line in text.splitlines()), \
    "cellmfg_predictions_total for the example request not found in /metrics"
assert "cellmfg_model_info{" in text and "bentoml_service_request" in text, "project or BentoML metrics missing"
print(f"docker-smoke: example request answered: {json.dumps(predictions[0])[:160]}...", file=sys.stderr)
PY

# 6. HEALTHCHECK (interval shortened to 2 s for this run) and the non-root user inside
for _ in $(seq 1 30); do
  health=$(docker inspect --format '{{.State.Health.Status}}' "$name")
  [ "$health" = healthy ] && break
  sleep 1
done
[ "$health" = healthy ] || fail "HEALTHCHECK status is '$health', not healthy"
uid=$(docker exec "$name" id -u)
[ "$uid" != 0 ] || fail "the service runs as root inside the container"

# 7. Stop
stop_start=$(date +%s.%N)
docker stop -t 30 "$name" >/dev/null
stop_seconds=$(awk "BEGIN {printf \"%.1f\", $(date +%s.%N) - $stop_start}")
exit_code=$(docker inspect --format '{{.State.ExitCode}}' "$name")
docker rm "$name" >/dev/null
log "stopped in ${stop_seconds} s (exit code ${exit_code})"

(( image_mb < MAX_IMAGE_MB )) || fail "image is ${image_mb} MB, the limit is ${MAX_IMAGE_MB} MB"
echo "docker-smoke: PASS image $IMAGE ${image_mb} MB (limit ${MAX_IMAGE_MB} MB), built in ${build_seconds} s," \
  "ready in ${ready_seconds} s, healthy, uid ${uid}, stopped in ${stop_seconds} s"
