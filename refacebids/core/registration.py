"""Template-to-image registration with antspyx.

Rigid (4 mm) -> affine + SyN (2 mm), all with Mattes mutual information, so that one
template serves every contrast. The face needs ~1-2 mm accuracy, not sub-millimetre:
SyN on 2 mm images agreed with full-resolution SyN within ~1 mm on real heads at a tenth
of the cost (../shared/notes/feasibility.md). The rigid start makes the result
independent of how the head is stored (LPS/RAS/PIR, oblique, off-centre): ANTs works in
world coordinates and the rigid stage starts from the centres of mass.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .geometry import to_ants
from .surface import head_mask

RIGID_RESOLUTION_MM = 4.0
WORKING_RESOLUTION_MM = 2.0
# A registration whose template head overlaps the image's head over the cranium less
# than this is reported as failed rather than used: correct registrations reached
# 0.82 (simulated FLAIR) to 0.99 on the test heads, a template 15 mm off reaches < 0.7.
MIN_HEAD_DICE = 0.75
CRANIUM_MM = 25.0


@dataclass
class RegistrationResult:
    """The template -> image transform (ITK composite .h5) and the quality of the fit."""

    composite: str
    similarity: float
    head_dice: float
    ok: bool
    settings: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def _downsample(image, resolution: float):
    import ants

    spacing = np.asarray(image.spacing)
    if np.all(spacing >= resolution * 0.95):
        return image
    target = tuple(float(max(s, resolution)) for s in spacing)
    return ants.resample_image(image, target, use_voxels=False, interp_type=0)


def register_template(
    reference: np.ndarray,
    affine: np.ndarray,
    template_file: str,
    out_prefix: str,
    *,
    seed: int = 42,
    threads: int = 1,
) -> RegistrationResult:
    """Register the template head to an image.

    Parameters
    ----------
    reference : (I, J, K) ndarray
        The image to register to (the mean of a 4D image), scaled values.
    affine : (4, 4) ndarray
        Its voxel-to-world (RAS) affine.
    template_file : str
        Template head image (NIfTI).
    out_prefix : str
        Where antspyx writes its transforms (inside the work directory, never $TMPDIR).
    seed : int
        Random seed of the metric sampling, for reproducible results.
    threads : int
        ITK threads.

    Returns
    -------
    RegistrationResult
        ``composite`` maps template -> image for ``ants.apply_transforms``.
    """
    import ants

    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(max(1, threads))
    ants.config._random_seed = seed  # antspyx reads the seed from here only
    Path(out_prefix).parent.mkdir(parents=True, exist_ok=True)

    clipped = np.clip(reference, *np.percentile(reference, [0.0, 99.8]))
    fixed = _downsample(to_ants(clipped, affine), WORKING_RESOLUTION_MM)
    moving = ants.image_read(str(template_file))

    rigid = ants.registration(
        _downsample(fixed, RIGID_RESOLUTION_MM),
        _downsample(moving, RIGID_RESOLUTION_MM),
        type_of_transform="Rigid",
        aff_metric="mattes",
        aff_shrink_factors=(2, 1),
        aff_smoothing_sigmas=(1, 0),
        aff_iterations=(500, 200),
        outprefix=f"{out_prefix}rigid_",
    )
    deformable = ants.registration(
        fixed,
        moving,
        type_of_transform="SyN",
        initial_transform=rigid["fwdtransforms"],
        aff_metric="mattes",
        syn_metric="mattes",
        outprefix=out_prefix,
        write_composite_transform=True,
    )
    composite = deformable["fwdtransforms"]
    warped = deformable["warpedmovout"]
    similarity = float(ants.image_mutual_information(fixed, warped))
    dice = cranium_overlap(fixed, warped, template_file, composite)

    return RegistrationResult(
        composite=composite,
        similarity=similarity,
        head_dice=dice,
        ok=bool(dice >= MIN_HEAD_DICE),
        settings={
            "software": f"antspyx {ants.__version__}",
            "stages": ["Rigid", "Affine", "SyN"],
            "metric": "Mattes mutual information (32 bins)",
            "rigid_resolution_mm": RIGID_RESOLUTION_MM,
            "resolution_mm": WORKING_RESOLUTION_MM,
            "syn_iterations": [40, 20, 0],
            "initialisation": "centres of mass",
            "random_seed": seed,
        },
    )


def cranium_overlap(fixed, warped, template_file, composite: str) -> float:
    """Dice of the image's and the registered template's heads over the cranium.

    The cranium (within ``CRANIUM_MM`` of the brain, face, cheeks, jaw and ears left
    out) has visible scalp in every contrast, where facial soft tissue can be nearly
    black (FLAIR) or noisy; so this judges the registration, not the contrast.
    """
    import ants

    from .warp import TISSUE_LABELS, FOREHEAD

    folder = Path(template_file).parent
    dseg = ants.image_read(str(next(folder.glob("*_desc-reface_dseg.nii*"))))
    brain = ants.image_read(str(next(folder.glob("*_desc-brain_mask.nii*"))))
    labels = ants.apply_transforms(fixed, dseg, [composite], interpolator="nearestNeighbor").numpy()
    near_brain = ants.apply_transforms(fixed, brain, [composite], interpolator="linear").numpy()
    spacing = tuple(fixed.spacing)
    from scipy import ndimage as ndi

    distance = ndi.distance_transform_edt(near_brain < 0.5, sampling=spacing)
    facial = np.isin(labels, [t for t in TISSUE_LABELS if t != FOREHEAD])
    cranium = (distance <= CRANIUM_MM) & ~facial
    image_head = head_mask(fixed.numpy(), spacing) & cranium
    template_head = head_mask(warped.numpy(), spacing) & cranium
    return _dice(image_head, template_head)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2.0 * np.logical_and(a, b).sum() / total) if total else 0.0
