#!/usr/bin/env bash
# The main job (README): set-up → train → promote → export bundle → serve, on the embedded default
# (SQLite MLflow at ./mlflow.db, artefacts in ./mlruns, local files). Ctrl-C stops the service and the MLflow UI.
#   PORT=3000 MLFLOW_PORT=5000 PRESET=paper scripts/main.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${PORT:-3000}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
PRESET="${PRESET:-paper}"
scripts/setup.sh train
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-sqlite:///$PWD/mlflow.db}"
cellmfg=.venv/bin/cellmfg

echo "== 1/4 train ($PRESET preset): 3 pretrained nets, 5 transfers, comparisons and baselines (report: runs/)"
# The report goes to runs/train-all-*/ (printed); the committed docs/results.* change only with --write-docs.
"$cellmfg" train all --preset "$PRESET"
echo "== 2/4 promote: ONNX export, parity and metric gates, alias champion"
"$cellmfg" registry promote --all || echo "(a gate refused some candidates; the former champions stay)"
echo "== 3/4 export the champions as a bundle (bundle/)"
"$cellmfg" registry export-bundle --alias champion --out bundle
echo "== 4/4 serve"
.venv/bin/mlflow ui --backend-store-uri "$MLFLOW_TRACKING_URI" --host 127.0.0.1 --port "$MLFLOW_PORT" \
  >mlflow-ui.log 2>&1 &
mlflow_pid=$!
trap 'kill "$mlflow_pid" 2>/dev/null || true' EXIT
# The MLflow UI opens on its model-training view (not the GenAI one) at the density experiment's runs.
mlflow_ui=$(.venv/bin/python -c 'import sys; from cellmfg.mlflow_setup import experiment_id, ui_address
print(ui_address(sys.argv[1], experiment_id("density")))' "http://127.0.0.1:$MLFLOW_PORT")
cat <<INFO
  Page:       http://127.0.0.1:$PORT/ui/  (try a recipe: prediction, interval, explanation, CSV batches)
  API:        http://127.0.0.1:$PORT/predict/electrode  and  /predict/gdl
  API docs:   http://127.0.0.1:$PORT/docs  (OpenAPI/Swagger; also at /)
  Metrics:    http://127.0.0.1:$PORT/metrics
  MLflow UI:  $mlflow_ui  (log: mlflow-ui.log)
INFO
"$cellmfg" serve --port "$PORT"
