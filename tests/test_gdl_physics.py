"""Physics and reproducibility checks of the generated GDL microstructures (datagen/gdl_microstructure.py).

Structures here use a small periodic 100 x 100 x 120 µm box at a 2 µm voxel so the file runs in about a minute;
the properties tested (exact tortuosity cases, solid volume kept under compression, monotonic trends, binder placement,
periodicity, determinism) do not depend on domain size. Full datasets are generated only under the `slow` marker.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy import stats

from cellmfg.domain import DATASETS, feature_columns
from datagen import gdl_microstructure as gdl
from datagen.gdl_microstructure import (
    BINDER,
    COLUMNS,
    DOMAINS,
    FIBER,
    MAX_TILT_DEG,
    PAPER_DOMAINS,
    VOXELS_PER_DIAMETER,
    GDLParams,
    build_microstructure,
    build_phases,
    generate_gdl,
    generate_row,
    geometric_tortuosity,
    sample_params,
)

BOX = (100.0, 100.0)
THICKNESS = 120.0
VOXEL_UM = 2.0


def _params(diameter: float = 8.0, fibers: float = 15.0, binder: float = 7.0, compression: float = 0.0) -> GDLParams:
    return GDLParams(fiber_diameter_um=diameter, fiber_concentration_pct=fibers, binder_concentration_pct=binder,
                     thickness_um=THICKNESS, compression_factor=compression)


def _axis_distances(ms: gdl.Microstructure) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force nearest and second-nearest fibre-segment distance of every voxel centre over the periodic images,
    independent of the generator's banded search (which only looks near each segment and wraps indices)."""
    nx, ny, nz = ms.phase.shape
    v = ms.voxel_um
    x, y, z = np.meshgrid((np.arange(nx) + 0.5) * v, (np.arange(ny) + 0.5) * v, (np.arange(nz) + 0.5) * v,
                          indexing="ij")
    centres = np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1)
    d1 = np.full(len(centres), np.inf)
    d2 = np.full(len(centres), np.inf)
    half = 0.5 * ms.fiber_length_um
    for point, direction in zip(ms.fiber_points, ms.fiber_directions, strict=True):
        dist = np.full(len(centres), np.inf)
        for sx in (-1, 0, 1):
            for sy in (-1, 0, 1):
                w = centres - (point + np.array([sx * nx * v, sy * ny * v, 0.0]))
                t = np.clip(w @ direction, -half, half)
                dist = np.minimum(dist, np.linalg.norm(w - np.outer(t, direction), axis=1))
        d2 = np.minimum(d2, np.maximum(d1, dist))
        d1 = np.minimum(d1, dist)
    return d1.reshape(ms.phase.shape), d2.reshape(ms.phase.shape)


# --- geometric tortuosity on hand-made structures -------------------------------------------------------------


def test_open_pore_space_has_tortuosity_exactly_one() -> None:
    assert geometric_tortuosity(np.zeros((6, 5, 9), dtype=bool)) == pytest.approx(1.0, abs=1e-12)


def _tilted_channel(theta_deg: float, height: int, width: float = 10.0) -> np.ndarray:
    """Solid block with one straight slab-shaped channel (open across y) tilted by theta from the z axis."""
    slope = math.tan(math.radians(theta_deg))
    nx = int(height * slope + width) + 4
    x = np.arange(nx)[:, None] + 0.5
    left = 1.0 + (np.arange(height)[None, :] + 0.5) * slope
    pore = (x >= left) & (x < left + width)
    return np.repeat(~pore[:, None, :], 3, axis=1)


def test_straight_channel_has_tortuosity_one() -> None:
    solid = np.ones((9, 9, 150), dtype=bool)
    solid[3:6, 2:5, :] = False
    assert geometric_tortuosity(solid) == pytest.approx(1.0, abs=1e-9)
    assert geometric_tortuosity(_tilted_channel(0.0, 200)) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("theta_deg", [5.0, 10.0, 20.0, 30.0])
