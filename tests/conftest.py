"""Shared fixtures: real heads from ../shared/data, small BIDS datasets built from them."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sys
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

os.environ.setdefault("NIPYPE_NO_ET", "1")
os.environ.setdefault("TEMPLATEFLOW_AUTOUPDATE", "0")
# ITK takes its thread count once per process, when antspyx's library loads, and a
# registration's result depends on it (the vtk CT's face: 95 % moved with one thread,
# 85 % with two). Tests that import antspyx directly would load it with a thread per
# core, and the engine's registrations later in the same test worker would run on that
# many, so that a result hung on the order pytest-xdist handed out the tests. Every
# test process runs ITK on one thread, as `refacebids` does by default.
os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("REFACEBIDS_TEST_DATA", REPO.parent / "shared" / "data"))
VALIDATOR = Path(sys.executable).parent / "bids-validator-deno"

T1W_A = DATA / "ixi" / "IXI049-HH-1358_T1.nii.gz"
T1W_B = DATA / "ixi" / "IXI092-HH-1436_T1.nii.gz"
T2W = DATA / "heads" / "t2w_vtk-headmr_4mm.nii.gz"
CT = DATA / "heads" / "ct_vtk-headsq_3.2x3.2x1.5mm.nii.gz"

PET_SIDECAR = {
    "Manufacturer": "Siemens",
    "ManufacturersModelName": "Biograph",
    "Units": "Bq/mL",
    "TracerName": "FDG",
    "TracerRadionuclide": "F18",
    "InjectedRadioactivity": 185,
    "InjectedRadioactivityUnits": "MBq",
    "InjectedMass": "n/a",
    "InjectedMassUnits": "n/a",
    "SpecificRadioactivity": "n/a",
    "SpecificRadioactivityUnits": "n/a",
    "ModeOfAdministration": "bolus",
    "TimeZero": "10:00:00",
    "ScanStart": 0,
    "InjectionStart": 0,
    "FrameTimesStart": [0],
    "FrameDuration": [600],
    "AcquisitionMode": "list mode",
    "ImageDecayCorrected": True,
    "ImageDecayCorrectionTime": 0,
    "ReconMethodName": "OSEM",
    "ReconMethodParameterLabels": ["subsets", "iterations"],
    "ReconMethodParameterUnits": ["none", "none"],
    "ReconMethodParameterValues": [21, 3],
    "ReconFilterType": "none",
    "AttenuationCorrection": "CT-based",
}


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run tests marked slow (the full engine on real heads)")
    parser.addoption("--run-extended", action="store_true", default=False,
                     help="also run tests marked extended (the costliest evidence runs, "
                     "beyond CI's 30-minute budget)")


def pytest_collection_modifyitems(config, items):
    skips = {
        "slow": (config.getoption("--run-slow"), "slow: enable with --run-slow"),
        "extended": (config.getoption("--run-extended"), "extended: enable with --run-extended"),
    }
    for item in items:
        for keyword, (enabled, reason) in skips.items():
            if keyword in item.keywords and not enabled:
                item.add_marker(pytest.mark.skip(reason=reason))


def engine_outcome(in_file, result: dict, work: Path) -> dict:
    """The images and numbers of one ``engine.reface`` run, loaded for the tests' measures
    (its metrics also written to ``work/metrics.json``, for reading after a failure)."""
    (work / "metrics.json").write_text(json.dumps(result["metrics"], indent=2, default=str))
    return {
        "in": nib.load(in_file), "out": nib.load(result["out_file"]),
        "replaced": np.asanyarray(nib.load(result["mask_file"]).dataobj) > 0,
        "labels": np.load(result["masks"].labels),
        "registration": result["registration"], "metrics": result["metrics"],
    }


# The registration moved as a whole (labels and brain too) the way a failed one would
# be: 15 mm along each axis of the world, and as much with a 10 degree turn about another
# axis through the registered brain's centre, and turned only, about each axis.
MISREGISTRATION_MM = 15.0
MISREGISTRATION_DEGREES = 10.0


def misregistration_checks(in_file, modality: str, composite: str, work: Path,
                           frame_durations=None) -> dict[str, dict]:
    """The registration check of the engine's registration moved rigidly.

    The move is applied to the template's side of the registration (the composite maps
    an image point to the template, then the move maps it on), so its turns are about
    the template's axes through the brain's centre in template space: the template
    position of the image's in-view brain.

    Returns
    -------
    dict
        Move name -> :func:`refacebids.core.registration.registration_quality`'s
        record, ``"registered"`` first; the check's own overlap for ``modality``
        (:func:`refacebids.modalities.registration_overlap`). Names: ``"shift +x"``
        (15 mm along world +x, LPS), ``"shift -y turn z"`` (and turned about z),
        ``"turn +z"`` (turned only).
    """
    import ants

    from refacebids import modalities
    from refacebids.core.geometry import RAS_TO_LPS
    from refacebids.core.registration import registration_quality, working_image
    from refacebids.core.warp import template_coordinates, template_image_at
    from refacebids.templates import load_template

    template = load_template()
    head = modalities.load(in_file, modality, frame_durations)
    reference, template_head = modalities.registration_inputs(head, template, modality)
    image, affine = working_image(reference, head.affine)
    overlap = modalities.registration_overlap(modality)
    coords = template_coordinates(image.shape, affine, template, composite)
    brain = template_image_at(template.brain_mask, coords) > 0.5
    # The brain's centre in the template's ITK (LPS) world, about which the moves turn.
    centre = (RAS_TO_LPS @ np.r_[coords[brain].mean(axis=0), 1.0])[:3]

    def moved(name: str, shift_axis=None, sign: int = 1, turn_axis=None) -> str:
        shift = np.zeros(3)
        if shift_axis is not None:
            shift[shift_axis] = sign * MISREGISTRATION_MM
        rotation = np.eye(3)
        if turn_axis is not None:
            a, b = [axis for axis in range(3) if axis != turn_axis]
            angle = np.deg2rad(sign * MISREGISTRATION_DEGREES)
            rotation[[a, a, b, b], [a, b, a, b]] = np.cos(angle), -np.sin(angle), np.sin(angle), np.cos(angle)
        transform = ants.create_ants_transform(transform_type="AffineTransform", dimension=3,
                                               matrix=rotation, translation=tuple(shift),
                                               center=tuple(centre))
        path = work / f"{name.replace(' ', '_')}.mat"
        ants.write_transform(transform, str(path))
        return str(path)

    moves = {"registered": [composite]}
    for axis, letter in enumerate("xyz"):
        for sign in (-1, 1):
            moves[f"shift {'-+'[sign > 0]}{letter}"] = [composite, moved(f"s{axis}{sign}", axis, sign)]
            turn = (axis + 1) % 3
            moves[f"shift {'-+'[sign > 0]}{letter} turn {'xyz'[turn]}"] = [
                composite, moved(f"st{axis}{sign}", axis, sign, turn)]
            moves[f"turn {'-+'[sign > 0]}{letter}"] = [composite, moved(f"t{axis}{sign}", None, sign, axis)]
    return {name: registration_quality(image, affine, template_head, transforms, overlap=overlap)
            for name, transforms in moves.items()}


def check_figures(checks: dict[str, dict]) -> str:
    """One line of :func:`misregistration_checks`' figures: peak ratio (shifted probes) /
    turn ratio (turned probes), and a CT's brain-like share."""
    def figures(check):
        text = f"{check['peak_ratio']:.2f}/{check['turn_ratio']:.2f}"
        return text if check["brain_like"] is None else f"{text}/{check['brain_like']:.3f}"
    return ", ".join(f"{name} {figures(check)}" for name, check in checks.items())


