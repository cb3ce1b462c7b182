"""Helpers shared by the tests (tests/) and the scripts that load or measure the service (scripts/).

- `testkit.fakes`: small, real ONNX models with valid contracts, bundles of them, and onnxruntime's own answers;
- `testkit.registry`: the fakes in an MLflow registry;
- `testkit.processes`: servers in subprocesses (`cellmfg serve`, `mlflow server`, ...) and the waits around them;
- `testkit.bad_inputs`: the bad-input catalogue the service must refuse with a clear 4xx.

A package of the project (pyproject.toml), so scripts import it without editing `sys.path`; the service never
imports it.
"""
