"""Voxel-size and footprint convergence of the GDL tortuosity on structures spread across the input range.

Picks `--structures` gdl200 rows (same seeds as the dataset) whose compressed-layer porosity spans the dataset's
range (evenly spaced quantiles), and measures geometric tortuosity at the production settings (each row's own voxel,
d/k with k = `gdl.voxels_per_diameter`: 3, or up to 5 in the densest layers), with the voxel halved (d/2k) and on the
paper's full footprint (2000 x 200 µm instead of the shipped 1000 x 100 µm) at the row's own voxel. The criterion
the data card reports: tau - 1 moves by less than 10 % when the voxel is halved. Writes data/gdl_convergence.json
(read by the data card) and prints a table.

`--model geodict_binder` measures the off-default GeoDict-style binder instead (binder as a percentage of the layer
volume, sub-voxel films blocking; `gdl.GEODICT_BINDER_MODEL`); write that elsewhere than the shipped table.

Usage: .venv/bin/python scripts/gdl_convergence.py [--structures 5] [--out data/gdl_convergence.json]
       [--model shipped|geodict_binder]
Heavy: the halved voxel has 8x the voxels; expect several minutes on 2 cores.
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
# Halving the voxel may move tau - 1 by less than this fraction for the voxel to count as converged (issue 23).
CONVERGED_RELATIVE_CHANGE = 0.10
MODELS = {"shipped": gdl.SHIPPED_MODEL, "geodict_binder": gdl.GEODICT_BINDER_MODEL}


def _measure(params: gdl.GDLParams, row: int, seed: int, domain: tuple[float, float],
             per_diameter: float, model: gdl.StructureModel) -> tuple[float, float, float]:
    started = time.perf_counter()
    tau, porosity = gdl.measure_row(params, domain, gdl.structure_rng(DATASET, seed, row),
                                    per_diameter=per_diameter, model=model)
    return tau, porosity, time.perf_counter() - started


def run(structures: int, seed: int, model_name: str = "shipped") -> dict[str, object]:
    model = MODELS[model_name]
    settings = {  # domain, voxels per diameter as a multiple of the row's own resolution
        "base": (gdl.DOMAINS[DATASET], 1),
        "half_voxel": (gdl.DOMAINS[DATASET], 2),
        "paper_footprint": (gdl.PAPER_DOMAINS[DATASET], 1),
    }
    rows = []
    for row in gdl.spread_rows(DATASET, seed, structures):
        params = gdl.sample_params(DATASET, seed, row)
        own = gdl.voxels_per_diameter(params)
        result: dict[str, object] = {"row": row, "params": vars(params), "voxels_per_diameter": own}
        for name, (domain, multiple) in settings.items():
            per_diameter = own * multiple
            tau, porosity, seconds = _measure(params, row, seed, domain, per_diameter, model)
            result[name] = {"tortuosity": round(tau, 6), "porosity": round(porosity, 6), "seconds": round(seconds, 1),
                            "voxels_per_diameter": per_diameter}
            print(f"row {row} {name:15s} tau {tau:.5f} porosity {porosity:.4f} ({seconds:.0f} s)", flush=True)
        rows.append(result)

    def change(name: str) -> dict[str, float]:
        base = np.array([r["base"]["tortuosity"] for r in rows])  # type: ignore[index]
        other = np.array([r[name]["tortuosity"] for r in rows])  # type: ignore[index]
        delta = other - base
        relative = delta / (base - 1.0)
        return {"mean_delta_tau": round(float(delta.mean()), 5),
                "max_abs_delta_tau": round(float(np.abs(delta).max()), 5),
                "mean_relative_change_of_tau_minus_1_pct": round(float(np.mean(relative) * 100.0), 1),
                "max_abs_relative_change_of_tau_minus_1_pct": round(float(np.abs(relative).max() * 100.0), 1)}

    return {
        "dataset": DATASET, "seed": seed, "structures": structures, "model": model_name,
        "criterion_relative_change_pct": CONVERGED_RELATIVE_CHANGE * 100.0,
        "settings": {name: {"domain_um": list(d), "voxel_multiple_of_own": m} for name, (d, m) in settings.items()},
        "rows": rows,
        "summary": {name: change(name) for name in settings if name != "base"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--structures", type=int, default=5)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--out", type=Path, default=DATA_DIR / CONVERGENCE_NAME)
    parser.add_argument("--model", choices=sorted(MODELS), default="shipped")
    args = parser.parse_args()
    if args.structures < 2:
        parser.error(f"--structures must be at least 2 (to span the input range), got {args.structures}")
    started = time.perf_counter()
    if args.model != "shipped" and args.out == DATA_DIR / CONVERGENCE_NAME:
        parser.error("only the shipped model's table goes to the data card; give --out for another model")
    result = run(args.structures, args.seed, args.model)
    result["seconds"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for name, summary in result["summary"].items():  # type: ignore[attr-defined]
        print(f"{name:15s} mean Δτ {summary['mean_delta_tau']:+.5f}  max |Δτ| {summary['max_abs_delta_tau']:.5f}  "
              f"change of (τ−1): mean {summary['mean_relative_change_of_tau_minus_1_pct']:+.1f} %, "
              f"max |.| {summary['max_abs_relative_change_of_tau_minus_1_pct']:.1f} %")
    print(f"wrote {args.out} in {result['seconds']} s")


if __name__ == "__main__":
    main()
