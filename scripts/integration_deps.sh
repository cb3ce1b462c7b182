#!/usr/bin/env bash
# Install what the integration tier (tests/test_deploy.py) needs on a fresh Debian machine; idempotent and quick
# when everything is there. Run as root (or with sudo available); CI runs it before the tests.
#   PostgreSQL server binaries  initdb, pg_ctl, postgres (on PATH, or /usr/lib/postgresql/*/bin; else apt `postgresql`)
#   prometheus                  Debian's `prometheus` (the binary only is used; the system service is never started)
#   docker-compose              Debian's `docker-compose` (for `docker-compose config` on docker-compose.yml)
#   chromium                    Debian's `chromium` (tests/test_ui_browser.py drives it with Playwright; Playwright's
#                               own browser download is never used)
#   haproxy, wrk                Debian's `haproxy` and `wrk` (tests/test_scale.py: replicas behind the load balancer,
#                               under load; the system service is never started)
# The Docker engine and the base image of the smoke test come from ../shared/tools/local-base-image.sh, which
# scripts/docker_smoke.sh calls itself.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "integration-deps: $*" >&2; }

sudo=()
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
  else
    sudo=(false)
  fi
fi

have_postgres() {
  command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 && return 0
  compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null
}

packages=()
have_postgres || packages+=(postgresql)
command -v prometheus >/dev/null 2>&1 || packages+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || packages+=(docker-compose)
command -v chromium >/dev/null 2>&1 || packages+=(chromium)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || packages+=(haproxy)
command -v wrk >/dev/null 2>&1 || packages+=(wrk)

if [ ${#packages[@]} -gt 0 ]; then
  if [ "${sudo[*]}" = false ] || ! command -v apt-get >/dev/null 2>&1; then
    log "missing ${packages[*]} and cannot install them here (needs root and apt-get); the tests that need them skip"
  else
    log "apt-get install ${packages[*]}"
    # No daemon may start from a package's maintainer scripts: the tests run their own servers on free ports.
    policy=/usr/sbin/policy-rc.d
    made_policy=false
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
      "${sudo[@]}" chmod 0755 "$policy"
      made_policy=true
    fi
    cleanup() { if [ "$made_policy" = true ]; then "${sudo[@]}" rm -f "$policy"; fi; }
    trap cleanup EXIT
    "${sudo[@]}" apt-get update -q >/dev/null
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${packages[@]}" \
      >/dev/null
    cleanup
    trap - EXIT
  fi
fi


report() { command -v "$1" >/dev/null 2>&1 && echo "$1: $("$@" 2>&1 | head -1)" || echo "$1: missing"; }
{
  if have_postgres; then
    pg_bin=$(command -v pg_ctl || printf '%s\n' /usr/lib/postgresql/*/bin/pg_ctl | sort -V | tail -1)
    echo "pg_ctl: $("$pg_bin" --version)"
  else
    echo "pg_ctl: missing"
  fi
  report prometheus --version
  report docker-compose version --short
  report haproxy -v
  report wrk --version
  # Debian's launcher script prints a harmless shell warning on stderr on some machines.
  command -v chromium >/dev/null 2>&1 && echo "chromium: $(chromium --version 2>/dev/null | head -1)" \
    || echo "chromium: missing"
  echo "psycopg: $(.venv/bin/python -c 'import psycopg; print(psycopg.__version__)' 2>/dev/null || echo missing)"
} | sed 's/^/integration-deps: /' >&2
