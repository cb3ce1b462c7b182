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
from cellmfg.domain import DATASETS, DENSITY, TORTUOSITY

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


def _groups_table(frames: dict[str, pd.DataFrame], seconds: dict[str, float]) -> list[str]:
    lines = ["| dataset | rows | groups | rows per group (min / median / max) | distinct input rows | role "
             "| generation time (s) |", "|---|---|---|---|---|---|---|"]
    for name, frame in frames.items():
        features = [q.column for q in DATASETS[name].features]
        distinct = len(frame[features].drop_duplicates())
        if GROUP_ID in frame.columns:
            sizes = frame.groupby(GROUP_ID).size()
            groups, per = str(sizes.size), f"{sizes.min()} / {sizes.median():g} / {sizes.max()}"
        else:
            groups, per = f"{distinct} (one per structure)", "1 / 1 / 1"
        lines.append(f"| {name} | {len(frame)} | {groups} | {per} | {distinct} | {DATASETS[name].role} | "
                     f"{_seconds_text(name, seconds)} |")
    return lines


def _seconds_text(name: str, seconds: dict[str, float]) -> str:
    return f"{seconds[name]:.1f}" if name in seconds else "— (not regenerated in this run)"


def _outputs_table(frames: dict[str, pd.DataFrame]) -> list[str]:
    from datagen.electrode_process import LITERATURE_RANGES

    lines = ["| dataset | output | mean | min | max | literature / paper |", "|---|---|---|---|---|---|"]
    for name, frame in frames.items():
        outputs = [t.column for t in DATASETS[name].targets] + (["porosity"] if "porosity" in frame.columns else [])
        for column in outputs:
            values = frame[column]
            if (name, column) in LITERATURE_RANGES:
                reference = LITERATURE_RANGES[(name, column)]
            elif column == TORTUOSITY.column:
                reference = {"gdl200": "paper: mean 1.07, min 1.03, max 1.17",
                             "gdl1000": "paper: mean 1.09, min 1.08, max 1.17"}[name]
            else:
                reference = "carbon paper: 0.70–0.90 as made, lower compressed (this set: 0.44–0.90 by design)"
            lines.append(f"| {name} | {column} | {values.mean():.4g} | {values.min():.4g} | {values.max():.4g} | "
                         f"{reference} |")
    return lines


def _caps_section(frames: dict[str, pd.DataFrame]) -> list[str]:
    from datagen.electrode_process import (
        NMC_DENSITY_LITERATURE_MAX_G_CM3,
        SOURCES,
        density_cap,
        process_terms,
    )

    lines = [
        "## Physical caps",
        "",
        "No calendered electrode can be denser than its solids at the minimum porosity the particles allow: "
        "ρ_max = ρ_s·(1 − ε_min'), ρ_s the recipe's solid density (rule of mixtures, tables below) and ε_min' the "
        "active-material frame's tightest packing plus the carbon-binder domain's nanopores. The model "
        "respects it by construction (the nip porosity saturates at ε_min' and spring-back only adds thickness); a "
        "disc whose *measured* density exceeds it (thin coatings, where a 1 µm gauge error is several percent) is "
        "re-gauged, as a lab would. Per dataset:",
        "",
        "| dataset | ε_min' over its recipes | ρ_max over its recipes (g/cm³) | max measured density (g/cm³) | "
        "max measured / row cap |",
        "|---|---|---|---|---|",
    ]
    for name in ELECTRODES:
        if name not in frames:
            continue
        frame = frames[name]
        cap = density_cap(frame, name)
        floor = process_terms(frame, name)["min_porosity"]
        lines.append(f"| {name} | {floor.min():.3f}–{floor.max():.3f} | {cap.min():.3f}–{cap.max():.3f} | "
                     f"{frame[DENSITY.column].max():.3f} | {(frame[DENSITY.column] / cap).max():.3f} |")
    if "nmc" in frames:
        richest = frames["nmc"].nlargest(1, "am_wt_pct")
        terms = process_terms(richest, "nmc")
        solid, richest_floor = float(terms["solid_density"][0]), float(terms["min_porosity"][0])
        lines += [
            "",
            f"NMC111: at the richest recipe ({float(richest['am_wt_pct'].iloc[0]):g} wt% NMC, ρ_s ≈ {solid:.2f}) "
            f"ε_min' = {richest_floor:.3f} gives ρ_max ≈ {solid * (1.0 - richest_floor):.2f} g/cm³, below the ≈ "
            f"{NMC_DENSITY_LITERATURE_MAX_G_CM3:g} g/cm³ that NMC111 electrodes rarely exceed "
            f"({SOURCES['nmc_density_literature_max']}).",
        ]
    lines += ["", "Mass loadings are positive by construction; every feature stays inside the paper's ranges."]
    return lines


