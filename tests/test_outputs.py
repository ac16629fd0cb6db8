"""What refacebids writes: names, sidecars, dataset descriptions, both layouts, atomicity.

The fast tests run the real graph, output writers and BIDS validator with the engine
replaced by a stub (``stub_engine`` in conftest); tests marked ``slow`` run the real
engine on the demo dataset (``--run-slow``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from refacebids import __version__
from refacebids.cli.run import main
from refacebids.utils.atomic import (
    atomic_copy,
    atomic_open,
    remove_stale_temporaries,
    write_json,
    write_nifti,
)
from refacebids.utils.bids import is_face_image, is_head_image

from .conftest import REPO, T2W, validate


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): sha256(p)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run(bids, out, work, *extra) -> int:
    return main([str(bids), str(out), "participant", "-w", str(work), "--nprocs", "2", *extra])


EXPECTED_DERIVATIVES = {
    "dataset_description.json",
    ".bidsignore",
    "sub-01.html",
    "sub-02.html",
    "logs/CITATION.md",
    "sub-01/figures/sub-01_ses-1_desc-beforeafter_T1w.png",
    "sub-01/figures/sub-01_ses-1_desc-beforeafter_T2w.png",
    "sub-01/figures/sub-01_ses-1_trc-FDG_desc-beforeafter_pet.png",
    "sub-01/figures/sub-01_ses-2_desc-beforeafter_T1w.png",
    "sub-01/figures/sub-01_ses-2_desc-beforeafter_ct.png",
    "sub-02/figures/sub-02_run-1_desc-beforeafter_T1w.png",
}
for _stem, _suffix in [
    ("sub-01/ses-1/anat/sub-01_ses-1", "T1w"),
    ("sub-01/ses-1/anat/sub-01_ses-1", "T2w"),
    ("sub-01/ses-1/pet/sub-01_ses-1_trc-FDG", "pet"),
    ("sub-01/ses-2/anat/sub-01_ses-2", "T1w"),
    ("sub-01/ses-2/ct/sub-01_ses-2", "ct"),
    ("sub-02/anat/sub-02_run-1", "T1w"),
]:
    EXPECTED_DERIVATIVES |= {
        f"{_stem}_desc-refaced_{_suffix}.nii.gz",
        f"{_stem}_desc-refaced_{_suffix}.json",
        f"{_stem}_mod-{_suffix}_defacemask.nii.gz",
        f"{_stem}_mod-{_suffix}_defacemask.json",
        f"{_stem}_from-MNI152EXT_to-{_suffix}_mode-image_xfm.h5",
    }


@pytest.fixture
def derivatives(bids_dataset, tmp_path, stub_engine):
    before = snapshot(bids_dataset)
    out = tmp_path / "out"
    assert run(bids_dataset, out, tmp_path / "work") == 0
    assert snapshot(bids_dataset) == before, "the input dataset was modified"
    return out


def test_derivatives_names(derivatives):
    assert set(snapshot(derivatives)) == EXPECTED_DERIVATIVES


def test_derivatives_validate(derivatives):
    assert validate(derivatives) == []


def test_dataset_description(derivatives, bids_dataset):
    description = json.loads((derivatives / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["BIDSVersion"]
    assert description["GeneratedBy"][0]["Name"] == "refacebids"
    assert description["GeneratedBy"][0]["Version"] == __version__
    assert "Container" not in description["GeneratedBy"][0]
    assert description["SourceDatasets"] == [{"URL": "bids:raw:"}]
    raw = derivatives / description["DatasetLinks"]["raw"]
    assert raw.resolve() == bids_dataset.resolve()


def test_container_recorded(bids_dataset, tmp_path, stub_engine, monkeypatch):
    monkeypatch.setenv("REFACEBIDS_CONTAINER_TYPE", "docker")
    monkeypatch.setenv("REFACEBIDS_CONTAINER_TAG", "refacebids/refacebids:0.1.0")
    assert run(bids_dataset, tmp_path / "out", tmp_path / "work",
               "--participant-label", "02") == 0
    description = json.loads((tmp_path / "out/dataset_description.json").read_text())
    assert description["GeneratedBy"][0]["Container"] == {
        "Type": "docker", "Tag": "refacebids/refacebids:0.1.0"}


def test_refaced_sidecar(derivatives, bids_dataset):
    rel = "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz"
    image = derivatives / "sub-01/ses-1/anat/sub-01_ses-1_desc-refaced_T1w.nii.gz"
    sidecar = json.loads(image.with_name("sub-01_ses-1_desc-refaced_T1w.json").read_text())
    assert sidecar["Sources"] == [f"bids:raw:{rel}"]
    assert sidecar["SkullStripped"] is False
    # Original fields, inherited one included, are carried over.
    assert sidecar["Manufacturer"] == "Siemens"
    assert sidecar["MagneticFieldStrength"] == 1.5
    prov = sidecar["RefacebidsProvenance"]
    assert prov["InputSHA256"] == sha256(bids_dataset / rel)
    assert prov["OutputSHA256"] == sha256(image)
    assert prov["InputSHA256"] != prov["OutputSHA256"]
    assert prov["Software"]["refacebids"] == __version__
    assert set(prov["Software"]) >= {"antspyx", "nipype", "nibabel"}
    assert prov["Template"]["Name"] == "MNI152EXT"
    assert prov["Registration"]["similarity"] == 0.5
    assert prov["ProtectedVoxelsChanged"] == 0
    assert prov["StartTime"] <= prov["EndTime"]
    pet = json.loads((derivatives / "sub-01/ses-1/pet/"
                      "sub-01_ses-1_trc-FDG_desc-refaced_pet.json").read_text())
    assert pet["TracerName"] == "FDG" and pet["FrameDuration"] == [600]


def test_mask_and_image_agree(derivatives, bids_dataset):
    """The written image differs from the input exactly where the written mask is 1."""
    original = np.asanyarray(nib.load(bids_dataset / "sub-02/anat/sub-02_run-1_T1w.nii").dataobj)
    refaced = np.asanyarray(nib.load(
        derivatives / "sub-02/anat/sub-02_run-1_desc-refaced_T1w.nii.gz").dataobj)
    mask = np.asanyarray(nib.load(
        derivatives / "sub-02/anat/sub-02_run-1_mod-T1w_defacemask.nii.gz").dataobj)
    assert refaced.dtype == original.dtype
    assert np.array_equal(refaced[mask == 0], original[mask == 0])
    assert mask.sum() > 0 and not np.array_equal(refaced[mask == 1], original[mask == 1])


def face_hashes(bids: Path) -> set:
    """SHA-256 of every original anat/pet/ct image, compressed and uncompressed."""
    hashes = set()
    for path in bids.rglob("*.nii*"):
        if is_head_image(path.relative_to(bids).as_posix()):
            data = path.read_bytes()
            hashes |= {hashlib.sha256(data).hexdigest()}
            if path.name.endswith(".gz"):
                try:
                    hashes.add(hashlib.sha256(gzip.decompress(data)).hexdigest())
                except EOFError:  # the deliberately truncated image
                    pass
            else:
                hashes.add(hashlib.sha256(gzip.compress(data, mtime=0)).hexdigest())
    return hashes


def test_release_layout(bids_dataset, tmp_path, stub_engine):
    before = snapshot(bids_dataset)
    out, work = tmp_path / "release", tmp_path / "work"
    assert run(bids_dataset, out, work, "--output-layout", "release") == 0
    assert snapshot(bids_dataset) == before
    assert validate(out) == []
    assert validate(work / "qc") == []

    released = snapshot(out)
    # Same files as the input (face images under their original names), plus a sidecar
    # holding the provenance for the images that had none of their own.
    assert set(released) == set(before) | {
        "sub-01/ses-1/anat/sub-01_ses-1_T2w.json",
        "sub-01/ses-2/anat/sub-01_ses-2_T1w.json",
        "sub-02/anat/sub-02_run-1_T1w.json",
    }
    assert not set(released.values()) & face_hashes(bids_dataset)
    for rel in released:
        path = out / rel
        if path.name.endswith((".nii", ".nii.gz")) and is_face_image(rel):
            sidecar = json.loads((out / rel.split(".nii")[0]).with_suffix(".json").read_text())
            assert sidecar["RefacebidsProvenance"]["OutputSHA256"] == released[rel]
    # The uncompressed input stays uncompressed under its name.
    assert nib.load(out / "sub-02/anat/sub-02_run-1_T1w.nii").shape == (120, 120, 90)
    # Non-face files are identical, hard-linked on this file system.
    dwi = "sub-02/dwi/sub-02_dwi.nii.gz"
    assert released[dwi] == before[dwi]
    assert os.path.samefile(out / dwi, bids_dataset / dwi)
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "raw"
    assert description["GeneratedBy"][-1]["Name"] == "refacebids"
    # Masks, transforms and figures (which show the original face) stay outside.
    assert not list(out.rglob("*defacemask*")) and not list(out.rglob("figures"))
    assert list((work / "qc").rglob("*_mod-T1w_defacemask.nii.gz"))


def test_release_leaves_out_failed_and_unselected_faces(bids_dataset, tmp_path, stub_engine):
    broken = bids_dataset / "sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz"
    broken.write_bytes(broken.read_bytes()[:5000])
    # An anatomical image refacebids does not reface: it may show the face too.
    inplane = bids_dataset / "sub-01/ses-1/anat/sub-01_ses-1_inplaneT2.nii.gz"
    inplane.write_bytes(T2W.read_bytes())
    inplane.with_name("sub-01_ses-1_inplaneT2.json").write_text("{}")
    (bids_dataset / "sourcedata").mkdir()
    (bids_dataset / "sourcedata" / "face.dcm").write_bytes(b"DICM")
    out = tmp_path / "release"
    status = run(bids_dataset, out, tmp_path / "work", "--output-layout", "release",
                 "--session-label", "1", "--skip-bids-validation")
    assert status == 1
    released = snapshot(out)
    assert "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz" in released
    assert not [rel for rel in released if "T2" in rel or "ses-2" in rel]
    assert not [rel for rel in released if rel.startswith("sourcedata")]
    assert not [rel for rel in released if is_face_image(rel) and "sub-02" in rel]
    scans = (out / "sub-01/ses-1/sub-01_ses-1_scans.tsv").read_text().splitlines()
    assert scans == ["filename\tacq_time", "anat/sub-01_ses-1_T1w.nii.gz\t2020-01-01T10:00:00"]
    assert not set(released.values()) & face_hashes(bids_dataset)
    assert validate(out) == []


def test_output_under_input_derivatives(bids_dataset, tmp_path, stub_engine):
    out = bids_dataset / "derivatives" / "refacebids"
    assert run(bids_dataset, out, tmp_path / "work", "--participant-label", "02") == 0
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetLinks"]["raw"] == "../.."
    assert validate(out) == []


def test_atomic_copy_converts_compression_losslessly(tmp_path):
    src = tmp_path / "a.nii"
    src.write_bytes(os.urandom(4096))
    gz = atomic_copy(src, tmp_path / "b.nii.gz")
    assert gzip.decompress(gz.read_bytes()) == src.read_bytes()
    back = atomic_copy(gz, tmp_path / "c.nii")
    assert back.read_bytes() == src.read_bytes()
    # Same input, same bytes: gzip does not embed a timestamp.
    assert atomic_copy(src, tmp_path / "d.nii.gz").read_bytes() == gz.read_bytes()


def test_interrupted_write_keeps_the_old_file(tmp_path):
    target = write_json(tmp_path / "x.json", {"old": True})
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as fobj:
            fobj.write('{"new"')
            raise RuntimeError("interrupted")
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


@pytest.mark.parametrize("killed_write", [
    "with atomic_open(target):\n    os.kill(os.getpid(), signal.SIGKILL)",
    "write_nifti(KilledWhileSaving(np.zeros((2, 2, 2), 'int16'), np.eye(4)), target)",
])
def test_killed_writer_leaves_a_temporary_the_next_run_sweeps(tmp_path, killed_write):
    """A SIGKILL mid-write cannot clean up; the sweep removes exactly what it left."""
    keep = [tmp_path / ".bidsignore", tmp_path / "sub-01" / ".notes.tmp.txt"]
    for path in keep:
        path.parent.mkdir(exist_ok=True)
        path.write_text("not ours")
    killed = subprocess.run([sys.executable, "-c", f"""
