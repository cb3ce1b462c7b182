"""Stochastic gas-diffusion-layer microstructures and their geometric tortuosity (the `gdl200` and `gdl1000` sets).

The paper characterised GeoDict-generated GDLs; GeoDict is commercial and the data are "available on request", so
the two GDL datasets are regenerated here from real voxel microstructures rather than from a fitted formula.

Per row: five inputs drawn uniformly in the paper's ranges -> straight circular fibres laid into the as-laid layer
(isotropic in-plane, small out-of-plane inclination) -> the layup compressed along z, solid volume kept (centre
heights and inclination tangents scale by 1 - c, so the layer thins to t(1 - c) and densifies to fibre fraction
F/(1 - c)) -> binder webs at fibre contacts to its share of the solid -> fast-marching geodesic distances through the
connected pore space from the outlet face, averaged over the inlet face, with periodic lateral boundaries.

Lengths are in units of the fibre diameter where it matters: geometric tortuosity is scale free, so the voxel size is
a fraction of the fibre diameter (d/3, finer in the densest layers so that the mean pore chord spans at least
`MIN_VOXELS_PER_PORE_CHORD` voxels: `voxels_per_diameter`); the lateral domains are the paper's footprints scaled by
`FOOTPRINT_SCALE`.

Every row has its own random streams derived from (seed, dataset, row), so a single row can be regenerated alone and
rows can be computed in any order or process without changing a byte of the result.
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Literal

import numpy as np
import pandas as pd
import skfmm

from cellmfg.dataio import SAMPLE_ID
from cellmfg.domain import DATASETS, GDL_FEATURES, TORTUOSITY

__all__ = [
    "BINDER",
    "COLUMNS",
    "DOMAINS",
    "FIBER",
    "FOOTPRINT_SCALE",
    "GEODICT_BINDER_MODEL",
    "MAX_ATTEMPTS",
    "MAX_TILT_DEG",
    "MIN_VOXELS_PER_PORE_CHORD",
    "PAPER_DOMAINS",
    "PORE",
    "POROSITY_COLUMN",
    "SHIPPED_MODEL",
    "VOXELS_PER_DIAMETER",
    "GDLParams",
    "Microstructure",
    "StructureModel",
    "binder_volume_fraction",
    "build_microstructure",
    "build_phases",
    "fiber_path_obstacle",
    "generate_gdl",
    "generate_row",
    "geometric_tortuosity",
    "measure_row",
    "sample_params",
    "spread_rows",
    "thin_binder_films",
    "voxel_size",
    "voxels_per_diameter",
]

# Voxels across one fibre diameter, the coarsest resolution used. Tortuosity is scale free, so resolving every
# diameter equally keeps the discretisation error the same for thin and thick fibres, as long as the pores are
# resolved too. With fast marching and walls centred on the true surfaces (`build_phases`), halving d/3 to d/6 moves
# tau - 1 by less than 7 % on layers of porosity >= 0.58 but by +14 % on the densest (porosity 0.50), where the
# mean pore chord is about one fibre diameter, i.e. 3 voxels (scripts/gdl_convergence.py; measured for row 218:
# d/3 1.0413, d/4 1.0417, d/5 1.0433, d/6 1.0469, d/8 1.0475, d/10 1.0470). d/4 for every row would cost 2.4x and
# does not fit the 20-minute budget, so only the dense layers get finer voxels (`voxels_per_diameter`).
VOXELS_PER_DIAMETER: int = 3
# The mean pore chord (4·porosity / specific surface, ~ d·porosity/(1 - porosity) for fibres of diameter d) must span
# at least this many voxels. Measured (d/3 -> d/6 unless stated): 2.95 voxels per chord moved tau - 1 by +14 %,
# 3.9 (d/4 -> d/8) +14 %, 4.1 -1.5 %, 4.7 +5.7 %, 4.9 (d/5 -> d/10) +8.5 %, 6 and more within 7 %; 4.5 leaves a margin
# above the one failure near 4.
MIN_VOXELS_PER_PORE_CHORD: float = 4.5

PAPER_DOMAINS: dict[str, tuple[float, float]] = {"gdl200": (2000.0, 200.0), "gdl1000": (1000.0, 1000.0)}
# Lateral domain (x, y) in µm: the paper's footprints with both sides halved (a quarter of the area), so the two sets
# keep the paper's shapes (a 10:1 strip and a square) and their 0.4 area ratio. The paper's full footprints cost four
# times as much (about 35 minutes on 2 cores); scripts/gdl_convergence.py measures tau on them for a few structures.
FOOTPRINT_SCALE: float = 0.5
DOMAINS: dict[str, tuple[float, float]] = {
    name: (FOOTPRINT_SCALE * x, FOOTPRINT_SCALE * y) for name, (x, y) in PAPER_DOMAINS.items()}

# Carbon-paper fibres lie close to the plane. The as-laid (uncompressed) layup inclines them by up to this angle;
# compression scales every inclination's tangent by (1 - c), flattening the layup (assumption: a few to ~10 degrees
# of out-of-plane undulation in as-made papers).
MAX_TILT_DEG: float = 10.0

# Binder is grown where a voxel is close to two fibre axes; distances are only tracked within this many fibre radii of
# an axis. Anything still missing is filled next to single fibres (see `build_phases`).
BINDER_REACH_RADII: float = 2.5

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
    fiber_concentration_pct: float  # fibre volume fraction of the as-laid (uncompressed) layer
    binder_concentration_pct: float  # binder share of the solid volume (fibre + binder)
    thickness_um: float  # uncompressed (as-laid) thickness
    compression_factor: float  # compressed thickness = thickness_um * (1 - compression_factor)

    @property
    def compressed_thickness_um(self) -> float:
        return self.thickness_um * (1.0 - self.compression_factor)

    @property
    def fiber_volume_fraction(self) -> float:
        """Fibre volume fraction of the compressed layer: the fibre volume is kept as the layer thins by (1 − c)."""
        return self.fiber_concentration_pct / 100.0 / (1.0 - self.compression_factor)

    @property
    def binder_volume_fraction(self) -> float:
        """Binder volume fraction of the compressed layer: B = F'·b/(1 − b) for a binder share b of the solid."""
        b = self.binder_concentration_pct / 100.0
        return self.fiber_volume_fraction * b / (1.0 - b)

    @property
    def target_porosity(self) -> float:
        return 1.0 - self.fiber_volume_fraction - self.binder_volume_fraction


