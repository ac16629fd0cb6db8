"""PET (static 3D and dynamic 4D) and CT through the engine: the guarantees of MRI.

PET images are **simulated** (tests/simulate.py ``simulate_pet``, seeded): there is no
redistributable head PET with a face. Each comes from a real IXI T1w head (2 mm) through
the documented model: tissue-class two-tissue-compartment uptake (FDG, amyloid-like and
tau-like tracers; scalp and facial skin take up tracer), a 5 mm FWHM Gaussian PSF,
count-dependent correlated noise; then linear resampling to 3 mm voxels. Static
images are one frame in the tracer's usual window (3D, float32); dynamic ones have 5
frames of different lengths from injection (4D, int16 with a scale factor, as scanners
store them) and their ``FrameDuration`` goes to the engine.

CT images are real heads (../shared/data/heads) in Hounsfield units: ``ct_mricrogl``
stored 0-1 and taken as HU = 3000 v - 1000 (air 0 -> -1000, brain 0.345 -> 35, fat 0.30
-> -100), at 2 mm, int16; ``ct_vtk-headsq`` stored as HU + 1024 and written here with
``scl_inter = -1024``; and one CT **simulated** from the IXI049 T1w (``simulate_ct``), on
the same grid as that T1w, so that the face cut found on CT can be compared with the one
found on the T1w of the same head.

Targets (issue "PET and CT"): protected region byte-identical in every frame; >= 90 % of
the face's skin moved >= 2 mm (on the time-weighted frame mean for PET); a 4D output with
the same frames, order and on-disk scaling; CT values within the input's HU range; teeth
in the replaced region; the face cut on CT as accurate as on T1w.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from refacebids import engine
from refacebids.core.warp import FACE, PROTECTED, TISSUE_LABELS
from refacebids.templates import load_template

from . import measures
from .conftest import DATA, check_figures, engine_outcome, misregistration_checks
from .simulate import SOFT_TISSUE, simulate_ct, simulate_pet, tissue_classes

MOVED_SHARE = 0.90
NOISE_RATIO = (0.8, 1.2)
PET_VOXEL_MM = 3.0
DYNAMIC_FRAMES_S = (60.0, 180.0, 300.0, 900.0, 1200.0)
# (real IXI T1w head, tracer): three people, three tracers.
PET_HEADS = {
    "IXI049": ("ixi/IXI049-HH-1358_T1.nii.gz", "fdg"),
    "IXI092": ("ixi/IXI092-HH-1436_T1.nii.gz", "amyloid"),
    "IXI093": ("ixi/IXI093-HH-1359_T1.nii.gz", "tau"),
}
ENAMEL_HU = 1800.0
# The face cut on CT against the cut on the T1w of the same head (simulated CT): mean
# distance between the two cut surfaces inside the head, and the Dice of the refaced
# tissue. One 2 mm working voxel is what registrations of the same T1w with different
# settings disagree by (../shared/notes/feasibility.md: 0.65-1.1 mm).
MAX_CUT_DISTANCE_MM = 2.0
MIN_CUT_DICE = 0.9


def _coarser(volume: np.ndarray, affine: np.ndarray, zooms, target_mm: float):
    """Resample (I, J, K[, T]) to ``target_mm`` voxels over the same field of view."""
    factors = np.asarray(zooms, float) / target_mm

    def resample(spatial: np.ndarray) -> np.ndarray:
        return ndi.zoom(spatial, factors, order=1, grid_mode=True, mode="grid-constant")

    out = resample(volume) if volume.ndim == 3 else np.stack(
        [resample(volume[..., t]) for t in range(volume.shape[3])], axis=-1)
    new_affine = affine.copy()
    new_affine[:3, :3] = affine[:3, :3] / factors
    new_affine[:3, 3] = nib.affines.apply_affine(affine, (1 / factors - 1) / 2)
    return np.maximum(out, 0).astype(np.float32), new_affine


def _pet(head: str, dynamic: bool):
    """Maker of a simulated static (3D, float32) or dynamic (4D, scaled int16) PET."""
    source, tracer = PET_HEADS[head]

    def make(path: Path) -> dict:
        img = nib.load(DATA / source)
        t1w = img.get_fdata(dtype=np.float32)
        zooms = img.header.get_zooms()[:3]
        labels = tissue_classes(t1w, zooms)
        frames = DYNAMIC_FRAMES_S if dynamic else None
        activity, metadata = simulate_pet(t1w, zooms, 3, tracer=tracer, frame_durations_s=frames,
                                          labels=labels)
        activity, affine = _coarser(activity, img.affine, zooms, PET_VOXEL_MM)
        mean = activity if not dynamic else np.average(activity, axis=3, weights=frames)
        scalp = ndi.zoom((labels == SOFT_TISSUE).astype(np.float32), np.asarray(zooms) / PET_VOXEL_MM,
                         order=0, grid_mode=True, mode="grid-constant") > 0.5
        if dynamic:
            slope = float(activity.max()) / 32000.0
            out = nib.Nifti1Image(np.rint(activity / slope).astype(np.int16), affine)
            out.header.set_slope_inter(slope, 0.0)
        else:
            out = nib.Nifti1Image(activity, affine)
        out.header.set_xyzt_units("mm", "sec")
        out.to_filename(path)
        # Skin: half the scalp's uptake (the half-maximum of the blurred head edge).
        return {"metadata": metadata, "skin_level": 0.5 * float(np.median(mean[scalp]))}

    return make


def _ct_mricrogl(path: Path) -> dict:
    img = nib.load(DATA / "heads/ct_mricrogl_1mm.nii.gz")
    hu = 3000.0 * img.get_fdata(dtype=np.float32) - 1000.0
    shape = tuple(n // 2 * 2 for n in hu.shape)
    hu = hu[: shape[0], : shape[1], : shape[2]]
    hu = hu.reshape(shape[0] // 2, 2, shape[1] // 2, 2, shape[2] // 2, 2).mean(axis=(1, 3, 5))
    affine = img.affine.copy()
    affine[:3, 3] = nib.affines.apply_affine(affine, [0.5] * 3)
    affine[:3, :3] *= 2
    out = nib.Nifti1Image(np.rint(hu).astype(np.int16), affine)
    out.header.set_slope_inter(1.0, 0.0)
    out.to_filename(path)
    return {}


def _ct_vtk(path: Path) -> dict:
    img = nib.load(DATA / "heads/ct_vtk-headsq_3.2x3.2x1.5mm.nii.gz")
    out = nib.Nifti1Image(np.asanyarray(img.dataobj).astype(np.int16), img.affine)
    out.header.set_slope_inter(1.0, -1024.0)  # stored as HU + 1024
    out.to_filename(path)
    return {}


def _ct_simulated(path: Path) -> dict:
    img = nib.load(DATA / PET_HEADS["IXI049"][0])
    hu = simulate_ct(img.get_fdata(dtype=np.float32), img.header.get_zooms()[:3], 5)
    out = nib.Nifti1Image(hu.astype(np.int16), img.affine)
    out.header.set_slope_inter(1.0, 0.0)
    out.to_filename(path)
    return {}


# case -> (maker, modality, frame durations or None)
CASES = {
    "IXI049_FDG_static": (_pet("IXI049", False), "pet", None),
    "IXI049_FDG_dynamic": (_pet("IXI049", True), "pet", DYNAMIC_FRAMES_S),
    "IXI092_amyloid_static": (_pet("IXI092", False), "pet", None),
    "IXI092_amyloid_dynamic": (_pet("IXI092", True), "pet", DYNAMIC_FRAMES_S),
    "IXI093_tau_static": (_pet("IXI093", False), "pet", None),
    "IXI093_tau_dynamic": (_pet("IXI093", True), "pet", DYNAMIC_FRAMES_S),
    "mricrogl_CT_2mm": (_ct_mricrogl, "ct", None),
    "vtk_CT_headsq": (_ct_vtk, "ct", None),
    "IXI049_CT_simulated": (_ct_simulated, "ct", None),
}
PET_CASES = [c for c, (_, modality, _) in CASES.items() if modality == "pet"]
DYNAMIC_CASES = [c for c in PET_CASES if CASES[c][2] is not None]
CT_CASES = [c for c, (_, modality, _) in CASES.items() if modality == "ct"]
# Targets not reached yet, with the figure measured by this file's own code: none (the
# vtk CT's registration, refused while a CT's check overlapped the scalp over the
# cranium, 1.02, is accepted on its edges).
SHORT_OF_TARGET: dict[str, dict[str, str]] = {}


# Beyond CI's budget (--run-extended): the static amyloid and tau images (CI keeps three
# heads: FDG static and dynamic, amyloid and tau dynamic).
EXTENDED = {"IXI092_amyloid_static", "IXI093_tau_static"}


def _cases(test: str, cases) -> list:
    short = SHORT_OF_TARGET.get(test, {})
    return [
        pytest.param(case, id=case, marks=[pytest.mark.slow] + (
            [pytest.mark.xfail(reason=f"target not reached: {short[case]}", strict=True)]
            if case in short else []) + ([pytest.mark.extended] if case in EXTENDED else []))
        for case in cases
    ]


_RESULTS: dict[str, dict] = {}


def _run_engine(in_file, work: Path, modality: str, frame_durations=None) -> dict:
    result = engine.reface(in_file, load_template(), work, modality=modality,
                           frame_durations=frame_durations)
    return engine_outcome(in_file, result, work)


@pytest.fixture(scope="module")
def refaced(tmp_path_factory):
    """Simulate or convert the case's image, run the engine once, keep the results."""

    def run(case: str) -> dict:
        if case not in _RESULTS:
            make, modality, frames = CASES[case]
            work = tmp_path_factory.mktemp(case)
            in_file = work / f"{case}.nii.gz"
            extra = make(in_file)
            _RESULTS[case] = {**_run_engine(in_file, work, modality, frames), **extra,
                              "frames": frames}
        return _RESULTS[case]

    return run


