"""The numeric core on arrays with known answers: skin profile, blend weights, noise."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from refacebids.core.intensity import SKIN_PROFILE_MM, fit_skin_profile, skin_profile_weight
from refacebids.core.noise import NoiseModel, add_noise, local_noise_sd
from refacebids.core import warp
from refacebids.core.replace import BLEND_MM, RAISE_FADE_MM, edge_weight, field_of_view_depth, signed_skin_distance
from refacebids.templates import load_template
from refacebids.core.surface import head_mask

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


def test_field_of_view_depth_is_the_distance_to_the_nearest_face_of_the_grid():
    voxels = np.array([[0, 5, 5], [9, 5, 5], [4, 4, 4], [2, 7, 3]])
    depth = field_of_view_depth(voxels, (10, 10, 10), (1.0, 2.0, 0.5))
    np.testing.assert_allclose(depth, [0.0, 0.0, 2.0, 1.5])


def test_labels_placed_by_an_affine_alone_are_the_template_labels_moved_by_it():
    template = load_template()
    dseg_img = nib.load(template.dseg)
    dseg = np.asanyarray(dseg_img.dataobj)
    assert np.array_equal(warp.placed_labels(dseg.shape, dseg_img.affine, template, np.eye(4)), dseg)
    one_voxel_forward = np.eye(4)
    one_voxel_forward[1, 3] = dseg_img.affine[1, 1]  # image world + 1 voxel along y = template world
    placed = warp.placed_labels(dseg.shape, dseg_img.affine, template, one_voxel_forward)
    assert np.array_equal(placed[:, :-1], dseg[:, 1:]) and not placed[:, -1].any()
