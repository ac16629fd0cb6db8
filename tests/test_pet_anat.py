"""``--pet-anat``: a PET registered through the T1w of its session.

The head is the real 2 mm T1w ``t1w_xa30_2mm`` (../shared/data/heads). Its PET is
**simulated** from it (tests/simulate.py ``simulate_pet``, seeded: FDG, 3 frames, 5 mm
FWHM, count-dependent noise) and then **moved rigidly** by a known motion (6 and 4
degrees about two axes and a 11 mm shift: the head lay differently in the PET scanner)
onto a 3 mm grid, so that the rigid registration to the T1w has a known answer.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from refacebids.cli.run import main
from refacebids.core.anat import compose_through, register_rigid
from refacebids.core.warp import FACE, TISSUE_LABELS
from refacebids.templates import load_template

from . import measures
from .conftest import DATA, PET_SIDECAR
from .simulate import GM, SOFT_TISSUE, WM, simulate_pet, tissue_classes

HEAD = DATA / "heads" / "t1w_xa30_2mm.nii.gz"
# Rotations (degrees) about the world x and z axes, then a shift (mm): a head that lay
# differently in the PET scanner than in the MRI.
MOTION_DEGREES = (6.0, -4.0)
MOTION_SHIFT_MM = (5.0, -8.0, 6.0)
MAX_RIGID_ERROR_MM = 1.0
FRAMES_S = (300.0, 600.0, 900.0)
PET_VOXEL_MM = 3.0
MOVED_SHARE = 0.90
MIN_CUT_DICE_THROUGH_T1W = 0.95


def rigid_motion(degrees_x: float, degrees_z: float, shift_mm) -> np.ndarray:
    """(4, 4) world (RAS) transform: rotate about x, then about z, then shift."""
    def rotation(axes, degrees):
        cos, sin = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
        matrix = np.eye(4)
        i, j = axes
        matrix[i, i], matrix[i, j], matrix[j, i], matrix[j, j] = cos, -sin, sin, cos
        return matrix

    motion = rotation((0, 1), degrees_z) @ rotation((1, 2), degrees_x)
    motion[:3, 3] = shift_mm
    return motion


MOTION = rigid_motion(*MOTION_DEGREES, MOTION_SHIFT_MM)


def moved(volume: np.ndarray, affine: np.ndarray, motion: np.ndarray, out_affine: np.ndarray,
          out_shape: tuple, order: int = 1) -> np.ndarray:
    """``volume`` (I, J, K[, T]) moved by ``motion`` (world), sampled on a new grid.

    The new image at world point ``x`` holds the old one at ``motion^-1 x``.
    """
    voxel_map = np.linalg.inv(affine) @ np.linalg.inv(motion) @ out_affine

    def one(spatial):
        return ndi.affine_transform(spatial, voxel_map[:3, :3], voxel_map[:3, 3],
                                    output_shape=out_shape, order=order, mode="constant")

    if volume.ndim == 3:
        return one(volume)
    return np.stack([one(volume[..., t]) for t in range(volume.shape[3])], axis=-1)


def ants_points(points_ras: np.ndarray, transform: str) -> np.ndarray:
    """(N, 3) RAS points through one ITK transform file, as ``ants.apply_transforms`` uses it
    (points of the fixed image to points of the moving image)."""
    import ants
    import pandas as pd

    lps = pd.DataFrame(points_ras * [-1, -1, 1], columns=["x", "y", "z"])
    return ants.apply_transforms_to_points(3, lps, [transform]).values * [-1, -1, 1]


def head_points(volume: np.ndarray, affine: np.ndarray, count: int, seed: int) -> np.ndarray:
    """(count, 3) RAS centres of random voxels in the head (above a fifth of the mean)."""
    inside = np.argwhere(volume > 0.2 * volume.mean())
    chosen = inside[np.random.default_rng(seed).choice(len(inside), count, replace=False)]
    return nib.affines.apply_affine(affine, chosen)


def test_rigid_to_the_t1w_recovers_a_known_motion_and_composes(tmp_path):
    """Register a moved copy of a real head to it; the composed transform is the chain."""
    import ants

    img = nib.load(HEAD)
    t1w = img.get_fdata(dtype=np.float32)
    copy = moved(t1w, img.affine, MOTION, img.affine, t1w.shape)
    rigid = register_rigid(copy, img.affine, t1w, img.affine, str(tmp_path / "rigid_"))

    points = head_points(copy, img.affine, 2000, seed=0)
    error = np.linalg.norm(ants_points(points, rigid.transform)
                           - nib.affines.apply_affine(np.linalg.inv(MOTION), points), axis=1)
    print(f"rigid: mean error {error.mean():.2f} mm, max {error.max():.2f} mm, "
          f"similarity {rigid.similarity:.3f}")
    assert error.max() <= MAX_RIGID_ERROR_MM

    # A template -> T1w transform as antspyx writes it (affine + SyN field), cheaply at 6 mm.
    coarse = (6.0, 6.0, 6.0)
    template = ants.resample_image(ants.image_read(str(load_template().t1w)), coarse, False, 0)
    head = ants.resample_image(ants.image_read(str(HEAD)), coarse, False, 0)
    t1w_registration = ants.registration(head, template, "SyN", reg_iterations=(10, 0, 0),
                                         outprefix=str(tmp_path / "tpl_"),
                                         write_composite_transform=True)
    # And a single transform (not a composite) of the kind a T1w's could also be.
    affine_only = str(tmp_path / "affine.h5")
    ants.write_transform(ants.create_ants_transform(
        transform_type="AffineTransform", dimension=3, matrix=np.diag([1.1, 0.9, 1.05]),
        translation=(4.0, -3.0, 2.0)), affine_only)
    for anat_transform in (t1w_registration["fwdtransforms"], affine_only):
        composed = compose_through(rigid.transform, anat_transform, str(tmp_path / "composed.h5"))
        chained = ants_points(ants_points(points, rigid.transform), anat_transform)
        assert np.abs(ants_points(points, composed) - chained).max() < 1e-3


def test_composed_transform_failing_the_check_falls_back_to_the_own_registration(
        tmp_path, monkeypatch):
    """A T1w transform that misplaces the template (identity: the template 30 mm off this
    head) fails the scalp-overlap check; the image's own registration is used and the
    record says why. The own registration is the engine's, tested elsewhere: stood in."""
    import ants

    from refacebids import engine, through_anat

    own = {"composite": "own.h5", "similarity": -0.6, "head_dice": 0.8, "peak_ratio": 1.6,
           "ok": True, "settings": {"stages": ["Rigid", "Affine", "SyN"], "path": "own"}}
    calls = []
    monkeypatch.setattr(engine, "register_image",
                        lambda *args, **kwargs: calls.append((args, kwargs)) or dict(own))
    misplaced = str(tmp_path / "identity.h5")
    ants.write_transform(ants.create_ants_transform(transform_type="AffineTransform",
                                                    dimension=3), misplaced)
    record_file = tmp_path / "anat_registration.json"
    record_file.write_text(json.dumps({"settings": {"stages": ["Rigid", "Affine", "SyN"]}}))
    # The head moved, as a second image of the session would be (an identical copy makes
    # the rigid optimiser wander at its optimum for all its iterations).
    img = nib.load(HEAD)
    image = tmp_path / "moved.nii.gz"
    nib.Nifti1Image(moved(img.get_fdata(dtype=np.float32), img.affine, MOTION, img.affine,
                          img.shape), img.affine).to_filename(image)
    work = tmp_path / "work"
    work.mkdir()
    record = through_anat.register_through_anat(image, HEAD, misplaced, record_file,
                                                load_template(), work, modality="T1w")
    assert len(calls) == 1 and record["ok"] and record["composite"] == "own.h5"
    assert record["settings"]["path"] == "own" and record["settings"]["anat"]["ok"] is False
    assert record["warnings"] == [record["warnings"][0]]
    assert record["warnings"][0].startswith("registration through t1w_xa30_2mm.nii.gz failed")
    assert json.loads((work / "registration.json").read_text()) == record