def test_tilted_channel_gives_one_over_cos_theta(theta_deg: float) -> None:
    """A straight channel tilted by theta: the path per unit depth is exactly 1/cos(theta).

    A channel of finite width lets inlet points on its downstream side cut the corner to the outlet, so tau of one
    channel is a little below 1/cos(theta) by an amount that does not grow with the depth (here the exact value for
    the same inlet voxels is computed too). The per-depth slope between two depths removes that end effect and must
    be 1/cos(theta); tau itself must match the exact finite-width geodesic. Both within 0.5 %. The old 26-connected
    graph search gave 1.036 / 1.078 / 1.161 where the exact values are 1.004 / 1.017 / 1.071 (issue 23).
    """
    secant = 1.0 / math.cos(math.radians(theta_deg))
    depths = (300, 600)
    path = {h: geometric_tortuosity(_tilted_channel(theta_deg, h)) * h for h in depths}
    slope = (path[depths[1]] - path[depths[0]]) / (depths[1] - depths[0])
    assert slope == pytest.approx(secant, rel=0.005)
    # Exact geodesic of the continuous channel from each inlet voxel centre (z = 0.5) to the outlet face: the channel
    # is convex, so it is the straight segment to the nearest outlet point (+ the half voxel below the centre).
    height = depths[1]
    solid = _tilted_channel(theta_deg, height)
    slope_x = math.tan(math.radians(theta_deg))
    x0 = np.flatnonzero(~solid[:, 0, 0]) + 0.5
    exact = np.mean(np.hypot(height - 0.5, np.maximum(0.0, 1.0 + height * slope_x - x0)) + 0.5) / height
    assert path[height] / height == pytest.approx(exact, rel=0.005)


def _cylinder_row_extra(x0: float, gap_height: float, radius: float) -> float:
    """Exact extra length, over the straight vertical, of the geodesic from (x0, 0) to a far plane past a circle of
    `radius` centred at (0, gap_height): a tangent segment, an arc to the circle's side x = radius, then vertical."""
    x0 = abs(x0)
    if x0 >= radius:
        return 0.0
    centre_distance = math.hypot(x0, gap_height)
    tangent = math.sqrt(centre_distance**2 - radius**2)
    arc = radius * (-math.atan2(-gap_height, x0) - math.acos(radius / centre_distance))
    return tangent + arc - gap_height


def test_square_array_of_parallel_cylinders_matches_the_exact_geodesic() -> None:
    """Parallel cylinders (axes along y) on a square lattice of spacing a = 2d, one layer, path along z.

    Exactly derived reference (no published table matched this definition): an inlet point at lateral offset x0 from
    a cylinder axis with |x0| >= r goes straight; one with |x0| < r takes the taut string around the cylinder -- a
    tangent segment, an arc to the cylinder's side, then straight to the outlet (`_cylinder_row_extra`); tau is 1 plus
    the mean extra length over the inlet voxels, over the thickness. The cylinders are rasterised the way the
    generator rasterises fibres for the path search (`gdl.fiber_path_obstacle`), at 12 voxels per diameter.
    Fast marching overestimates the detour in the obstacle's shadow by a few per cent of the detour (measured
    +3 % here at d/12, +6 % at d/24, +0.4 % at d/6); tau - 1 must be within 10 % of exact, tau within 0.1 %.
    """
    per_diameter = 12
    radius = 0.5 * per_diameter
    spacing = 2 * per_diameter
    x = np.arange(spacing) + 0.5 - 0.5 * spacing
    z = np.arange(spacing) + 0.5
    axis_distance = np.hypot(x[:, None], z[None, :] - 0.5 * spacing)
    obstacle = gdl.fiber_path_obstacle(axis_distance, radius, 1.0)
    tau = geometric_tortuosity(np.repeat(obstacle[:, None, :], 2, axis=1), periodic=True)
    # Measured from the first voxel centre (z = 0.5), plus the half voxel, as geometric_tortuosity does.
    exact = 1.0 + np.mean([_cylinder_row_extra(x0, 0.5 * spacing - 0.5, radius) for x0 in x]) / spacing
    assert exact - 1.0 == pytest.approx(0.0111, abs=5e-4)  # the derived value itself, for the record
    assert tau - 1.0 == pytest.approx(exact - 1.0, rel=0.10)
    assert tau == pytest.approx(exact, rel=0.001)