@dataclass(frozen=True)
class StructureModel:
    """Modelling choices that are not dataset inputs. The defaults are the shipped model.

    `binder_basis`: what `binder_concentration_pct` is a percentage of. "solid": the binder's share of the solid
    (fibre + binder) volume, the shipped reading. "domain": a percentage of the (compressed) layer's volume, as
    GeoDict's AddBinder takes it ("Added Solid Volume Percentage"); with it binder is 5-10 % of the volume instead of
    about 1-5 %.
    `binder_films_block`: binder webs thinner than a voxel have no voxel centre half a voxel inside them, so with
    centred walls alone paths leak through them; with this flag every binder voxel in a run of at most two binder
    voxels along some axis (the deeper one of a two-run) blocks paths too (`thin_binder_films`).

    The off-default combination `GEODICT_BINDER_MODEL` is not shipped: at d/3 its discretisation error is 12-30 % of
    tau - 1 (d/3 -> d/6; scripts/gdl_convergence.py --model geodict_binder), and a resolution that would converge it
    (d/8 or finer, near the paper's 1 um voxels) costs well over ten times the 20-minute budget (data card).
    """

    binder_basis: Literal["solid", "domain"] = "solid"
    binder_films_block: bool = False


SHIPPED_MODEL = StructureModel()
GEODICT_BINDER_MODEL = StructureModel(binder_basis="domain", binder_films_block=True)


def binder_volume_fraction(params: GDLParams, model: StructureModel = SHIPPED_MODEL) -> float:
    """Binder volume fraction of the compressed layer under the model's reading of the binder concentration."""
    if model.binder_basis == "domain":
        return params.binder_concentration_pct / 100.0
    return params.binder_volume_fraction


