#!/usr/bin/env bash
# The project's test command (README; .ci/run calls exactly this): set-up, lint, type-check, then the unit and
# integration tiers. Extra arguments go to pytest, e.g. `scripts/test.sh -m "not integration"` for the fast tier.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh train
# The integration tier needs Prometheus, docker-compose and PostgreSQL; installs what is missing (the Docker engine
# comes from ../shared/tools/local-base-image.sh, which the Docker tests call).
bash scripts/integration_deps.sh
echo "== ruff" && .venv/bin/ruff check .
echo "== mypy" && .venv/bin/mypy
echo "== layers" && .venv/bin/lint-imports .importlinter
echo "== pytest"
if [ "$#" -gt 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi
# The slowest tests are listed at the end, so a run that grows says where.
exec .venv/bin/python -m pytest -m "not slow" --durations=25
