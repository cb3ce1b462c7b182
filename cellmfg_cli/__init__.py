"""The `cellmfg` console command: joins the stages, one sub-command group per stage.

It sits above every stage (the layer contract in `.importlinter` says so): data generation, training, registry and
service each keep their commands beside their code and import their heavy libraries (TensorFlow, MLflow, BentoML)
only when a command runs, so `cellmfg --help` is instant. The serving image ships no training code and no
TensorFlow: a stage that is not installed is left out; a stage that is installed but fails to import is an error
with its traceback, never a silently missing command.

The console stays quiet: library warnings and TensorFlow/absl/MLflow chatter are filtered here, at the entry point,
before any library is imported. The command's own messages, results and progress bars remain; `--verbose` (or
CELLMFG_VERBOSE=1) shows everything.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import warnings
from typing import Annotated

import typer

VERBOSE_ENV = "CELLMFG_VERBOSE"

# (module, Typer app attribute or command function, command name, help, the stage's top-level package)
STAGES: tuple[tuple[str, str, str, str], ...] = (
    ("datagen.cli", "data_app", "data", "Generate, check, validate and calibrate datasets."),
    ("training.cli", "train_app", "train", "Pretrain, transfer and evaluate nets; log to MLflow."),
    ("training.cli", "study_app", "study", "Studies: learning curves (how many sheets a target needs)."),
    ("registry.cli", "app", "registry", "Promote models to ONNX champions, roll back, retire, export bundles."),
    ("service.cli", "ledger_app", "ledger", "Export measured predictions from the prediction ledger."),
)
# Single commands (not groups) a stage offers at the top level.
COMMANDS: tuple[tuple[str, str, str, str], ...] = (
    ("service.cli", "serve", "serve", "Start the prediction service (BentoML + onnxruntime)."),
    ("service.cli", "predict", "predict", "Score a CSV with the served ONNX models, offline (no server)."),
    ("service.cli", "design", "design", "Find the settings that give a wanted electrode or GDL, offline."),
    ("service.cli", "suggest", "suggest", "Suggest the next experiments (largest ensemble spread), offline."),
)

# Loggers of libraries that print INFO/WARNING lines a user of the command line need not read.
NOISY_LOGGERS = ("tensorflow", "absl", "keras", "mlflow", "alembic", "h5py", "numexpr", "urllib3", "git",
                 "tf2onnx", "onnx", "matplotlib", "PIL", "numba", "shap", "bentoml")

HELP = ("Predict electrochemical-cell component properties from manufacturing parameters "
        "(transfer learning on small datasets, served over HTTP).")


def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show library warnings and log output.")] = False,
) -> None:
    """Keeps every stage a sub-command, even where only `serve` is installed (the serving image)."""
    if verbose:
        show_everything()


def quiet_libraries() -> None:
    """Silence library chatter before any library is imported (environment variables must precede the imports;
    worker processes inherit them)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ INFO/WARNING lines
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # its start-up notice; results are identical either way
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per downloaded artefact
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # spawn-started workers parse this at their start
    warnings.simplefilter("ignore")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def show_everything() -> None:
    """--verbose: undo `quiet_libraries` for this process (TensorFlow's C++ level is fixed once it is loaded)."""
    os.environ[VERBOSE_ENV] = "1"
    warnings.resetwarnings()
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)


def stage_installed(module: str) -> bool:
    """A stage is installed when its top-level package is importable (the serving image has no `training`)."""
    return importlib.util.find_spec(module.split(".", 1)[0]) is not None


def build() -> typer.Typer:
    """The command with every installed stage mounted; an installed stage that fails to import raises with its
    own traceback."""
    app = typer.Typer(name="cellmfg", help=HELP, no_args_is_help=True, add_completion=False)
    app.callback()(_root)
    for module, attribute, name, help_text in STAGES:
        if stage_installed(module):
            app.add_typer(getattr(importlib.import_module(module), attribute), name=name, help=help_text)
    for module, attribute, name, help_text in COMMANDS:
        if stage_installed(module):
            app.command(name, help=help_text)(getattr(importlib.import_module(module), attribute))
    return app


def main() -> None:
    # Our own warnings read as plain lines between the progress bars (set before any library configures logging).
    logging.basicConfig(format="%(message)s")
    if os.environ.get(VERBOSE_ENV) != "1" and not {"--verbose", "-v"} & set(sys.argv[1:2]):
        quiet_libraries()
    build()()


if __name__ == "__main__":
    main()
