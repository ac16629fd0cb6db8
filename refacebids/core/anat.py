"""Registering an image through an anatomical image of the same session (``--pet-anat``).

A PET shows the head's outline blurred and the face barely; the T1w of the same session
shows both sharply, and its template registration is already done. The PET is
therefore aligned rigidly to the T1w (one head, two scanner frames: rotation and shift
only; Mattes mutual information, which needs no common contrast), and the template
reaches the PET through the T1w: image point -> (rigid) -> T1w point -> (the T1w's
template transform) -> template point.

Both transforms go into one ITK composite file, so that every later step takes one
template -> image transform whichever way it was found. Neither is resampled: the
composite holds the T1w's own transforms (affine and SyN field, as antspyx wrote them)
followed by the rigid one.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..utils.threads import use_itk_threads
from . import antslib
from .registration import WORKING_RESOLUTION_MM, Stage, working_image, write_working_image
from .replace import sample_at
from .similarity import mutual_information
from .transform import map_grid, read_transforms

# Coarse to fine over the 2 mm working images (8, 4, 2 mm). On a real T1w head and a
# PET simulated from it, moved 6 and 4 degrees and 11 mm, the fit lies within 0.8 mm of
# the known motion over the whole head (mean 0.3 mm; tests/test_pet_anat.py) in ~4 s.
RIGID = Stage("Rigid[0.25]", ",Regular,0.2", iterations=(200, 100, 50), shrink=(4, 2, 1), smoothing=(2, 1, 0))
COMPOSITE_TYPE = "CompositeTransform_double_3_3"


@dataclass
class RigidResult:
    """Image -> anatomical image rigid transform (ITK ``.mat``) and how well it fits."""

    transform: str
    similarity: float
    settings: dict = field(default_factory=dict)


def register_rigid(
    reference: np.ndarray,
    affine: np.ndarray,
    anat: np.ndarray,
    anat_affine: np.ndarray,
    out_prefix: str,
    *,
    seed: int = 42,
    threads: int = 1,
) -> RigidResult:
    """Align an anatomical image of the same head rigidly to ``reference``.

    Parameters
    ----------
    reference : (I, J, K) ndarray
        The image registered (for PET its logarithmic activity,
        :func:`refacebids.core.pet.registration_image`).
    affine : (4, 4) ndarray
        Its voxel-to-world (RAS) affine.
    anat : (I', J', K') ndarray
        The anatomical image (a T1w), scaled values.
    anat_affine : (4, 4) ndarray
        Its voxel-to-world (RAS) affine.
    out_prefix : str
        Where antspyx writes the transform (inside the work directory).
    seed : int
        Random seed of the metric sampling.
    threads : int
        ITK threads.

    Returns
    -------
    RigidResult
        ``transform`` maps points of ``reference`` to points of ``anat`` (so it resamples
        ``anat`` onto ``reference``'s grid with ``ants.apply_transforms``);
        ``similarity`` is antspyx's mutual information of the two after the fit
        (negative: lower is better).
    """
    use_itk_threads(threads)  # before ITK first runs in this process
    Path(out_prefix).parent.mkdir(parents=True, exist_ok=True)
    fixed, fixed_affine = working_image(reference, affine)
    moving, moving_affine = working_image(anat, anat_affine)
    fixed_file = write_working_image(fixed, fixed_affine, f"{out_prefix}working.nii")
    moving_file = write_working_image(moving, moving_affine, f"{out_prefix}anat_working.nii")
    antslib.run("antsRegistration", [
        "--dimensionality", "3", "--float", "1", "--random-seed", str(seed),
        "--initial-moving-transform", f"[{fixed_file},{moving_file},1]",  # centres of mass
        *RIGID.arguments(fixed_file, moving_file),
        "--use-histogram-matching", "0", "--collapse-output-transforms", "1", "--output", f"[{out_prefix}]",
    ])
    transform = f"{out_prefix}0GenericAffine.mat"
    at_fixed = map_grid(transform, fixed.shape, fixed_affine)
    aligned = sample_at(moving, moving_affine, at_fixed.reshape(-1, 3)).reshape(fixed.shape)
    return RigidResult(
        transform=transform,
        similarity=mutual_information(fixed, aligned),
        settings={
            "stages": ["Rigid"],
            "metric": "Mattes mutual information (32 bins)",
            "resolution_mm": WORKING_RESOLUTION_MM,
            "shrink_factors": list(RIGID.shrink),
            "iterations": list(RIGID.iterations),
            "initialisation": "centres of mass",
            "random_seed": seed,
        },
    )


def compose_through(rigid_file: str, anat_composite: str, out_file: str) -> str:
    """One template -> image transform: the rigid one, then the anatomical image's.

    Parameters
    ----------
    rigid_file : str
        Image -> anatomical image (``RigidResult.transform``).
    anat_composite : str
        Template -> anatomical image: ITK HDF5, a composite (as antspyx's
        ``write_composite_transform`` writes it) or a single transform.
    out_file : str
        The ``.h5`` to write.

    Returns
    -------
    str
        ``out_file``: for ``ants.apply_transforms`` the same as the list
        ``[rigid_file, anat_composite]``, i.e. an image point ``x`` goes to the
        template point ``anat(rigid(x))``.
    """
    import h5py

    (rigid,) = read_transforms(rigid_file)  # a linear transform, stored as ITK's HDF5 writes one
    tmp = f"{out_file}.tmp"
    with h5py.File(anat_composite, "r") as anat, h5py.File(tmp, "w") as out:
        for key, value in anat.items():
            if key != "TransformGroup":
                anat.copy(value, out, name=key)
        groups = out.create_group("TransformGroup")
        parts = [anat["TransformGroup"][name] for name in sorted(anat["TransformGroup"], key=int)]
        if parts[0]["TransformType"][0].decode().startswith("CompositeTransform"):
            header, parts = parts[0], parts[1:]
            anat.copy(header, groups, name="0")
        else:
            _string_dataset(groups.create_group("0"), "TransformType", COMPOSITE_TYPE)
        for part in parts:
            part.file.copy(part, groups, name=str(len(groups)))
        # ITK applies a composite's transforms from the last stored to the first, so the
        # rigid one, applied first, is stored last.
        last = groups.create_group(str(len(groups)))
        _string_dataset(last, "TransformType", "AffineTransform_double_3_3")
        last.create_dataset("TransformParameters", data=np.r_[rigid.matrix.ravel(), rigid.translation])
        last.create_dataset("TransformFixedParameters", data=rigid.center)
    shutil.move(tmp, out_file)
    return out_file


def _string_dataset(group, name: str, text: str) -> None:
    import h5py

    # ITK reads the type as a variable-length ASCII string.
    group.create_dataset(name, data=[text], dtype=h5py.string_dtype("ascii"))
