"""Reading, checking and writing head images without disturbing what is not refaced.

Refacing must leave every voxel outside the replaced region byte-identical and keep the
header (shape, affine, codes, on-disk dtype and scaling). So the engine works on two
views of an image: the *scaled* float values (what the intensities mean) and the *raw*
stored values (what goes back to disk); only replaced voxels get new raw values.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np

from .. import __version__

#: What the ``descrip`` field of every image refacebids writes says (the input's free
#: text there may name the subject, the site or the protocol).
DESCRIP_MARKER = f"refaced by refacebids {__version__}"
#: Free-text header fields cleared on writing (``db_name``/``data_type`` are unused
#: ANALYZE leftovers of NIfTI-1 that converters have filled with names).
CLEARED_TEXT_FIELDS = ("aux_file", "intent_name", "db_name", "data_type")
#: qform and sform further apart than this (mm, at any corner of the grid) disagree.
AFFINE_DISAGREEMENT_MM = 0.1


class ImageError(ValueError):
    """An input image that cannot be refaced; the message is one line for the user."""


@dataclass
class HeadImage:
    """A loaded image: the header untouched, raw stored values, and scaled values.

    Attributes
    ----------
    img : nibabel.Nifti1Image
        The image as loaded (header and affine used for writing back).
    raw : (I, J, K[, T]) ndarray
        Values as stored on disk, in the on-disk dtype.
    slope, inter : float
        Scaling from raw to meaningful values (``scaled = raw * slope + inter``).
    frame_weights : (T,) ndarray or None
        Weights of the volumes of a 4D image in its reference (e.g. PET frame
        durations); ``None`` for a plain mean.
    """

    img: nib.Nifti1Image
    raw: np.ndarray
    slope: float
    inter: float
    frame_weights: np.ndarray | None = None

    @property
    def affine(self) -> np.ndarray:
        return self.img.affine

    @property
    def zooms(self) -> tuple[float, float, float]:
        return tuple(float(z) for z in self.img.header.get_zooms()[:3])

    def scaled(self) -> np.ndarray:
        """Scaled values as float32, non-finite values set to 0."""
        values = self.raw.astype(np.float32)
        if (self.slope, self.inter) != (1.0, 0.0):
            values *= np.float32(self.slope)
            values += np.float32(self.inter)
        # Integers scaled by finite factors are finite: no pass over the array for them.
        if self.raw.dtype.kind == "f" or not np.isfinite([self.slope, self.inter]).all():
            np.nan_to_num(values, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        return values

    def reference(self) -> np.ndarray:
        """(I, J, K) volume to register: the image, or the (weighted) mean of a 4D image's volumes.

        Accumulated volume by volume, so that the float copy of a long series is never
        made twice.
        """
        if self.raw.ndim == 3:
            return self.scaled()
        weights = np.ones(self.raw.shape[3]) if self.frame_weights is None else self.frame_weights
        total = np.zeros(self.raw.shape[:3], np.float64)
        for t, weight in enumerate(weights):
            volume = self.raw[..., t].astype(np.float32) * np.float32(self.slope) + np.float32(self.inter)
            total += weight * np.nan_to_num(volume, nan=0.0, posinf=0.0, neginf=0.0)
        return (total / np.sum(weights)).astype(np.float32)


def load_head_image(path) -> HeadImage:
    """Load a NIfTI head image and refuse what cannot be refaced, with a one-line reason."""
    try:
        img = nib.load(str(path))
        raw = np.asanyarray(img.dataobj.get_unscaled())
    except FileNotFoundError as exc:
        raise ImageError(f"file not found or not readable ({exc.strerror})") from None
    except Exception as exc:  # nibabel raises many types for corrupt files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageError(f"not a readable NIfTI image ({reason})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ImageError(f"not a NIfTI image ({type(img).__name__})")
    if raw.ndim == 5 and raw.shape[3] == 1:
        raw = raw[:, :, :, 0]
    if raw.ndim not in (3, 4) or min(raw.shape[:3]) < 8:
        raise ImageError(f"expected a 3D or 4D head volume, got shape {raw.shape}")
    if raw.dtype.kind not in "iuf":
        raise ImageError(f"unsupported data type {raw.dtype}")
    slope, inter = img.dataobj.slope, img.dataobj.inter
    head = HeadImage(img=img, raw=raw, slope=float(slope), inter=float(inter))
    # Unscaled integers are zero where their scaled values are: no float copy to check.
    plain_integers = raw.dtype.kind in "iu" and head.inter == 0.0 and head.slope != 0.0
    if not np.any(raw if plain_integers else head.reference()):
        raise ImageError("image is empty (all voxels zero or non-finite)")
    if not np.all(np.isfinite(img.affine)) or abs(np.linalg.det(img.affine[:3, :3])) < 1e-6:
        raise ImageError("image affine is not invertible")
    if img.header["qform_code"] == 0 and img.header["sform_code"] == 0:
        # nibabel would fall back to a bare scaling whose left-right and front-back
        # are a guess: the face could be looked for at the back of the head.
        raise ImageError(
            "no orientation in the header (qform_code and sform_code are both 0); "
            "set the image's orientation first"
        )
    return head


def c_ordered(array: np.ndarray) -> np.ndarray:
    """``array`` (I, J, K[, T]) in memory with every (I, J, K) volume in NumPy's C order.

    NIfTI stores voxels in Fortran order, and nibabel hands them over that way. NumPy
    walks an expression's arrays in C order: where a Fortran-ordered image meets a
    C-ordered array (anything resampled, indexed or allocated), or is indexed by a mask,
    every step strides across memory. At 1 mm that made a sum 10 times, a boolean index
    2.4 times slower.
    """
    if array.ndim < 4:
        return np.ascontiguousarray(array)
    return np.moveaxis(np.ascontiguousarray(np.moveaxis(array, 3, 0)), 0, 3)


def header_warnings(head: HeadImage) -> list[str]:
    """What in an accepted image a reviewer should know about, one sentence each.

    Non-finite voxels are kept as stored outside the replaced region (the guarantee
    that nothing else changes) and become finite face voxels inside it. When qform and
    sform disagree, the sform is used (as nibabel and FSL do); both are written back
    unchanged.
    """
    warnings = []
    if head.raw.dtype.kind == "f":
        nonfinite = int(np.count_nonzero(~np.isfinite(head.raw)))
        if nonfinite:
            warnings.append(f"{nonfinite} NaN/Inf voxel(s) in the input; those outside the "
                            "replaced region are kept as they are")
    header = head.img.header
    if header["qform_code"] > 0 and header["sform_code"] > 0:
        corners = np.array([[i, j, k, 1] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
        corners[:, :3] *= np.array(head.raw.shape[:3]) - 1
        offset = corners @ (header.get_qform() - header.get_sform()).T
        distance = float(np.max(np.linalg.norm(offset[:, :3], axis=1)))
        if distance > AFFINE_DISAGREEMENT_MM:
            warnings.append(f"qform and sform disagree by up to {distance:.1f} mm; the sform "
                            "was used")
    return warnings


def scrubbed_header(header):
    """A copy of a NIfTI header without its free text and extensions.

    ``descrip`` becomes :data:`DESCRIP_MARKER`, the fields of
    :data:`CLEARED_TEXT_FIELDS` are emptied, and every extension (which may hold a
    whole DICOM header) is dropped. Geometry, codes, dtype and scaling are kept.
    """
    header = header.copy()
    header["descrip"] = DESCRIP_MARKER.encode()[:79]
    for name in CLEARED_TEXT_FIELDS:
        if name in header:
            header[name] = b""
    header.extensions.clear()
    return header


def to_raw(values: np.ndarray, like: HeadImage) -> np.ndarray:
    """Convert scaled ``values`` to raw stored values of ``like``'s dtype, clipped to its range.

    Parameters
    ----------
    values : ndarray of float
        Scaled intensities.
    like : HeadImage
        Provides dtype, slope and intercept.

    Returns
    -------
    ndarray
        Same shape as ``values``, dtype ``like.raw.dtype``, finite.
    """
    dtype = like.raw.dtype
    raw = (np.asarray(values, np.float64) - like.inter) / like.slope
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(raw), info.min, info.max).astype(dtype)
    info = np.finfo(dtype)
    return np.clip(np.nan_to_num(raw), info.min, info.max).astype(dtype)


def write_like(raw: np.ndarray, like: HeadImage, path) -> None:
    """Write raw values with ``like``'s header: same shape, affine, codes, dtype and scaling.

    The header's free text and extensions are scrubbed (:func:`scrubbed_header`).
    """
    header = scrubbed_header(like.img.header)
    out = type(like.img)(raw.reshape(like.img.shape), None, header)
    out.header.set_slope_inter(
        like.slope if (like.slope, like.inter) != (1.0, 0.0) else None,
        like.inter if (like.slope, like.inter) != (1.0, 0.0) else None,
    )
    out.set_data_dtype(like.raw.dtype)
    out.to_filename(str(path))
