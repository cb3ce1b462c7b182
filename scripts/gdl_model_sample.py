"""Tortuosity of a fixed sample of GDL structures under candidate modelling choices (issue 23 evidence).

Same rows and seeds as the dataset (`--structures` gdl200 rows whose compressed porosity spans the set, as in
scripts/gdl_convergence.py), measured under each variant at `--voxels-per-diameter`; prints per variant the mean, min,
max and skew of tau, the mean-predictor MAPE on the sample (mean |tau - mean| / tau) and the porosity range, and
optionally writes every row to `--out` as JSON.

Variants:
- shipped: the shipped model (binder = share of the solid, centred walls).
- no_binder: the shipped model with the binder left out (shows how much the binder blocks).
- domain_binder: binder as a percentage of the layer volume (GeoDict AddBinder), centred walls.
- geodict_binder: domain binder, and binder films thinner than a voxel block paths (`GEODICT_BINDER_MODEL`).

Usage: .venv/bin/python scripts/gdl_model_sample.py [--structures 16] [--voxels-per-diameter 3]
       [--variants shipped,no_binder,domain_binder,geodict_binder] [--out /tmp/sample.json]
Cost: about 1-2 minutes per variant for 16 rows at d/3 on 2 shared cores; d/6 costs about ten times as much.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
from scipy import stats

from datagen import gdl_microstructure as gdl
from datagen.generate import DEFAULT_SEED

DATASET = "gdl200"

VARIANTS: dict[str, tuple[gdl.StructureModel, bool]] = {  # model, keep the binder
    "shipped": (gdl.SHIPPED_MODEL, True),
    "no_binder": (gdl.SHIPPED_MODEL, False),
    "domain_binder": (gdl.StructureModel(binder_basis="domain"), True),
    "geodict_binder": (gdl.GEODICT_BINDER_MODEL, True),
}


def measure(variant: str, rows: list[int], seed: int, per_diameter: float) -> list[dict[str, float]]:
    model, keep_binder = VARIANTS[variant]
    out = []
    for row in rows:
        params = gdl.sample_params(DATASET, seed, row)
        if not keep_binder:
            params = dataclasses.replace(params, binder_concentration_pct=0.0)
        started = time.perf_counter()
        tau, porosity = gdl.measure_row(params, gdl.DOMAINS[DATASET], gdl.structure_rng(DATASET, seed, row),
                                        per_diameter=per_diameter, model=model)
        out.append({"row": row, "tortuosity": round(tau, 6), "porosity": round(porosity, 6),
                    "seconds": round(time.perf_counter() - started, 1)})
        print(f"{variant:15s} row {row:3d} tau {tau:.5f} porosity {porosity:.4f}", flush=True)
    return out


def summarise(results: list[dict[str, float]]) -> dict[str, float]:
    tau = np.array([r["tortuosity"] for r in results])
    porosity = [r["porosity"] for r in results]
    return {"mean": round(float(tau.mean()), 4), "min": round(float(tau.min()), 4), "max": round(float(tau.max()), 4),
            "skew": round(float(stats.skew(tau)), 2),
            "mean_predictor_mape_pct": round(float(np.mean(np.abs(tau - tau.mean()) / tau) * 100.0), 2),
            "porosity_min": round(min(porosity), 3), "porosity_max": round(max(porosity), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--structures", type=int, default=16)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--voxels-per-diameter", type=float, default=gdl.VOXELS_PER_DIAMETER)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    rows = gdl.spread_rows(DATASET, args.seed, args.structures)
    result: dict[str, object] = {"dataset": DATASET, "seed": args.seed, "rows": rows,
                                 "voxels_per_diameter": args.voxels_per_diameter, "variants": {}}
    print("| variant | mean | min | max | skew | mean-predictor MAPE | porosity |\n|---|---|---|---|---|---|---|")
    for variant in variants:
        measured = measure(variant, rows, args.seed, args.voxels_per_diameter)
        summary = summarise(measured)
        result["variants"][variant] = {"rows": measured, "summary": summary}  # type: ignore[index]
        print(f"| {variant} | {summary['mean']:.4f} | {summary['min']:.4f} | {summary['max']:.4f} | "
              f"{summary['skew']:.2f} | {summary['mean_predictor_mape_pct']:.2f} % | "
              f"{summary['porosity_min']:.3f}–{summary['porosity_max']:.3f} |", flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
