"""The numeric core on arrays with known answers: skin profile, blend weights, noise."""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scipy import ndimage as ndi

from refacebids.core.geometry import (
    apply_affine_float32, bounding_box, distance_mm, other_grid_index, resample_aligned, to_ants, working_grid,
)
from refacebids.core.intensity import (
    SKIN_PROFILE_MM, bordering_level, fit_skin_profile, skin_profile_weight, typical_level,
)
from refacebids.core.noise import (
    NoiseModel, add_noise, dark_patch_share, dark_patches, feather, gaussian_field, local_noise_sd,
    mean_run_length, patch_widths, soften_structure, value_spread,
)
from refacebids.core import warp
from refacebids.core.replace import (
    BLEND_MM, COINCIDENT_SKIN_TOLERANCE, RAISE_FADE_MM, SKIN_OFFSET_MM, clearing_skin_offset, edge_weight,
    field_of_view_depth, field_of_view_room, signed_skin_distance,
)
from refacebids.templates import load_template
from refacebids.core.surface import _fill_holes_every_axis, head_mask
from refacebids.utils.threads import in_parallel, in_slabs

from .conftest import T1W_A

ZOOMS = (1.0, 1.0, 1.0)


def _ball_with_skin(radius_mm: float = 40.0, sigma: float = 5.0, seed: int = 0):
    """A 1 mm ball whose intensity depends on depth: skin 2 mm, fat 4 mm, dark bone."""
    grid = np.indices((100, 100, 100), dtype=np.float32) - 49.5
    depth = radius_mm - np.sqrt((grid**2).sum(axis=0))  # mm, positive inside
    clean = np.select([depth < 0, depth < 2, depth < 6], [0.0, 300.0, 500.0], 80.0).astype(np.float32)
    noisy = clean + np.random.default_rng(seed).normal(0, sigma, clean.shape).astype(np.float32)
    return noisy, depth


def test_skin_profile_recovers_the_layers_under_the_skin():
    volume, depth = _ball_with_skin()
    signed = signed_skin_distance(head_mask(volume, ZOOMS, threshold=150.0), ZOOMS)
    near = (signed >= SKIN_PROFILE_MM[0]) & (signed < SKIN_PROFILE_MM[1])
    distances, levels = fit_skin_profile(volume[near], signed[near])
    assert np.all(np.diff(distances) > 0)
    level_at = lambda mm: float(np.interp(mm, distances, levels))  # noqa: E731
    assert level_at(3.0) == pytest.approx(0.0, abs=15)  # air outside
    assert level_at(-1.0) == pytest.approx(300.0, abs=60)  # skin
    assert level_at(-4.0) == pytest.approx(500.0, abs=30)  # fat
    assert level_at(-7.5) < 200.0  # bone


def test_skin_profile_weight_fades_into_the_mapped_tissue():
    weight = skin_profile_weight(np.array([-20.0, SKIN_PROFILE_MM[0], -6.5, -2.0, 3.0, np.inf]))
    np.testing.assert_allclose(weight, [0.0, 0.0, 0.5, 1.0, 1.0, 1.0])


def test_edge_weight_blends_only_where_the_new_face_joins_kept_skin():
    """A slab replaced between a kept skin layer (join) and kept brain (no join)."""
    shape = (80, 10, 10)
    replaced = np.zeros(shape, bool)
    replaced[20:60] = True
    joins = np.zeros(shape, bool)
    joins[:20] = True  # kept skin before the slab; kept brain after it is no join
    weight = edge_weight(replaced, joins, np.eye(4))
    profile = weight[:, 5, 5]
    assert profile[19] == 1.0 and profile[20] == pytest.approx(1.0 - 1.0 / BLEND_MM)
    assert profile[20 + int(BLEND_MM)] == 0.0
    assert np.all(np.diff(profile[20:40]) <= 0) and np.all(np.diff(profile[20:20 + int(BLEND_MM)]) < 0)
    assert profile[59] == 0.0  # against the brain: the head-affine placement, no blend
    raise_fade = edge_weight(replaced, joins, np.eye(4), RAISE_FADE_MM)[:, 5, 5]
    assert raise_fade[20 + int(BLEND_MM)] == pytest.approx(1.0 - (1.0 + BLEND_MM) / RAISE_FADE_MM)
    assert raise_fade[20 + int(RAISE_FADE_MM)] == 0.0


def test_no_join_means_head_affine_placement_everywhere():
    replaced = np.ones((10, 10, 10), bool)
    assert not edge_weight(replaced, np.zeros_like(replaced), np.eye(4)).any()


@pytest.mark.parametrize("kind", ["gaussian", "rician"])
def test_noise_amplitude_follows_the_roughness_share(kind):
    """Share 0 draws the scanner's noise only; share 1 the tissue's roughness."""
    model = NoiseModel(sigma=4.0, kind=kind, correlation_voxels=(0.0, 0.0, 0.0), tissue_roughness=20.0)
    signal = np.full((40, 40, 40), 500.0, np.float32)
    everywhere = np.ones(signal.shape, bool)
    rng = np.random.default_rng(3)
    smooth = add_noise(signal, model, rng, np.zeros(signal.shape, np.float32))
    rough = add_noise(signal, model, rng, np.ones(signal.shape, np.float32))
    assert float(np.std(smooth)) == pytest.approx(4.0, rel=0.1)
    assert local_noise_sd(rough, everywhere) == pytest.approx(20.0, rel=0.1)