def _raw(img) -> np.ndarray:
    return np.asanyarray(img.dataobj.get_unscaled())


def _mean(img, frames) -> np.ndarray:
    data = img.get_fdata(dtype=np.float32)
    return data if data.ndim == 3 else np.average(data, axis=3, weights=frames)


@pytest.mark.parametrize("case", _cases("test_registration_accepted", CASES))
def test_registration_accepted(refaced, case):
    """The engine's own check (the overlap a peak: scalp, a CT's edges) passes: the app
    would reface it."""
    record = refaced(case)["registration"]
    brain_like = "" if record["brain_like"] is None else f", brain-like share {record['brain_like']:.3f}"
    print(f"{case}: {record['overlap']} overlap peak ratio {record['peak_ratio']:.2f}, "
          f"turn ratio {record['turn_ratio']:.2f}{brain_like}")
    assert record["ok"]


@pytest.mark.parametrize("case", _cases("test_misregistration_is_refused", ["vtk_CT_headsq", "mricrogl_CT_2mm"]))
def test_misregistration_is_refused(refaced, case, tmp_path):
    """The engine's registration moved as a whole 15 mm along any axis, with or without a
    10 degree turn, or turned 10 degrees alone about the brain's centre, fails the check
    (see conftest)."""
    result = refaced(case)
    checks = misregistration_checks(result["in"].get_filename(), CASES[case][1],
                                    result["registration"]["composite"], tmp_path)
    print(f"{case} (peak/turn ratio/brain-like share): " + check_figures(checks))
    assert checks.pop("registered")["ok"]
    assert not [name for name, check in checks.items() if check["ok"]], check_figures(checks)


