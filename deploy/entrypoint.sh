#!/bin/sh
# Entry point of the cellmfg image. `serve` (the default) starts the prediction service exactly as `cellmfg serve`
# does (service.cli: checks the model source, then execs BentoML's `serve` with a metrics directory of its own);
# any other command is run as given, e.g. `docker run --rm IMAGE python -c 'import service.service'`.
#
# Models: MLFLOW_TRACKING_URI (the registry, by CELLMFG_ALIAS) when set, else the bundle baked in at build time
# (/opt/cellmfg/bundle) unless CELLMFG_BUNDLE names another one, e.g. a mounted volume. With both, the registry is
# preferred and the bundle is the fallback while the registry is unreachable at start.
set -eu
baked=/opt/cellmfg/bundle
if [ -z "${CELLMFG_BUNDLE:-}" ] && [ -f "$baked/manifest.json" ]; then
  export CELLMFG_BUNDLE="$baked"
fi
if [ "$#" -eq 0 ] || [ "$1" = serve ]; then
  [ "$#" -eq 0 ] || shift
  exec python -c 'import typer; from service.cli import serve; typer.run(serve)' \
    --port "${BENTOML_PORT:-3000}" --workers "${CELLMFG_WORKERS:-1}" --alias "${CELLMFG_ALIAS:-champion}" "$@"
fi
exec "$@"