def _calibration_section(frames: dict[str, pd.DataFrame]) -> list[str]:
    from datagen import calibration

    if "graphite" not in frames:
        return []
    scores = calibration.random_forest_scores(frames["graphite"])
    grouped = {s.target: s for s in scores if s.split == "grouped"}
    closeness = "; ".join(
        f"{target}: {grouped[target].mean_mape_pct:.1f} % vs {paper:g} % "
        f"({grouped[target].mean_mape_pct - paper:+.1f} points)"
        for target, paper in calibration.PAPER_SOURCE_MAPE_PCT.items())
    return [
        "## Difficulty calibration (graphite)",
        "",
        "**Target.** A random forest (scikit-learn, 200 trees, default settings) evaluated on *grouped* 70/30 splits "
        "(GroupShuffleSplit by `group_id`: no sheet on both sides) should land near the paper's own source-net "
        "errors on its graphite test split: density 4.5 %, mass loading 13.9 % MAPE. The scatter constants were not "
        "fitted to this: each was set to a physically plausible magnitude for a months-long lab campaign (table of "
        "random effects below), then this check was run. Reproduce with `cellmfg data calibrate` or "
        "`.venv/bin/python scripts/calibrate_electrodes.py`.",
        "",
        calibration.markdown(scores),
        "",
        f"**How close.** {closeness}. Random-row splits (the paper's protocol) are shown for contrast: there "
        "replicate discs of a test piece sit in training, so the forest scores the disc-to-disc noise rather than "
        "a new sheet. Mass loading is a property of the sheet (calendering cannot change it), so grouped-split "
        "error is dominated by the unrecorded slurry-batch and coater-run effects; density also moves within a "
        "sheet with the roll gap, which the forest does learn.",
        "",
        *_noise_free_rows(frames),
        "",
        "**The paper's own difficulty.** The graphite net of the paper scores 4.5 % (density) and 13.9 % (mass "
        "loading) on its graphite test split and fails zero-shot on the targets (density 78.8 % Si-Gra, 56.1 % NMC; "
        "mass loading 45.0 % Si-Gra, 70.8 % NMC). `.venv/bin/python scripts/electrode_difficulty.py` trains this "
        "project's source net (nested grouped selection, 250 epochs) on grouped 70/30 graphite splits and prints "
        "its in-domain and zero-shot errors on these files beside the paper's; the physics and scatter constants "
        "above were set from their sources and checked against those levels, never against which method wins.",
    ]


def _noise_free_rows(frames: dict[str, pd.DataFrame]) -> list[str]:
    """Noise-free R² per electrode set: the generator's nominal model against the measured targets."""
    from datagen.electrode_process import TARGET_COLUMNS, nominal_r2

    present = [name for name in ELECTRODES if name in frames]
    if not present:
        return []
    lines = [
        "**Noise-free R².** The generator's own nominal model (`process_model`, the settings in the CSV without any "
        "random effect) against the shipped targets: the best any model of the six inputs can do on average; the "
        "rest is the documented sheet, campaign and disc scatter.",
        "",
        "| dataset | " + " | ".join(f"noise-free R² {column}" for column in TARGET_COLUMNS) + " |",
        "|---|" + "---|" * len(TARGET_COLUMNS),
    ]
    for name in present:
        r2 = nominal_r2(frames[name], name)
        lines.append(f"| {name} | " + " | ".join(f"{r2[column]:.2f}" for column in TARGET_COLUMNS) + " |")
    return lines