# A CT of the face and neck only: the mricrogl head (2 mm) cut 124 mm above its lowest
# slice, under the nose (no cranium in view). Its registration misplaces the template's
# face; the face, as the whole head's registration places it, must move this much for a
# registration to count as wrong.
FACE_ONLY_TOP_SLICE = 62
WRONG_FACE_MM = 20.0


@pytest.mark.slow
def test_a_face_only_ct_registered_wrong_is_refused(refaced, tmp_path):
    """SyN fits the template's cranium to the face, and any fit is a peak of the probes
    near it (shifted or turned); the template's brain then lies on the sinuses, mouth
    and jaw, which hold no brain values: the check refuses."""
    from refacebids.core.registration import working_image
    from refacebids.core.warp import OUTSIDE, template_coordinates, template_image_at

    whole = refaced("mricrogl_CT_2mm")
    img = whole["in"]
    cut = nib.Nifti1Image(np.asanyarray(img.dataobj)[:, :, :FACE_ONLY_TOP_SLICE], img.affine, img.header)
    cut.to_filename(tmp_path / "face_only_ct.nii.gz")
    template = load_template()
    record = engine.register_image(tmp_path / "face_only_ct.nii.gz", template, tmp_path, modality="ct")
    # Where each registration puts the template on the cut image's working grid (the
    # whole head's grid, cut), over the face as the whole head's registration places it.
    grid, grid_affine = working_image(cut.get_fdata(dtype=np.float32), cut.affine)
    right = template_coordinates(grid.shape, grid_affine, template, whole["registration"]["composite"])
    found = template_coordinates(grid.shape, grid_affine, template, record["composite"])
    face = template_image_at(template.dseg, right, order=0) == FACE
    face &= (right[..., 0] > OUTSIDE / 2) & (found[..., 0] > OUTSIDE / 2)
    off = float(np.median(np.linalg.norm(found - right, axis=-1)[face]))
    print(f"face-only CT: template face {off:.0f} mm from the whole head's registration, "
          f"{record['overlap']} overlap peak ratio {record['peak_ratio']:.2f}, turn ratio "
          f"{record['turn_ratio']:.2f}, brain-like share {record['brain_like']:.3f}")
    if off < WRONG_FACE_MM:
        pytest.skip(f"the face-only CT was registered right ({off:.0f} mm): nothing to refuse")
    assert not record["ok"]


