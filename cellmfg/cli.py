"""The `cellmfg` console command: one sub-command per pipeline stage.

Each stage's commands live beside the stage (`training/cli.py`, `registry/cli.py`, `service/cli.py`) and import
their heavy libraries (TensorFlow, MLflow, BentoML) only when run, so `cellmfg --help` is instant and the serving
image, which has no TensorFlow, still offers `cellmfg serve`.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="cellmfg",
    help="Predict electrochemical-cell component properties from manufacturing parameters "
    "(transfer learning on small datasets, served over HTTP).",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Keeps `cellmfg serve` a sub-command even where it is the only stage installed (the serving image)."""


def _add_stage(module: str, attribute: str, name: str, help_text: str) -> None:
    """Mount a stage's Typer app; a stage whose libraries are not installed (serving image) is left out."""
    try:
        stage = importlib.import_module(module)
    except ImportError:
        return
    app.add_typer(getattr(stage, attribute), name=name, help=help_text)


def _build() -> None:
    _add_stage("training.cli", "data_app", "data", "Generate, check and validate datasets.")
    _add_stage("training.cli", "train_app", "train", "Pretrain, transfer and evaluate nets; log to MLflow.")
    _add_stage("registry.cli", "app", "registry", "Promote models to ONNX champions, roll back, export bundles.")
    try:
        from service.cli import serve
    except ImportError:
        return
    app.command("serve", help="Start the prediction service (BentoML + onnxruntime).")(serve)


def main() -> None:
    _build()
    app()


if __name__ == "__main__":
    main()