def test_fibre_wall_is_centred_on_the_surface_so_tau_converges_with_the_voxel() -> None:
    # The same cylinder row at d/6 and d/12: with the wall centred, tau - 1 moves by well under 10 %; counting every
    # voxel whose centre is inside the cylinder as wall (the naive rule) moves it by far more.
    def tau(per_diameter: int, centred: bool) -> float:
        spacing = 2 * per_diameter
        x = np.arange(spacing) + 0.5 - 0.5 * spacing
        axis_distance = np.hypot(x[:, None], np.arange(spacing)[None, :] + 0.5 - 0.5 * spacing)
        radius = 0.5 * per_diameter
        obstacle = gdl.fiber_path_obstacle(axis_distance, radius, 1.0) if centred else axis_distance <= radius
        return geometric_tortuosity(np.repeat(obstacle[:, None, :], 2, axis=1), periodic=True)

    centred = (tau(6, True) - 1.0, tau(12, True) - 1.0)
    naive = (tau(6, False) - 1.0, tau(12, False) - 1.0)
    assert abs(centred[1] / centred[0] - 1.0) < 0.10, centred
    assert abs(naive[1] / naive[0] - 1.0) > 0.20, naive


def test_wall_with_one_hole_forces_the_detour() -> None:
    # A plate at mid-height open only at one corner: every other column must walk over to the hole and back.
    solid = np.zeros((21, 21, 20), dtype=bool)
    solid[:, :, 10] = True
    solid[0, 0, 10] = False
    tau = geometric_tortuosity(solid)
    assert tau > 1.3
    # One fewer obstacle voxel can only shorten paths.
    solid[1, 1, 10] = False
    assert geometric_tortuosity(solid) < tau


def test_periodic_sides_let_paths_cross_the_boundary() -> None:
    # A plate open only along the x = 0 face: with walls, columns near x = nx - 1 walk the whole width to the hole;
    # with periodic sides the hole is one step across the boundary for them.
    solid = np.zeros((20, 6, 16), dtype=bool)
    solid[:, :, 8] = True
    solid[0, :, 8] = False
    walled = geometric_tortuosity(solid)
    periodic = geometric_tortuosity(solid, periodic=True)
    assert periodic < walled - 0.05
    assert geometric_tortuosity(np.roll(solid, 7, axis=0), periodic=True) == pytest.approx(periodic, abs=1e-9)
    with pytest.raises(ValueError, match="3D"):
        geometric_tortuosity(solid[:, :, 0])


def test_blocked_layer_and_unconnected_pores_are_handled() -> None:
    solid = np.zeros((8, 8, 12), dtype=bool)
    solid[:, :, 6] = True
    with pytest.raises(ValueError, match="no connected pore path"):
        geometric_tortuosity(solid)
    # A sealed pocket touching the far face must not count: only the open column is averaged, so tau stays 1.
    solid = np.ones((8, 8, 12), dtype=bool)
    solid[2, 2, :] = False  # straight open channel
    solid[5, 5, 8:] = False  # dead-end pocket on the far face, not connected to the inlet
    assert geometric_tortuosity(solid) == pytest.approx(1.0, abs=1e-12)


# --- generated structures -------------------------------------------------------------------------------------


def test_tortuosity_at_least_one_on_generated_structures() -> None:
    for seed, params in enumerate([_params(6.0, 10.0, 5.0), _params(12.0, 25.0, 10.0, 0.4), _params(9.0, 18.0, 8.0)]):
        solid = build_microstructure(params, BOX, VOXEL_UM, np.random.default_rng(seed))
        tau = geometric_tortuosity(solid)
        # Fibres cover most through-plane lines of sight, so paths detour; at >= 70 % porosity the detours stay
        # short (the paper's GeoDict range is 1.03-1.17).
        assert 1.0 < tau < 1.4, (params, tau)


def test_tortuosity_rises_with_solid_fraction() -> None:
    def mean_tau(fibers: float, binder: float, compression: float) -> float:
        return float(np.mean([
            geometric_tortuosity(build_microstructure(_params(8.0, fibers, binder, compression), BOX, VOXEL_UM,
                                                      np.random.default_rng(100 + s)))
            for s in range(3)
        ]))

    sparse = mean_tau(10.0, 5.0, 0.0)  # ~11 % solid
    dense = mean_tau(25.0, 10.0, 0.4)  # ~28 % solid
    assert dense - sparse > 0.015, (sparse, dense)