def test_graph_waits_for_the_session_t1w_only_with_auto():
    """The PET's register node takes the T1w's transform; none, or no T1w, no such edge."""
    from nipype.pipeline.engine.utils import generate_expanded_graph

    from refacebids.utils.bids import ImageJob
    from refacebids.workflows.base import init_refacebids_wf

    def job(relpath, suffix, session):
        entities = {"sub": "01", **({"ses": session} if session else {})}
        return ImageJob(Path("/data") / relpath, relpath, "01", session,
                        "pet" if suffix == "pet" else "anat", suffix, entities, suffix, {})

    t1w = job("sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz", "T1w", "1")
    pet = job("sub-01/ses-1/pet/sub-01_ses-1_pet.nii.gz", "pet", "1")
    lone_pet = job("sub-01/ses-2/pet/sub-01_ses-2_pet.nii.gz", "pet", "2")
    for pet_anat, expected in [("auto", {("T1w", "ses_1_pet")}), ("none", set())]:
        workflow = init_refacebids_wf(
            jobs=[t1w, pet, lone_pet], output_dir=Path("/out"), work_dir=Path("/work"),
            template=load_template(), omp_nthreads=1, output_layout="derivatives",
            bids_dir=Path("/data"), pet_anat=pet_anat)
        graph = generate_expanded_graph(workflow._create_flat_graph())
        edges = {(u.fullname, v.fullname, tuple(sorted(c[1] for c in data["connect"])))
                 for u, v, data in graph.edges(data=True)
                 if "T1w" in u.fullname and "_pet_" in v.fullname}
        found = {("T1w" if ".reface_wf.register" in u else u, "ses_1_pet" if "ses_1_pet" in v else v)
                 for u, v, ports in edges if ports == ("anat_registration", "anat_xfm")}
        assert found == expected
        if expected:  # the T1w's registration, straight into the PET's registration
            assert {v.rsplit(".", 1)[-1] for _, v, _ in edges} == {"register"}


