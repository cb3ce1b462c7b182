"""Generate the shipped datasets under data/, write the data card, and check committed files byte for byte.

Electrodes come from a process model (`training.electrode_process`), GDLs from stochastic microstructures
(`training.gdl_microstructure`). Every GDL row is seeded on its own, so `check(quick=True)` can regenerate a
sample of rows and compare them without paying for the whole set.
"""

from __future__ import annotations

import functools
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cellmfg.___domain import DATASETS
from cellmfg.dataio import DATA_DIR

DEFAULT_SEED = 20250214
ELECTRODES = ("graphite", "si_gra", "nmc")
GDLS = ("gdl200", "gdl1000")
QUICK_GDL_ROWS = 3
CARD_NAME = "DATA_CARD.md"

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


def generate(seed: int, out: Path = DATA_DIR, quick: bool = False, progress: Progress = _silent) -> Generated:
    """Write every dataset CSV and (for a full run) the data card, each file replaced atomically."""
    from training.electrode_process import generate_electrode
    from training.gdl_microstructure import generate_gdl

    out.mkdir(parents=True, exist_ok=True)
    paths, seconds = {}, {}
    for name in (*ELECTRODES, *GDLS):
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
        _write_atomic(out / CARD_NAME, data_card(seed, seconds, {n: pd.read_csv(p) for n, p in paths.items()}).encode())
    return Generated(paths, seconds)


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
    from training.electrode_process import generate_electrode
    from training.gdl_microstructure import generate_gdl

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


def data_card(seed: int, seconds: dict[str, float], frames: dict[str, pd.DataFrame]) -> str:
    from training.electrode_process import data_card_section as electrode_section
    from training.gdl_microstructure import data_card_section as gdl_section

    lines = [
        "# Data card: cellmfg synthetic datasets",
        "",
        "The paper's data (Fernandez et al., npj Adv. Manuf. 2, 14, 2025) is available only on request, so these",
        "datasets are generated: electrodes from a process model, GDLs from real stochastic microstructures.",
        f"They are written by `cellmfg data generate --seed {seed}` and checked by `cellmfg data generate --check`",
        "(the same seed gives byte-identical files).",
        "",
        "## Summary",
        "",
        "| dataset | rows | role | generation time (s) |",
        "|---|---|---|---|",
    ]
    for name, frame in frames.items():
        lines.append(f"| {name} | {len(frame)} | {DATASETS[name].role} | {seconds[name]:.1f} |")
    lines += ["", f"Total generation time: {sum(seconds.values()):.1f} s on this project's 2-core reference machine.",
              "", "## Ranges (generated vs paper)", "", "| dataset | column | min | mean | max | paper range |",
              "|---|---|---|---|---|---|"]
    for name, frame in frames.items():
        for column in frame.columns:
            if column == "sample_id":
                continue
            paper = DATASETS[name].ranges.get(column)
            paper_text = f"{paper[0]:g}–{paper[1]:g}" if paper else "(output)"
            values = frame[column]
            lines.append(f"| {name} | {column} | {values.min():.4g} | {values.mean():.4g} | {values.max():.4g} | "
                         f"{paper_text} |")
    lines += ["", electrode_section().strip(), "", gdl_section().strip(), ""]
    return "\n".join(lines)