def test_compression_densifies_the_layer_and_keeps_its_solid_volume() -> None:
    structures = {c: build_phases(_params(compression=c), BOX, VOXEL_UM, np.random.default_rng(7))
                  for c in (0.0, 0.2, 0.4)}
    solid_volume = {}
    for c, ms in structures.items():
        params = _params(compression=c)
        # The layer is (1 - c) as thick and holds the as-laid layer's solid: porosity falls as 1 - (1 - p0)/(1 - c).
        assert ms.phase.shape[2] == round(THICKNESS * (1 - c) / VOXEL_UM)
        assert params.target_porosity == pytest.approx(1 - (1 - _params().target_porosity) / (1 - c))
        assert ms.porosity == pytest.approx(params.target_porosity, abs=0.01)
        solid_volume[c] = np.count_nonzero(ms.solid) * VOXEL_UM**3
        # Inclinations: tan shrinks by (1 - c); centre heights sit inside the compressed layer.
        tilt = np.degrees(np.arcsin(np.abs(ms.fiber_directions[:, 2])))
        limit = np.degrees(math.atan(math.tan(math.radians(MAX_TILT_DEG)) * (1 - c)))
        assert tilt.max() <= limit + 1e-9 and tilt.max() > 0.5 * limit
        assert ms.fiber_points[:, 2].max() <= THICKNESS * (1 - c)
    # Solid volume is kept (to about one fibre segment), so the denser layer is not just a thinner cut.
    one_fibre = math.pi * 4.0**2 * max(BOX)
    for c in (0.2, 0.4):
        assert solid_volume[c] == pytest.approx(solid_volume[0.0], abs=one_fibre)
    assert structures[0.0].porosity > structures[0.2].porosity + 0.03 > structures[0.4].porosity + 0.06
    mean_tilt = [float(np.mean(np.abs(ms.fiber_directions[:, 2]))) for ms in structures.values()]
    assert mean_tilt[0] > mean_tilt[1] > mean_tilt[2]
    # The in-plane layout of the first fibres is the same draw: compression moves the layup, it does not re-draw it.
    first = min(len(ms.fiber_points) for ms in structures.values())
    base = structures[0.0]
    for c, ms in structures.items():
        np.testing.assert_allclose(ms.fiber_points[:first, :2], base.fiber_points[:first, :2])
        np.testing.assert_allclose(ms.fiber_points[:first, 2], base.fiber_points[:first, 2] * (1 - c))


def test_compression_raises_tortuosity() -> None:
    def mean_tau(compression: float) -> float:
        return float(np.mean([
            geometric_tortuosity(build_phases(_params(8.0, 20.0, 8.0, compression), BOX, VOXEL_UM,
                                              np.random.default_rng(200 + s)).path_obstacle, periodic=True)
            for s in range(3)
        ]))

    assert mean_tau(0.45) > mean_tau(0.0) + 0.01


def test_porosity_of_the_as_laid_layer_is_in_the_real_gdl_band() -> None:
    # Corners of the paper's input box, uncompressed: densest (25 % fibre, 10 % binder share) and sparsest (10 %, 5 %).
    assert _params(fibers=25.0, binder=10.0).target_porosity == pytest.approx(1 - 0.25 / 0.9)
    assert 0.70 < _params(fibers=25.0, binder=10.0).target_porosity < _params(fibers=10.0, binder=5.0).target_porosity
    assert _params(fibers=10.0, binder=5.0).target_porosity < 0.90
    # Compressed by half, the densest corner keeps 44 % porosity: still an open, connected layer.
    assert _params(fibers=25.0, binder=10.0, compression=0.5).target_porosity == pytest.approx(1 - 0.5 / 0.9)
    with pytest.raises(ValueError, match="porosity"):
        build_phases(_params(fibers=60.0, binder=10.0, compression=0.5), BOX, VOXEL_UM, np.random.default_rng(0))


def test_solid_fraction_matches_fibre_plus_binder_target() -> None:
    params = _params(diameter=8.0, fibers=20.0, binder=8.0)
    ms = build_phases(params, BOX, VOXEL_UM, np.random.default_rng(11))
    n = ms.phase.size
    # Fibres are added until the voxel fraction passes the target and the last one is kept only if that lands
    # closer, so the error is at most half of one fibre segment (as long as the box) of 8 µm fibre.
    one_fibre = math.pi * 4.0**2 * max(BOX) / (BOX[0] * BOX[1] * THICKNESS)
    assert np.mean(ms.phase == FIBER) == pytest.approx(0.20, abs=0.5 * one_fibre)
    # Binder is its share of the solid, B = F·b/(1 − b), placed voxel by voxel: exact up to one voxel.
    binder_fraction = 0.20 * 0.08 / 0.92
    assert params.binder_volume_fraction == pytest.approx(binder_fraction)
    assert abs(np.count_nonzero(ms.phase == BINDER) - round(binder_fraction * n)) <= 1
    assert np.mean(ms.solid) == pytest.approx(0.20 + binder_fraction, abs=0.5 * one_fibre + 1 / n)