@pytest.mark.parametrize("case", _cases("test_protected_region_byte_identical_in_every_frame", CASES))
def test_protected_region_byte_identical_in_every_frame(refaced, case):
    result = refaced(case)
    before, after = _raw(result["in"]), _raw(result["out"])
    if before.ndim == 3:
        before, after = before[..., None], after[..., None]
    protected = result["labels"] == PROTECTED
    assert protected.sum() * np.prod(result["in"].header.get_zooms()[:3]) > 300_000  # > 0.3 L
    for t in range(before.shape[3]):
        changed = before[..., t] != after[..., t]
        assert not np.any(changed & protected), f"frame {t}"
        assert not np.any(changed & ~result["replaced"]), f"frame {t}"
        assert changed.sum() > 0.3 * result["replaced"].sum(), f"frame {t} not rewritten"
    assert result["metrics"]["protected_voxels_changed"] == 0


@pytest.mark.parametrize("case", _cases("test_face_surface_moved", CASES))
def test_face_surface_moved(refaced, case):
    result = refaced(case)
    face = result["labels"] == FACE
    share = measures.face_moved_fraction(
        _mean(result["in"], result["frames"]), _mean(result["out"], result["frames"]), face,
        result["in"].header.get_zooms()[:3], level=result.get("skin_level"),
    )
    print(f"{case}: {share:.1%} of the face skin moved >= 2 mm "
          f"(engine: {result['metrics']['face_surface_moved_fraction']:.1%})")
    assert share >= MOVED_SHARE