def _gdl_sensitivities(frames: dict[str, pd.DataFrame]) -> list[str]:
    from scipy.stats import spearmanr

    lines = [
        "## GDL: sensitivity of tortuosity to each input",
        "",
        "Measured on the generated rows: Spearman rank correlation with τ, and the change of τ across the input's "
        "full paper range according to a linear fit on all five inputs (inputs are independent and uniform, so the "
        "fit's coefficients are the main effects). Ranked by the size of that change.",
        "",
        "| dataset | rank | input | Spearman ρ | Δτ over the range (linear fit) | Δ(τ − 1) relative to mean τ − 1 |",
        "|---|---|---|---|---|---|",
    ]
    for name in GDLS:
        if name not in frames:
            continue
        frame = frames[name]
        features = [q.column for q in DATASETS[name].features]
        x = frame[features].to_numpy(dtype=float)
        tau = frame[TORTUOSITY.column].to_numpy(dtype=float)
        design = np.column_stack([np.ones(len(x)), x])
        coef, *_ = np.linalg.lstsq(design, tau, rcond=None)
        effects = {}
        for i, column in enumerate(features):
            low, high = DATASETS[name].ranges[column]
            effects[column] = (coef[i + 1] * (high - low), float(spearmanr(x[:, i], tau).statistic))
        excess = float(np.mean(tau - 1.0))
        ranked = sorted(effects.items(), key=lambda item: -abs(item[1][0]))
        for rank, (column, (delta, rho)) in enumerate(ranked, start=1):
            lines.append(f"| {name} | {rank} | {column} | {rho:+.2f} | {delta:+.4f} | {delta / excess * 100:+.0f} % |")
    lines += [
        "",
        "**How each input acts here.** Compression densifies the layer (porosity 1 − (F + B)/(1 − c)) and flattens "
        "the layup, so it and the fibre concentration set the solid fraction of the measured layer and dominate; the "
        "binder share adds its webs exactly where fibres are close, closing the narrowest openings. The fibre "
        "diameter sets the size of the openings relative to the layer thickness. Thickness enters twice, both "
        "physical and both weak: the measured layer is t·(1 − c) thick, and the detour forced at the inlet face (the "
        "first fibres in front of an inlet pore) is a fixed length that weighs less in a thicker layer, so thicker "
        "layers come out slightly less tortuous (the thickness rows above). A layer that is "
        "statistically the same at every depth adds the same detour per unit depth wherever it is cut, so a "
        "geometric tortuosity cannot depend on thickness more than that. The paper ranks thickness first; with "
        "independent uniform inputs that needs something thickness-dependent in its generator (e.g. a fixed number "
        "of fibre layers, or a layered deposition) that the paper does not describe, and we did not invent one.",
    ]
    return lines