def test_fibre_phase_is_the_rasterised_axes_and_binder_sits_at_contacts() -> None:
    ms = build_phases(_params(diameter=8.0, fibers=15.0, binder=9.0), BOX, VOXEL_UM, np.random.default_rng(3))
    d1, d2 = _axis_distances(ms)
    radius = 4.0
    # The banded search must find exactly the voxels within one radius of some axis (ties at r aside).
    mismatch = (ms.phase == FIBER) != (d1 <= radius)
    assert not np.any(mismatch & (np.abs(d1 - radius) > 1e-9))
    assert ms.binder_fallback_voxels == 0

    binder = ms.phase == BINDER
    # A plain coating would fill every non-fibre voxel up to some distance from the nearest fibre. Compared with all
    # non-fibre voxels in that same distance range, a coating scores exactly 1 on both checks below; binder placed at
    # contacts takes only the part of the range that is also close to a second fibre.
    near = (ms.phase != FIBER) & (d1 <= d1[binder].max())
    assert np.median(d2[binder]) < 0.8 * np.median(d2[near]), (np.median(d2[binder]), np.median(d2[near]))
    assert np.count_nonzero(binder) < 0.5 * np.count_nonzero(near)
    # And binder still touches fibres: (almost) every binder voxel is within three voxels of a fibre surface.
    assert np.mean(d1[binder] <= radius + 3 * VOXEL_UM) > 0.95


def test_path_walls_are_centred_on_the_fibre_and_binder_surfaces() -> None:
    ms = build_phases(_params(diameter=8.0, fibers=20.0, binder=9.0), BOX, VOXEL_UM, np.random.default_rng(5))
    d1, _ = _axis_distances(ms)
    # Only solid voxels block paths, and every fibre voxel deeper than half a voxel inside a fibre does.
    assert not np.any(ms.path_obstacle & ~ms.solid)
    deep_fibre = (ms.phase == FIBER) & (d1 <= 4.0 - 0.5 * VOXEL_UM - 1e-9)
    assert np.all(ms.path_obstacle[deep_fibre])
    # The surface shell of fibre and binder is passable: a real share of the solid voxels, not all of it.
    shell = ms.solid & ~ms.path_obstacle
    assert 0.1 < np.count_nonzero(shell) / np.count_nonzero(ms.solid) < 0.7
    assert np.any(shell & (ms.phase == BINDER)) and np.any(ms.path_obstacle & (ms.phase == BINDER))


# --- determinism and the dataset API --------------------------------------------------------------------------


def test_same_seed_same_structure_different_seed_different_structure() -> None:
    params = _params()
    first = build_microstructure(params, BOX, VOXEL_UM, np.random.default_rng(42))
    again = build_microstructure(params, BOX, VOXEL_UM, np.random.default_rng(42))
    other = build_microstructure(params, BOX, VOXEL_UM, np.random.default_rng(43))
    assert first.dtype == bool and first.shape == (50, 50, 60)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_rows_are_reproducible_independent_and_well_formed() -> None:
    row = generate_row("gdl200", 3, 7)
    assert list(row) == list(COLUMNS)
    assert row["sample_id"] == "gdl200-0007"
    assert row == generate_row("gdl200", 3, 7)  # byte-identical floats, not approximately equal
    assert row != generate_row("gdl200", 4, 7)
    tau = row["tortuosity"]
    assert isinstance(tau, float) and tau >= 1.0 and round(tau, 6) == tau
    for column, (lo, hi) in DATASETS["gdl200"].ranges.items():
        assert lo <= float(row[column]) <= hi


def test_generate_gdl_matches_single_rows_in_any_process_layout() -> None:
    calls: list[int] = []
    frame = generate_gdl("gdl200", 3, rows=[7, 2], processes=2, progress=calls.append)
    assert list(frame.columns) == list(COLUMNS)
    assert list(frame["sample_id"]) == ["gdl200-0007", "gdl200-0002"]
    assert sum(calls) == 2
    assert frame.iloc[0].to_dict() == generate_row("gdl200", 3, 7)