@dataclass(frozen=True, eq=False)
class Microstructure:
    """A generated GDL: phase labels per voxel plus the fibre axes that made them (for checks and plots)."""

    phase: np.ndarray  # uint8, axes (x, y, z): PORE, FIBER or BINDER
    fiber_points: np.ndarray  # (n, 3) µm, the centre of each compressed fibre segment
    fiber_directions: np.ndarray  # (n, 3) unit vectors of the compressed fibre axes
    fiber_length_um: float  # every segment's length (wrapped periodically in x and y)
    voxel_um: float
    binder_fallback_voxels: int  # binder voxels that had to go next to a single fibre (none within reach of two)
    # Where paths cannot go: fibre and binder voxels whose centre lies at least half a voxel inside the phase's
    # surface (see `build_phases`). False in the pore.
    path_obstacle: np.ndarray

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


def voxels_per_diameter(params: GDLParams) -> int:
    """The row's resolution: d/3, or finer so that the mean pore chord spans `MIN_VOXELS_PER_PORE_CHORD` voxels.

    The pore chord comes from the inputs' target porosity (not the built structure), so the resolution is a pure
    function of the row's inputs; only the densest corner of the input box (porosity below 0.6) needs more than 3.
    """
    porosity = params.target_porosity
    chord_in_diameters = porosity / (1.0 - porosity)
    return max(VOXELS_PER_DIAMETER, math.ceil(MIN_VOXELS_PER_PORE_CHORD / chord_in_diameters - 1e-9))


def spread_rows(dataset: str, seed: int, structures: int) -> list[int]:
    """Rows whose target porosity sits at evenly spaced quantiles of the dataset's (densest to most open): the
    structures the convergence and model-sample scripts measure across the input range."""
    rows = range(DATASETS[dataset].paper_rows)
    porosity = np.array([sample_params(dataset, seed, row).target_porosity for row in rows])
    order = np.argsort(porosity, kind="stable")
    picks = np.round(np.linspace(0, len(order) - 1, structures)).astype(int)
    return [int(order[i]) for i in picks]


