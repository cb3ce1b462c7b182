"""The layer contract (`.importlinter`) holds, and the check really fails when a layer is crossed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("cellmfg", "cellmfg_cli", "datagen", "training", "registry", "service")


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).with_name("lint-imports")), str(root / ".importlinter"),
               "--no-cache"]
    return subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=300,
                          env={"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(root)}, check=False)


def test_the_code_keeps_its_layers() -> None:
    result = _lint_imports(PROJECT_ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_a_service_module_importing_training_breaks_the_contract(tmp_path: Path) -> None:
    for package in PACKAGES:
        shutil.copytree(PROJECT_ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PROJECT_ROOT / ".importlinter", tmp_path / ".importlinter")
    assert _lint_imports(tmp_path).returncode == 0
    # The kind of shortcut a newcomer takes: the service reusing a training helper.
    (tmp_path / "service" / "shortcut.py").write_text("from training import evaluate  # noqa: F401\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert "service is not allowed to import training" in result.stdout
    assert "service.shortcut -> training.evaluate" in result.stdout