import os, signal
import nibabel as nib, numpy as np
from refacebids.utils.atomic import atomic_open, write_nifti
target = {str(tmp_path / "sub-01" / "img.nii.gz")!r}
class KilledWhileSaving(nib.Nifti1Image):
    def to_filename(self, filename):
        os.kill(os.getpid(), signal.SIGKILL)
{killed_write}
"""])
    assert killed.returncode == -signal.SIGKILL
    left = [p for p in tmp_path.rglob("*") if p.is_file() and p not in keep]
    assert len(left) == 1 and left[0].name.startswith(".img.nii.gz."), left
    assert remove_stale_temporaries(tmp_path) == left
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == sorted(keep)


def test_write_nifti(tmp_path):
    img = nib.Nifti1Image(np.arange(24, dtype="int16").reshape(2, 3, 4), np.eye(4))
    path = write_nifti(img, tmp_path / "sub" / "img.nii.gz")
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    assert np.array_equal(np.asanyarray(nib.load(path).dataobj), img.get_fdata())
    assert [p.name for p in path.parent.iterdir()] == ["img.nii.gz"]


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["derivatives", "release"])
def test_demo_dataset_with_the_engine(tmp_path, tmp_path_factory, layout):
    """The real engine on the demo heads: every image refaced, brain voxels untouched.

    Both layouts share one work dir, so the second reuses the engine's cached results.
    """
    demo = REPO / "demo" / "ds-demo"
    out, work = tmp_path / "out", tmp_path_factory.getbasetemp() / "demo_work"
    assert run(demo, out, work, "--output-layout", layout) == 0
    assert validate(out) == []
    qc = out if layout == "derivatives" else work / "qc"
    for original in sorted(demo.glob("sub-*/anat/*_T1w.nii.gz")):
        stem = original.name[: -len("_T1w.nii.gz")]
        folder = original.parent.relative_to(demo)
        refaced = (out / folder / (f"{stem}_desc-refaced_T1w.nii.gz"
                                   if layout == "derivatives" else original.name))
        mask = np.asanyarray(nib.load(qc / folder / f"{stem}_mod-T1w_defacemask.nii.gz").dataobj)
        before = np.asanyarray(nib.load(original).dataobj)
        after = np.asanyarray(nib.load(refaced).dataobj)
        assert after.dtype == before.dtype
        assert np.array_equal(after[mask == 0], before[mask == 0])
        assert mask.sum() > 0 and not np.array_equal(after[mask == 1], before[mask == 1])
        assert sha256(refaced) != sha256(original)
        sidecar = json.loads(refaced.with_name(refaced.name.split(".")[0] + ".json").read_text())
        assert sidecar["RefacebidsProvenance"]["ProtectedVoxelsChanged"] == 0
        report = qc / f"{folder.parts[0]}.html"
        images = re.findall(r'<img[^>]+src="([^"]+)"', report.read_text())
        assert len(images) == 2 and all((qc / src).is_file() for src in images)


@pytest.mark.slow
@pytest.mark.extended  # tests/test_pet_ct.py covers the engine; this, the app around it
def test_pet_and_ct_refaced_by_the_app(tmp_path):
    """The real engine through the app on a dynamic PET and a CT (formerly refused).

    The PET is simulated (tests/simulate.py, seed 3) from a real IXI T1w head: FDG, 4
    frames of different lengths, 3 mm, int16 with a scale factor; the CT is the real
    ``ct_mricrogl`` head in HU at 3 mm, stored as HU + 1024 (``scl_inter`` -1024).
    """
    from scipy import ndimage as ndi

    from .conftest import DATA, PET_SIDECAR
    from .simulate import simulate_pet

    frames = [60.0, 240.0, 600.0, 1200.0]
    bids = tmp_path / "bids"
    (bids / "sub-01/pet").mkdir(parents=True)
    (bids / "sub-01/ct").mkdir(parents=True)
    (bids / "dataset_description.json").write_text(
        json.dumps({"Name": "pet ct", "BIDSVersion": "1.10.0", "DatasetType": "raw"}))
    t1w = nib.load(DATA / "ixi/IXI049-HH-1358_T1.nii.gz")
    activity, metadata = simulate_pet(t1w.get_fdata(dtype=np.float32), t1w.header.get_zooms()[:3], 3,
                                      frame_durations_s=frames)
    activity = np.stack([ndi.zoom(activity[..., t], 2 / 3, order=1) for t in range(len(frames))], -1)
    affine = t1w.affine.copy()
    affine[:3, :3] *= 1.5
    slope = float(activity.max()) / 32000
    pet = nib.Nifti1Image(np.rint(np.maximum(activity, 0) / slope).astype(np.int16), affine)
    pet.header.set_slope_inter(slope, 0.0)
    pet.to_filename(bids / "sub-01/pet/sub-01_trc-FDG_pet.nii.gz")
    sidecar = {**PET_SIDECAR, **metadata}
    (bids / "sub-01/pet/sub-01_trc-FDG_pet.json").write_text(json.dumps(sidecar))
    real_ct = nib.load(DATA / "heads/ct_mricrogl_1mm.nii.gz")  # stored 0-1: HU = 3000 v - 1000
    hu = 3000.0 * real_ct.get_fdata(dtype=np.float32)[:207, :255, :225] - 1000.0
    hu = hu.reshape(69, 3, 85, 3, 75, 3).mean(axis=(1, 3, 5))
    ct_affine = real_ct.affine.copy()
    ct_affine[:3, 3] = nib.affines.apply_affine(real_ct.affine, [1.0] * 3)
    ct_affine[:3, :3] *= 3
    ct = nib.Nifti1Image(np.rint(hu + 1024).astype(np.int16), ct_affine)
    ct.header.set_slope_inter(1.0, -1024.0)
    ct.to_filename(bids / "sub-01/ct/sub-01_ct.nii.gz")
    (bids / "sub-01/ct/sub-01_ct.json").write_text(json.dumps({"Manufacturer": "MRIcroGL"}))

    out = tmp_path / "out"
    assert run(bids, out, tmp_path / "work", "--skip-bids-validation") == 0
    assert validate(out) == []
    for stem, suffix in [("sub-01/pet/sub-01_trc-FDG", "pet"), ("sub-01/ct/sub-01", "ct")]:
        original = nib.load(bids / f"{stem}_{suffix}.nii.gz")
        refaced = nib.load(out / f"{stem}_desc-refaced_{suffix}.nii.gz")
        mask = np.asanyarray(nib.load(out / f"{stem}_mod-{suffix}_defacemask.nii.gz").dataobj) > 0
        assert refaced.shape == original.shape and refaced.get_data_dtype() == np.int16
        assert (refaced.dataobj.slope, refaced.dataobj.inter) == (original.dataobj.slope,
                                                                  original.dataobj.inter)
        before = np.asanyarray(original.dataobj.get_unscaled())
        after = np.asanyarray(refaced.dataobj.get_unscaled())
        assert np.array_equal(before[~mask], after[~mask]) and mask.any()
        written = json.loads((out / f"{stem}_desc-refaced_{suffix}.json").read_text())
        provenance = written.pop("RefacebidsProvenance")
        assert provenance["ProtectedVoxelsChanged"] == 0
        expected = sidecar if suffix == "pet" else {"Manufacturer": "MRIcroGL"}
        assert written == {**expected, "Sources": [f"bids:raw:{stem}_{suffix}.nii.gz"],
                           "SkullStripped": False}
