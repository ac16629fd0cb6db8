"""Build the embedded refacebids template ``tpl-MNI152EXT`` from its sources.

Reproducible: ``python templates/build_template.py`` reads the extended ICBM152 head
(``MNI152_T1_2mmEXT``) and its intracranial mask from ``../shared/data/templates`` and writes
``templates/tpl-MNI152EXT/``:

``tpl-MNI152EXT_res-02_T1w.nii.gz``
    The head, unchanged (2 mm, 97x120x132, RAS, MNI coordinates).
``tpl-MNI152EXT_res-02_desc-brain_mask.nii.gz``
    Intracranial mask (brain and the CSF around it, up to the inner table of the
    skull). The mask distributed with the template reaches through skull and scalp
    (0-4 mm below the skin at the forehead), so it only bounds this one: brain tissue
    (>55) more than 10 mm below the skin, the component holding the brain's centre,
    closed over sulci (6 mm) and with ventricles filled.
``tpl-MNI152EXT_res-02_desc-reface_dseg.nii.gz``
    Refacing labels on a grid padded by 60 mm on every side, so that the air in which
    wrapped face parts appear is labelled beyond the template's own field of view.
    Values are listed in ``tpl-MNI152EXT_desc-reface_dseg.tsv``.

The labels are geometric rules in MNI millimetres applied to the template's own head
and skin; every constant below is an anatomical landmark read off the template
(``z`` up, ``y`` anterior, ``x`` right).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent.parent / "shared" / "data" / "templates"
OUT = HERE / "tpl-MNI152EXT"
PAD_MM = 60.0

LABELS = {
    1: ("forehead", "forehead skin and soft tissue from the brow to the hairline"),
    2: ("face", "front of the face, brow ridge to chin: eyebrows, eyes, nose, cheeks, lips, chin, air in front"),
    3: ("ears", "outer ears and the air around them"),
    4: ("teeth_jaw", "teeth, tongue, mandible and maxilla"),
    5: ("wrap_air", "air around the head at face level where wrapped (aliased) face parts appear"),
    6: ("cheeks_temples", "sides of the face in front of the ears, brow to chin"),
}

# Landmarks (MNI mm) read off MNI152_T1_2mmEXT mid-sagittal and para-sagittal slices.
HAIRLINE_Z = 58.0  # front hairline, about 5 cm above the brow
BROW_TOP_Z = 12.0  # upper edge of the brow ridge
CHIN_BOTTOM_Z = -146.0  # the template's chin continues to the bottom of its grid (-148)
FACE_BACK_Y = -6.0  # just in front of the tragus; cheeks and temples lie anterior
FACE_FRONT_Y = 50.0  # the front of the face (outer canthi, cheekbones) lies anterior
FACE_HALF_WIDTH_MM = 55.0
FACE_DEPTH_MM = 26.0  # tissue under the skin that belongs to the face (eye globes ~24 mm)
# Over the brain, only the scalp: skin, fat and muscle of the forehead and temples.
FOREHEAD_DEPTH_MM = 12.0
TEMPLE_DEPTH_MM = 15.0
AIR_REACH_MM = 40.0  # air in front of the face that a subject's nose or lips may occupy
EAR_X_MM = 52.0  # outer ears lie lateral to |x| = 52 mm
EAR_Y_MM = (-52.0, 6.0)
EAR_Z_MM = (-72.0, 6.0)
EAR_DEPTH_MM = 12.0
EAR_AIR_MM = 35.0
JAW_X_MM = 56.0
JAW_Y_MM = (18.0, 120.0)
JAW_Z_MM = (-108.0, -48.0)
WRAP_GAP_MM = 8.0  # keep the wrap band clear of the scalp
BRAIN_LEVEL = 55  # grey matter ~65-70, CSF and skull 20-45 in this template
SCALP_AND_SKULL_MM = 10.0  # thinnest scalp + skull of the template (vertex, forehead)
BRAIN_CENTRE_MM = (0.0, -18.0, 18.0)
WRAP_Z_MM = (-130.0, HAIRLINE_Z)


def head_mask(t1w: np.ndarray) -> np.ndarray:
    """Head (skin and everything inside it) of the template, holes filled slice by slice."""
    head = ndi.gaussian_filter(t1w.astype(float), 1.0) > 30
    labelled, _ = ndi.label(head)
    head = labelled == np.argmax(np.bincount(labelled.ravel())[1:]) + 1
    for axis in range(3):
        head = np.moveaxis(
            np.stack([ndi.binary_fill_holes(s) for s in np.moveaxis(head, axis, 0)]), 0, axis
        )
    return head


def ball(radius: int) -> np.ndarray:
    grid = np.indices((2 * radius + 1,) * 3) - radius
    return (grid**2).sum(0) <= radius**2


def intracranial_mask(t1w_img: nib.Nifti1Image, bound_img: nib.Nifti1Image) -> nib.Nifti1Image:
    """Brain and CSF up to the inner skull, within the distributed (head-like) mask."""
    t1w = np.asanyarray(t1w_img.dataobj).astype(float)
    zoom = float(t1w_img.header.get_zooms()[0])
    depth = ndi.distance_transform_edt(head_mask(t1w), sampling=zoom)
    tissue = (t1w > BRAIN_LEVEL) & (np.asanyarray(bound_img.dataobj) > 0)
    tissue &= depth > SCALP_AND_SKULL_MM
    core, _ = ndi.label(ndi.binary_erosion(tissue, ball(1)))
    centre = np.round(np.linalg.inv(t1w_img.affine) @ [*BRAIN_CENTRE_MM, 1]).astype(int)[:3]
    brain = ndi.binary_dilation(core == core[tuple(centre)], ball(1)) & tissue
    brain = ndi.binary_fill_holes(ndi.binary_closing(brain, ball(3)))
    out = nib.Nifti1Image(brain.astype(np.uint8), t1w_img.affine)
    out.header.set_qform(t1w_img.affine, 4)
    out.header.set_sform(t1w_img.affine, 4)
    return out


def pad_image(img: nib.Nifti1Image, pad_vox: int) -> nib.Nifti1Image:
    """Zero-pad ``img`` by ``pad_vox`` voxels on every side, keeping world coordinates."""
    data = np.pad(np.asanyarray(img.dataobj), pad_vox)
    affine = img.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.full(3, pad_vox)
    return nib.Nifti1Image(data, affine)


def build_labels(t1w_img: nib.Nifti1Image, brain_img: nib.Nifti1Image) -> nib.Nifti1Image:
    """Refacing labels on the padded template grid (uint8, values of ``LABELS``)."""
    zoom = float(t1w_img.header.get_zooms()[0])
    pad_vox = int(round(PAD_MM / zoom))
    t1w = pad_image(t1w_img, pad_vox)
    head = head_mask(np.asanyarray(t1w.dataobj))
    brain = np.asanyarray(pad_image(brain_img, pad_vox).dataobj) > 0
    ijk = np.indices(head.shape).reshape(3, -1).T
    x, y, z = nib.affines.apply_affine(t1w.affine, ijk).T.reshape(3, *head.shape)

    depth = ndi.distance_transform_edt(head, sampling=zoom)  # mm inside the skin
    height = ndi.distance_transform_edt(~head, sampling=zoom)  # mm outside the skin
    brain_distance = ndi.distance_transform_edt(~brain, sampling=zoom)

    labels = np.zeros(head.shape, np.uint8)
    shell = (head & (depth <= FACE_DEPTH_MM)) | (~head & (height <= AIR_REACH_MM))
    anterior = (y > FACE_BACK_Y) & (z > CHIN_BOTTOM_Z) & (z < HAIRLINE_Z)
    labels[shell & anterior & (z >= BROW_TOP_Z) & (depth <= FOREHEAD_DEPTH_MM)] = 1
    front = (y > FACE_FRONT_Y) & (np.abs(x) < FACE_HALF_WIDTH_MM)
    labels[shell & anterior & (z < BROW_TOP_Z) & (depth <= TEMPLE_DEPTH_MM)] = 6
    labels[shell & anterior & front & (z < BROW_TOP_Z)] = 2

    ear_box = (
        (np.abs(x) > EAR_X_MM)
        & (y > EAR_Y_MM[0]) & (y < EAR_Y_MM[1])
        & (z > EAR_Z_MM[0]) & (z < EAR_Z_MM[1])
    )
    ear_shell = (head & (depth <= EAR_DEPTH_MM)) | (~head & (height <= EAR_AIR_MM))
    labels[ear_box & ear_shell & (labels == 0)] = 3

    jaw_box = (
        (np.abs(x) < JAW_X_MM)
        & (y > JAW_Y_MM[0]) & (y < JAW_Y_MM[1])
        & (z > JAW_Z_MM[0]) & (z < JAW_Z_MM[1])
    )
    labels[jaw_box & head & (brain_distance > 10.0)] = 4

    wrap = ~head & (height > WRAP_GAP_MM) & (z > WRAP_Z_MM[0]) & (z < WRAP_Z_MM[1])
    labels[wrap & (labels == 0)] = 5

    out = nib.Nifti1Image(labels, t1w.affine)
    out.header.set_qform(t1w.affine, 4)
    out.header.set_sform(t1w.affine, 4)
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    OUT.mkdir(exist_ok=True)
    t1w_src = SOURCE / "MNI152_T1_2mmEXT.nii.gz"
    brain_src = SOURCE / "MNI152_T1_2mmEXT_mask.nii.gz"
    t1w_img = nib.load(t1w_src)
    brain_img = intracranial_mask(t1w_img, nib.load(brain_src))
    prefix = OUT / "tpl-MNI152EXT_res-02"
    nib.save(t1w_img, f"{prefix}_T1w.nii.gz")
    nib.save(brain_img, f"{prefix}_desc-brain_mask.nii.gz")
    nib.save(build_labels(t1w_img, brain_img), f"{prefix}_desc-reface_dseg.nii.gz")
    rows = ["index\tname\tdescription"] + [f"{k}\t{n}\t{d}" for k, (n, d) in LABELS.items()]
    (OUT / "tpl-MNI152EXT_desc-reface_dseg.tsv").write_text("\n".join(rows) + "\n")
    description = {
        "Name": "MNI152EXT: extended ICBM152 2 mm head with face, ears and neck, with refacing labels",
        "Authors": ["Montreal Neurological Institute (ICBM152)", "refacebids developers (labels)"],
        "Identifier": "MNI152EXT",
        "License": "ICBM152 notice, see README.md",
        "ReferencesAndLinks": [
            "https://github.com/neurolabusc/allineate (MNI152_T1_2mmEXT)",
            "Fonov et al. NeuroImage 2011; 54(1):313-327",
        ],
        "Sources": {
            "MNI152_T1_2mmEXT.nii.gz": sha256(t1w_src),
            "MNI152_T1_2mmEXT_mask.nii.gz": sha256(brain_src),
        },
        "res": {"02": {"zooms": [2.0, 2.0, 2.0]}},
    }
    (OUT / "template_description.json").write_text(json.dumps(description, indent=2) + "\n")


if __name__ == "__main__":
    main()