@pytest.mark.parametrize("case", _cases("test_pet_noise_matches_each_frame", PET_CASES))
def test_pet_noise_matches_each_frame(refaced, case):
    """Noise SD in the replaced scalp and face, frame by frame, within +-20 %."""
    result = refaced(case)
    before, after = result["in"].get_fdata(dtype=np.float32), result["out"].get_fdata(dtype=np.float32)
    level = result["skin_level"]
    mean_before, mean_after = _mean(result["in"], result["frames"]), _mean(result["out"], result["frames"])
    tissue = result["replaced"] & (mean_before > level) & (mean_after > level)
    if before.ndim == 3:
        before, after = before[..., None], after[..., None]
    ratios = [measures.noise_sd(after[..., t], tissue) / measures.noise_sd(before[..., t], tissue)
              for t in range(before.shape[3])]
    print(f"{case}: noise SD ratio per frame {np.round(ratios, 2).tolist()}")
    assert all(NOISE_RATIO[0] <= r <= NOISE_RATIO[1] for r in ratios)


@pytest.mark.parametrize("case", _cases("test_4d_keeps_frames_order_and_scaling", DYNAMIC_CASES))
def test_4d_keeps_frames_order_and_scaling(refaced, case):
    result = refaced(case)
    before, after = result["in"], result["out"]
    assert after.shape == before.shape and after.shape[3] == len(DYNAMIC_FRAMES_S)
    assert after.get_data_dtype() == before.get_data_dtype() == np.int16
    assert (after.dataobj.slope, after.dataobj.inter) == (before.dataobj.slope, before.dataobj.inter)
    np.testing.assert_array_equal(after.header["pixdim"], before.header["pixdim"])
    np.testing.assert_array_equal(after.affine, before.affine)
    # Each frame's new face has that frame's own uptake: early frames (blood pool) differ
    # from late ones, and the drawn face follows the level of the frame's kept scalp.
    raw_before, raw_after = _raw(before), _raw(after)
    kept = ~result["replaced"]
    mean_before = _mean(before, result["frames"])
    head = mean_before > result["skin_level"]
    scalp = kept & head & (result["labels"] == 0)
    face = result["replaced"] & head & (_mean(after, result["frames"]) > result["skin_level"])
    scalp_levels, face_levels = [], []
    for t in range(before.shape[3]):
        assert np.array_equal(raw_before[..., t][kept], raw_after[..., t][kept]), f"frame {t}"
        scalp_levels.append(float(np.median(raw_before[..., t][scalp])))
        face_levels.append(float(np.median(raw_after[..., t][face])))
    correlation = np.corrcoef(scalp_levels, face_levels)[0, 1]
    print(f"{case}: scalp {np.round(scalp_levels).tolist()} face {np.round(face_levels).tolist()} "
          f"(correlation {correlation:.3f})")
    assert correlation >= 0.9


@pytest.mark.parametrize("case", _cases("test_ct_values_within_the_input_hu_range", CT_CASES))
def test_ct_values_within_the_input_hu_range(refaced, case):
    result = refaced(case)
    before, after = result["in"].get_fdata(), result["out"].get_fdata()
    assert (after.dtype, result["out"].get_data_dtype()) == (before.dtype, np.int16)
    assert (result["out"].dataobj.slope, result["out"].dataobj.inter) == (
        result["in"].dataobj.slope, result["in"].dataobj.inter)
    assert before.min() <= after.min() and after.max() <= before.max()
    new = after[result["replaced"]]
    # CT-plausible: air, fat, soft tissue and bone all drawn; nothing between air and fat
    # dominates (a magnitude or offset error would put the air at 0 or +1000 HU).
    assert np.mean(new < -900) > 0.05 and np.mean((new > -150) & (new < 100)) > 0.1
    assert np.mean((new > -700) & (new < -300)) < 0.1
    print(f"{case}: HU in {before.min():.0f}..{before.max():.0f}, out {after.min():.0f}..{after.max():.0f}")


@pytest.mark.parametrize("case", _cases("test_ct_teeth_are_replaced", ["mricrogl_CT_2mm"]))
def test_ct_teeth_are_replaced(refaced, case):
    """Enamel (>= 1800 HU) outside the protected region is all replaced (mricrogl has teeth)."""
    result = refaced(case)
    hu = result["in"].get_fdata()
    teeth = (hu >= ENAMEL_HU) & (result["labels"] != PROTECTED)
    assert teeth.sum() >= 20
    share = np.mean(result["replaced"][teeth])
    print(f"{case}: {share:.1%} of {teeth.sum()} enamel voxels replaced")
    assert share == 1.0


