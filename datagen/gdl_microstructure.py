"""Stochastic gas-diffusion-layer microstructures and their geometric tortuosity (the `gdl200` and `gdl1000` sets).

The paper characterised GeoDict-generated GDLs; GeoDict is commercial and the data are "available on request", so
the two GDL datasets are regenerated here from real voxel microstructures rather than from a fitted formula.

Per row: five inputs drawn uniformly in the paper's ranges -> straight circular fibres laid into the uncompressed
layer (isotropic in-plane, small out-of-plane inclination) -> the layup compressed along z (centre heights and
inclinations scale by 1 - c) -> fibres added until the *final* structure holds the fibre volume fraction -> binder
grown at fibre contacts to its share of the final solid -> geodesic shortest paths through the connected pore space
along z, with periodic lateral boundaries.

Lengths are in units of the fibre diameter where it matters: geometric tortuosity is scale free, so the voxel size is
a fixed fraction of the fibre diameter (`VOXELS_PER_DIAMETER`), and the lateral domains keep the paper's widths in
µm, hence in fibre diameters (the 200 µm slab is 17-33 diameters wide).

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

from cellmfg.dataio import SAMPLE_ID
from cellmfg.domain import DATASETS, GDL_FEATURES, TORTUOSITY

__all__ = [
    "BINDER",
    "COLUMNS",
    "DOMAINS",
    "FIBER",
    "MAX_ATTEMPTS",
    "MAX_TILT_DEG",
    "PAPER_DOMAINS",
    "PORE",
    "POROSITY_COLUMN",
    "VOXELS_PER_DIAMETER",
    "GDLParams",
    "Microstructure",
    "build_microstructure",
    "build_phases",
    "data_card_section",
    "generate_gdl",
    "generate_row",
    "geometric_tortuosity",
    "measure_row",
    "sample_params",
    "voxel_size",
]

# Voxels across one fibre diameter. Tortuosity is scale free, so resolving every diameter equally keeps the
# discretisation error the same for thin and thick fibres; 3 is the coarsest grid on which a fibre is still a round
# blob rather than a cross (convergence against 6 is measured by scripts/gdl_convergence.py and in the data card).
VOXELS_PER_DIAMETER: int = 3

PAPER_DOMAINS: dict[str, tuple[float, float]] = {"gdl200": (2000.0, 200.0), "gdl1000": (1000.0, 1000.0)}
# Lateral domain (x, y) in µm. GDL200 keeps the paper's 200 µm width (17-33 fibre diameters) and shortens the length
# to the same 200 µm (with periodic sides a long slab is several such squares side by side: more paths in the average,
# no new geometry); GDL1000 is a periodic square 1.5x wider, so a GDL200 row costs 44 % of a GDL1000 row (the paper:
# 65 % cheaper). The convergence check doubles the domain to show what that changes.
DOMAINS: dict[str, tuple[float, float]] = {"gdl200": (200.0, 200.0), "gdl1000": (300.0, 300.0)}

# Carbon-paper fibres lie close to the plane. The as-laid (uncompressed) layup inclines them by up to this angle;
# compression scales every inclination's tangent by (1 - c), flattening the layup (assumption: a few to ~10 degrees
# of out-of-plane undulation in as-made papers).
MAX_TILT_DEG: float = 10.0

# Binder is grown where a voxel is close to two fibre axes; distances are only tracked within this many fibre radii of
# an axis. Anything still missing is filled next to single fibres (see `build_phases`).
BINDER_REACH_RADII: float = 2.5

# Periodic lateral boundaries for the path search: the structure is wrapped by this many fibre diameters on each side
# (a geodesic in a layer with tau ~ 1.05 strays little sideways near a face; checked by the convergence script).
PATH_MARGIN_DIAMETERS: float = 1.5

# A layer with no connected pore path from face to face has no geometric tortuosity. At these porosities (>= 70 %) it
# is not expected to happen; the structure is then redrawn from the next sub-seed with the same inputs, at most
# this many times, so that the input distribution stays exactly uniform.
MAX_ATTEMPTS: int = 5

INPUT_DECIMALS: int = 3
OUTPUT_DECIMALS: int = 6
POROSITY_COLUMN = "porosity"

COLUMNS: tuple[str, ...] = (SAMPLE_ID, *(q.column for q in GDL_FEATURES), TORTUOSITY.column, POROSITY_COLUMN)

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
    fiber_concentration_pct: float  # fibre volume fraction of the final (compressed) structure
    binder_concentration_pct: float  # binder share of the final solid volume (fibre + binder)
    thickness_um: float  # uncompressed thickness
    compression_factor: float  # compressed thickness = thickness_um * (1 - compression_factor)

    @property
    def binder_volume_fraction(self) -> float:
        """Binder volume fraction of the final structure: B = F·b/(1 − b) for a binder share b of the solid."""
        b = self.binder_concentration_pct / 100.0
        return self.fiber_concentration_pct / 100.0 * b / (1.0 - b)

    @property
    def target_porosity(self) -> float:
        return 1.0 - self.fiber_concentration_pct / 100.0 - self.binder_volume_fraction


@dataclass(frozen=True, eq=False)
class Microstructure:
    """A generated GDL: phase labels per voxel plus the fibre axes that made them (for checks and plots)."""

    phase: np.ndarray  # uint8, axes (x, y, z): PORE, FIBER or BINDER
    fiber_points: np.ndarray  # (n, 3) µm, the centre of each compressed fibre segment
    fiber_directions: np.ndarray  # (n, 3) unit vectors of the compressed fibre axes
    fiber_length_um: float  # every segment's length (wrapped periodically in x and y)
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


def voxel_size(params: GDLParams, voxels_per_diameter: float = VOXELS_PER_DIAMETER) -> float:
    return params.fiber_diameter_um / voxels_per_diameter


def _draw_fiber(rng: np.random.Generator, lx: float, ly: float, thickness: float, keep: float,
                max_tilt: float) -> tuple[np.ndarray, np.ndarray]:
    """One fibre segment of the compressed layup: (centre, unit direction) in µm.

    The as-laid fibre has a uniform in-plane angle, a centre uniform in the periodic box and the uncompressed
    thickness, and an inclination uniform in ±max_tilt. Compression maps z -> z·keep, so the centre height and the
    tangent of the inclination shrink by `keep` while the in-plane layout is untouched.
    """
    theta = rng.uniform(0.0, math.pi)
    centre = np.array([rng.uniform(0.0, lx), rng.uniform(0.0, ly), rng.uniform(0.0, thickness) * keep])
    tilt = math.atan(math.tan(rng.uniform(-max_tilt, max_tilt)) * keep)
    direction = np.array([math.cos(tilt) * math.cos(theta), math.cos(tilt) * math.sin(theta), math.sin(tilt)])
    return centre, direction


class _Grid:
    """A periodic-in-(x, y) voxel box; finds the voxels near a fibre segment, wrapping across the lateral faces."""

    def __init__(self, shape: tuple[int, int, int], voxel: float) -> None:
        self.shape = shape
        self.voxel = voxel

    def near_segment(self, centre: np.ndarray, direction: np.ndarray, half_length: float,
                     reach: float) -> tuple[np.ndarray, np.ndarray]:
        """Flat indices of voxels whose centre lies within `reach` µm of the segment, and their distances.

        The segment is rasterised in unwrapped coordinates over its own bounding box (in-plane band first, then a
        short z-window), then the (x, y) indices are wrapped; a voxel reached twice keeps its smaller distance.
        """
        nx, ny, nz = self.shape
        v = self.voxel
        u = direction
        ends = np.array([centre - half_length * u, centre + half_length * u])
        lo = np.floor((ends[:, :2].min(axis=0) - reach) / v - 0.5).astype(int)
        hi = np.ceil((ends[:, :2].max(axis=0) + reach) / v - 0.5).astype(int)
        ix = np.arange(lo[0], hi[0] + 1)
        iy = np.arange(lo[1], hi[1] + 1)
        a = ((ix + 0.5) * v - centre[0])[:, None]
        b = ((iy + 0.5) * v - centre[1])[None, :]
        h = math.hypot(u[0], u[1])
        perp = np.abs(a * (-u[1] / h) + b * (u[0] / h))
        along_xy = (a * u[0] + b * u[1]) / h  # in-plane coordinate along the projected axis
        band = (perp <= reach) & (np.abs(along_xy) <= half_length * h + reach)
        px, py = np.nonzero(band)
        if px.size == 0:
            return np.empty(0, dtype=np.intp), np.empty(0)
        a_c, b_c = a[px, 0], b[0, py]
        s_axis = (a_c * u[0] + b_c * u[1]) / (h * h)  # axis parameter (in 3D length) above this column
        z_axis = centre[2] + s_axis * u[2]
        half = reach / h + v
        k_lo = np.ceil((z_axis - half) / v - 0.5).astype(np.intp)
        width = math.floor(2.0 * half / v) + 2
        k = k_lo[:, None] + np.arange(width)[None, :]
        wz = (k + 0.5) * v - centre[2]
        wa = np.broadcast_to(a_c[:, None], k.shape)
        wb = np.broadcast_to(b_c[:, None], k.shape)
        t = np.clip(wa * u[0] + wb * u[1] + wz * u[2], -half_length, half_length)
        dist2 = (wa - t * u[0]) ** 2 + (wb - t * u[1]) ** 2 + (wz - t * u[2]) ** 2
        keep = (k >= 0) & (k < nz) & (dist2 <= reach * reach)
        ii = np.mod(ix[np.broadcast_to(px[:, None], k.shape)[keep]], nx)
        jj = np.mod(iy[np.broadcast_to(py[:, None], k.shape)[keep]], ny)
        flat = np.ravel_multi_index((ii, jj, k[keep]), self.shape)
        dist = np.sqrt(dist2[keep])
        order = np.lexsort((dist, flat))
        flat, first = np.unique(flat[order], return_index=True)
        return flat, dist[order][first]


def _grid_shape(lateral_um: tuple[float, float], thickness_um: float, voxel_um: float) -> tuple[int, int, int]:
    return (max(1, round(lateral_um[0] / voxel_um)), max(1, round(lateral_um[1] / voxel_um)),
            max(1, round(thickness_um / voxel_um)))


def build_phases(params: GDLParams, lateral_um: tuple[float, float], voxel_um: float,
                 rng: np.random.Generator) -> Microstructure:
    """Generate one GDL with fibre and binder kept apart (`build_microstructure` returns only the solid).

    Fractions refer to the final structure: fibres are added to the compressed layup until the voxel fibre fraction
    of the final grid reaches its target, and binder fills the final pore voxels closest to their second-nearest fibre
    axis (fillets and webs where fibres cross or run close, where PTFE collects as it dries) up to its share of the
    final solid. Compression is the geometric change of the as-laid layup described in `_draw_fiber`.
    """
    if voxel_um <= 0:
        raise ValueError(f"voxel_um must be positive, got {voxel_um}")
    if not 0.0 <= params.compression_factor < 1.0:
        raise ValueError(f"compression_factor must be in [0, 1), got {params.compression_factor}")
    if params.fiber_diameter_um <= 0 or params.thickness_um <= 0:
        raise ValueError(f"fiber diameter and thickness must be positive, got {params}")
    if not 0.0 <= params.fiber_concentration_pct < 100.0 or not 0.0 <= params.binder_concentration_pct < 100.0:
        raise ValueError(f"fiber fraction must be in [0, 100) % and binder share in [0, 100) %, got {params}")
    if params.target_porosity <= 0.0:
        raise ValueError(f"fibre and binder fill the whole volume: {params}")
    radius = 0.5 * params.fiber_diameter_um
    keep = 1.0 - params.compression_factor
    grid = _Grid(_grid_shape(lateral_um, params.thickness_um * keep, voxel_um), voxel_um)
    lx, ly = grid.shape[0] * voxel_um, grid.shape[1] * voxel_um
    n = int(np.prod(grid.shape))
    half_length = 0.5 * max(lx, ly)
    target = params.fiber_concentration_pct / 100.0 * n
    reach = BINDER_REACH_RADII * radius

    covered = np.zeros(n, dtype=bool)
    d1 = np.full(n, np.inf)
    d2 = np.full(n, np.inf)
    count = 0
    points: list[np.ndarray] = []
    directions: list[np.ndarray] = []
    # Guards the loop only: far more fibres than any reachable fraction needs.
    max_fibers = 50 * math.ceil(n * voxel_um**3 / (math.pi * radius**2 * 2.0 * half_length)) + 1000
    while count < target:
        if len(points) >= max_fibers:
            raise RuntimeError(f"could not reach {params.fiber_concentration_pct} % fibres with {max_fibers} fibres")
        centre, direction = _draw_fiber(rng, lx, ly, params.thickness_um, keep, math.radians(MAX_TILT_DEG))
        flat, dist = grid.near_segment(centre, direction, half_length, reach)
        inside = dist <= radius
        new = flat[inside][~covered[flat[inside]]]
        # Keep the last fibre only if it brings the fraction closer to the target than stopping short would.
        if count + new.size > target and (count + new.size - target) > (target - count) and points:
            break
        covered[new] = True
        count += int(new.size)
        cur1 = d1[flat]
        d2[flat] = np.minimum(d2[flat], np.maximum(cur1, dist))
        d1[flat] = np.minimum(cur1, dist)
        points.append(centre)
        directions.append(direction)
    phase = np.where(covered, FIBER, PORE).astype(np.uint8)

    # Binder: rank pore voxels by distance to the second-nearest axis; where no second axis is within reach the
    # ranking falls through to the nearest axis (a coating), then to voxel order, so the choice is total and stable.
    n_binder = round(params.binder_volume_fraction * n)
    pore_idx = np.flatnonzero(phase == PORE)
    n_binder = min(n_binder, pore_idx.size)
    fallback = 0
    if n_binder > 0:
        cand2, cand1 = d2[pore_idx], d1[pore_idx]
        order = np.lexsort((pore_idx, cand1, cand2))[:n_binder]
        chosen = pore_idx[order]
        fallback = int(np.count_nonzero(~np.isfinite(cand2[order])))
        phase[chosen] = BINDER

    return Microstructure(phase=phase.reshape(grid.shape), fiber_points=np.array(points).reshape(-1, 3),
                          fiber_directions=np.array(directions).reshape(-1, 3), fiber_length_um=2.0 * half_length,
                          voxel_um=voxel_um, binder_fallback_voxels=fallback)


def build_microstructure(params: GDLParams, lateral_um: tuple[float, float], voxel_um: float,
                         rng: np.random.Generator) -> np.ndarray:
    """Boolean voxel array of one GDL, True = solid (fibre or binder), axes (x, y, z), z through the layer."""
    return build_phases(params, lateral_um, voxel_um, rng).solid


def geometric_tortuosity(solid: np.ndarray, margin: int = 0) -> float:
    """Mean geodesic face-to-face path length through the connected pore space along z, over the layer thickness.

    Paths start on every pore voxel of the z=0 face (MCP_Geometric, 26-connected, so diagonal steps count sqrt(2) or
    sqrt(3)) and the mean is over the reachable pore voxels of the far face; pores cut off from the inlet carry no
    transport and are left out. With `margin` > 0 the lateral boundaries are periodic: the structure is wrapped by
    `margin` voxels on each side so paths may cross them, and only the original far face is averaged. The half voxel
    between each face and the first voxel centre is added to the path and the straight distance is the voxelised
    thickness, so an open straight channel gives exactly 1.
    """
    if solid.ndim != 3:
        raise ValueError(f"expected a 3D (x, y, z) array, got shape {solid.shape}")
    if margin < 0:
        raise ValueError(f"margin must be non-negative, got {margin}")
    pore = ~solid.astype(bool)
    nx, ny, nz = solid.shape
    if margin:
        mx, my = min(margin, nx), min(margin, ny)
        pore = np.pad(pore, ((mx, mx), (my, my), (0, 0)), mode="wrap")
    else:
        mx = my = 0
    inlet = np.argwhere(pore[:, :, 0])
    if inlet.size == 0 or not pore[:, :, -1].any():
        raise ValueError("no connected pore path: a face has no pore voxel")
    costs = np.where(pore, 1.0, np.inf)
    starts = np.column_stack([inlet, np.zeros(len(inlet), dtype=inlet.dtype)])
    cumulative, _ = MCP_Geometric(costs, fully_connected=True).find_costs(starts)
    far_cost = cumulative[mx:mx + nx, my:my + ny, -1]
    far = far_cost[pore[mx:mx + nx, my:my + ny, -1]]
    reached = far[np.isfinite(far)]
    if reached.size == 0:
        raise ValueError("no connected pore path from z=0 to the far face")
    return float((reached.mean() + 1.0) / nz)


def path_margin(params: GDLParams, voxel_um: float, diameters: float = PATH_MARGIN_DIAMETERS) -> int:
    return max(1, math.ceil(diameters * params.fiber_diameter_um / voxel_um))


def measure_row(params: GDLParams, lateral_um: tuple[float, float], rng_factory: Callable[[int], np.random.Generator],
                voxels_per_diameter: float = VOXELS_PER_DIAMETER,
                margin_diameters: float = PATH_MARGIN_DIAMETERS) -> tuple[float, float]:
    """(tortuosity, porosity) of one structure; redrawn from the next attempt's generator if it has no path."""
    voxel = voxel_size(params, voxels_per_diameter)
    for attempt in range(MAX_ATTEMPTS):
        ms = build_phases(params, lateral_um, voxel, rng_factory(attempt))
        try:
            tortuosity = geometric_tortuosity(ms.solid, path_margin(params, voxel, margin_diameters))
        except ValueError:
            continue
        return tortuosity, ms.porosity
    raise RuntimeError(f"no connected pore path in {MAX_ATTEMPTS} structures for {params}")