def _register_stand_in(in_file, anat_xfm=None):
    """A registration that fails on the T1w, as the engine's check would."""
    if "_T1w" in in_file:
        raise RuntimeError("template registration failed (stand-in)")
    return (in_file,) * 6


def _reface_stand_in(*, modality, template, through_anat=False, name="reface_wf", **_):
    """Only a register node, feeding every output: a PET behind a failed T1w never runs."""
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    fields = ["out_file", "mask_file", "xfm_file", "registration_file", "metrics_file",
              "reportlets"]
    anat_fields = ["anat_file", "anat_xfm", "anat_registration"] if through_anat else []
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["in_file", *anat_fields]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=fields), name="outputnode")
    register = pe.Node(niu.Function(function=_register_stand_in,
                                    input_names=["in_file", "anat_xfm"] if through_anat else ["in_file"],
                                    output_names=fields), name="register")
    workflow.connect([
        (inputnode, register, [("in_file", "in_file")]
         + ([("anat_xfm", "anat_xfm")] if through_anat else [])),
        (register, outputnode, [(f, f) for f in fields]),
    ])
    return workflow


def test_pet_behind_a_failed_t1w_is_reported_with_that_reason(tmp_path, monkeypatch, capfd):
    import sys
    import types

    module = types.ModuleType("refacebids.workflows.reface")
    module.init_reface_wf = _reface_stand_in
    monkeypatch.setitem(sys.modules, "refacebids.workflows.reface", module)
    bids = tmp_path / "bids"
    t1w = "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz"
    pet = "sub-01/ses-1/pet/sub-01_ses-1_trc-FDG_pet.nii.gz"
    for relpath in (t1w, pet):
        (bids / relpath).parent.mkdir(parents=True)
        shutil.copyfile(HEAD, bids / relpath)
    (bids / pet.replace(".nii.gz", ".json")).write_text(json.dumps(PET_SIDECAR))
    (bids / "dataset_description.json").write_text(
        json.dumps({"Name": "pet-anat", "BIDSVersion": "1.10.0"}))
    assert main([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                 "--skip-bids-validation"]) == 1
    assert capfd.readouterr().err.splitlines() == [
        f"refacebids: ERROR: {t1w}: template registration failed (stand-in)",
        f"refacebids: ERROR: {pet}: its session's T1w {t1w} failed, and --pet-anat auto "
        "registers it through the T1w; rerun with --pet-anat none",
    ]


