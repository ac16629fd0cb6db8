"""Bad and odd input images made from real heads, for the data-safety tests.

Every variant keeps the real head's voxels and changes only how they are stored
(orientation, dtype, scaling, header codes) or spoils them in one known way.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

#: Free text planted in headers and sidecars; none of it may reach an output.
PLANTED = ("Doe^Jane", "Jane Doe 1970", "SN-0042-PLANTED", "Planted General Hospital",
           "19700101", "MRN-PLANTED-77")
PLANTED_SIDECAR = {
    "PatientName": "Doe^Jane",
    "PatientBirthDate": "19700101",
    "PatientID": "MRN-PLANTED-77",
    "DeviceSerialNumber": "SN-0042-PLANTED",
    "InstitutionName": "Planted General Hospital",
    "ImageComments": "Jane Doe 1970 follow-up",
    "RepetitionTime": 2.3,
}
#: Header text fields planted (NIfTI-1 lengths: descrip 80, aux_file 24, intent_name 16,
#: db_name 18).
PLANTED_HEADER = {"descrip": b"Jane Doe 1970 Planted", "aux_file": b"Doe^Jane",
                  "intent_name": b"MRN-PLANTED-77", "db_name": b"SN-0042-PLANTED"}
#: A DICOM-like header carried in a NIfTI extension (ecode 2 = DICOM, 6 = comment).
PLANTED_EXTENSION = b"(0010,0010) PN PatientName Doe^Jane (0010,0030) DA 19700101\x00"


def reoriented(img: nib.Nifti1Image, axcodes: str) -> nib.Nifti1Image:
    """The same head in the same world position, stored in ``axcodes`` voxel order."""
    current = nib.orientations.io_orientation(img.affine)
    target = nib.orientations.axcodes2ornt(tuple(axcodes))
    transform = nib.orientations.ornt_transform(current, target)
    data = nib.orientations.apply_orientation(np.asanyarray(img.dataobj), transform)
    affine = img.affine @ nib.orientations.inv_ornt_aff(transform, img.shape[:3])
    out = nib.Nifti1Image(data, affine)
    out.set_qform(affine, code=1)
    out.set_sform(affine, code=1)
    return out


def oblique(img: nib.Nifti1Image, degrees=(14.0, 0.0, 9.0)) -> nib.Nifti1Image:
    """The head rotated in the world (voxels as stored, affine rotated about its centre)."""
    from scipy.spatial.transform import Rotation

    rotation = np.eye(4)
    rotation[:3, :3] = Rotation.from_euler("xyz", degrees, degrees=True).as_matrix()
    centre = nib.affines.apply_affine(img.affine, (np.array(img.shape[:3]) - 1) / 2)
    to_centre, back = np.eye(4), np.eye(4)
    to_centre[:3, 3], back[:3, 3] = -centre, centre
    affine = back @ rotation @ to_centre @ img.affine
    return _like(img, np.asanyarray(img.dataobj), affine)


def stored_as(img: nib.Nifti1Image, dtype, scaled: bool) -> nib.Nifti1Image:
    """The head's intensities stored in ``dtype``, with or without ``scl_slope``/``scl_inter``.

    The stored values span about 60 % of the dtype's range (negative values for the
    signed integer types); a scaled image has slope and intercept that are not 1 and 0.
    """
    values = np.asanyarray(img.dataobj).astype(np.float64)
    unit = values / max(values.max(), 1.0)
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        low = info.min * 0.6 if info.min < 0 else 0.0
        high = min(info.max * 0.6, 30000.0)
        raw = np.rint(low + unit * (high - low))
    else:
        raw = unit * 1234.5 + 0.25
    out = _like(img, raw.astype(dtype), img.affine)
    if scaled:
        out.header.set_slope_inter(0.75, 12.5)
    else:
        out.header.set_slope_inter(np.nan, np.nan)
    return out


def block_averaged(img: nib.Nifti1Image, axis: int, factor: int) -> nib.Nifti1Image:
    """Thicker voxels along ``axis``: ``factor`` slices averaged, as a thick-slice scan."""
    data = np.asanyarray(img.dataobj).astype(np.float32)
    n = data.shape[axis] // factor * factor
    data = np.take(data, range(n), axis=axis)
    shape = list(data.shape)
    shape[axis : axis + 1] = [n // factor, factor]
    averaged = data.reshape(shape).mean(axis=axis + 1)
    scale = np.ones(3)
    scale[axis] = factor
    shift = np.zeros(3)
    shift[axis] = (factor - 1) / 2
    affine = img.affine.copy()
    affine[:3, 3] = nib.affines.apply_affine(img.affine, shift)
    affine[:3, :3] = img.affine[:3, :3] * scale
    return _like(img, np.rint(averaged).astype(img.get_data_dtype()), affine)


def cropped(img: nib.Nifti1Image, axis: int, start: int) -> nib.Nifti1Image:
    """The head with its first ``start`` slices along ``axis`` cut off."""
    data = np.take(np.asanyarray(img.dataobj), range(start, img.shape[axis]), axis=axis)
    offset = np.zeros(3)
    offset[axis] = start
    affine = img.affine.copy()
    affine[:3, 3] = nib.affines.apply_affine(img.affine, offset)
    return _like(img, data, affine)


def with_planted_text(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """``img`` with identifying text in its header fields and a DICOM extension."""
    for field, value in PLANTED_HEADER.items():
        img.header[field] = value
    img.header.extensions.append(nib.nifti1.Nifti1Extension(2, PLANTED_EXTENSION))
    img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"Planted General Hospital"))
    return img


def write_sidecar(image: Path, data: dict) -> None:
    stem = image.name.split(".nii")[0]
    image.with_name(stem + ".json").write_text(json.dumps(data, indent=2))


def _like(img, data, affine) -> nib.Nifti1Image:
    """A new image keeping ``img``'s codes; qform and sform both set to ``affine``."""
    out = nib.Nifti1Image(data, affine)
    out.set_qform(affine, code=int(img.header["qform_code"]) or 1)
    out.set_sform(affine, code=int(img.header["sform_code"]) or 1)
    out.header.set_xyzt_units("mm", "sec")
    return out


def permission_bound() -> list[str]:
    """Command prefix under which file permissions hold even for root.

    Root ignores ``chmod a-w``; ``setpriv`` (util-linux) drops the capabilities that
    let it, so that a read-only input is really read-only for the command run.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to run the command without root's overrides"
    caps = "-dac_override,-dac_read_search,-fowner"
    return [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}", "--"]