def _blocky_anatomy(shape=(42, 42, 42), contrast=60.0, block=2, seed=5) -> np.ndarray:
    """(I, J, K) noise-free 'anatomy': cubes of ``block`` voxels at 500 +- ``contrast``."""
    blocks = np.random.default_rng(seed).choice([-1.0, 1.0], size=tuple(n // block for n in shape))
    return (500.0 + contrast * np.kron(blocks, np.ones((block,) * 3))).astype(np.float32)


def test_noise_is_calibrated_to_the_roughness_including_the_drawn_structure():
    """Anatomy with roughness of its own gets only the noise that brings it to the target.

    Adding the anatomy's roughness and the noise's in quadrature overshoots on a mix of
    edges and flat tissue (here half of each): the calibrated result lands on the target.
    """
    model = NoiseModel(sigma=2.0, kind="gaussian", correlation_voxels=(0.0, 0.0, 0.0), tissue_roughness=40.0)
    signal = _blocky_anatomy()
    signal[:20] = 500.0  # flat padding in one half, edges in the other
    region = np.zeros(signal.shape, bool)
    region[2:-2, 2:-2, 2:-2] = True
    share = np.ones(signal.shape, np.float32)
    calibrated = add_noise(signal, model, np.random.default_rng(1), share, region)
    assert local_noise_sd(calibrated, region) == pytest.approx(40.0, rel=0.03)
    structure = local_noise_sd(signal, region)
    quadrature = NoiseModel(2.0, "gaussian", (0.0, 0.0, 0.0), float(np.sqrt(40.0**2 - structure**2)))
    uncalibrated = add_noise(signal, quadrature, np.random.default_rng(1), share)
    assert local_noise_sd(uncalibrated, region) > 1.1 * 40.0


def test_anatomy_rougher_than_the_tissue_gets_the_air_noise_only_and_is_softened():
    model = NoiseModel(sigma=2.0, kind="gaussian", correlation_voxels=(0.0, 0.0, 0.0), tissue_roughness=15.0)
    signal = _blocky_anatomy(contrast=30.0, block=3)
    region = np.zeros(signal.shape, bool)
    region[2:-2, 2:-2, 2:-2] = True
    share = np.ones(signal.shape, np.float32)
    assert local_noise_sd(signal, region) > 1.9 * 15.0
    softened = soften_structure(signal, region, 15.0, share)
    assert local_noise_sd(softened, region) == pytest.approx(15.0, rel=0.2)
    assert float(np.mean(softened[region])) == pytest.approx(float(np.mean(signal[region])), rel=0.01)
    untouched = soften_structure(signal, region, 15.0, np.zeros(signal.shape, np.float32))
    np.testing.assert_array_equal(untouched, signal)  # share 0: the new skin keeps its profile
    assert np.array_equal(soften_structure(signal, region, 200.0, share), signal)  # smooth enough already
    rough = add_noise(signal, model, np.random.default_rng(2), share, region)
    assert float(np.std(rough - signal)) == pytest.approx(2.0, rel=0.1)


def test_slabs_of_a_local_function_give_its_whole_array_result():
    volume = np.random.default_rng(8).normal(size=(41, 20, 15)).astype(np.float32)
    whole = ndi.gaussian_filter(volume, 2.0)  # reaches int(4 * 2 + 0.5) = 8 voxels
    np.testing.assert_array_equal(in_slabs(3, ndi.gaussian_filter, volume, reach=8, sigma=2.0), whole)
    assert not np.allclose(in_slabs(3, ndi.gaussian_filter, volume, reach=3, sigma=2.0), whole, atol=1e-3)
    np.testing.assert_array_equal(in_slabs(1, ndi.gaussian_filter, volume, reach=3, sigma=2.0), whole)


def test_anatomy_is_softened_alike_in_slabs():
    signal = np.tile(_blocky_anatomy(contrast=30.0, block=3), (3, 1, 1))  # long enough for two slabs
    region = np.zeros(signal.shape, bool)
    region[2:-2, 2:-2, 2:-2] = True
    share = np.ones(signal.shape, np.float32)
    whole = soften_structure(signal, region, 15.0, share)
    assert not np.allclose(whole, signal)
    # Box filters sum along their lines, so slabs may round differently: by float32 ulps.
    np.testing.assert_allclose(soften_structure(signal, region, 15.0, share, threads=2), whole, rtol=1e-5, atol=1e-4)


def test_feathering_keeps_the_noise_level_across_the_seam():
    """Half-way between two independent noises of SD 10 the blend still has SD 10 (not 7.1)."""
    rng = np.random.default_rng(4)
    original = 100.0 + 10.0 * rng.standard_normal(200_000)
    signal = np.full(200_000, 300.0)
    noisy = signal + 10.0 * rng.standard_normal(200_000)
    for weight in (0.0, 0.3, 0.5, 1.0):
        blended = feather(original, signal, noisy, np.full(200_000, weight))
        assert float(np.mean(blended)) == pytest.approx(100.0 + weight * 200.0, abs=0.2)
        assert float(np.std(blended)) == pytest.approx(10.0, rel=0.02)


def test_typical_level_takes_the_rician_bias_out():
    rng = np.random.default_rng(6)
    floor = 10.0 * np.sqrt(2.0 * np.log(2.0))  # median of Rayleigh(10)

    def rician(level):
        return np.hypot(level + 10.0 * rng.standard_normal(100_000), 10.0 * rng.standard_normal(100_000))

    assert typical_level(rician(0.0), noise_floor=floor) == pytest.approx(0.0, abs=1.0)
    assert typical_level(rician(260.0), noise_floor=floor) == pytest.approx(260.0, rel=0.01)
    assert typical_level(np.array([1.0, 260.0, 500.0])) == 260.0


def test_value_spread_is_the_sd_of_gaussian_values_and_ignores_outliers():
    np.testing.assert_allclose(value_spread(np.array([1.0, 2.0, 3.0, 4.0, 100.0])), 1.4826)
    values = 500.0 + 30.0 * np.random.default_rng(7).standard_normal(100_000)
    assert value_spread(values) == pytest.approx(30.0, rel=0.02)


def test_bordering_level_is_what_the_tissue_edges_meet_below_its_level():
    """A bright cube in air at 0 whose faces meet brighter tissue, but for one that meets 100."""
    volume = np.zeros((30, 30, 30), np.float32)
    volume[9:21, 9:21, 9:21] = 900.0  # not darker than the tissue level: not counted
    volume[9:21, 9:21, 20] = 100.0
    volume[10:20, 10:20, 10:20] = 800.0
    tissue = volume == 800.0
    assert bordering_level(volume, tissue, 400.0) == 100.0
    volume[12:18, 12:18, 12:18] = 0.0  # dark voxels within the tissue are none of its neighbours
    assert bordering_level(volume, tissue, 400.0) == 100.0
    floor = 30.0
    assert bordering_level(volume, tissue, 400.0, noise_floor=floor) == pytest.approx(np.sqrt(100.0**2 - floor**2))
    volume[9:21, 9:21, 20] = 900.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no median of nothing
        assert np.isnan(bordering_level(volume, tissue, 400.0))  # nothing darker borders it


def test_mean_run_length_is_the_thickness_of_slabs_across_them():
    mask = np.zeros((20, 10, 12), bool)
    mask[2:5] = True
    mask[8:11] = True
    np.testing.assert_allclose(mean_run_length(mask), [3.0, 10.0, 12.0])
    mask[8:11, :, 6] = False  # one slab cut in two along the last axis
    np.testing.assert_allclose(mean_run_length(mask)[2], (12 * 10 * 3 + 11 * 10 * 3) / (10 * 3 + 2 * 10 * 3))


def test_gaussian_field_has_unit_sd_and_the_neighbour_correlation_of_its_width():
    """White noise smoothed by a Gaussian of width s: neighbours correlate by exp(-1 / (4 s**2))."""
    field = gaussian_field((64, 64, 64), (1.5, 0.0, 3.0), np.random.default_rng(8))
    assert field.dtype == np.float32 and float(field.std()) == pytest.approx(1.0, rel=1e-3)
    for axis, width in ((0, 1.5), (2, 3.0)):
        a, b = np.moveaxis(field, axis, 0)[:-1], np.moveaxis(field, axis, 0)[1:]
        assert float(np.corrcoef(a.ravel(), b.ravel())[0, 1]) == pytest.approx(np.exp(-1.0 / (4 * width**2)), abs=0.02)
    assert abs(float(np.corrcoef(field[:, :-1].ravel(), field[:, 1:].ravel())[0, 1])) < 0.02  # white along axis 1


@pytest.mark.parametrize("share", [0.3, 0.5, 0.7])
def test_dark_patches_have_the_share_and_the_bright_runs_asked_for(share):
    """Rice's formula: the bright tissue between the patches comes in runs of the given length."""
    runs = np.array([4.0, 6.0, 9.0])
    weight = np.ones((96, 96, 96), np.float32)
    dark = dark_patches(weight, runs, share, np.random.default_rng(9))
    assert float(dark.mean()) == pytest.approx(share, abs=0.03)
    np.testing.assert_allclose(mean_run_length(~dark), runs, rtol=0.1)
    np.testing.assert_allclose(patch_widths(runs, 0.5), runs / (np.pi * np.sqrt(2.0)))


def test_dark_patches_thin_out_with_their_weight():
    weight = np.zeros((64, 64, 64), np.float32)
    weight[:, :, 32:] = 0.5
    weight[:, :, 48:] = 1.0
    dark = dark_patches(weight, (5.0, 5.0, 5.0), 0.6, np.random.default_rng(10))
    assert not dark[:, :, :32].any()
    assert float(dark[:, :, 32:48].mean()) == pytest.approx(0.3, abs=0.05)
    assert float(dark[:, :, 48:].mean()) == pytest.approx(0.6, abs=0.05)
    assert not dark_patches(np.zeros((8, 8, 8), np.float32), (5.0, 5.0, 5.0), 0.6, np.random.default_rng(0)).any()


def _patchy_roughness(share, model, amplitude, seed):
    """Roughness of the bright voxels of flat tissue (800) with dark patches (50), re-measured."""
    weight = np.ones((64, 64, 64), np.float32)
    bright = ~dark_patches(weight, (5.0, 5.0, 5.0), share, np.random.default_rng(seed))
    tissue = np.where(bright, np.float32(800.0), np.float32(50.0))
    noisy = add_noise(tissue, model, np.random.default_rng(seed + 1), bright.astype(np.float32), amplitude=amplitude)
    inside = np.zeros(bright.shape, bool)
    inside[1:-1, 1:-1, 1:-1] = True
    return local_noise_sd(noisy, inside & bright)


@pytest.mark.parametrize("kind", ["gaussian", "rician"])
def test_dark_patch_share_gives_flat_tissue_the_roughness_its_noise_cannot(kind):
    """Noise of SD 40 gives flat tissue a roughness of 40; the patches make up the rest."""
    amplitude = 40.0
    half = _patchy_roughness(0.5, NoiseModel(10.0, kind, (0.0, 0.0, 0.0), 0.0), amplitude, seed=11)
    assert half > 2 * amplitude
    model = NoiseModel(sigma=10.0, kind=kind, correlation_voxels=(0.0, 0.0, 0.0), tissue_roughness=half)
    share = dark_patch_share(800.0, 50.0, (5.0, 5.0, 5.0), amplitude, model, np.random.default_rng(12))
    assert share == pytest.approx(0.5, abs=0.05)
    smoother = dataclasses.replace(model, tissue_roughness=0.8 * half)
    assert dark_patch_share(800.0, 50.0, (5.0, 5.0, 5.0), amplitude, smoother, np.random.default_rng(12)) < share - 0.1
    as_noise = dataclasses.replace(model, tissue_roughness=amplitude)
    assert dark_patch_share(800.0, 50.0, (5.0, 5.0, 5.0), amplitude, as_noise, np.random.default_rng(12)) < 0.05


def test_noise_of_a_given_amplitude_is_not_calibrated():
    model = NoiseModel(sigma=4.0, kind="gaussian", correlation_voxels=(0.0, 0.0, 0.0), tissue_roughness=200.0)
    signal = np.full((40, 40, 40), 500.0, np.float32)
    share = np.ones(signal.shape, np.float32)
    share[:20] = 0.0
    noisy = add_noise(signal, model, np.random.default_rng(13), share, share > 0, amplitude=25.0)
    assert float(np.std(noisy[20:])) == pytest.approx(25.0, rel=0.03)
    assert float(np.std(noisy[:20])) == pytest.approx(4.0, rel=0.03)


def test_field_of_view_depth_is_the_distance_to_the_nearest_face_of_the_grid():
    voxels = np.array([[0, 5, 5], [9, 5, 5], [4, 4, 4], [2, 7, 3]])
    depth = field_of_view_depth(tuple(voxels.T), (10, 10, 10), (1.0, 2.0, 0.5))
    np.testing.assert_allclose(depth, [0.0, 0.0, 2.0, 1.5])


def test_field_of_view_room_is_measured_along_the_direction_to_the_grid_edge():
    """A brow just under an edge that cuts the forehead has the room of the face in front of it."""
    voxels = np.array([[5, 5, 1], [5, 5, 1], [5, 5, 1], [2, 7, 3]])
    outward = np.array([[0.0, -3.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, -1.0], [0.0, 0.0, 0.0]])
    room = field_of_view_room(tuple(voxels.T), (10, 10, 10), (1.0, 2.0, 0.5), outward)
    # 5 voxels of 2 mm ahead; 8 of 0.5 mm; the nearer edge across the diagonal: 1 voxel of
    # 0.5 mm at 45 degrees; no direction: the nearest edge.
    np.testing.assert_allclose(room, [10.0, 4.0, 0.5 * np.sqrt(2.0), 1.5], rtol=1e-6)
    assert np.all(room >= field_of_view_depth(tuple(voxels.T), (10, 10, 10), (1.0, 2.0, 0.5)))


def test_the_raise_grows_only_until_the_new_skin_clears_the_subjects_face():
    rng = np.random.default_rng(8)
    cheeks = rng.uniform(-4.0, 5.0, 8_000)  # near the placed template's skin
    brow = rng.uniform(8.0, 11.0, 2_000)  # stands out by about the raise
    full, room = np.ones(10_000), np.full(10_000, 50.0)
    clearance = 2.2

    def coincident(protrusion, offset):
        return np.mean(np.abs(protrusion - offset) < clearance)

    assert clearing_skin_offset(cheeks, full[:8_000], room[:8_000], clearance) == SKIN_OFFSET_MM
    face = np.concatenate([cheeks, brow])
    offset = clearing_skin_offset(face, full, room, clearance)
    assert coincident(face, SKIN_OFFSET_MM) > 0.1
    assert coincident(face, offset) <= COINCIDENT_SKIN_TOLERANCE < coincident(face, offset - 0.5)
    # Where the raise fades out (joins) or the field of view caps it, no raise clears the
    # skin: that skin does not make the face any fuller.
    assert clearing_skin_offset(face, np.where(face > 8.0, 0.2, 1.0), room, clearance) == SKIN_OFFSET_MM
    assert clearing_skin_offset(face, full, np.where(face > 8.0, 9.0, 50.0), clearance) == SKIN_OFFSET_MM
    # A nose standing out beyond the raised skin is moved as it is.
    assert clearing_skin_offset(np.concatenate([cheeks, brow + 10.0]), full, room, clearance) == SKIN_OFFSET_MM


def test_labels_placed_by_an_affine_alone_are_the_template_tissue_labels_moved_by_it():
    template = load_template()
    dseg_img = nib.load(template.dseg)
    dseg = np.asanyarray(dseg_img.dataobj)
    tissue = np.where(warp.is_label(dseg, warp.TISSUE_LABELS), dseg, 0)
    assert np.array_equal(warp.placed_labels(dseg.shape, dseg_img.affine, template, np.eye(4)), tissue)
    one_voxel_forward = np.eye(4)
    one_voxel_forward[1, 3] = dseg_img.affine[1, 1]  # image world + 1 voxel along y = template world
    placed = warp.placed_labels(dseg.shape, dseg_img.affine, template, one_voxel_forward)
    assert np.array_equal(placed[:, :-1], tissue[:, 1:]) and not placed[:, -1].any()


def test_bounding_box_holds_every_marked_voxel_tightly_and_its_margin_stops_at_the_grid():
    rng = np.random.default_rng(5)
    for _ in range(50):
        mask = np.zeros(tuple(rng.integers(2, 12, 3)), bool)
        for _ in range(int(rng.integers(1, 5))):
            mask[tuple(int(rng.integers(0, n)) for n in mask.shape)] = True
        margin = int(rng.integers(0, 3))
        idx = np.argwhere(mask)
        low, high = np.maximum(idx.min(0) - margin, 0), np.minimum(idx.max(0) + margin + 1, mask.shape)
        assert bounding_box(mask, margin) == tuple(slice(int(a), int(b)) for a, b in zip(low, high))
    empty = np.zeros((3, 4, 5), bool)
    assert bounding_box(empty, 1) == (slice(0, 3), slice(0, 4), slice(0, 5))


def test_distance_mm_is_the_euclidean_distance_in_mm_to_the_nearest_false_voxel():
    rng = np.random.default_rng(11)
    zooms = (0.9, 1.3, 2.4)
    for _ in range(20):
        mask = rng.random(tuple(rng.integers(3, 9, 3))) < 0.8
        mask.flat[int(rng.integers(mask.size))] = False
        background = np.argwhere(~mask) * zooms
        expected = np.array([np.sqrt(((background - v * zooms) ** 2).sum(axis=1)).min()
                             for v in np.argwhere(np.ones(mask.shape, bool))]).reshape(mask.shape)
        np.testing.assert_allclose(distance_mm(mask, zooms), expected, rtol=1e-6)
    assert np.isinf(distance_mm(np.ones((3, 3, 3), bool), zooms)).all()


def test_signed_depth_is_the_two_distances_to_the_surface_from_either_side():
    from refacebids.core.surface import signed_depth, skin_threshold

    img = nib.load(T1W_A)
    volume = np.asanyarray(img.dataobj).astype(np.float32)
    rng = np.random.default_rng(13)
    for zooms, head in (
        (img.header.get_zooms()[:3], head_mask(volume, img.header.get_zooms()[:3], skin_threshold(volume))),
        ((0.9, 1.3, 2.4), rng.random((20, 30, 12)) < 0.5),  # anisotropic, many surfaces
    ):
        expected = distance_mm(~head, zooms) - distance_mm(head, zooms)
        assert np.array_equal(signed_depth(head, zooms), expected)
    for uniform in (np.ones((4, 4, 4), bool), np.zeros((4, 4, 4), bool)):
        assert np.array_equal(signed_depth(uniform, zooms), distance_mm(~uniform, zooms) - distance_mm(uniform, zooms))


def test_holes_are_filled_slice_by_slice_as_a_2d_flood_fill_fills_them():
    rng = np.random.default_rng(12)
    for _ in range(20):
        mask = rng.random(tuple(rng.integers(1, 14, 3))) < rng.uniform(0.3, 0.8)
        expected = mask
        for axis in range(3):
            slices = np.moveaxis(expected, axis, 0)
            expected = np.moveaxis(np.stack([ndi.binary_fill_holes(s) for s in slices]), 0, axis)
        assert np.array_equal(_fill_holes_every_axis(mask), expected)
    # A closed box is solid; a tube open at both ends is filled across its slices only.
    box = np.zeros((9, 9, 9), bool)
    box[1:-1, 1:-1, 1:-1] = True
    box[2:-2, 2:-2, 2:-2] = False
    assert _fill_holes_every_axis(box)[1:-1, 1:-1, 1:-1].all()
    tube = np.zeros((9, 9, 9), bool)
    tube[2:7, 2:7, :] = True
    tube[3:6, 3:6, :] = False
    assert _fill_holes_every_axis(tube)[3:6, 3:6, :].all()


def test_aligned_resampling_of_a_working_grid_is_trilinear_interpolation_at_the_image_voxels():
    rng = np.random.default_rng(13)
    for zooms in [(1.0, 1.0, 1.0), (1.6, 0.9, 2.4)]:
        shape = (23, 31, 17)
        affine = nib.affines.from_matvec(np.diag(zooms) @ np.diag([-1, 1, 1]), [40.0, -30.0, 12.0])
        coarse_shape, coarse_affine = working_grid(shape, affine, 2.0)
        coarse = rng.normal(size=coarse_shape).astype(np.float32)
        voxels = np.indices(shape).reshape(3, -1).astype(float)
        at = (np.linalg.inv(coarse_affine) @ affine @ np.vstack([voxels, np.ones(voxels.shape[1])]))[:3]
        expected = ndi.map_coordinates(coarse, at, order=1, mode="nearest").reshape(shape)
        np.testing.assert_allclose(resample_aligned(coarse, coarse_affine, shape, affine), expected, atol=1e-5)
    rotated = nib.affines.from_matvec(nib.eulerangles.euler2mat(0.3) * 2.0, [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="axes"):
        resample_aligned(coarse, rotated, shape, affine)


def test_the_working_image_is_what_ants_resampling_gives(tmp_path):
    """The registered image is resampled by numpy, not ITK: the same grid and values, and
    ANTs reads the file written for it with that geometry."""
    import ants

    from refacebids.core.registration import working_image, write_working_image

    rng = np.random.default_rng(5)
    for zooms in [(1.0, 1.0, 1.0), (0.9, 1.2, 3.0), (2.0, 2.0, 2.0)]:
        volume = rng.gamma(2.0, 100.0, size=(47, 38, 29)).astype(np.float32)
        affine = nib.affines.from_matvec(nib.eulerangles.euler2mat(0.2, 0.1) @ np.diag(zooms), [30.0, -20.0, 5.0])
        values, grid_affine = working_image(volume, affine)
        clipped = np.clip(volume, *np.percentile(volume, [0.0, 99.8]))
        target = tuple(max(z, 2.0) for z in zooms)
        theirs = ants.resample_image(to_ants(clipped, affine), target, use_voxels=False, interp_type=0)
        written = ants.image_read(write_working_image(values, grid_affine, str(tmp_path / "working.nii")))
        for ours in (to_ants(values, grid_affine), written):
            assert ours.shape == theirs.shape
            np.testing.assert_allclose(ours.spacing, theirs.spacing, rtol=1e-6)
            np.testing.assert_allclose(ours.origin, theirs.origin, atol=1e-4)
            np.testing.assert_allclose(ours.direction, theirs.direction, atol=1e-5)
            np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-3)


def test_labels_read_off_the_working_grid_are_those_the_transform_carries():
    """The labels of a 1 mm grid looked up through trilinearly interpolated template
    coordinates of its 2 mm working grid are the labels ANTs resamples through the
    transform itself (nearest neighbour), but for rounding ties."""
    import ants

    template = load_template()
    dseg_img = nib.load(template.dseg)
    shape = (120, 150, 140)
    affine = nib.affines.from_matvec(np.eye(3), [-60.0, -60.0, -100.0])
    transform = ants.create_ants_transform(transform_type="AffineTransform", dimension=3)
    matrix = nib.eulerangles.euler2mat(0.08, -0.05, 0.1) * 1.04
    transform.set_parameters(np.r_[matrix.ravel(), [3.0, -6.0, 8.0]])
    composite = str(Path(tempfile.mkdtemp()) / "tpl2img.mat")
    ants.write_transform(transform, composite)
    coarse_shape, coarse_affine = working_grid(shape, affine, 2.0)
    coords = warp.template_coordinates(coarse_shape, coarse_affine, template, composite)
    labels, _ = warp.labels_on_grid(coords, coarse_affine, shape, affine, template)
    reference = to_ants(np.zeros(shape, np.float32), affine)
    resampled = ants.apply_transforms(reference, ants.image_read(str(dseg_img.get_filename())), [composite],
                                      interpolator="nearestNeighbor").numpy()
    labelled = (labels > 0) | (resampled > 0)
    assert np.count_nonzero(warp.is_label(labels, warp.TISSUE_LABELS)) > 100_000
    assert np.mean(labels[labelled] == resampled[labelled]) > 0.999


def test_template_images_sampled_at_template_coordinates_are_what_ants_resamples():
    """The registration check's view of the registered template, without antspyx:
    linear for the head, nearest for the labels, as ANTs resamples them."""
    import ants

    template = load_template()
    shape = (70, 80, 75)
    affine = nib.affines.from_matvec(np.diag([2.0, 2.0, 2.0]), [-70.0, -80.0, -90.0])
    transform = ants.create_ants_transform(transform_type="AffineTransform", dimension=3)
    transform.set_parameters(np.r_[(nib.eulerangles.euler2mat(0.1, 0.05) * 0.97).ravel(), [2.0, 5.0, -4.0]])
    composite = str(Path(tempfile.mkdtemp()) / "tpl2img.mat")
    ants.write_transform(transform, composite)
    coords = warp.template_coordinates(shape, affine, template, composite)
    reference = to_ants(np.zeros(shape, np.float32), affine)
    for image_file, order, interpolator in [(template.t1w, 1, "linear"), (template.dseg, 0, "nearestNeighbor")]:
        theirs = ants.apply_transforms(reference, ants.image_read(str(image_file)), [composite],
                                       interpolator=interpolator).numpy()
        ours = warp.template_image_at(image_file, coords, order=order)
        assert np.count_nonzero(ours) > 0.1 * ours.size
        if order:
            np.testing.assert_allclose(ours, theirs, atol=1e-3 * float(np.abs(theirs).max()))
        else:
            assert np.mean(ours == theirs) > 0.999


def test_independent_parts_run_on_the_threads_given_and_return_in_order():
    import threading

    def where():
        return threading.get_ident()

    assert set(in_parallel(1, where, where, where)) == {threading.get_ident()}
    assert threading.get_ident() not in in_parallel(2, where, where)
    assert in_parallel(2, lambda: 1, lambda: 2, lambda: 3) == (1, 2, 3)


def test_float32_affine_is_the_matrix_product():
    rng = np.random.default_rng(14)
    matrix = np.eye(4)
    matrix[:3] = rng.normal(size=(3, 4))
    points = rng.normal(size=(1000, 3)).astype(np.float32) * 100
    np.testing.assert_allclose(apply_affine_float32(matrix, points), points @ matrix[:3, :3].T + matrix[:3, 3],
                               rtol=1e-5, atol=1e-3)
    indices = np.nonzero(rng.random((6, 7, 8)) > 0.5)
    np.testing.assert_allclose(other_grid_index(indices, matrix),
                               (np.stack(indices, axis=1) @ matrix[:3, :3].T + matrix[:3, 3]).T, atol=1e-4)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_arrays_stay_in_the_process_on_glibc():
    from refacebids.utils.memory import reuse_freed_memory

    assert reuse_freed_memory()


def test_arrays_are_allocated_without_transparent_huge_pages():
    multiarray = pytest.importorskip("numpy._core.multiarray")
    from refacebids.utils.memory import reuse_freed_memory

    reuse_freed_memory()
    assert multiarray._get_madvise_hugepage() is False


@pytest.mark.parametrize("frames", [0, 3])
def test_the_engine_loads_each_volume_in_c_order_with_the_stored_values(tmp_path, frames):
    from refacebids import modalities

    stored = np.asanyarray(nib.load(T1W_A).dataobj)[::2, ::2, ::2]
    if frames:
        stored = np.stack([stored + t for t in range(frames)], axis=3)
    in_file = tmp_path / "head.nii"
    nib.Nifti1Image(stored, np.diag([2.0, 2.0, 2.0, 1.0])).to_filename(in_file)
    assert np.asanyarray(nib.load(in_file).dataobj).flags.f_contiguous  # as NIfTI stores it

    raw = modalities.load(in_file, "T1w").raw
    assert np.array_equal(raw, stored)
    for volume in (raw[..., t] for t in range(frames)) if frames else [raw]:
        assert volume.flags.c_contiguous


def test_joined_head_mask_encloses_dark_bone_under_a_patchy_fat_ring():
    """A FLAIR-like head: bright brain, a dark moat (bone, CSF), a fat ring with gaps, dark skin."""
    grid = np.indices((100, 100, 100), dtype=np.float32) - 49.5
    radius = np.sqrt((grid**2).sum(axis=0))
    bright = (radius < 30.0) | ((radius >= 38.0) & (radius < 41.0))
    for axis in range(3):  # 10 mm gaps in the ring where each axis leaves the head
        bright &= ~((np.abs(grid[axis]) > 30.0) & (np.delete(np.abs(grid), axis, axis=0).max(axis=0) < 5.0))
    volume = np.where(bright, 500.0, 20.0).astype(np.float32)
    unjoined = head_mask(volume, ZOOMS, threshold=150.0)
    joined = head_mask(volume, ZOOMS, threshold=150.0, join_mm=8.0)
    assert not unjoined[radius > 32.0].any()  # the brain alone: the ring was another component
    inside_ring = radius < 40.0
    assert joined[inside_ring].mean() > 0.99 and not joined[radius > 42.0].any()
    # A convex head is its own closing.
    ball = np.where(radius < 41.0, 500.0, 20.0).astype(np.float32)
    assert np.array_equal(head_mask(ball, ZOOMS, threshold=150.0, join_mm=8.0), head_mask(ball, ZOOMS, threshold=150.0))


def _blobs(shape=(64, 64, 56), seed: int = 3) -> np.ndarray:
    """(I, J, K) float32 structure facing every way: 40 overlapping balls of random
    intensity (radius 3-8 voxels), like the tissues of a face and skull base."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=np.float32)
    volume = np.zeros(shape, np.float32)
    for _ in range(40):
        centre = rng.uniform(8, np.asarray(shape) - 8)
        radius = rng.uniform(3, 8)
        inside = ((grid - centre[:, None, None, None]) ** 2).sum(axis=0) < radius**2
        volume[inside] = rng.uniform(20, 200)
    return volume


def test_probes_move_the_template_by_the_probe_distance_back_and_forth_along_each_grid_axis():
    from refacebids.core.registration import PROBE_MM, probe_steps

    spacing = (0.9, 3.2, 2.0)
    moves = np.zeros((6, 3))
    for row, (axis, steps) in enumerate(probe_steps(spacing)):
        moves[row, axis] = steps * spacing[axis]
    np.testing.assert_allclose(moves, PROBE_MM * np.array(
        [[-1, 0, 0], [1, 0, 0], [0, -1, 0], [0, 1, 0], [0, 0, -1], [0, 0, 1]]))


def test_a_volume_shifted_along_an_axis_is_what_ndimage_shift_gives():
    from refacebids.core.geometry import shifted_along

    volume = np.random.default_rng(2).normal(size=(17, 19, 23)).astype(np.float32)
    for axis in range(3):
        for steps in (-7.9, -2.5, 0.0, 1.0, 3.3, 30.0):
            shift = np.zeros(3)
            shift[axis] = steps
            expected = ndi.shift(volume, shift, order=1, mode="constant", cval=-5.0)
            np.testing.assert_allclose(shifted_along(volume, axis, steps, outside=-5.0), expected,
                                       atol=1e-5, err_msg=f"axis {axis}, {steps} steps")


def test_gradient_magnitude_is_per_mm_whatever_the_voxel_size():
    from refacebids.core.registration import gradient_magnitude

    spacing = (2.0, 3.2, 1.5)
    for axis in range(3):
        ramp = 3.0 * spacing[axis] * np.indices((24, 24, 24), dtype=np.float32)[axis]  # 3 per mm
        interior = gradient_magnitude(ramp, spacing)[8:-8, 8:-8, 8:-8]
        # 2 % : scipy's sampled derivative of a Gaussian narrower than a voxel (3.2 mm)
        np.testing.assert_allclose(interior, 3.0, rtol=0.02)


def test_edge_level_leaves_the_steepest_share_of_the_region_above_it():
    from refacebids.core.registration import EDGE_SHARE, edge_level

    gradient = np.arange(1000.0).reshape(10, 10, 10)
    region = gradient < 500  # the steepest voxels of all lie outside it
    level = edge_level(gradient, region)
    assert np.sum(gradient[region] > level) == EDGE_SHARE * 500
    assert level == pytest.approx(449.1)


def test_probe_region_keeps_clear_of_the_grid_edge_and_of_the_template_grid_edge():
    from refacebids.core.registration import EDGE_SMOOTHING_MM, PROBE_MM, probe_region

    spacing = (2.0, 2.0, 4.0)
    covered = np.ones((40, 40, 30), bool)
    covered[:, :, 20:] = False  # the template's grid ends above k = 19
    region = probe_region(covered, spacing)
    k = np.flatnonzero(region.any(axis=(0, 1)))
    assert k[0] * spacing[2] >= PROBE_MM and k[0] * spacing[2] < PROBE_MM + spacing[2]
    assert (20 - k[-1]) * spacing[2] > PROBE_MM + 2 * EDGE_SMOOTHING_MM
    i = np.flatnonzero(region.any(axis=(1, 2)))
    assert i[0] * spacing[0] >= PROBE_MM and (39 - i[-1]) * spacing[0] >= PROBE_MM


def test_edge_overlap_confirms_the_registered_template_and_refuses_it_moved():
    from refacebids.core.registration import edge_overlap

    volume = _blobs()
    spacing = (2.0, 2.0, 2.0)
    covered = np.ones(volume.shape, bool)
    dice, ratio, _ = edge_overlap(volume, volume * 0.5 + 10, covered, spacing)  # any contrast
    assert dice == 1.0 and ratio >= 1.5
    for axis in range(3):
        for sign in (-1, 1):
            shift = np.zeros(3)
            shift[axis] = sign * 15.0 / 2.0  # 15 mm
            moved = ndi.shift(volume, shift, order=1, mode="nearest")
            assert edge_overlap(volume, moved, covered, spacing)[1] < 1.0, shift


def test_the_end_of_the_template_grid_is_no_edge_of_the_template():
    """A template that covers part of the image only (its grid ends) scores the same
    edges as one that covers all of it, where it covers the image."""
    from refacebids.core.registration import edge_overlap

    volume = _blobs()
    covered = np.zeros(volume.shape, bool)
    covered[:, :, :40] = True
    dice, ratio, _ = edge_overlap(volume, np.where(covered, volume, 0.0), covered, (2.0, 2.0, 2.0))
    assert dice == 1.0 and ratio >= 1.5


def test_edge_overlap_cannot_confirm_a_registration_along_a_cylinder():
    """A cut field of view whose only structure is a cylinder (a cranium without its top
    or base): a template moved along the axis fits as well, and the check refuses."""
    from refacebids.core.registration import MIN_PEAK_RATIO, edge_overlap

    i, j, _ = np.indices((64, 64, 56), dtype=np.float32) - 31.5
    cylinder = np.where(i**2 + j**2 < 24**2, 100.0, 0.0).astype(np.float32)
    covered = np.ones(cylinder.shape, bool)
    dice, ratio, _ = edge_overlap(cylinder, cylinder, covered, (2.0, 2.0, 2.0))
    assert dice == 1.0 and ratio == pytest.approx(1.0, abs=0.02) and ratio < MIN_PEAK_RATIO
    # Nor do the ends of the template's grid across the cylinder, which probes moved
    # along it would carry into the scored voxels as edges the image does not have.
    covered[:, :, :12] = covered[:, :, 44:] = False
    dice, ratio, _ = edge_overlap(cylinder, np.where(covered, cylinder, 0.0), covered, (2.0, 2.0, 2.0))
    assert dice == 1.0 and ratio == pytest.approx(1.0, abs=0.02)


def test_mapped_values_are_the_volume_interpolated_where_the_map_sends_each_voxel():
    from refacebids.core.geometry import mapped_values

    rng = np.random.default_rng(4)
    volume = rng.normal(size=(21, 18, 16)).astype(np.float32)
    where = rng.random(volume.shape) < 0.3
    turn = nib.affines.from_matvec(nib.eulerangles.euler2mat(0.2, -0.1, 0.15) * 1.05, [1.5, -2.0, 0.7])
    maps = [turn, np.linalg.inv(turn)]
    values = mapped_values(volume, maps, where, outside=-9.0)
    assert values.shape == (2, where.sum()) and values.dtype == np.float32
    for row, voxel_map in enumerate(maps):
        # output[o] = volume[matrix @ o + offset] over the whole grid, then read at ``where``
        expected = ndi.affine_transform(volume, voxel_map[:3, :3], voxel_map[:3, 3], order=1,
                                        mode="constant", cval=-9.0)
        np.testing.assert_allclose(values[row], expected[where], atol=1e-5)
    assert np.any(values == -9.0)  # the turn sends some voxels off the grid


def test_linear_fit_recovers_the_affine_of_the_covered_voxels():
    from refacebids.core.registration import linear_fit

    shape = (30, 26, 22)
    voxel_to_template = nib.affines.from_matvec(nib.eulerangles.euler2mat(0.3, 0.1, -0.2) * 2.1,
                                                [-60.0, 14.0, 3.0])
    ijk = np.moveaxis(np.indices(shape, dtype=np.float32), 0, -1)
    coords = nib.affines.apply_affine(voxel_to_template, ijk).astype(np.float32)
    covered = np.zeros(shape, bool)
    covered[4:25, 5:20, 2:18] = True
    coords[~covered] = -1e4  # beyond the template's grid: not the registration
    np.testing.assert_allclose(linear_fit(coords, covered), voxel_to_template, atol=1e-3)
    # A nonlinear part even about the covered voxels' centre (i = 14) leaves the matrix.
    bump = np.cos((ijk[..., 0] - 14.0) * np.pi / 5.0)[..., None] * np.array([0.0, 0.0, 1.5], np.float32)
    fit = linear_fit(coords + bump, covered)
    np.testing.assert_allclose(fit[:3, :3], voxel_to_template[:3, :3], atol=0.05)
    np.testing.assert_array_equal(linear_fit(coords, np.zeros(shape, bool)), np.eye(4))


def test_turned_probes_turn_the_template_about_its_own_axes_through_the_centre():
    from refacebids.core.registration import turned_probes

    # An image grid oblique to the template, with 2 x 2 x 3 mm voxels.
    voxel_to_template = nib.affines.from_matvec(nib.eulerangles.euler2mat(0.4, -0.3, 0.2) @ np.diag([2.0, 2.0, 3.0]),
                                                [-80.0, -90.0, -40.0])
    centre = np.array([1.0, -18.0, 12.0])
    maps = turned_probes(voxel_to_template, centre, 15.0)
    assert len(maps) == 6
    voxels = np.random.default_rng(1).uniform(0, 60, size=(50, 3))
    template_points = nib.affines.apply_affine(voxel_to_template, voxels)
    centre_voxel = nib.affines.apply_affine(np.linalg.inv(voxel_to_template), centre)
    for row, voxel_map in enumerate(maps):
        axis, sign = divmod(row, 2)
        turn = np.eye(3)
        a, b = [other for other in range(3) if other != axis]
        angle = np.deg2rad((1 if sign else -1) * 15.0)
        turn[[a, a, b, b], [a, b, a, b]] = np.cos(angle), -np.sin(angle), np.sin(angle), np.cos(angle)
        # Where a voxel's probe value comes from, the registered template shows the
        # template point the turn brings to that voxel.
        sources = nib.affines.apply_affine(voxel_map, voxels)
        np.testing.assert_allclose(nib.affines.apply_affine(voxel_to_template, sources),
                                   (template_points - centre) @ turn.T + centre, atol=1e-6)
        np.testing.assert_allclose(nib.affines.apply_affine(voxel_map, centre_voxel), centre_voxel, atol=1e-9)
    assert turned_probes(np.zeros((4, 4)), centre, 15.0) == []


def _ellipsoid_head(shape=(96, 110, 100)):
    """(I, J, K) float32 2 mm head without features, broader front to back than across
    (64, 96, 84 mm half axes): scalp, a dark skull, brain; and its brain mask."""
    centre = (np.asarray(shape) - 1) / 2
    grid = (np.indices(shape, dtype=np.float32) - centre[:, None, None, None]) * 2.0

    def inside(a, b, c):
        return (grid[0] / a) ** 2 + (grid[1] / b) ** 2 + (grid[2] / c) ** 2 < 1

    head = np.where(inside(64, 96, 84), 100.0, 0.0).astype(np.float32)
    head[inside(58, 90, 78)] = 30.0
    head[inside(52, 84, 72)] = 80.0
    return head, inside(52, 84, 72).astype(np.float32)


def test_a_head_turned_about_its_centre_passes_the_shifted_probes_and_fails_the_turned_ones():
    """A nearly round head turned 10 degrees about the vertical through its centre still
    fits better than the template shifted 8 mm: the turned probes refuse it."""
    from refacebids.core.geometry import mapped_values
    from refacebids.core.registration import MIN_PEAK_RATIO, SCALP, TURN_DEGREES, cranium_overlap, turned_probes

    spacing = (2.0, 2.0, 2.0)
    head, brain = _ellipsoid_head()
    voxel_to_template = np.diag([*spacing, 1.0])
    centre = (np.asarray(head.shape) - 1) / 2 * 2.0
    labels = np.zeros(head.shape, np.uint8)
    turns = turned_probes(voxel_to_template, centre, TURN_DEGREES[SCALP])
    dice, peak_ratio, turn_ratio = cranium_overlap(head, head, labels, brain, spacing, turns)
    assert dice == 1.0 and peak_ratio >= MIN_PEAK_RATIO and turn_ratio >= MIN_PEAK_RATIO
    # The registration turned 10 degrees about the vertical (k): template, labels, brain.
    turn = turned_probes(voxel_to_template, centre, 10.0)[5]
    everywhere = np.ones(head.shape, bool)
    turned_head, turned_brain = (mapped_values(values, [turn], everywhere, 0.0)[0].reshape(head.shape)
                                 for values in (head, brain))
    _, peak_ratio, turn_ratio = cranium_overlap(head, turned_head, labels, turned_brain, spacing, turns)
    assert peak_ratio >= MIN_PEAK_RATIO  # the shifted probes alone would accept it
    assert turn_ratio < 1.0
    assert cranium_overlap(head, head, labels, brain, spacing)[2] is None  # no turns asked


def test_edge_overlap_refuses_a_template_turned_about_its_centre():
    from refacebids.core.geometry import mapped_values
    from refacebids.core.registration import EDGES, MIN_PEAK_RATIO, TURN_DEGREES, edge_overlap, turned_probes

    volume = _blobs()
    spacing = (2.0, 2.0, 2.0)
    covered = np.ones(volume.shape, bool)
    voxel_to_template = np.diag([*spacing, 1.0])
    centre = (np.asarray(volume.shape) - 1) / 2 * 2.0
    turns = turned_probes(voxel_to_template, centre, TURN_DEGREES[EDGES])
    dice, _, turn_ratio = edge_overlap(volume, volume, covered, spacing, turns)
    assert dice == 1.0 and turn_ratio >= 1.5
    for probe in (1, 3, 5):  # +10 degrees about each axis
        turn = turned_probes(voxel_to_template, centre, 10.0)[probe]
        turned = mapped_values(volume, [turn], covered, 0.0)[0].reshape(volume.shape)
        assert edge_overlap(volume, turned, covered, spacing, turns)[2] < 1.0, probe


def test_brain_values_of_a_ct_are_those_its_pseudo_t1w_gives_brain_alone():
    from refacebids.core.ct import BRAIN_HU, pseudo_t1w, pseudo_t1w_range
    from refacebids.core.registration import BRAIN_VALUES

    assert BRAIN_VALUES == pseudo_t1w_range(*BRAIN_HU)
    low, high = BRAIN_VALUES

    def pseudo(hu_from, hu_to):
        hu = np.broadcast_to(np.linspace(hu_from, hu_to, 200, dtype=np.float32)[:, None, None], (200, 3, 3))
        return pseudo_t1w(np.ascontiguousarray(hu))

    brain = pseudo(*BRAIN_HU)
    assert brain.min() >= low and brain.max() <= high
    assert brain.min() < low + 1.0 and brain.max() > high - 1.0  # the range is tight
    for name, (hu_from, hu_to) in {"air": (-1000.0, -300.0), "fat": (-110.0, -85.0),
                                   "dense bone": (600.0, 1500.0)}.items():
        other = pseudo(hu_from, hu_to)[5:-5]  # away from the smoothing's reach of the ends
        assert np.all((other < low) | (other > high)), name


def test_the_template_brain_depth_and_centre_are_read_off_its_mask():
    template = load_template()
    mask_img = nib.load(template.brain_mask)
    brain = np.asanyarray(mask_img.dataobj) > 0
    depth = distance_mm(brain, mask_img.header.get_zooms()[:3])
    voxels = np.argwhere(brain)[::5000]
    coords = nib.affines.apply_affine(mask_img.affine, voxels).astype(np.float32)
    np.testing.assert_allclose(warp.brain_depth_at(coords, template.brain_mask), depth[tuple(voxels.T)], atol=1e-4)
    far = np.array([[500.0, 0.0, 0.0]], np.float32)
    assert warp.brain_depth_at(far, template.brain_mask)[0] == 0.0
    centre = warp.template_mask_centre(template.brain_mask)
    np.testing.assert_allclose(centre, nib.affines.apply_affine(mask_img.affine, np.argwhere(brain).mean(axis=0)))
    assert warp.brain_depth_at(centre[None].astype(np.float32), template.brain_mask)[0] > 40.0  # deep inside
