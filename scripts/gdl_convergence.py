"""Voxel-size and domain-size convergence of the GDL tortuosity on a sample of the dataset's structures.

For the inputs of the first N gdl200 rows (same seeds as the dataset), measure geometric tortuosity at the production
settings, with the voxel halved (d/3 -> d/6), with the lateral domain doubled (200 -> 400 µm square) and with the
periodic path margin doubled. Writes data/gdl_convergence.json (read by the data card) and prints a table.

Usage: .venv/bin/python scripts/gdl_convergence.py [--structures 4] [--out data/gdl_convergence.json]
Heavy: the halved voxel has 8x the voxels; expect minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from cellmfg.dataio import DATA_DIR
from datagen import gdl_microstructure as gdl
from datagen.generate import CONVERGENCE_NAME, DEFAULT_SEED

DATASET = "gdl200"


def _measure(params: gdl.GDLParams, row: int, seed: int, domain: tuple[float, float], per_diameter: float,
             margin: float) -> tuple[float, float, float]:
    started = time.perf_counter()
    tau, porosity = gdl.measure_row(
        params, domain, gdl.structure_rng(DATASET, seed, row),
        voxels_per_diameter=per_diameter, margin_diameters=margin)
    return tau, porosity, time.perf_counter() - started


def run(structures: int, seed: int) -> dict[str, object]:
    base_domain = gdl.DOMAINS[DATASET]
    double = (2.0 * base_domain[0], 2.0 * base_domain[1])
    k = gdl.VOXELS_PER_DIAMETER
    margin = gdl.PATH_MARGIN_DIAMETERS
    settings = {
        "base": (base_domain, k, margin),
        "half_voxel": (base_domain, 2 * k, margin),
        "double_domain": (double, k, margin),
        "double_margin": (base_domain, k, 2 * margin),
    }
    rows = []
    for row in range(structures):
        params = gdl.sample_params(DATASET, seed, row)
        result: dict[str, object] = {"row": row, "params": vars(params)}
        for name, (domain, per_diameter, path_margin) in settings.items():
            tau, porosity, seconds = _measure(params, row, seed, domain, per_diameter, path_margin)
            result[name] = {"tortuosity": round(tau, 6), "porosity": round(porosity, 6), "seconds": round(seconds, 1)}
            print(f"row {row} {name:14s} tau {tau:.5f} porosity {porosity:.4f} ({seconds:.0f} s)", flush=True)
        rows.append(result)

    def change(name: str) -> dict[str, float]:
        base = np.array([r["base"]["tortuosity"] for r in rows])  # type: ignore[index]
        other = np.array([r[name]["tortuosity"] for r in rows])  # type: ignore[index]
        delta = other - base
        return {"mean_delta_tau": round(float(delta.mean()), 5),
                "max_abs_delta_tau": round(float(np.abs(delta).max()), 5),
                "mean_relative_change_of_tau_minus_1_pct": round(float(np.mean(delta / (base - 1.0)) * 100.0), 1)}

    return {
        "dataset": DATASET, "seed": seed, "structures": structures,
        "settings": {name: {"domain_um": list(d), "voxels_per_diameter": p, "margin_diameters": m}
                     for name, (d, p, m) in settings.items()},
        "rows": rows,
        "summary": {name: change(name) for name in settings if name != "base"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--structures", type=int, default=4)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--out", type=Path, default=DATA_DIR / CONVERGENCE_NAME)
    args = parser.parse_args()
    started = time.perf_counter()
    result = run(args.structures, args.seed)
    result["seconds"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for name, summary in result["summary"].items():  # type: ignore[attr-defined]
        print(f"{name:14s} mean Δτ {summary['mean_delta_tau']:+.5f}  max |Δτ| {summary['max_abs_delta_tau']:.5f}  "
              f"mean change of (τ−1) {summary['mean_relative_change_of_tau_minus_1_pct']:+.1f} %")
    print(f"wrote {args.out} in {result['seconds']} s")


if __name__ == "__main__":
    main()