def structure_rng(dataset: str, seed: int, row: int) -> Callable[[int], np.random.Generator]:
    """The random generator of row `row`'s structure, per attempt (a structure without a pore path is redrawn)."""
    return lambda attempt: _rng(dataset, seed, row, _STRUCTURE_STREAM, attempt)


def generate_row(dataset: str, seed: int, row: int) -> dict[str, float | str]:
    """One dataset row: inputs, a microstructure built from them and its tortuosity, reproducible from its indices.

    If a structure has no connected pore path it is redrawn from the next structure sub-seed with the same inputs
    (at most `MAX_ATTEMPTS` times), so the result is still a pure function of (dataset, seed, row).
    """
    params = sample_params(dataset, seed, row)
    try:
        tortuosity, porosity = measure_row(params, DOMAINS[dataset], structure_rng(dataset, seed, row))
    except RuntimeError as error:
        raise RuntimeError(f"{dataset} row {row} (seed {seed}): {error}") from error
    record: dict[str, float | str] = {SAMPLE_ID: f"{dataset}-{row:04d}"}
    record.update({f.name: getattr(params, f.name) for f in fields(GDLParams)})
    record[TORTUOSITY.column] = round(tortuosity, OUTPUT_DECIMALS)
    record[POROSITY_COLUMN] = round(porosity, OUTPUT_DECIMALS)
    return record


