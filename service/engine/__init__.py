"""The engine: served models in, answers out, with no HTTP in it.

- `config`: the service's settings, read from the environment (`CELLMFG_*`).
- `sources`: where models come from (the MLflow registry by alias, or a bundle directory).
- `model_store`: verified ONNX sessions, their contracts, and reloading when a source changes.
- `predict`: rows -> predictions, the domain check, intervals, explanations (`Predictor`).
- `explain`, `shapley`: exact SHAP values, computed by the service itself.
- `metrics`: the Prometheus metrics.
- `errors`: the one refusal every room raises (`RequestRejectedError`) and how much of it is spelt out.
"""