def test_inputs_are_uniform_in_the_paper_ranges() -> None:
    assert [f.name for f in dataclasses.fields(GDLParams)] == feature_columns("gdl")
    for dataset in ("gdl200", "gdl1000"):
        draws = [sample_params(dataset, 0, row) for row in range(300)]
        assert sample_params(dataset, 0, 5) == draws[5]
        for column, (lo, hi) in DATASETS[dataset].ranges.items():
            values = np.array([getattr(p, column) for p in draws])
            assert np.all((values >= lo) & (values <= hi))
            assert np.all(np.round(values, 3) == values)
            assert stats.kstest(values, stats.uniform(lo, hi - lo).cdf).pvalue > 1e-3, (dataset, column)
    assert sample_params("gdl200", 0, 1) != sample_params("gdl1000", 0, 1)


def test_domains_are_the_papers_footprints_scaled_alike() -> None:
    # Both sets keep the paper's shapes (a 10:1 strip and a square) at the same scale, so they differ as the paper's do.
    assert PAPER_DOMAINS == {"gdl200": (2000.0, 200.0), "gdl1000": (1000.0, 1000.0)}
    for name, (x, y) in PAPER_DOMAINS.items():
        assert DOMAINS[name] == pytest.approx((gdl.FOOTPRINT_SCALE * x, gdl.FOOTPRINT_SCALE * y))
    area = {name: x * y for name, (x, y) in DOMAINS.items()}
    assert area["gdl200"] / area["gdl1000"] == pytest.approx(0.4)
    for diameter in (6.0, 9.0, 12.0):
        params = _params(diameter=diameter)
        voxel = gdl.voxel_size(params)
        # An open layer (porosity 0.77): every fibre resolved alike, at the coarsest resolution.
        assert voxel == pytest.approx(diameter / VOXELS_PER_DIAMETER)
        for x, y in DOMAINS.values():
            assert gdl._grid_shape((x, y), 100.0, voxel)[0] * voxel == pytest.approx(x, abs=voxel)
    from datagen.card import gdl_section

    card = gdl_section()
    assert "2000 × 200" in card and f"d/{VOXELS_PER_DIAMETER}" in card and "periodic" in card


@pytest.mark.slow
def test_dataset_tortuosity_is_in_range_and_follows_porosity() -> None:
    frame = generate_gdl("gdl200", 0, rows=range(60))
    tau = frame["tortuosity"]
    assert tau.min() >= 1.0
    assert 1.005 < tau.mean() < 1.05  # shipped gdl200: mean 1.011 (data card)
    assert stats.spearmanr(frame["porosity"], tau).statistic < -0.8


