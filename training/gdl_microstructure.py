"""Stochastic gas-diffusion-layer microstructures and their geometric tortuosity (the `gdl200` and `gdl1000` sets).

The paper characterised GeoDict-generated GDLs; GeoDict is commercial and the data are "available on request", so
the two GDL datasets are regenerated here from real voxel microstructures rather than from a fitted formula: a target
that comes out of a formula would hand the nets a relationship far simpler than the one the paper had to learn.

Per row: five inputs drawn uniformly in the paper's ranges -> straight fibres laid into the uncompressed layer until
the fibre volume fraction is reached -> fibre centre-lines moved in z to compress the layer -> binder grown at fibre
contacts up to its volume fraction -> geodesic shortest paths through the connected pore space along z.

Every row has its own random streams derived from (seed, dataset, row), so a single row can be regenerated alone and
rows can be computed in any order or process without changing a byte of the result.
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd
from skimage.graph import MCP_Geometric

from cellmfg.___domain import DATASETS, GDL_FEATURES, TORTUOSITY

__all__ = [
    "BINDER",
    "COLUMNS",
    "DOMAINS",
    "DOMAIN_SCALE",
    "FIBER",
    "MAX_ATTEMPTS",
    "MAX_TILT_DEG",
    "PAPER_DOMAINS",
    "PORE",
    "VOXEL_UM",
    "GDLParams",
    "Microstructure",
    "build_microstructure",
    "build_phases",
    "data_card_section",
    "generate_gdl",
    "generate_row",
    "geometric_tortuosity",
    "sample_params",
]

# The paper resolved 1 µm voxels on 2000 x 200 and 1000 x 1000 µm; at that size one GDL1000 row alone has ~3e8
# voxels. 2 µm keeps the thinnest (6 µm) fibre three voxels across; at 3 µm it would be a two-voxel cross or bar
# whose shape, and the gaps beside it, depend on where its axis falls on the grid rather than on the fibre.
VOXEL_UM: float = 2.0

PAPER_DOMAINS: dict[str, tuple[float, float]] = {"gdl200": (2000.0, 200.0), "gdl1000": (1000.0, 1000.0)}

# Both domains shrink by the same factor so the contrast the transfer task rests on survives: a thin 10:1 slab (few
# fibres across, cheap, narrower choice of detours) against a square 2.5x its area. At 1/4 all 318 rows generate in
# about 3 minutes on 2 cores at 2 µm voxels, leaving room under the 10-minute budget on a shared or slower machine.
DOMAIN_SCALE: float = 0.25
DOMAINS: dict[str, tuple[float, float]] = {
    name: (x * DOMAIN_SCALE, y * DOMAIN_SCALE) for name, (x, y) in PAPER_DOMAINS.items()
}

# Carbon-paper fibres lie almost flat. A few degrees of tilt lets a fibre cross z-layers as real ones do instead of
# stacking in exact voxel planes, without turning the layer into a 3D felt.
MAX_TILT_DEG: float = 3.0

# Binder is grown where a voxel is close to two fibre axes; distances are only tracked within this many fibre radii of
# an axis. 3.5 radii covers the 10 % binder target even at the sparsest fibre setting (the lens-shaped regions near two
# axes need about 2.6 radii there); anything still missing is filled next to single fibres (see `build_phases`).
BINDER_REACH_RADII: float = 3.5

# A layer with no connected pore path from face to face has no geometric tortuosity. At these porosities (>= 45 %) it
# is not expected to happen; the structure is then redrawn from the next sub-seed with the same inputs, at most
# this many times, so that the input distribution stays exactly uniform.
MAX_ATTEMPTS: int = 5

INPUT_DECIMALS: int = 3
OUTPUT_DECIMALS: int = 6

COLUMNS: tuple[str, ...] = ("sample_id", *(q.column for q in GDL_FEATURES), TORTUOSITY.column)

# Fixed integers rather than hash(name): Python salts str hashes per process, which would break reproducibility.
_DATASET_KEYS: dict[str, int] = {"gdl200": 200, "gdl1000": 1000}
_PARAMS_STREAM = 0
_STRUCTURE_STREAM = 1

PORE: int = 0
FIBER: int = 1
BINDER: int = 2


@dataclass(frozen=True)
class GDLParams:
    """The five manufacturing inputs of one GDL row, named exactly as the CSV columns."""

    fiber_diameter_um: float
    fiber_concentration_pct: float  # fibre volume fraction of the uncompressed layer
    binder_concentration_pct: float  # binder volume fraction of the final (compressed) structure
    thickness_um: float  # uncompressed thickness
    compression_factor: float  # compressed thickness = thickness_um * (1 - compression_factor)


@dataclass(frozen=True, eq=False)
class Microstructure:
    """A generated GDL: phase labels per voxel plus the fibre axes that made them (for checks and plots)."""

    phase: np.ndarray  # uint8, axes (x, y, z): PORE, FIBER or BINDER
    fiber_points: np.ndarray  # (n, 3) µm, one point on each compressed fibre axis
    fiber_directions: np.ndarray  # (n, 3) unit vectors of the compressed fibre axes
    voxel_um: float
    binder_fallback_voxels: int  # binder voxels that had to go next to a single fibre (none within reach of two)

    @property
    def solid(self) -> np.ndarray:
        return self.phase != PORE

    @property
    def porosity(self) -> float:
        return float(np.mean(self.phase == PORE))


def _check_dataset(dataset: str) -> None:
    if dataset not in _DATASET_KEYS:
        raise ValueError(f"unknown GDL dataset {dataset!r}; known: {', '.join(_DATASET_KEYS)}")


def _rng(dataset: str, seed: int, row: int, stream: int, attempt: int = 0) -> np.random.Generator:
    _check_dataset(dataset)
    if seed < 0 or row < 0:
        raise ValueError(f"seed and row must be non-negative, got seed={seed}, row={row}")
    return np.random.default_rng([seed, _DATASET_KEYS[dataset], row, stream, attempt])


def sample_params(dataset: str, seed: int, row: int) -> GDLParams:
    """Draw one row's inputs uniformly in the dataset's ranges (the paper's GDL sets are uniform).

    Values are rounded before the structure is built, so the CSV row describes exactly the structure measured.
    """
    rng = _rng(dataset, seed, row, _PARAMS_STREAM)
    ranges = DATASETS[dataset].ranges
    values = {q.column: round(float(rng.uniform(*ranges[q.column])), INPUT_DECIMALS) for q in GDL_FEATURES}
    return GDLParams(**values)


def _draw_fiber(rng: np.random.Generator, lx: float, ly: float, thickness: float,
                max_tilt: float) -> tuple[np.ndarray, np.ndarray]:
    """One straight infinite fibre hitting the box, as (point on axis, unit direction), uncompressed µm.

    Uniform angle plus uniform offset along the normal is the isotropic Poisson line process restricted to the box,
    so every in-plane direction and position is equally likely and long chords are not over-sampled.
    """
    theta = rng.uniform(0.0, math.pi)
    dx, dy = math.cos(theta), math.sin(theta)
    nx_, ny_ = -dy, dx
    corners = np.array([[0.0, 0.0], [lx, 0.0], [0.0, ly], [lx, ly]])
    proj = corners @ np.array([nx_, ny_])
    offset = rng.uniform(proj.min(), proj.max())
    px, py = offset * nx_, offset * ny_
    # Chord of the line inside the box: the tilt pivots at its middle so z stays uniform over the visible part.
    lo, hi = -math.inf, math.inf
    for p, d, length in ((px, dx, lx), (py, dy, ly)):
        if abs(d) > 1e-12:
            a, b = (0.0 - p) / d, (length - p) / d
            lo, hi = max(lo, min(a, b)), min(hi, max(a, b))
    mid = 0.5 * (lo + hi)
    z = rng.uniform(0.0, thickness)
    tilt = rng.uniform(-max_tilt, max_tilt)
    point = np.array([px + mid * dx, py + mid * dy, z])
    direction = np.array([math.cos(tilt) * dx, math.cos(tilt) * dy, math.sin(tilt)])
    return point, direction


class _Grid:
    """Voxel-centre coordinates of a box, kept to reuse the in-plane grids across fibres."""

    def __init__(self, shape: tuple[int, int, int], voxel: float) -> None:
        self.shape = shape
        self.voxel = voxel
        nx, ny, _ = shape
        self.xc = (np.arange(nx) + 0.5) * voxel
        self.yc = (np.arange(ny) + 0.5) * voxel
        self.x2, self.y2 = np.meshgrid(self.xc, self.yc, indexing="ij")

    def near_axis(self, point: np.ndarray, direction: np.ndarray, reach: float) -> tuple[np.ndarray, np.ndarray]:
        """Flat indices of voxels whose centre lies within `reach` µm of the axis, and their distances.

        Only voxels of a narrow band around the axis are touched: the in-plane distance to the projected axis is a
        lower bound of the 3D distance, and at a fixed (x, y) the close voxels form a short z-window around the axis.
        """
        nz = self.shape[2]
        v = self.voxel
        u0, u1, u2 = (float(c) for c in direction)
        h = math.hypot(u0, u1)
        a = self.x2 - point[0]
        b = self.y2 - point[1]
        perp = np.abs(a * (-u1 / h) + b * (u0 / h))
        ix, iy = np.nonzero(perp <= reach)
        if ix.size == 0:
            return np.empty(0, dtype=np.intp), np.empty(0)
        a_c, b_c = a[ix, iy], b[ix, iy]
        along = (a_c * u0 + b_c * u1) / (h * h)
        z_axis = point[2] + along * u2
        half = reach / h + v
        k_lo = np.ceil((z_axis - half) / v - 0.5).astype(np.intp)
        width = math.floor(2.0 * half / v) + 2
        k = k_lo[:, None] + np.arange(width)[None, :]
        wz = (k + 0.5) * v - point[2]
        wa = np.broadcast_to(a_c[:, None], k.shape)
        wb = np.broadcast_to(b_c[:, None], k.shape)
        proj = wa * u0 + wb * u1 + wz * u2
        dist2 = wa * wa + wb * wb + wz * wz - proj * proj
        keep = (k >= 0) & (k < nz) & (dist2 <= reach * reach)
        ii = np.broadcast_to(ix[:, None], k.shape)[keep]
        jj = np.broadcast_to(iy[:, None], k.shape)[keep]
        flat = np.ravel_multi_index((ii, jj, k[keep]), self.shape)
        return flat, np.sqrt(np.maximum(dist2[keep], 0.0))


def _grid_shape(lateral_um: tuple[float, float], thickness_um: float, voxel_um: float) -> tuple[int, int, int]:
    return (max(1, round(lateral_um[0] / voxel_um)), max(1, round(lateral_um[1] / voxel_um)),
            max(1, round(thickness_um / voxel_um)))


def build_phases(params: GDLParams, lateral_um: tuple[float, float], voxel_um: float,
                 rng: np.random.Generator) -> Microstructure:
    """Generate one GDL and keep fibre and binder apart (`build_microstructure` returns only the solid).

    Fibres are counted in the uncompressed layer, so the number and in-plane layout of fibres does not depend on the
    compression factor: compression only moves the same centre-lines closer in z, and porosity falls because the same
    fibres share a thinner layer and overlap more, not because voxels are resampled.
    Binder is placed after compression, on the pore voxels closest to their second-nearest fibre axis: those sit where
    two fibres cross or run close together, which is where PTFE collects as it dries. Its fraction is of the final
    volume because that is the structure whose pore space is measured.
    """
    if voxel_um <= 0:
        raise ValueError(f"voxel_um must be positive, got {voxel_um}")
    if not 0.0 <= params.compression_factor < 1.0:
        raise ValueError(f"compression_factor must be in [0, 1), got {params.compression_factor}")
    if params.fiber_diameter_um <= 0 or params.thickness_um <= 0:
        raise ValueError(f"fiber diameter and thickness must be positive, got {params}")
    if not 0.0 <= params.fiber_concentration_pct < 100.0 or not 0.0 <= params.binder_concentration_pct <= 100.0:
        raise ValueError(f"fiber fraction must be in [0, 100) % and binder in [0, 100] %, got {params}")
    radius = 0.5 * params.fiber_diameter_um
    max_tilt = math.radians(MAX_TILT_DEG)

    # 1) Lay fibres into the uncompressed layer until the voxel fibre fraction reaches the target. Counting voxels
    #    (not nominal cylinder volumes) makes the fraction exact despite overlaps and clipping at the faces.
    grid_u = _Grid(_grid_shape(lateral_um, params.thickness_um, voxel_um), voxel_um)
    lx, ly = grid_u.shape[0] * voxel_um, grid_u.shape[1] * voxel_um
    thickness = grid_u.shape[2] * voxel_um
    total = int(np.prod(grid_u.shape))
    target = params.fiber_concentration_pct / 100.0 * total
    covered = np.zeros(total, dtype=bool)
    count = 0
    points: list[np.ndarray] = []
    directions: list[np.ndarray] = []
    # Guards the loop only: at 25 % fibres this is over 100x the fibres needed, so it is hit only by requests near
    # 100 % that random overlapping fibres cannot fill.
    max_fibers = 50 * math.ceil(lx * ly * thickness / (math.pi * radius**2 * min(lx, ly))) + 1000
    while count < target:
        if len(points) >= max_fibers:
            raise RuntimeError(f"could not reach {params.fiber_concentration_pct} % fibres with {max_fibers} fibres")
        point, direction = _draw_fiber(rng, lx, ly, thickness, max_tilt)
        flat, _ = grid_u.near_axis(point, direction, radius)
        new = flat[~covered[flat]]
        # Keep the last fibre only if it brings the fraction closer to the target than stopping short would.
        if count + new.size > target and (count + new.size - target) > (target - count) and points:
            break
        covered[new] = True
        count += int(new.size)
        points.append(point)
        directions.append(direction)

    # 2) Compress: z -> z * (1 - c) for every point of every centre-line; the cross-sections stay circular.
    keep = 1.0 - params.compression_factor
    grid = _Grid(_grid_shape(lateral_um, params.thickness_um * keep, voxel_um), voxel_um)
    pts = np.array(points).reshape(-1, 3)
    dirs = np.array(directions).reshape(-1, 3)
    pts[:, 2] *= keep
    dirs[:, 2] *= keep
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)

    # 3) Rasterise the compressed fibres, tracking the nearest and second-nearest axis distance for the binder.
    n = int(np.prod(grid.shape))
    d1 = np.full(n, np.inf)
    d2 = np.full(n, np.inf)
    reach = BINDER_REACH_RADII * radius
    for point, direction in zip(pts, dirs, strict=True):
        flat, dist = grid.near_axis(point, direction, reach)
        cur1 = d1[flat]
        d2[flat] = np.minimum(d2[flat], np.maximum(cur1, dist))
        d1[flat] = np.minimum(cur1, dist)
    phase = np.where(d1 <= radius, FIBER, PORE).astype(np.uint8)

    # 4) Binder: rank pore voxels by distance to the second-nearest axis; where no second axis is within reach the
    #    ranking falls through to the nearest axis (a coating), then to voxel order, so the choice is total and stable.
    n_binder = round(params.binder_concentration_pct / 100.0 * n)
    pore_idx = np.flatnonzero(phase == PORE)
    n_binder = min(n_binder, pore_idx.size)
    fallback = 0
    if n_binder > 0:
        cand2, cand1 = d2[pore_idx], d1[pore_idx]
        order = np.lexsort((pore_idx, cand1, cand2))[:n_binder]
        chosen = pore_idx[order]
        fallback = int(np.count_nonzero(~np.isfinite(cand2[order])))
        phase[chosen] = BINDER

    return Microstructure(phase=phase.reshape(grid.shape), fiber_points=pts, fiber_directions=dirs,
                          voxel_um=voxel_um, binder_fallback_voxels=fallback)


def build_microstructure(params: GDLParams, lateral_um: tuple[float, float], voxel_um: float,
                         rng: np.random.Generator) -> np.ndarray:
    """Boolean voxel array of one GDL, True = solid (fibre or binder), axes (x, y, z), z through the layer."""
    return build_phases(params, lateral_um, voxel_um, rng).solid


def geometric_tortuosity(solid: np.ndarray) -> float:
    """Mean geodesic face-to-face path length through the connected pore space along z, over the layer thickness.

    Paths start on every pore voxel of the z=0 face (MCP_Geometric, 26-connected, so diagonal steps count sqrt(2) or
    sqrt(3)) and the mean is over the reachable pore voxels of the far face; pores cut off from the inlet carry no
    transport and are left out. The half voxel between each face and the first voxel centre is added to the path and
    the straight distance is the full voxelised thickness, so an open straight channel gives exactly 1.
    """
    if solid.ndim != 3:
        raise ValueError(f"expected a 3D (x, y, z) array, got shape {solid.shape}")
    pore = ~solid.astype(bool)
    nz = solid.shape[2]
    inlet = np.argwhere(pore[:, :, 0])
    if inlet.size == 0 or not pore[:, :, -1].any():
        raise ValueError("no connected pore path: a face has no pore voxel")
    costs = np.where(pore, 1.0, np.inf)
    starts = np.column_stack([inlet, np.zeros(len(inlet), dtype=inlet.dtype)])
    cumulative, _ = MCP_Geometric(costs, fully_connected=True).find_costs(starts)
    far = cumulative[:, :, -1][pore[:, :, -1]]
    reached = far[np.isfinite(far)]
    if reached.size == 0:
        raise ValueError("no connected pore path from z=0 to the far face")
    return float((reached.mean() + 1.0) / nz)


def generate_row(dataset: str, seed: int, row: int) -> dict[str, float | str]:
    """One dataset row: inputs, a microstructure built from them and its tortuosity, reproducible from its indices.

    If a structure has no connected pore path it is redrawn from the next structure sub-seed with the same inputs
    (at most `MAX_ATTEMPTS` times), so the result is still a pure function of (dataset, seed, row).
    """
    params = sample_params(dataset, seed, row)
    for attempt in range(MAX_ATTEMPTS):
        rng = _rng(dataset, seed, row, _STRUCTURE_STREAM, attempt)
        solid = build_microstructure(params, DOMAINS[dataset], VOXEL_UM, rng)
        try:
            tortuosity = geometric_tortuosity(solid)
        except ValueError:
            continue
        record: dict[str, float | str] = {"sample_id": f"{dataset}-{row:04d}"}
        record.update({f.name: getattr(params, f.name) for f in fields(GDLParams)})
        record[TORTUOSITY.column] = round(tortuosity, OUTPUT_DECIMALS)
        return record
    raise RuntimeError(f"{dataset} row {row} (seed {seed}): no connected pore path in {MAX_ATTEMPTS} structures")


def _row_job(job: tuple[str, int, int]) -> tuple[int, dict[str, float | str]]:
    dataset, seed, row = job
    return row, generate_row(dataset, seed, row)


def generate_gdl(dataset: str, seed: int, rows: Sequence[int] | None = None, processes: int = 2,
                 progress: Callable[[int], None] | None = None) -> pd.DataFrame:
    """Generate a GDL dataset (all paper rows by default) as a DataFrame with `COLUMNS`, rows in the order asked.

    Rows are independent, so they are farmed out to a process pool unordered (GDL1000 rows vary several-fold in cost)
    and reassembled; the result does not depend on `processes`. `progress(n)` is called with the number of rows just
    finished. The pool uses "spawn" because forking a process that runs a progress-bar thread can deadlock.
    """
    _check_dataset(dataset)
    wanted = list(range(DATASETS[dataset].paper_rows)) if rows is None else [int(r) for r in rows]
    jobs = [(dataset, seed, row) for row in dict.fromkeys(wanted)]
    done: dict[int, dict[str, float | str]] = {}
    if processes <= 1 or len(jobs) <= 1:
        for job in jobs:
            row, record = _row_job(job)
            done[row] = record
            if progress is not None:
                progress(1)
    else:
        with multiprocessing.get_context("spawn").Pool(min(processes, len(jobs))) as pool:
            for row, record in pool.imap_unordered(_row_job, jobs, chunksize=1):
                done[row] = record
                if progress is not None:
                    progress(1)
    return pd.DataFrame([done[row] for row in wanted], columns=list(COLUMNS))


def data_card_section() -> str:
    """Markdown for the data card: how the GDL rows were made and how that differs from the paper's GeoDict sets."""
    domain_rows = "\n".join(
        f"| {name} | {PAPER_DOMAINS[name][0]:g} × {PAPER_DOMAINS[name][1]:g} µm, 1 µm voxels "
        f"| {x:g} × {y:g} µm, {VOXEL_UM:g} µm voxels ({round(x / VOXEL_UM)} × {round(y / VOXEL_UM)} voxels in-plane) "
        f"| {DATASETS[name].paper_rows} |"
        for name, (x, y) in DOMAINS.items()
    )
    return f"""## GDL datasets (`gdl200`, `gdl1000`): generated stochastic microstructures

The paper's GDL data came from GeoDict (commercial) and are not public. Each row here is a real voxel microstructure
generated by `training/gdl_microstructure.py`, and its tortuosity is measured on that structure; there is no formula
behind the target.

**Inputs.** Drawn independently and uniformly in the paper's ranges (its GDL sets are uniform), rounded to
{INPUT_DECIMALS} decimals *before* the structure is built, so each CSV row describes exactly what was measured:
fiber diameter 6–12 µm, fiber volume fraction 10–25 % of the uncompressed layer, binder volume fraction 5–10 % of the
final structure, uncompressed thickness 280–320 µm, compression factor 0–0.5.

**Structure.**
1. Straight, infinitely long circular fibres of the given diameter, isotropic in the plane (uniform angle, uniform
   offset: the isotropic Poisson line process in the box), centre height uniform through the layer, out-of-plane tilt
   uniform in ±{MAX_TILT_DEG:g}° (real carbon-paper fibres lie nearly flat). Fibres are added one by one to the
   uncompressed layer until the voxel fibre fraction reaches the target; overlaps are allowed.
2. Compression moves every fibre centre-line in z, z → z·(1 − compression_factor), and the fibres are re-rasterised
   in the thinner layer with round cross-sections. The same fibres share less volume, so porosity falls; voxels are
   never squeezed.
3. Binder (PTFE) fills the pore voxels closest to their *second*-nearest fibre axis up to the binder fraction of the
   final volume: fillets and webs where fibres cross or run close together. Only axes within
   {BINDER_REACH_RADII:g} fibre radii are considered; if that ever runs short, the rest coats single fibres.

**Target.** Geometric tortuosity: geodesic shortest paths through the pore space (scikit-image `MCP_Geometric`,
26-connected) seeded from every pore voxel of the z = 0 face; the mean path length to the reachable pore voxels of the
far face (plus the half voxel at each face) over the compressed, voxelised thickness. Pores not connected to the inlet
are excluded. Rounded to {OUTPUT_DECIMALS} decimals. A structure with no connected path (not expected at these
porosities, >= 45 %) is redrawn from the next sub-seed with the same inputs, at most {MAX_ATTEMPTS} times.

**Domain vs paper.**

| dataset | paper ___domain | this ___domain | rows |
|---|---|---|---|
{domain_rows}

Both domains are the paper's scaled by {DOMAIN_SCALE:g}, keeping the thin-slab vs square contrast (and GDL1000's 2.5×
larger area and cost) that the transfer task rests on, at a voxel size that keeps the thinnest fibre three voxels
across. Lateral faces are closed walls; fibres are clipped there. Consequences: absolute tortuosities are not the
paper's (different voxel size, path metric and ___domain), and the 26-connected path metric adds a small upward bias to
oblique path segments; compare trends and the GDL200/GDL1000 relationship, not values.

**Reproducibility.** Row *i* of dataset *d* with seed *s* uses `numpy.random.default_rng([s, key(d), i, stream,
attempt])` (key 200 / 1000; stream 0 inputs, 1 structure), so any row can be regenerated alone and the same seed gives
byte-identical values in any order and with any number of worker processes.
"""