def _cut_surface(refaced_tissue: np.ndarray, head: np.ndarray, zooms) -> np.ndarray:
    """(N, 3) mm points where refaced tissue meets kept tissue, 2 voxels inside the skin."""
    inner = ndi.binary_erosion(head, iterations=2)
    boundary = refaced_tissue & ~ndi.binary_erosion(refaced_tissue) & inner
    return np.argwhere(boundary) * np.asarray(zooms, float)


@pytest.mark.slow
def test_ct_face_cut_as_accurate_as_on_t1w(refaced, tmp_path):
    """Same head, same grid: the face cut found on its (simulated) CT against its T1w's.

    The T1w cut is the engine's accepted MRI result; on the CT the face, ears, teeth and
    jaw must be cut within one working voxel of it.
    """
    from scipy.spatial import cKDTree

    ct = refaced("IXI049_CT_simulated")
    t1w = _run_engine(DATA / PET_HEADS["IXI049"][0], tmp_path, "T1w")
    zooms = t1w["in"].header.get_zooms()[:3]
    original = t1w["in"].get_fdata(dtype=np.float32)
    head = ndi.binary_fill_holes(original > measures.skin_level(original))
    tissue_ct = np.isin(ct["labels"], TISSUE_LABELS) & head
    tissue_t1w = np.isin(t1w["labels"], TISSUE_LABELS) & head
    dice = 2 * np.sum(tissue_ct & tissue_t1w) / (tissue_ct.sum() + tissue_t1w.sum())
    a, b = _cut_surface(tissue_ct, head, zooms), _cut_surface(tissue_t1w, head, zooms)
    distance = 0.5 * (cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean())
    protected_dice = 2 * np.sum((ct["labels"] == PROTECTED) & (t1w["labels"] == PROTECTED)) / (
        np.sum(ct["labels"] == PROTECTED) + np.sum(t1w["labels"] == PROTECTED))
    print(f"CT vs T1w face cut: mean distance {distance:.2f} mm, refaced-tissue Dice {dice:.3f}, "
          f"protected-region Dice {protected_dice:.3f}")
    assert distance <= MAX_CUT_DISTANCE_MM and dice >= MIN_CUT_DICE


def test_dynamic_pet_reference_is_the_time_weighted_mean(tmp_path):
    """What is registered: frames weighted by FrameDuration (plain mean without it)."""
    from refacebids import modalities

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 3000, size=(10, 10, 10, 4)).astype(np.int16)
    img = nib.Nifti1Image(frames, np.eye(4))
    img.header.set_slope_inter(0.5, 10.0)
    img.to_filename(tmp_path / "pet.nii.gz")
    durations = [30.0, 60.0, 300.0, 600.0]
    values = frames * 0.5 + 10.0
    weighted = modalities.load(tmp_path / "pet.nii.gz", "pet", durations).reference()
    np.testing.assert_allclose(weighted, np.average(values, axis=3, weights=durations), rtol=1e-5)
    for modality, known in [("pet", None), ("pet", [600.0]), ("T1w", durations)]:
        plain = modalities.load(tmp_path / "pet.nii.gz", modality, known).reference()
        np.testing.assert_allclose(plain, values.mean(axis=3), rtol=1e-5)


def test_graph_accepts_pet_and_ct():
    """PET and CT are no longer refused; the modality and frame durations reach the engine."""
    from refacebids.workflows.reface import init_reface_wf

    for modality, frames in [("pet", [60.0, 600.0]), ("ct", None)]:
        workflow = init_reface_wf(modality=modality, template=load_template(), frame_durations=frames)
        for node in ("register", "replace"):
            inputs = workflow.get_node(node).inputs
            assert inputs.modality == modality
            assert list(inputs.frame_durations) == list(frames or [])
    with pytest.raises(ValueError, match="refacing dwi images is not supported"):
        init_reface_wf(modality="dwi", template=load_template())