def test_disconnected_structure_is_redrawn_deterministically(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(DOMAINS, "gdl200", (40.0, 40.0))  # small box: only the retry logic is under test
    real = gdl.geometric_tortuosity
    measured: list[float] = []

    def first_attempt_blocked(solid: np.ndarray, periodic: bool = False) -> float:
        if not measured:
            measured.append(math.nan)
            raise ValueError("no connected pore path")
        measured.append(real(solid, periodic))
        return measured[-1]

    monkeypatch.setattr(gdl, "geometric_tortuosity", first_attempt_blocked)
    redrawn = generate_row("gdl200", 0, 5)
    assert redrawn["tortuosity"] == round(measured[1], 6)
    # The redraw keeps the row's inputs (the uniform design stays uniform) and is itself reproducible.
    assert {k: v for k, v in redrawn.items() if k not in ("tortuosity", "porosity")} == {
        "sample_id": "gdl200-0005", **dataclasses.asdict(sample_params("gdl200", 0, 5))}
    monkeypatch.setattr(gdl, "geometric_tortuosity", real)
    assert generate_row("gdl200", 0, 5) != redrawn  # attempt 0 is a different structure

    def never_connected(solid: np.ndarray, periodic: bool = False) -> float:
        raise ValueError("no connected pore path")

    monkeypatch.setattr(gdl, "geometric_tortuosity", never_connected)
    with pytest.raises(RuntimeError, match="no connected pore path"):
        generate_row("gdl200", 0, 5)


# --- the off-default GeoDict-style binder (issue 23 evidence, not shipped) -------------------------------------


def test_domain_binder_basis_takes_the_binder_percentage_of_the_layer_volume() -> None:
    params = _params(diameter=8.0, fibers=20.0, binder=8.0, compression=0.3)
    model = gdl.StructureModel(binder_basis="domain")
    assert gdl.binder_volume_fraction(params, model) == pytest.approx(0.08)
    assert gdl.binder_volume_fraction(params) == pytest.approx(params.binder_volume_fraction)
    ms = build_phases(params, BOX, VOXEL_UM, np.random.default_rng(11), model)
    # Placed voxel by voxel in the compressed grid: 8 % of it, up to one voxel.
    assert abs(np.count_nonzero(ms.phase == BINDER) - round(0.08 * ms.phase.size)) <= 1
    shipped = build_phases(params, BOX, VOXEL_UM, np.random.default_rng(11))
    assert np.count_nonzero(ms.phase == BINDER) > 2 * np.count_nonzero(shipped.phase == BINDER)


def test_thin_binder_films_block_but_thick_binder_keeps_centred_walls() -> None:
    shape = (6, 6, 12)
    binder = np.zeros(shape, dtype=bool)
    depth = np.full(shape, -np.inf)
    binder[:, :, 2] = True  # a one-voxel film, its centres only 0.2 voxel inside: no core voxel
    depth[:, :, 2] = 0.2
    binder[:, :, 5:7] = True  # a two-voxel film: the deeper layer must block
    depth[:, :, 5], depth[:, :, 6] = 0.1, 0.3
    binder[:, :, 8:12] = True  # a thick slab from z = 8 to the top face, centred depths 0.5, 1.5, 2.5, 3.5 voxels
    depth[:, :, 8:12] = np.arange(4) + 0.5
    depth[:, :, 8:12] = depth[:, :, 8:12][:, :, ::-1]
    core = depth >= 0.5
    film = gdl.thin_binder_films(binder, core, depth)
    assert film[:, :, 2].all() and film[:, :, 6].all()
    assert not film[:, :, 5].any() and not film[:, :, 8:].any() and not film[~binder].any()
    # With the films blocking, no pore path crosses the layer; with centred walls alone it leaks straight through.
    obstacle = core | film
    obstacle[:, :, 8:] = False  # open the slab so only the films stand in the way
    with pytest.raises(ValueError, match="no connected pore path"):
        geometric_tortuosity(obstacle, periodic=True)
    leaky = core.copy()
    leaky[:, :, 8:] = False
    assert geometric_tortuosity(leaky, periodic=True) == pytest.approx(1.0)


def test_blocking_films_raise_tortuosity_of_the_same_structure() -> None:
    params = _params(diameter=8.0, fibers=22.0, binder=9.0, compression=0.3)
    domain = gdl.StructureModel(binder_basis="domain")
    taus = {}
    for name, model in (("domain", domain), ("films", gdl.GEODICT_BINDER_MODEL)):
        ms = build_phases(params, BOX, VOXEL_UM, np.random.default_rng(4), model)
        taus[name] = geometric_tortuosity(ms.path_obstacle, periodic=True)
        assert np.count_nonzero(ms.phase == BINDER) == round(0.09 * ms.phase.size)
    assert taus["films"] > taus["domain"] >= 1.0


def test_dense_layers_get_voxels_fine_enough_for_their_pores() -> None:
    # The mean pore chord d·ε/(1 − ε) must span MIN_VOXELS_PER_PORE_CHORD voxels; open layers stay at d/3.
    open_layer = _params(fibers=15.0, binder=7.0, compression=0.0)
    assert gdl.voxels_per_diameter(open_layer) == VOXELS_PER_DIAMETER
    for fibers, binder, compression in ((25.0, 10.0, 0.45), (22.0, 9.0, 0.40), (20.0, 8.0, 0.35)):
        params = _params(fibers=fibers, binder=binder, compression=compression)
        k = gdl.voxels_per_diameter(params)
        chord = params.target_porosity / (1.0 - params.target_porosity)
        assert k * chord >= gdl.MIN_VOXELS_PER_PORE_CHORD - 1e-9
        assert (k - 1) * chord < gdl.MIN_VOXELS_PER_PORE_CHORD or k == VOXELS_PER_DIAMETER  # no finer than needed
    densest = _params(fibers=25.0, binder=10.0, compression=0.5)
    assert gdl.voxels_per_diameter(densest) > VOXELS_PER_DIAMETER
    assert gdl.voxel_size(densest) == pytest.approx(densest.fiber_diameter_um / gdl.voxels_per_diameter(densest))
    assert gdl.voxel_size(densest, 6) == pytest.approx(densest.fiber_diameter_um / 6)
