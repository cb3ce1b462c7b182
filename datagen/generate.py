"""Generate the shipped datasets under data/, write the data card, and check committed files byte for byte.

Electrodes come from a lab campaign through a process model (`datagen.electrode_process`), GDLs from stochastic
microstructures (`datagen.gdl_microstructure`). Every GDL row is seeded on its own, so `check(quick=True)` can
regenerate a sample of rows and compare them without paying for the whole set.
"""

from __future__ import annotations

import functools
import io
import json
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellmfg.dataio import DATA_DIR, GROUP_ID, SAMPLE_ID
from cellmfg.domain import DATASETS

DEFAULT_SEED = 20250214
ELECTRODES = ("graphite", "si_gra", "nmc")
GDLS = ("gdl200", "gdl1000")
QUICK_GDL_ROWS = 3
CARD_NAME = "DATA_CARD.md"
TIMES_NAME = "generation_times.json"  # seconds per dataset of the last full generation, and the machine's load
CONVERGENCE_NAME = "gdl_convergence.json"  # written by scripts/gdl_convergence.py
ID_COLUMNS = (SAMPLE_ID, GROUP_ID)

Progress = Callable[[str, int], None]  # (dataset, rows done since last call)


def _silent(_: str, __: int) -> None:
    return None


def to_csv_bytes(frame: pd.DataFrame) -> bytes:
    """Canonical CSV bytes: fixed line endings and pandas' shortest round-trip float repr."""
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue().encode()


@dataclass(frozen=True)
class Generated:
    paths: dict[str, Path]
    seconds: dict[str, float]


def generate(seed: int, out: Path = DATA_DIR, quick: bool = False, progress: Progress = _silent,
             names: tuple[str, ...] = (*ELECTRODES, *GDLS)) -> Generated:
    """Write the dataset CSVs in `names` and (unless quick) the data card, each file replaced atomically.

    The card describes every dataset file present in `out`; sets not regenerated now show no generation time.
    """
    from datagen.electrode_process import generate_electrode
    from datagen.gdl_microstructure import generate_gdl

    out.mkdir(parents=True, exist_ok=True)
    paths, seconds = {}, {}
    cpu_started = _cpu_seconds()
    for name in names:
        started = time.perf_counter()
        if name in ELECTRODES:
            frame = generate_electrode(name, seed)
            progress(name, len(frame))
        else:
            rows = range(QUICK_GDL_ROWS) if quick else None
            frame = generate_gdl(name, seed, rows=rows, progress=functools.partial(progress, name))
        seconds[name] = time.perf_counter() - started
        paths[name] = _write_atomic(out / f"{name}.csv", to_csv_bytes(frame))
    if not quick:
        times = _read_times(out)
        times.update({name: round(value, 1) for name, value in seconds.items()})
        times["_machine"] = _machine_note()
        # CPU time of this process and its finished workers: what the run costs whatever else shares the machine.
        times["_cpu_seconds"] = round(_cpu_seconds() - cpu_started, 1)
        _write_atomic(out / TIMES_NAME, (json.dumps(times, indent=1, sort_keys=True) + "\n").encode())
        write_card(seed, out)
    return Generated(paths, seconds)


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _read_times(directory: Path) -> dict[str, Any]:
    path = directory / TIMES_NAME
    return dict(json.loads(path.read_text())) if path.is_file() else {}


def write_card(seed: int, directory: Path = DATA_DIR) -> Path:
    """(Re)write the data card from the dataset files, their recorded generation times and the convergence results.

    Nothing is regenerated, so the card can be refreshed after `scripts/gdl_convergence.py` without paying again.
    """
    frames = {n: pd.read_csv(directory / f"{n}.csv") for n in (*ELECTRODES, *GDLS)
              if (directory / f"{n}.csv").is_file()}
    times = _read_times(directory)
    machine = str(times.pop("_machine", "not recorded"))
    cpu = times.pop("_cpu_seconds", None)
    if cpu is not None:
        machine += f"; CPU time (user + system, all processes) {float(cpu):.0f} s"
    seconds = {name: float(value) for name, value in times.items()}
    convergence_path = directory / CONVERGENCE_NAME
    convergence = json.loads(convergence_path.read_text()) if convergence_path.is_file() else None
    from datagen.card import data_card

    return _write_atomic(directory / CARD_NAME, data_card(seed, seconds, frames, machine, convergence).encode())


def _write_atomic(path: Path, data: bytes) -> Path:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_bytes(data)
    temporary.replace(path)
    return path


def check(seed: int, directory: Path = DATA_DIR, quick: bool = False, progress: Progress = _silent,
          names: tuple[str, ...] = (*ELECTRODES, *GDLS)) -> list[str]:
    """Regenerate and compare with the files in `directory`; returns the differences (empty: identical).

    `quick` regenerates the electrodes fully and, for each GDL set, its first rows plus two rows drawn at random.
    """
    from datagen.electrode_process import generate_electrode
    from datagen.gdl_microstructure import generate_gdl

    problems = []
    for name in names:
        path = directory / f"{name}.csv"
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        committed = path.read_bytes()
        if name in ELECTRODES:
            fresh = to_csv_bytes(generate_electrode(name, seed))
            progress(name, DATASETS[name].paper_rows)
            if fresh != committed:
                problems.append(f"{path}: differs from a fresh generation with seed {seed}")
            continue
        if not quick:
            fresh = to_csv_bytes(generate_gdl(name, seed, progress=functools.partial(progress, name)))
            if fresh != committed:
                problems.append(f"{path}: differs from a fresh generation with seed {seed}")
            continue
        table = pd.read_csv(path)
        sample = sorted({*range(QUICK_GDL_ROWS),
                         *np.random.default_rng().choice(len(table), size=2, replace=False).tolist()})
        regenerated = generate_gdl(name, seed, rows=sample, progress=functools.partial(progress, name))
        expected = to_csv_bytes(table.iloc[sample].reset_index(drop=True))
        if to_csv_bytes(regenerated.reset_index(drop=True)) != expected:
            problems.append(f"{path}: rows {sample} differ from a fresh generation with seed {seed}")
    return problems


def _machine_note() -> str:
    try:
        load = os.getloadavg()
        return (f"{os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min) "
                "at the end of the generation; the machine is shared, so wall times vary with the load")
    except OSError:  # pragma: no cover - platforms without getloadavg
        return f"{os.cpu_count()} cores"
