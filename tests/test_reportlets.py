"""Report figures and the HTML report: content, size and self-containment."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from refacebids.reports.html import write_subject_report
from refacebids.core.warp import EARS, FACE, TEETH_JAW, WRAP_AIR
from refacebids.reports.reportlets import (
    PANEL_PX,
    PROTECTED_RGB,
    REPLACED_PARTS,
    REPLACED_RGB,
    renders_before_after,
    slices_before_after,
)

HEAD = Path("/work/shared/data/heads/t1w_philips-adni_1mm.nii.gz")  # PIR storage
MAX_BYTES = 300 * 1024


@pytest.fixture(scope="module")
def refaced_head():
    """A real head, a crude 'refacing' (face box set to air) and the two masks.

    Returns (orig, refaced, affine, replaced, protected) on the image grid.
    """
    if not HEAD.exists():
        pytest.skip("real head images not available")
    img = nib.load(HEAD)
    orig = np.asarray(img.dataobj, dtype=np.float32)
    affine = img.affine
    ijk = np.indices(orig.shape, dtype=np.float32).reshape(3, -1)
    x, y, z = (affine[:3, :3] @ ijk + affine[:3, 3:4]).reshape(3, *orig.shape)
    head = orig > np.percentile(orig, 60)
    y_front, z_top, x_mid = y[head].max(), z[head].max(), np.median(x[head])
    replaced = (y > y_front - 35) & (z < z_top - 70) & (z > z_top - 190) & (np.abs(x - x_mid) < 50)
    protected = ((x - x_mid) / 60) ** 2 + ((y - y_front + 110) / 80) ** 2 + ((z - z_top + 70) / 55) ** 2 < 1
    refaced = np.where(replaced, orig.min(), orig)
    return orig, refaced, affine, replaced, protected


def test_slices_before_after_shows_both_outlines_and_the_change(refaced_head, tmp_path):
    orig, refaced, affine, replaced, protected = refaced_head
    out = tmp_path / "slices.png"
    slices_before_after(orig, refaced, affine, replaced, protected, out)
    assert out.stat().st_size <= MAX_BYTES
    image = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert image.shape == (2 * PANEL_PX, 3 * PANEL_PX, 3)
    for colour in (REPLACED_RGB, PROTECTED_RGB):
        assert (np.abs(image - colour).sum(axis=2) == 0).sum() > 200
    before, after = image[:PANEL_PX], image[PANEL_PX:]
    # the face is gone in the bottom row, and only there
    changed = np.abs(before - after).sum(axis=2) > 60
    assert changed.mean() > 0.01
    assert not changed[16:, : PANEL_PX // 4].any()  # back of the head (below the row label)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slices.png"]  # no temporary left


def test_slices_outline_each_part_of_the_replaced_region(refaced_head, tmp_path):
    orig, refaced, affine, replaced, protected = refaced_head
    # Four parts of the replaced box, along the first voxel axis.
    labels = np.zeros(orig.shape, np.uint8)
    idx = np.argwhere(replaced)
    quarters = np.quantile(idx[:, 0], [0.25, 0.5, 0.75])
    part = np.searchsorted(quarters, idx[:, 0])
    labels[tuple(idx.T)] = np.array([FACE, EARS, TEETH_JAW, WRAP_AIR], np.uint8)[part]
    out = tmp_path / "slices.png"
    slices_before_after(orig, refaced, affine, replaced, protected, out, labels=labels)
    # Sagittal and axial panels: the legend (top right) is not counted.
    image = np.asarray(Image.open(out).convert("RGB")).astype(int)[:, : 2 * PANEL_PX]
    for _, _, colour in REPLACED_PARTS:
        assert (np.abs(image - colour).sum(axis=2) == 0).sum() > 50, colour
    assert (np.abs(image - PROTECTED_RGB).sum(axis=2) == 0).sum() > 200


def test_slices_are_shown_in_ras_whatever_the_storage(refaced_head, tmp_path):
    orig, refaced, affine, replaced, protected = refaced_head
    slices_before_after(orig, refaced, affine, replaced, protected, tmp_path / "pir.png")
    # the same image stored as RAS must give the same figure
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt(("R", "A", "S"))
    )
    ras_affine = affine @ nib.orientations.inv_ornt_aff(transform, orig.shape)
    stored = [nib.orientations.apply_orientation(a, transform) for a in (orig, refaced, replaced, protected)]
    slices_before_after(*stored[:2], ras_affine, *stored[2:], tmp_path / "ras.png")
    a = np.asarray(Image.open(tmp_path / "pir.png").convert("L"), dtype=int)
    b = np.asarray(Image.open(tmp_path / "ras.png").convert("L"), dtype=int)
    assert np.mean(a != b) < 0.01


def test_anisotropic_slices_do_not_depend_on_storage_order(tmp_path):
    path = HEAD.parent / "pd_chris_0.9x0.9x2.4mm.nii.gz"
    if not path.exists():
        pytest.skip("real head images not available")
    img = nib.load(path)
    volume, affine = np.asarray(img.dataobj, dtype=np.float32), img.affine
    replaced = np.zeros(volume.shape, bool)
    replaced[60:130, 180:, 5:30] = True
    protected = np.zeros(volume.shape, bool)
    protected[50:140, 60:170, 20:50] = True
    figures = []
    for codes in (("R", "A", "S"), ("P", "I", "R")):
        transform = nib.orientations.ornt_transform(
            nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt(codes)
        )
        stored_affine = affine @ nib.orientations.inv_ornt_aff(transform, volume.shape)
        stored = [nib.orientations.apply_orientation(a, transform) for a in (volume, replaced, protected)]
        out = tmp_path / f"{''.join(codes)}.png"
        slices_before_after(stored[0], stored[0], stored_affine, stored[1], stored[2], out)
        figures.append(np.asarray(Image.open(out).convert("L"), dtype=int))
    assert np.mean(figures[0] != figures[1]) < 0.01


def test_sagittal_panel_has_the_face_on_the_right(refaced_head, tmp_path):
    orig, refaced, affine, replaced, protected = refaced_head
    out = tmp_path / "slices.png"
    slices_before_after(orig, refaced, affine, replaced, protected, out)
    image = np.asarray(Image.open(out).convert("RGB")).astype(int)
    sagittal = image[:PANEL_PX, :PANEL_PX]
    _, cols = np.nonzero(np.abs(sagittal - REPLACED_RGB).sum(axis=2) == 0)
    assert cols.mean() > PANEL_PX * 0.55


def test_renders_before_after_differ_where_the_face_was(refaced_head, tmp_path):
    orig, refaced, affine, _, _ = refaced_head
    out = tmp_path / "renders.png"
    renders_before_after(orig, refaced, affine, out)
    assert out.stat().st_size <= MAX_BYTES
    image = np.asarray(Image.open(out), dtype=float) / 255
    assert image.shape == (2 * PANEL_PX, 3 * PANEL_PX)
    front_before, front_after = image[:PANEL_PX, :PANEL_PX], image[PANEL_PX:, :PANEL_PX]
    changed = np.abs(front_before - front_after) > 0.1
    rows, cols = np.nonzero(changed)
    assert changed.mean() > 0.03
    assert abs(cols.mean() - PANEL_PX / 2) < PANEL_PX * 0.1
    assert rows.mean() > PANEL_PX * 0.35


def test_subject_report_is_self_contained_and_escaped(tmp_path):
    figures = tmp_path / "sub-01" / "figures"
    figures.mkdir(parents=True)
    Image.new("L", (4, 4)).save(figures / "sub-01_T1w_slices.png")
    sections = [
        {
            "title": "sub-01_T1w.nii.gz",
            "reportlets": ["sub-01/figures/sub-01_T1w_slices.png"],
            "metrics": {
                "registration": {"similarity": 0.123456, "ok": True},
                "replaced_voxels": 1234,
                "warnings": ["face <partly> outside the field of view"],
            },
            "command_line": "refacebids /data /out participant --participant-label 01",
            "versions": {"refacebids": "0.1.0", "numpy": np.__version__},
            "methods": "The face was replaced.\n\nThe brain was protected.",
        },
        {"title": "sub-01_ct.nii.gz", "reportlets": [], "metrics": {}},
    ]
    out = write_subject_report(tmp_path / "sub-01.html", "01", sections)
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert "sub-01_T1w.nii.gz" in text and "sub-01_ct.nii.gz" in text
    assert 'src="sub-01/figures/sub-01_T1w_slices.png"' in text
    assert (tmp_path / "sub-01/figures/sub-01_T1w_slices.png").exists()
    assert "face &lt;partly&gt; outside" in text and "<partly>" not in text
    assert "0.1235" in text and "1234" in text
    assert text.count("<p>The") == 2
    # nothing is fetched from the network
    assert not re.search(r"(src|href)=\"(https?:)?//", text)
    assert "<script" not in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub-01", "sub-01.html"]


def test_subject_report_replaces_an_existing_file(tmp_path):
    out = tmp_path / "sub-02.html"
    out.write_text("old")
    write_subject_report(out, "sub-02", [])
    text = out.read_text()
    assert "refacebids report: sub-02" in text and "No images were refaced" in text