def test_methods_say_which_images_went_through_their_t1w():
    from refacebids.reports.methods import dataset_methods, methods_paragraph

    through = methods_paragraph("pet", "MNI152EXT", registration={"path": "anat"})
    assert "aligned rigidly to the T1w of its session" in through
    assert "aligned rigidly" not in methods_paragraph("pet", "MNI152EXT")
    provenance = {"Template": {"Name": "MNI152EXT"}, "Software": {"refacebids": "0.1.0"}}
    images = [("T1w", {**provenance, "Registration": {"path": "own"}}),
              ("pet", {**provenance, "Registration": {"path": "anat"}})]
    text = dataset_methods(images)
    assert text.count("aligned rigidly") == 1 and "pet images whose session had a T1w" in text


def _pet_session(root: Path) -> dict:
    """A BIDS session with the real T1w and a dynamic PET simulated from it, moved."""
    img = nib.load(HEAD)
    t1w = img.get_fdata(dtype=np.float32)
    zooms = img.header.get_zooms()[:3]
    labels = tissue_classes(t1w, zooms)
    activity, metadata = simulate_pet(t1w, zooms, 3, frame_durations_s=FRAMES_S, labels=labels)
    # The PET scanner's grid: same axes as the T1w's, 3 mm voxels over the same field of view.
    factor = PET_VOXEL_MM / np.asarray(zooms, float)
    pet_affine = img.affine.copy()
    pet_affine[:3, :3] = img.affine[:3, :3] * factor
    pet_shape = tuple(int(n) for n in np.floor(np.asarray(t1w.shape) / factor))
    activity = np.maximum(moved(activity, img.affine, MOTION, pet_affine, pet_shape), 0.0)
    slope = float(activity.max()) / 32000.0
    pet = nib.Nifti1Image(np.rint(activity / slope).astype(np.int16), pet_affine)
    pet.header.set_slope_inter(slope, 0.0)
    pet.header.set_xyzt_units("mm", "sec")

    (root / "dataset_description.json").parent.mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "pet-anat", "BIDSVersion": "1.10.0", "DatasetType": "raw"}))
    anat, pet_dir = root / "sub-01/ses-1/anat", root / "sub-01/ses-1/pet"
    anat.mkdir(parents=True)
    pet_dir.mkdir(parents=True)
    shutil.copyfile(HEAD, anat / "sub-01_ses-1_T1w.nii.gz")
    pet.to_filename(pet_dir / "sub-01_ses-1_trc-FDG_pet.nii.gz")
    sidecar = {**PET_SIDECAR, **metadata}
    (pet_dir / "sub-01_ses-1_trc-FDG_pet.json").write_text(json.dumps(sidecar))

    def to_pet(mask):
        return moved(mask.astype(np.float32), img.affine, MOTION, pet_affine, pet_shape) > 0.5

    # Grey and white matter: the simulation's CSF class also holds the eyes and sinuses.
    return {"sidecar": sidecar, "brain": to_pet(np.isin(labels, (GM, WM))),
            "scalp": to_pet(labels == SOFT_TISSUE), "to_pet": to_pet, "zooms": (PET_VOXEL_MM,) * 3}