@pytest.fixture(scope="session", autouse=True)
def _real_data():
    if not T1W_A.exists():
        pytest.skip(f"test data not found in {DATA} (set REFACEBIDS_TEST_DATA)")


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


@pytest.fixture
def bids_dataset(tmp_path) -> Path:
    """A valid BIDS dataset of real heads: 2 subjects, sessions, T1w/T2w/PET/CT and a dwi.

    The PET image is a real T1w head stored as a one-frame PET (no PET head with a face
    is redistributable); the dwi is there to be skipped.
    """
    root = tmp_path / "bids"
    _write_json(root / "dataset_description.json", {
        "Name": "refacebids test", "BIDSVersion": "1.10.0", "DatasetType": "raw",
        "License": "CC-BY-SA-3.0", "Authors": ["IXI dataset, brain-development.org"],
    })
    (root / "README").write_text("Test dataset built from IXI and VTK heads for refacebids.\n"
                                 * 10)
    (root / "participants.tsv").write_text("participant_id\tage\nsub-01\t30\nsub-02\t40\n")
    # Inherited sidecar at the top; subject-level value overrides it.
    _write_json(root / "T1w.json", {"MagneticFieldStrength": 1.5, "Manufacturer": "Philips"})
    _copy(T1W_A, root / "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz")
    _write_json(root / "sub-01/ses-1/anat/sub-01_ses-1_T1w.json", {"Manufacturer": "Siemens"})
    _copy(T2W, root / "sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz")
    _copy(T1W_A, root / "sub-01/ses-1/pet/sub-01_ses-1_trc-FDG_pet.nii.gz")
    _write_json(root / "sub-01/ses-1/pet/sub-01_ses-1_trc-FDG_pet.json", PET_SIDECAR)
    _copy(T1W_B, root / "sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz")
    _copy(CT, root / "sub-01/ses-2/ct/sub-01_ses-2_ct.nii.gz")
    _write_json(root / "sub-01/ses-2/ct/sub-01_ses-2_ct.json", {"Manufacturer": "VTK"})
    (root / "sub-01/ses-1/sub-01_ses-1_scans.tsv").write_text(
        "filename\tacq_time\nanat/sub-01_ses-1_T1w.nii.gz\t2020-01-01T10:00:00\n"
        "anat/sub-01_ses-1_T2w.nii.gz\t2020-01-01T10:10:00\n"
    )
    # Uncompressed on purpose: the release keeps the original file name (.nii).
    sub02 = root / "sub-02/anat/sub-02_run-1_T1w.nii"
    sub02.parent.mkdir(parents=True)
    sub02.write_bytes(gzip.decompress(T1W_B.read_bytes()))
    t2w = nib.load(T2W)
    dwi = np.stack([np.asanyarray(t2w.dataobj)] * 2, axis=-1)  # b=0 twice, 4D like a dwi
    (root / "sub-02/dwi").mkdir(parents=True)
    nib.Nifti1Image(dwi, t2w.affine).to_filename(root / "sub-02/dwi/sub-02_dwi.nii.gz")
    (root / "sub-02/dwi/sub-02_dwi.bval").write_text("0 0\n")
    (root / "sub-02/dwi/sub-02_dwi.bvec").write_text("0 0\n0 0\n0 0\n")
    _write_json(root / "sub-02/dwi/sub-02_dwi.json", {"PhaseEncodingDirection": "j"})
    (root / ".bidsignore").write_text("**/ct\n")
    return root