def voxel_size(params: GDLParams, per_diameter: float | None = None) -> float:
    """Voxel edge in µm: d/per_diameter, by default the row's own resolution (`voxels_per_diameter`)."""
    return params.fiber_diameter_um / (voxels_per_diameter(params) if per_diameter is None else per_diameter)


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
                 rng: np.random.Generator, model: StructureModel = SHIPPED_MODEL) -> Microstructure:
    """Generate one GDL with fibre and binder kept apart (`build_microstructure` returns only the solid).

    Compression densifies: the as-laid layer (thickness t, fibre volume fraction F) is squeezed along z to t·(1 − c)
    with its solid volume kept, so fibres are added to the compressed layup until the voxel fibre fraction of the
    compressed grid reaches F/(1 − c) (`GDLParams.fiber_volume_fraction`). Fibres stay round and rigid; their heights
    and inclinations follow the layup (`_draw_fiber`). Binder then fills the pore voxels closest to their
    second-nearest fibre axis (webs where fibres cross or run close, where PTFE collects as it dries) up to its share
    of the solid.
    """
    if voxel_um <= 0:
        raise ValueError(f"voxel_um must be positive, got {voxel_um}")
    if not 0.0 <= params.compression_factor < 1.0:
        raise ValueError(f"compression_factor must be in [0, 1), got {params.compression_factor}")
    if params.fiber_diameter_um <= 0 or params.thickness_um <= 0:
        raise ValueError(f"fiber diameter and thickness must be positive, got {params}")
    if not 0.0 <= params.fiber_concentration_pct < 100.0 or not 0.0 <= params.binder_concentration_pct < 100.0:
        raise ValueError(f"fiber fraction must be in [0, 100) % and binder share in [0, 100) %, got {params}")
    binder_fraction = binder_volume_fraction(params, model)
    if params.fiber_volume_fraction + binder_fraction >= 1.0:
        porosity = 1.0 - params.fiber_volume_fraction - binder_fraction
        raise ValueError(f"fibre and binder fill the whole compressed volume (porosity {porosity:.3f}, must be > 0): "
                         f"{params}")
    radius = 0.5 * params.fiber_diameter_um
    keep = 1.0 - params.compression_factor
    grid = _Grid(_grid_shape(lateral_um, params.thickness_um * keep, voxel_um), voxel_um)
    lx, ly = grid.shape[0] * voxel_um, grid.shape[1] * voxel_um
    n = int(np.prod(grid.shape))
    half_length = 0.5 * max(lx, ly)
    target = params.fiber_volume_fraction * n
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
    n_binder = round(binder_fraction * n)
    pore_idx = np.flatnonzero(phase == PORE)
    n_binder = min(n_binder, pore_idx.size)
    fallback = 0
    binder_core = np.zeros(n, dtype=bool)
    if n_binder > 0:
        cand2, cand1 = d2[pore_idx], d1[pore_idx]
        order = np.lexsort((pore_idx, cand1, cand2))[:n_binder]
        chosen = pore_idx[order]
        fallback = int(np.count_nonzero(~np.isfinite(cand2[order])))
        phase[chosen] = BINDER
        # The binder is the region {second-axis distance <= level}; its surface is that level set.
        level = cand2[order[-1]]
        binder_core[chosen] = d2[chosen] <= level - 0.5 * voxel_um
        if model.binder_films_block:
            depth = np.full(n, -np.inf)
            depth[chosen] = level - d2[chosen]
            binder = np.zeros(n, dtype=bool)
            binder[chosen] = True
            binder_core |= thin_binder_films(binder.reshape(grid.shape), binder_core.reshape(grid.shape),
                                             depth.reshape(grid.shape)).ravel()

    # The fibre surface cuts through the voxels next to it. Counting a voxel as an obstacle as soon as its centre is
    # inside a fibre puts the discrete wall on average half a voxel outside the true surface, and every fibre a path
    # wraps around then lengthens it by O(voxel): tau - 1 would fall ~1/k with k voxels per diameter and never
    # converge at an affordable k. Paths may cross the surface voxels (centre within half a voxel of the surface), so
    # the discrete wall is centred on the true one. The same holds for the binder webs, whose surface is the level set
    # of the second-axis distance that bounds them (measured: d/3 -> d/6 moved tau - 1 by 13-14 % on open layers with
    # whole binder voxels as walls, 2-6 % with centred ones).
    obstacle = (covered & fiber_path_obstacle(d1, radius, voxel_um)) | binder_core
    return Microstructure(phase=phase.reshape(grid.shape), fiber_points=np.array(points).reshape(-1, 3),
                          fiber_directions=np.array(directions).reshape(-1, 3), fiber_length_um=2.0 * half_length,
                          voxel_um=voxel_um, binder_fallback_voxels=fallback,
                          path_obstacle=obstacle.reshape(grid.shape))


def _shift(array: np.ndarray, step: int, axis: int, fill: float | bool) -> np.ndarray:
    """array[i - step] along `axis`: periodic in x and y (axes 0, 1), `fill` beyond the z faces."""
    if axis < 2:
        return np.roll(array, step, axis=axis)
    out = np.full_like(array, fill)
    if step > 0:
        out[:, :, step:] = array[:, :, :-step]
    else:
        out[:, :, :step] = array[:, :, -step:]
    return out


