"""Property: however an image is stored, refacing changes only the replaced voxels.

Hypothesis draws header variants of one real head (IXI049, 2 mm): on-disk dtype
(uint8, int8, int16, uint16, int32, float32, float64), with or without
``scl_slope``/``scl_inter``, storage order (RAS, LPS, PIR), qform and sform codes, and
for float types NaN/Inf voxels. For each, the real mask and replace steps
(:func:`refacebids.engine.compute_masks`, :func:`refacebids.engine.replace_face`, which writes through
:func:`refacebids.core.image.write_like`) and the output writer's copy
(:func:`refacebids.utils.atomic.atomic_copy`, ``.nii.gz`` to ``.nii``) run, and the
written image must keep every stored value outside the replaced region, 0 protected
voxels changed, the header's geometry, codes, dtype and scaling, and no NaN/Inf in
the replaced region.

One registration per session (the expensive part) is shared: a variant holds the same
voxels at the same world positions, so the template transform is the same.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refacebids import engine
from refacebids.core.image import DESCRIP_MARKER, ImageError, load_head_image
from refacebids.core.warp import PROTECTED
from refacebids.templates import load_template
from refacebids.utils.atomic import atomic_copy

from . import inputs
from .conftest import DATA

BASE = DATA / "ixi" / "IXI049-HH-1358_T1.nii.gz"
DTYPES = ["uint8", "int8", "int16", "uint16", "int32", "float32", "float64"]


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """The template registered once to the base head."""
    work = tmp_path_factory.mktemp("property")
    template = load_template()
    record = engine.register_image(BASE, template, work)
    assert record["ok"], record
    return {"template": template, "composite": record["composite"]}


def _in_storage_order(img: nib.Nifti1Image, axcodes: str) -> nib.Nifti1Image:
    return inputs.reoriented(img, axcodes)


variants = st.fixed_dictionaries({
    "dtype": st.sampled_from(DTYPES),
    "scaled": st.booleans(),
    "axcodes": st.sampled_from(["RAS", "LPS", "PIR"]),
    "qform_code": st.sampled_from([0, 1, 2]),
    "sform_code": st.sampled_from([0, 1, 2, 4]),
    "nonfinite": st.booleans(),
})


@pytest.mark.slow
@settings(max_examples=14, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(variant=variants)
def test_refacing_keeps_everything_but_the_replaced_voxels(registered, variant):
    with tempfile.TemporaryDirectory(prefix="refacebids-property-") as tmp:
        tmp = Path(tmp)
        image = inputs.stored_as(_in_storage_order(nib.load(BASE), variant["axcodes"]),
                                 variant["dtype"], variant["scaled"])
        if variant["nonfinite"] and variant["dtype"].startswith("float"):
            data = np.asanyarray(image.dataobj).copy()  # in memory: the stored values
            centre = np.array(data.shape) // 2
            data[tuple(slice(c - 3, c + 3) for c in centre)] = np.nan
            data[:2, :2, :2] = np.inf
            image = nib.Nifti1Image(data, image.affine, image.header)
        image.set_qform(image.affine, code=variant["qform_code"])
        image.set_sform(image.affine, code=variant["sform_code"])
        inputs.with_planted_text(image)
        in_file = tmp / "in.nii.gz"
        image.to_filename(in_file)
        before = nib.load(in_file)
        if before.header["qform_code"] == 0 and before.header["sform_code"] == 0:
            with pytest.raises(ImageError, match="no orientation"):
                load_head_image(in_file)
            return
        masks = engine.compute_masks(in_file, registered["template"], registered["composite"], tmp)
        out_file, mask_file, metrics = engine.replace_face(in_file, registered["template"], masks, tmp)
        written = atomic_copy(out_file, tmp / "written.nii")
        after = nib.load(written)

        # Header: geometry, codes, dtype and scaling as stored; free text scrubbed.
        assert after.shape == before.shape
        assert after.get_data_dtype() == before.get_data_dtype()
        for key in ("qform_code", "sform_code", "pixdim", "scl_slope", "scl_inter"):
            np.testing.assert_array_equal(after.header[key], before.header[key])
        np.testing.assert_array_equal(after.header.get_qform(), before.header.get_qform())
        np.testing.assert_array_equal(after.header.get_sform(), before.header.get_sform())
        np.testing.assert_array_equal(after.affine, before.affine)
        assert after.header["descrip"].tobytes().rstrip(b"\0").decode() == DESCRIP_MARKER
        assert len(after.header.extensions) == 0

        # Voxels: stored bits equal outside the replaced region; protected untouched.
        replaced = np.asanyarray(nib.load(mask_file).dataobj) > 0
        protected = np.load(masks.labels) == PROTECTED
        raw_before = np.asanyarray(before.dataobj.get_unscaled())
        raw_after = np.asanyarray(after.dataobj.get_unscaled())
        changed = _bits(raw_before) != _bits(raw_after)
        assert protected.sum() > 100_000  # voxels of 8 mm^3: the brain is there
        assert replaced.sum() > 20_000
        assert not np.any(changed & protected)
        assert not np.any(changed & ~replaced)
        assert changed.sum() > 0.3 * replaced.sum()
        assert np.all(np.isfinite(after.get_fdata(dtype=np.float64)[replaced]))
        assert metrics["protected_voxels_changed"] == 0
        assert metrics["changed_voxels_outside_replaced"] == 0


def _bits(raw: np.ndarray) -> np.ndarray:
    if raw.dtype.kind != "f":
        return raw
    native = np.ascontiguousarray(raw, raw.dtype.newbyteorder("="))
    return native.view(np.dtype(f"u{native.itemsize}"))