def _stub_init_reface_wf(*, modality, template, omp_nthreads=1, mem_gb=1.6, frame_durations=None,
                         through_anat=False, name="reface_wf"):
    """Stand-in for the engine: sets a slab of the image to its maximum, as its "face".

    It fails like the engine does on an image it cannot read, which is what the
    failure-isolation tests need.
    """
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    def fake_reface(in_file, template_name):
        import json
        import os
        import time
        from pathlib import Path

        import nibabel as nib
        import numpy as np

        from refacebids.core.image import load_head_image, write_like

        # Tests that need a run to last (two runs at once) slow it down.
        time.sleep(float(os.environ.get("REFACEBIDS_TEST_STUB_DELAY", "0")))
        # Reading the data raises on a truncated or corrupt file, as the engine would.
        head = load_head_image(in_file)
        img, raw = head.img, head.raw.copy()
        # "Replace" the first 5 slices along j with the maximum so that the output differs
        # from the input wherever the mask says so, and only there. The engine's writer
        # is used, so that header scrubbing is exercised.
        mask = np.zeros(img.shape[:3], "uint8")
        mask[:, :5, :] = 1
        raw[mask.astype(bool)] = raw.max()
        out = Path("refaced.nii.gz").absolute()
        write_like(raw, head, out)
        mask_file = Path("mask.nii.gz").absolute()
        nib.Nifti1Image(mask, img.affine).to_filename(mask_file)
        xfm = Path("xfm.h5").absolute()
        xfm.write_bytes(b"stub transform")
        png = Path("before_after.png").absolute()
        png.write_bytes(b"\x89PNG stub")
        metrics = Path("metrics.json").absolute()
        metrics.write_text(json.dumps({
            "registration": {"method": "stub", "resolution_mm": 2.0, "metric": "MI",
                             "similarity": 0.5, "ok": True},
            "protected_voxels_changed": 0, "replaced_voxels": int(mask.sum()),
            "template": {"name": template_name, "sha256": "0" * 64}, "warnings": [],
        }))
        return str(out), str(mask_file), str(xfm), str(metrics), [str(png)]

    workflow = pe.Workflow(name=name)
    # The inputs and outputs a PET registered through its session's T1w is connected by.
    anat_fields = ["anat_file", "anat_xfm", "anat_registration"] if through_anat else []
    inputnode = pe.Node(niu.IdentityInterface(fields=["in_file", *anat_fields]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(
        fields=["out_file", "mask_file", "xfm_file", "registration_file", "metrics_file",
                "reportlets"]),
        name="outputnode")
    fields = ["out_file", "mask_file", "xfm_file", "metrics_file", "reportlets"]
    stub = pe.Node(niu.Function(function=fake_reface, input_names=["in_file", "template_name"],
                                output_names=fields), name="stub")
    stub.inputs.template_name = template.name
    workflow.connect([(inputnode, stub, [("in_file", "in_file")]),
                      (stub, outputnode, [(f, f) for f in fields])])
    return workflow


@pytest.fixture
def stub_engine(monkeypatch):
    """Replace ``refacebids.workflows.reface`` by the copy-through stub above."""
    module = types.ModuleType("refacebids.workflows.reface")
    module.init_reface_wf = _stub_init_reface_wf
    monkeypatch.setitem(sys.modules, "refacebids.workflows.reface", module)
    return module


def validate(path: Path) -> list[dict]:
    """Errors the official BIDS validator reports on ``path``."""
    import subprocess

    result = subprocess.run([str(VALIDATOR), "--format", "json", str(path)],
                            capture_output=True, text=True, check=False)
    issues = json.loads(result.stdout)["issues"]["issues"]
    return [i for i in issues if i.get("severity") == "error"]