def _gdl_distribution(frames: dict[str, pd.DataFrame]) -> list[str]:
    from scipy.stats import skew

    paper = {"gdl200": (1.07, 1.03, 1.17), "gdl1000": (1.09, 1.08, 1.17)}  # mean, min, max (paper Fig. 8)
    lines = [
        "| dataset | τ mean | min | max | skew | CV | paper mean / min / max |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in GDLS:
        if name not in frames:
            continue
        tau = frames[name][TORTUOSITY.column].to_numpy(dtype=float)
        mean, low, high = paper[name]
        lines.append(f"| {name} | {tau.mean():.4f} | {tau.min():.4f} | {tau.max():.4f} | {float(skew(tau)):+.2f} | "
                     f"{tau.std(ddof=1) / tau.mean() * 100:.1f} % | {mean:g} / {low:g} / {high:g} (right-skewed) |")
    return lines


def _gdl_baselines(frames: dict[str, pd.DataFrame], repeats: int = 20) -> list[str]:
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.linear_model import LinearRegression
    from sklearn.model_selection import ShuffleSplit

    excess = {name: float(frames[name][TORTUOSITY.column].mean()) - 1.0 for name in GDLS if name in frames}
    if len(excess) == len(GDLS):
        higher, lower = sorted(GDLS, key=lambda name: -excess[name])
        footprints = (f"Here {higher} sits higher than {lower} (mean τ − 1 {excess[higher]:.4f} vs "
                      f"{excess[lower]:.4f}): the strip's narrow periodic side (100 µm) biases τ up, as the footprint "
                      "column of the convergence table measures, and it scatters more. ")
    else:
        footprints = ""
    lines = [
        "## GDL: the tortuosity distribution beside the paper's, and baseline errors",
        "",
        *_gdl_distribution(frames),
        "",
        "**Why ours differs from the paper's.** Nothing was scaled or shifted to approach the paper's numbers: this is "
        "what straight round fibres at the paper's fractions, compressed as described above, give with a geodesic "
        "that is exact for straight and tilted channels. (1) *Level*: the paper's GeoDict structures evidently block "
        "more; its fibre stacking, binder morphology and the exact meaning of its fibre and binder concentrations "
        "are not described, and a Boolean layer of straight fibres at 72–90 % as-laid porosity has short detours "
        "(τ − 1 of a few per mille at the open end). Our previous data put τ − 1 at about 0.03, mostly from the "
        "26-connected path metric and walls half a voxel outside the fibres (see above). (2) *Spread and skew*: "
        "ours come from the densification, τ − 1 rising steeply as compression closes the layer, so the densest "
        "corner of the input box makes the right "
        "tail. (3) *GDL200 vs GDL1000*: here the sets differ only in footprint, as the paper's do; a footprint does "
        "not change the expected τ of a statistically uniform layer once it is wide enough, only the scatter "
        f"between structures. {footprints}The paper's GDL1000 sits higher (min 1.08 vs 1.03) with the same inputs, "
        "which a wider footprint cannot explain; its source is not stated. (4) *Difficulty*: issue 23 asked for a "
        "mean-predictor MAPE of at least 2 % on both sets; this physics gives far less (table below), because τ "
        "itself stays within a few per cent of 1. We did not add spread that the structures do not have.",
        "",
        "**Baselines.** τ varies only a few percent around 1, so a MAPE on τ looks small for any model; the MAPE of "
        f"(τ − 1), the part that varies, is reported beside it. {repeats} random 70/30 splits (every row is its own "
        "structure, so a random split is a grouped split), mean ± sd of test MAPE.",
        "",
        "| dataset | model | MAPE of τ (%) | MAPE of τ − 1 (%) |",
        "|---|---|---|---|",
    ]
    models = {
        "predict the training mean": None,
        "linear regression": LinearRegression,
        "random forest (200 trees)": RandomForestRegressor,
    }
    for name in GDLS:
        if name not in frames:
            continue
        frame = frames[name]
        x = frame[[q.column for q in DATASETS[name].features]].to_numpy(dtype=float)
        y = frame[TORTUOSITY.column].to_numpy(dtype=float)
        for label, factory in models.items():
            tau_mape, excess_mape = [], []
            for train, test in ShuffleSplit(n_splits=repeats, test_size=0.3, random_state=0).split(x):
                if factory is None:
                    prediction = np.full(len(test), y[train].mean())
                else:
                    model = factory(n_estimators=200, random_state=0) if factory is RandomForestRegressor \
                        else factory()
                    prediction = model.fit(x[train], y[train]).predict(x[test])
                tau_mape.append(np.mean(np.abs(prediction - y[test]) / y[test]) * 100.0)
                excess_mape.append(np.mean(np.abs(prediction - y[test]) / (y[test] - 1.0)) * 100.0)
            lines.append(f"| {name} | {label} | {np.mean(tau_mape):.2f} ± {np.std(tau_mape, ddof=1):.2f} | "
                         f"{np.mean(excess_mape):.0f} ± {np.std(excess_mape, ddof=1):.0f} |")
    return lines


def _convergence_section(convergence: dict[str, Any] | None) -> list[str]:
    lines = ["## GDL: voxel-size and footprint convergence", ""]
    if convergence is None:
        return [*lines, "Not measured yet: run `.venv/bin/python scripts/gdl_convergence.py`, then "
                        "`cellmfg data generate` (or `datagen.generate.write_card`) to refresh this card."]
    settings = convergence["settings"]
    rows = convergence["rows"]
    summary = convergence["summary"]
    criterion = float(convergence.get("criterion_relative_change_pct", 10.0))
    lines += [
        f"`scripts/gdl_convergence.py` on {convergence['structures']} {convergence['dataset']} structures spread "
        f"across the input range (rows whose compressed porosity sits at evenly spaced quantiles of the dataset's; "
        f"same seeds as the dataset; {convergence.get('seconds', '?')} s). Settings: "
        + "; ".join(f"{name}: {s['domain_um'][0]:g} × {s['domain_um'][1]:g} µm, d/{s['voxels_per_diameter']:g} voxels"
                    for name, s in settings.items()) + ".",
        "",
        "| row | d (µm) | fibre % | binder % | t (µm) | c | porosity | τ base | τ half voxel | Δ(τ − 1) | "
        "τ paper footprint | Δ(τ − 1) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p = r["params"]
        base = r["base"]["tortuosity"]
        fine = r["half_voxel"]["tortuosity"]
        wide = r["paper_footprint"]["tortuosity"]
        lines.append(f"| {r['row']} | {p['fiber_diameter_um']:g} | {p['fiber_concentration_pct']:g} | "
                     f"{p['binder_concentration_pct']:g} | {p['thickness_um']:g} | {p['compression_factor']:g} | "
                     f"{r['base']['porosity']:.3f} | {base:.4f} | {fine:.4f} | "
                     f"{(fine - base) / (base - 1.0) * 100:+.1f} % | {wide:.4f} | "
                     f"{(wide - base) / (base - 1.0) * 100:+.1f} % |")
    lines += ["", "| change | mean Δτ | max abs Δτ | mean relative change of τ − 1 | max abs relative change |",
              "|---|---|---|---|---|"]
    for name, values in summary.items():
        lines.append(f"| {name} | {values['mean_delta_tau']:+.5f} | {values['max_abs_delta_tau']:.5f} | "
                     f"{values['mean_relative_change_of_tau_minus_1_pct']:+.1f} % | "
                     f"{values['max_abs_relative_change_of_tau_minus_1_pct']:.1f} % |")
    voxel = summary["half_voxel"]
    failing = [r["row"] for r in rows
               if abs(r["half_voxel"]["tortuosity"] - r["base"]["tortuosity"])
               > criterion / 100.0 * (r["base"]["tortuosity"] - 1.0)]
    footprint = summary["paper_footprint"]
    verdict = (f"**Voxel: converged** by the criterion (τ − 1 moves less than {criterion:g} % when the voxel is "
               f"halved) on all {len(rows)} structures (mean change "
               f"{voxel['mean_relative_change_of_tau_minus_1_pct']:+.1f} %)." if not failing else
               f"**Voxel: converged on {len(rows) - len(failing)} of {len(rows)} structures.** τ − 1 moves more than "
               f"{criterion:g} % when the voxel is halved on row(s) {', '.join(str(r) for r in failing)} (mean change "
               f"over all {voxel['mean_relative_change_of_tau_minus_1_pct']:+.1f} %, largest "
               f"{voxel['max_abs_relative_change_of_tau_minus_1_pct']:.1f} %, at most {voxel['max_abs_delta_tau']:.4f} "
               "in τ). Our reading: binder webs thinner than a voxel have no voxel centre half a voxel inside them, so "
               "at d/3 they stop blocking paths where at d/6 they still do; that matters most in the densest layers, "
               "where the binder volume is largest. d/4 or finer did not fit the time budget; the data carry this "
               "error.")
    lines += [
        "",
        verdict,
        "",
        f"**Footprint.** On the paper's full GDL200 footprint the same inputs give τ − 1 "
        f"{footprint['mean_relative_change_of_tau_minus_1_pct']:+.1f} % on average (largest change "
        f"{footprint['max_abs_relative_change_of_tau_minus_1_pct']:.1f} %, at most "
        f"{footprint['max_abs_delta_tau']:.4f} in τ). That column mixes two things: a different realisation of "
        "the same statistics (scatter, either sign) and a finite-size bias of the narrower periodic strip "
        "(100 instead of 200 µm: 8–17 fibre diameters, so each fibre's periodic images sit closer and block "
        "alike). The shipped GDL200 rows therefore carry more scatter than the paper's footprint would and, where "
        "the change is negative, a higher τ.",
    ]
    return lines


def _limitations() -> list[str]:
    return [
        "## What this data cannot tell you",
        "",
        "- It is synthetic. The laws (rule of mixtures, Krieger–Dougherty viscosity, exponential compaction, "
        "spring-back; straight-fibre GDLs and geodesic paths) and every constant are ours, with the sources stated; "
        "a model that does well here has learned *this* process, not the ARTISTIC lab's or GeoDict's.",
        "- The electrode chemistries share the same laws (with Si-, binder- and coater-specific terms and "
        "constants), so transfer from graphite is informative by construction; how much real chemistries share is "
        "exactly the open question.",
        "- Scatter magnitudes are plausible, not measured: a lab with a better coater or a worse one would see "
        "lower or higher grouped errors. The calibration shows where a random forest lands, not where the paper's "
        "net would.",
        "- The roll-gap choice depends on the sheet's measured thickness (labs do this), so across sheets roll gap "
        "and coating thickness are correlated; within-sheet comparisons are the clean calendering signal.",
        "- GDL tortuosity is geometric (shortest pore path), not diffusive or electrical; no anisotropy beyond the "
        "fibre layup, no binder morphology beyond contact fillets.",
    ]


def data_card(seed: int, seconds: dict[str, float], frames: dict[str, pd.DataFrame], machine: str = "not recorded",
              convergence: dict[str, Any] | None = None) -> str:
    from datagen.electrode_process import data_card_section as electrode_section
    from datagen.gdl_microstructure import data_card_section as gdl_section

    lines = [
        "# Data card: cellmfg synthetic datasets",
        "",
        "The paper's data (Fernandez et al., npj Adv. Manuf. 2, 14, 2025) is available only on request, so these",
        "datasets are generated: electrodes as a lab campaign of coated sheets through a process model, GDLs from",
        "stochastic voxel microstructures. They are written by `cellmfg data generate --seed "
        f"{seed}` and checked by `cellmfg data generate --check` (the same seed gives byte-identical CSVs). This "
        "card is written by the same command; do not edit it by hand.",
        "",
        "## Summary and groups",
        "",
        "A **group** is what must never be split between training and test: for electrodes the coated sheet "
        "(`group_id`: one slurry batch coated at one comma gap and web speed, then cut into pieces calendered "
        "differently and punched into 2–4 replicate discs); for GDLs each row is its own structure.",
        "",
        *_groups_table(frames, seconds),
        "",
        f"Total generation time: {sum(seconds.get(n, 0.0) for n in frames):.1f} s on this project's 2-core "
        f"reference machine ({machine}); `cellmfg data generate` prints it.",
        "",
        "## Outputs beside literature",
        "",
        *_outputs_table(frames),
        "",
        *_caps_section(frames),
        "",
        *_calibration_section(frames),
        "",
        "## Ranges (generated vs paper)",
        "",
        "| dataset | column | min | mean | max | paper range |",
        "|---|---|---|---|---|---|",
    ]
    for name, frame in frames.items():
        for column in frame.columns:
            if column in ID_COLUMNS:
                continue
            paper = DATASETS[name].ranges.get(column)
            paper_text = f"{paper[0]:g}–{paper[1]:g}" if paper else "(output)"
            values = frame[column]
            lines.append(f"| {name} | {column} | {values.min():.4g} | {values.mean():.4g} | {values.max():.4g} | "
                         f"{paper_text} |")
    lines += ["", electrode_section().strip(), "", gdl_section().strip(), "", *_convergence_section(convergence), "",
              *_gdl_sensitivities(frames), "", *_gdl_baselines(frames), "", *_limitations(), ""]
    return "\n".join(lines)