def _row_job(job: tuple[str, int, int]) -> tuple[int, dict[str, float | str]]:
    dataset, seed, row = job
    return row, generate_row(dataset, seed, row)


def generate_gdl(dataset: str, seed: int, rows: Sequence[int] | None = None, processes: int = 2,
                 progress: Callable[[int], None] | None = None) -> pd.DataFrame:
    """Generate a GDL dataset (all paper rows by default) as a DataFrame with `COLUMNS`, rows in the order asked.

    Rows are independent, so they are farmed out to a process pool unordered (rows vary several-fold in cost) and
    reassembled; the result does not depend on `processes`. `progress(n)` is called with the number of rows just
    finished. The pool uses "spawn" because forking a process that runs a progress-bar thread can deadlock.
    """
    _check_dataset(dataset)
    wanted = list(range(DATASETS[dataset].paper_rows)) if rows is None else [int(r) for r in rows]
    unique = list(dict.fromkeys(wanted))
    # Costly rows first (thin fibres: most voxels), so the pool does not end on one long straggler.
    jobs = sorted(((dataset, seed, row) for row in unique),
                  key=lambda job: sample_params(dataset, seed, job[2]).fiber_diameter_um)
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
        f"({PAPER_DOMAINS[name][1] / 12:.0f}–{PAPER_DOMAINS[name][1] / 6:.0f} fibre diameters across the narrow side) "
        f"| {x:g} × {y:g} µm periodic ({min(x, y) / 12:.0f}–{min(x, y) / 6:.0f} diameters across the narrow side), "
        f"voxel = d/{VOXELS_PER_DIAMETER} ({6 / VOXELS_PER_DIAMETER:g}–{12 / VOXELS_PER_DIAMETER:g} µm) "
        f"| {DATASETS[name].paper_rows} |"
        for name, (x, y) in DOMAINS.items()
    )
    return f"""## GDL datasets (`gdl200`, `gdl1000`): generated stochastic microstructures

The paper's GDL data came from GeoDict (commercial) and are not public. Each row here is a real voxel microstructure
generated by `datagen/gdl_microstructure.py`, and its tortuosity is measured on that structure; there is no formula
behind the target.

**Inputs.** Drawn independently and uniformly in the paper's ranges (its GDL sets are uniform), rounded to
{INPUT_DECIMALS} decimals *before* the structure is built, so each CSV row describes exactly what was measured.

**What the inputs mean here.**
- `fiber_concentration_pct`: fibre volume fraction of the **final** (compressed) structure, exact to about one fibre.
- `binder_concentration_pct`: binder (PTFE) share of the final **solid** volume, b = B/(F + B), so the binder volume
  fraction is B = F·b/(1 − b) (0.5–2.8 %) and the porosity 1 − F/(1 − b) spans 72–90 %, the range of real carbon-paper
  GDLs (70–90 %). Our reading of the paper's "binder added to a target solid volume"; a binder fraction of the total
  volume would put a sixth of the input box below 70 % porosity.
- `thickness_um`: the as-laid (uncompressed) thickness t; the measured layer is t·(1 − c) thick.
- `compression_factor` c: the fraction by which compression along z reduces the layer's thickness. In this model it
  is a geometric change of the **layup**: every fibre's centre height and the tangent of its out-of-plane inclination
  scale by (1 − c) (as-laid inclinations uniform in ±{MAX_TILT_DEG:g}°), fibres stay round and rigid. Because the
  fractions are fixed on the final structure, compression does not change the porosity; what it changes is how flat
  the fibres lie and how thin the layer is. That is the reading that keeps the five inputs independent, as the
  paper's uniform design requires; a compression that also densified the layer would make c and the fractions two
  descriptions of one porosity.

**Structure.**
1. Straight circular fibre segments of the given diameter, isotropic in the plane (uniform angle), centres uniform in
   the box, length = the domain's longer side, wrapped periodically in x and y (the paper's fibres are infinite;
   a periodic box has no ends to cut them at). Fibres are added one by one until the final voxel fibre fraction
   reaches the target; overlaps are allowed (a Boolean model).
2. Binder fills the pore voxels closest to their *second*-nearest fibre axis up to its volume: fillets and webs where
   fibres cross or run close together. Only axes within {BINDER_REACH_RADII:g} fibre radii are considered; if that ever
   runs short, the rest coats single fibres.
3. Porosity (pore voxels / all voxels) is written per row (`porosity`, an extra output column; `tortuosity` stays the
   target).

**Target.** Geometric tortuosity: geodesic shortest paths through the pore space (scikit-image `MCP_Geometric`,
26-connected) seeded from every pore voxel of the z = 0 face; the mean path length to the reachable pore voxels of the
far face (plus the half voxel at each face) over the voxelised thickness. Lateral boundaries are periodic: the
structure is wrapped by {PATH_MARGIN_DIAMETERS:g} fibre diameters on each side for the path search and only the
original far face is averaged. Pores not connected to the inlet are excluded. Rounded to {OUTPUT_DECIMALS} decimals. A
structure with no connected path is redrawn from the next sub-seed with the same inputs, at most {MAX_ATTEMPTS} times.

**Domain and resolution vs paper.**

| dataset | paper domain | this domain | rows |
|---|---|---|---|
{domain_rows}

Geometric tortuosity is scale free, so the voxel is a fixed fraction of the fibre diameter (d/{VOXELS_PER_DIAMETER}),
which keeps the discretisation error the same for every row. GDL200 keeps the paper's 200 µm width (17–33 fibre
diameters) and is cut to 200 µm long: with periodic sides a longer slab only adds more paths to the average (less
structure-to-structure scatter), no new geometry. GDL1000 is a periodic square 1.5× wider (25–50 diameters; a row
costs 2.25× a GDL200 row, the paper's GDL200 was 65 % cheaper); the paper's is 1000 µm (83–167 diameters). Both are
far smaller than the paper's in area, so our rows carry more realisation scatter than GeoDict's would; the
convergence table below shows what doubling the domain and halving the voxel change. The 26-connected path metric
adds a small upward bias to oblique path segments.

**Against the paper.** Our tortuosities (see "Outputs beside literature") overlap the paper's range only at its low
end: τ − 1 comes out about half of the paper's (mean ≈ 0.033 vs 0.07–0.09), and the distribution is not right-skewed.
Nothing was tuned to close that gap. A Boolean layer of straight fibres at 72–90 % porosity simply has short
detours; the paper's GeoDict structures (its fibre stacking, binder morphology and exact tortuosity definition are
not described) evidently block more. Within our model τ is close to a function of porosity (r ≈ −0.98): fibre and
binder fractions set it, the other inputs barely move it.

**Reproducibility.** Row *i* of dataset *d* with seed *s* uses `numpy.random.default_rng([s, key(d), i, stream,
attempt])` (key 200 / 1000; stream 0 inputs, 1 structure), so any row can be regenerated alone and the same seed gives
byte-identical values in any order and with any number of worker processes.
"""