@pytest.mark.slow
def test_pet_registered_through_the_session_t1w(tmp_path):
    """The app with --pet-anat auto, then none, on a PET that lay differently from the T1w."""
    bids, work = tmp_path / "bids", tmp_path / "work"
    session = _pet_session(bids)
    stem = "sub-01/ses-1/pet/sub-01_ses-1_trc-FDG"
    original = nib.load(bids / f"{stem}_pet.nii.gz")
    before = np.asanyarray(original.dataobj.get_unscaled())
    mean_before = np.average(original.get_fdata(dtype=np.float32), axis=3, weights=FRAMES_S)
    skin = 0.5 * float(np.median(mean_before[session["scalp"]]))

    moved_share, cut_dice = {}, {}
    for pet_anat in ("auto", "none"):
        out = tmp_path / f"out-{pet_anat}"
        # One work dir: the second run takes the T1w from the first one's cache.
        start = time.monotonic()
        assert main([str(bids), str(out), "participant", "-w", str(work), "--nprocs", "2",
                     "--skip-bids-validation", "--pet-anat", pet_anat]) == 0
        seconds = time.monotonic() - start
        refaced = nib.load(out / f"{stem}_desc-refaced_pet.nii.gz")
        after = np.asanyarray(refaced.dataobj.get_unscaled())
        replaced = np.asanyarray(
            nib.load(out / f"{stem}_mod-pet_defacemask.nii.gz").dataobj) > 0
        assert replaced.any() and after.shape == before.shape
        assert np.array_equal(after[~replaced], before[~replaced])
        for t in range(len(FRAMES_S)):
            assert np.array_equal(after[..., t][session["brain"]], before[..., t][session["brain"]])

        # The face as the T1w's own registration found it, carried by the known motion: the
        # same region for both runs, independent of how the PET was registered.
        t1w_labels = np.load(next(work.glob("**/image_sub_01_ses_1_T1w_anat_wf/reface_wf/mask/labels.npy")))
        face = session["to_pet"](t1w_labels == FACE)
        # And the face cut: the PET's labels against the T1w's, carried by the known motion.
        pet_labels = np.load(next(work.glob("**/image_sub_01_ses_1_trc_FDG_pet_pet_wf/reface_wf/mask/labels.npy")))
        t1w_cut = session["to_pet"](np.isin(t1w_labels, TISSUE_LABELS))
        pet_cut = np.isin(pet_labels, TISSUE_LABELS)
        cut_dice[pet_anat] = 2 * np.sum(t1w_cut & pet_cut) / (t1w_cut.sum() + pet_cut.sum())
        mean_after = np.average(refaced.get_fdata(dtype=np.float32), axis=3, weights=FRAMES_S)
        moved_share[pet_anat] = measures.face_moved_fraction(
            mean_before, mean_after, face, session["zooms"], level=skin)

        written = json.loads((out / f"{stem}_desc-refaced_pet.json").read_text())
        provenance = written.pop("RefacebidsProvenance")
        assert written == {**session["sidecar"], "Sources": [f"bids:raw:{stem}_pet.nii.gz"],
                           "SkullStripped": False}
        registration = provenance["Registration"]
        print(f"--pet-anat {pet_anat} ({seconds:.0f} s): face moved {moved_share[pet_anat]:.1%}, "
              f"face cut Dice with the T1w's {cut_dice[pet_anat]:.3f}, registration "
              f"{json.dumps({k: v for k, v in registration.items() if k != 'composite'})}")
        if pet_anat == "auto":
            # The rigid PET -> T1w transform against the known motion.
            rigid = next(work.glob("**/image_sub_01_ses_1_trc_FDG_pet_pet_wf/reface_wf/register/"
                                   "img2anat_*GenericAffine.mat"))
            points = head_points(mean_before, original.affine, 2000, seed=1)
            error = np.linalg.norm(ants_points(points, str(rigid)) - nib.affines.apply_affine(
                np.linalg.inv(MOTION), points), axis=1)
            print(f"rigid PET -> T1w: mean error {error.mean():.2f} mm, max {error.max():.2f} mm")
            assert error.max() <= MAX_RIGID_ERROR_MM
            assert registration["path"] == "anat"
            assert registration["anat"]["anat_file"] == "sub-01_ses-1_T1w.nii.gz"
            assert registration["anat"]["ok"] and registration["anat"]["similarity"] < 0
            assert not any("registration through" in w for w in provenance["Warnings"])
        else:
            assert registration["path"] == "own" and "anat" not in registration
    assert min(moved_share.values()) >= MOVED_SHARE
    # Through the T1w the PET's face cut is the T1w's own, up to the 3 mm grid.
    assert cut_dice["auto"] >= MIN_CUT_DICE_THROUGH_T1W