def thin_binder_films(binder: np.ndarray, core: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Binder voxels that must block paths although no voxel centre lies half a voxel inside the film.

    A film is thin along some axis if its binder run there is one voxel, or two (then the deeper voxel is kept; ties
    keep both); runs already holding a core (blocking) voxel need nothing more. Arrays are (x, y, z); `depth` is how
    far each binder voxel's centre lies inside the binder surface (-inf outside the binder).
    """
    keep = np.zeros(binder.shape, dtype=bool)
    for axis in range(3):
        before, after = _shift(binder, 1, axis, False), _shift(binder, -1, axis, False)
        before2, after2 = _shift(binder, 2, axis, False), _shift(binder, -2, axis, False)
        core_before, core_after = _shift(core, 1, axis, False), _shift(core, -1, axis, False)
        depth_before, depth_after = _shift(depth, 1, axis, -np.inf), _shift(depth, -1, axis, -np.inf)
        single = binder & ~before & ~after
        pair_low = binder & ~before & after & ~after2 & ~core_after & (depth >= depth_after)
        pair_high = binder & before & ~after & ~before2 & ~core_before & (depth >= depth_before)
        keep |= (single | pair_low | pair_high) & ~core
    return keep


def fiber_path_obstacle(axis_distance_um: np.ndarray, radius_um: float, voxel_um: float) -> np.ndarray:
    """Voxels a path cannot enter: centre at least half a voxel inside the fibre surface (see `build_phases`)."""
    return np.asarray(axis_distance_um <= radius_um - 0.5 * voxel_um)


def build_microstructure(params: GDLParams, lateral_um: tuple[float, float], voxel_um: float,
                         rng: np.random.Generator) -> np.ndarray:
    """Boolean voxel array of one GDL, True = solid (fibre or binder), axes (x, y, z), z through the layer."""
    return build_phases(params, lateral_um, voxel_um, rng).solid


def geometric_tortuosity(solid: np.ndarray, periodic: bool = False) -> float:
    """Mean geodesic distance from the inlet face's connected pore voxels to the outlet face, over the thickness.

    The paper's definition (shortest through-plane path from each inlet pore voxel, over the thickness), measured with
    a second-order fast-marching distance (scikit-fmm) instead of a graph search: a 26-connected graph lets a path
    turn only in 45° steps and overestimates an oblique straight path by up to 8 %, while fast marching solves the
    eikonal equation and is exact to a few per mille for any direction (tests: tilted channels, cylinder array).

    The distance is marched from the outlet plane z = nz (a one-voxel open reservoir beyond the last layer carries the
    zero level exactly on the face) through the pore voxels only; solid voxels are masked. Inlet pore voxels that the
    front never reaches are cut off from the outlet and carry no transport, so they are left out of the mean. The half
    voxel between the inlet face and the first voxel centre is added, so an open straight channel gives exactly 1.
    With `periodic` the x and y boundaries wrap (the structures are generated periodic in x and y).
    """
    if solid.ndim != 3:
        raise ValueError(f"expected a 3D (x, y, z) array, got shape {solid.shape}")
    solid = solid.astype(bool)
    nx, ny, nz = solid.shape
    if not (~solid[:, :, 0]).any() or not (~solid[:, :, -1]).any():
        raise ValueError("no connected pore path: a face has no pore voxel")
    # Signed height below the outlet plane, in voxels: positive inside the layer, -0.5 in the reservoir layer.
    height = nz - (np.arange(nz + 1) + 0.5)
    phi = np.broadcast_to(height, (nx, ny, nz + 1)).copy()
    mask = np.zeros(phi.shape, dtype=bool)
    mask[:, :, :nz] = solid
    distance = skfmm.distance(np.ma.MaskedArray(phi, mask), order=2, periodic=(periodic, periodic, False))
    inlet = np.ma.getdata(distance[:, :, 0])
    reached = ~solid[:, :, 0] & ~np.ma.getmaskarray(distance[:, :, 0]) & np.isfinite(inlet)
    if not reached.any():
        raise ValueError("no connected pore path from z=0 to the far face")
    return float((inlet[reached].mean() + 0.5) / nz)


def measure_row(params: GDLParams, lateral_um: tuple[float, float], rng_factory: Callable[[int], np.random.Generator],
                per_diameter: float | None = None,
                model: StructureModel = SHIPPED_MODEL) -> tuple[float, float]:
    """(tortuosity, porosity) of one structure at voxel d/per_diameter (default: the row's own resolution);
    redrawn from the next attempt's generator if it has no path."""
    voxel = voxel_size(params, per_diameter)
    for attempt in range(MAX_ATTEMPTS):
        ms = build_phases(params, lateral_um, voxel, rng_factory(attempt), model)
        try:
            tortuosity = geometric_tortuosity(ms.path_obstacle, periodic=True)
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
