"""The layer contract (`.importlinter`) holds, and the check really fails when a layer is crossed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("cellmfg", "cellmfg_cli", "datagen", "training", "registry", "service", "testkit")


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).with_name("lint-imports")), str(root / ".importlinter"),
               "--no-cache"]
    return subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=300,
                          env={"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(root)}, check=False)


def test_the_code_keeps_its_layers() -> None:
    result = _lint_imports(PROJECT_ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def _copy_of_the_project(folder: Path) -> Path:
    """The packages and the contract in `folder`, checked to keep their layers before a test breaks one."""
    for package in PACKAGES:
        shutil.copytree(PROJECT_ROOT / package, folder / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PROJECT_ROOT / ".importlinter", folder / ".importlinter")
    assert _lint_imports(folder).returncode == 0
    return folder


@pytest.mark.parametrize(("package", "line", "says"), [
    # The kind of shortcut a newcomer takes: the service reusing a training helper.
    ("service", "from training import evaluate", "service.shortcut -> training.evaluate"),
    # testkit is not in the wheel or the image: a registry command reusing a test fake would fail once installed.
    ("registry", "from testkit import fakes", "registry.shortcut -> testkit.fakes"),
    # The serving image has no pandas: a service module reading a frame would fail only there.
    ("service", "import pandas", "service.shortcut -> pandas"),
])
def test_a_forbidden_import_breaks_the_contract(tmp_path: Path, package: str, line: str, says: str) -> None:
    root = _copy_of_the_project(tmp_path)
    (root / package / "shortcut.py").write_text(f"{line}  # noqa: F401\n")
    result = _lint_imports(root)
    assert result.returncode != 0
    assert f"{package} is not allowed to import {says.split(' -> ')[1].split('.')[0]}" in result.stdout
    assert says in result.stdout


def test_testkit_is_left_out_of_the_wheel() -> None:
    import tomllib

    from setuptools import find_packages

    found = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    shipped = set(find_packages(str(PROJECT_ROOT), include=found["include"]))
    assert {"cellmfg", "cellmfg_cli", "datagen", "training", "registry", "service"} <= shipped
    assert not {p for p in shipped if p.split(".")[0] in ("testkit", "tests", "scripts")}, shipped


@pytest.mark.parametrize(("folder", "line", "says"), [
    # The engine reaching up for a format: how `predict` came to import `schemas` for two helpers.
    ("service/engine", "from service.formats import schemas", "service.engine.shortcut -> service.formats.schemas"),
    # Rooms of one layer stay apart: the ledger does not reach into recipe design.
    ("service/ledger", "from service.design import search", "service.ledger.shortcut -> service.design.search"),
    # The web room's middleware needs nothing of the page (security once imported service.ui for its paths).
    ("service/web", "from service import ui", "service.web.shortcut -> service.ui"),
])
def test_a_room_importing_upward_or_sideways_breaks_the_rooms_contract(tmp_path: Path, folder: str, line: str,
                                                                       says: str) -> None:
    root = _copy_of_the_project(tmp_path)
    (root / folder / "shortcut.py").write_text(f"{line}  # noqa: F401\n")
    result = _lint_imports(root)
    assert result.returncode != 0
    importer, imported = says.split(" -> ")
    room = ".".join(importer.split(".")[:2])
    assert f"{room} is not allowed to import {'.'.join(imported.split('.')[:2])}" in result.stdout, result.stdout
    assert says in result.stdout


def test_a_module_outside_every_room_breaks_the_rooms_contract(tmp_path: Path) -> None:
    root = _copy_of_the_project(tmp_path)
    (root / "service" / "stray.py").write_text('"""A new module nobody placed in a room."""\n')
    result = _lint_imports(root)
    assert result.returncode != 0
    assert "not listed as layers" in result.stdout and "service.stray" in result.stdout
