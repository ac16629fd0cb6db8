"""Template-to-image registration with ANTs (antspyx's compiled antsRegistration).

One antsRegistration call, three stages on the 2 mm working image, each with Mattes
mutual information so that one template serves every contrast: rigid from the centres
of mass (so the result does not depend on how the head is stored: LPS/RAS/PIR,
oblique, off-centre; ANTs works in world coordinates), then affine, then SyN, each
coarse to fine at 8 and 4 mm. The face needs ~1-2 mm accuracy, not sub-millimetre: SyN
on 2 mm images agreed with full-resolution SyN within ~1 mm on real heads at a tenth
of the cost (../shared/notes/feasibility.md), and no level runs at 2 mm itself (see
``STAGES``). The registration's check and similarity are computed here on arrays (the
transform evaluated by :mod:`refacebids.core.transform`), so that the register step
never imports antspyx's Python layer (:mod:`refacebids.core.antslib`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from ..utils.threads import use_itk_threads
from . import antslib
from .geometry import distance_mm, itk_affine, resample_aligned, shifted_along, working_grid, world_grid
from .similarity import mutual_information
from .surface import head_mask, signed_depth
from .transform import map_points, read_transforms

WORKING_RESOLUTION_MM = 2.0


@dataclass(frozen=True)
class Stage:
    """One antsRegistration stage: transform, metric sampling and its levels.

    ``shrink`` divides the working image's grid (2 mm: 4 -> 8 mm, 2 -> 4 mm) and
    ``smoothing`` is in its voxels, one per level; ``convergence`` is ANTs' threshold
    and window.
    """

    transform: str
    sampling: str
    iterations: tuple[int, ...]
    shrink: tuple[int, ...]
    smoothing: tuple[float, ...]
    convergence: str = "1e-6,10"

    def arguments(self, fixed: str, moving: str) -> list[str]:
        def levels(values):
            return "x".join(f"{value:g}" for value in values)

        return [
            "--transform", self.transform,
            "--metric", f"Mattes[{fixed},{moving},1,32{self.sampling}]",
            "--convergence", f"[{levels(self.iterations)},{self.convergence}]",
            "--shrink-factors", levels(self.shrink),
            "--smoothing-sigmas", levels(self.smoothing),
        ]


# The rigid start runs on its own, on 4 mm copies of the working image and the template
# (antspyx's "Rigid" preset there, from the centres of mass): inside the one call, at 8
# and 4 mm of the 2 mm images, it sent the template 74 mm off on the vtk CT (whose field
# of view holds only the skull base and face) with one ITK thread, where the separate
# start lands within 2-4 mm with one thread or two.
RIGID_RESOLUTION_MM = 4.0
RIGID = Stage("Rigid[0.25]", ",Regular,0.2", iterations=(500, 200), shrink=(2, 1), smoothing=(1, 0))
# Then affine and SyN in one call: antspyx's "SyN" preset less the levels with no
# iterations at the working resolution itself (every stage of the preset ends with one,
# which only resamples the result: outputs identical with and without them), and with
# half the working image's voxels, not a fifth, sampling the affine stage's metric. With
# a fifth the result hung on float rounding: on the Trio head, eight random seeds (or
# the working grid's direction changed by 1e-9) put the template's face 0.6-5.8 mm from
# a reference registration that also ran SyN at 2 mm, two of them more than 5 mm (a 1 %
# difference in the affine's scale, amplified by SyN); with half, 0.7-1.1 mm for all
# eight (a third: up to 2.4 mm). SyN's 4 mm level runs 10 iterations (antspyx: 20): its
# metric levels off after ~10. Fewer levels cost accuracy: without the affine stage's
# first 4 mm level the face moved a mean 1.4 mm on the Philips head.
STAGES = (
    Stage("Affine[0.25]", ",Regular,0.5", iterations=(2100, 1200, 1200), shrink=(4, 2, 2), smoothing=(3, 2, 1)),
    Stage("SyN[0.2,3,0]", "", iterations=(40, 10), shrink=(4, 2), smoothing=(2, 1), convergence="1e-7,8"),
)
# A registration is reported as failed, not used, unless its overlap with the image
# (SCALP or EDGES, below) beats that of the same template moved 8 mm along any axis by
# this factor: correct registrations reached 1.36-1.95 on real and simulated heads of
# every contrast (T1w, T2w, PD, T2*, FLAIR, PET; CT on its edges 1.49-1.80), the
# registration moved as a whole by 15 mm along an axis 0.41-1.04, and by as much with a
# 10 degree turn 0.43-0.93 (IXI049 T1w, vtk and mricrogl CT). The probes are shifts: a
# turn alone, about the brain's centre, is seen only about an axis the head is far from
# round about (IXI049 T1w: 1.13-1.63, vtk CT 0.60-1.12, mricrogl CT 0.83-1.44).
MIN_PEAK_RATIO = 1.15
# What the check overlaps (chosen by the BIDS suffix, refacebids.modalities):
# - SCALP: the scalp shell over the cranium, which every contrast shows, where facial
#   soft tissue may not (cranium_overlap);
# - EDGES: the image's strongest intensity edges wherever the template covers it
#   (edge_overlap), for CT, which shows the face, the skull base and the airways sharply.
#   A CT of the skull base and face has too little cranium for the scalp: what is left
#   of it is nearly a cylinder, which a probe moved 8 mm along it fits as well.
SCALP, EDGES = "scalp", "edges"
# Edges are the voxels with the EDGE_SHARE steepest intensity gradients of the region
# scored, after Gaussian smoothing of one working voxel (the finest detail the
# registration sees).
EDGE_SMOOTHING_MM = WORKING_RESOLUTION_MM
EDGE_SHARE = 0.10
# Template value of image voxels that map beyond the template's grid (its head is >= 0).
OUTSIDE_TEMPLATE = -1.0
CRANIUM_MM = 25.0
SHELL_MM = 8.0
PROBE_MM = 8.0
# Layers of the image's head nearer than twice this are one head (see surface.head_mask).
JOIN_MM = 8.0
# How deep under the skin the image's outermost bright layer may lie: 0 where the skin
# shows (T1w, CT), ~4 mm where the skin and muscle above the scalp's fat are as dark as
# the air (FLAIR: a median 4.6 mm on the simulated FLAIR of the Philips head, at 1 mm).
DARK_SKIN_MM = (0.0, 2.0, 4.0)


@dataclass
class RegistrationResult:
    """The template -> image transform (ITK composite .h5) and the quality of the fit.

    ``overlap`` names what the check scored (``SCALP`` or ``EDGES``); ``head_dice`` is
    the scalp overlap's Dice and ``edge_dice`` the edges', each ``None`` when the check
    scored the other; ``peak_ratio`` is that of ``overlap``.
    """

    composite: str
    similarity: float
    head_dice: float | None
    peak_ratio: float
    ok: bool
    overlap: str = SCALP
    edge_dice: float | None = None
    settings: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def working_image(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The image registered: ``volume`` (I, J, K) clipped at its 99.8th percentile (a few
    hot voxels must not squeeze the histogram), linearly resampled to
    ``WORKING_RESOLUTION_MM`` on the grid of ``working_grid`` unless it is within 5 % of
    that already.

    Returns
    -------
    values : (I', J', K') float32 ndarray
    affine : (4, 4) ndarray
        Its voxel-to-world (RAS) affine, shear-free as ITK sees the image's.
    """
    clipped = np.clip(volume, *np.percentile(volume, [0.0, 99.8])).astype(np.float32)
    image_affine = itk_affine(affine)
    if np.all(np.linalg.norm(affine[:3, :3], axis=0) >= WORKING_RESOLUTION_MM * 0.95):
        return clipped, image_affine
    grid_shape, grid_affine = working_grid(volume.shape, affine, WORKING_RESOLUTION_MM)
    return resample_aligned(clipped, image_affine, grid_shape, grid_affine), grid_affine


def write_working_image(values: np.ndarray, affine: np.ndarray, path: str) -> str:
    """Write a working image (:func:`working_image`) for ANTs to read as it is: float32,
    the same affine in the qform and the sform."""
    image = nib.Nifti1Image(np.asarray(values, np.float32), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.to_filename(path)
    return path


def levels_mm() -> dict:
    """The resolution (mm) of each level of each stage, by transform name."""
    return {
        "Rigid": [RIGID_RESOLUTION_MM * shrink for shrink in RIGID.shrink],
        **{stage.transform.split("[")[0]: [WORKING_RESOLUTION_MM * shrink for shrink in stage.shrink]
           for stage in STAGES},
    }


def _coarser(values: np.ndarray, affine: np.ndarray, resolution: float) -> tuple[np.ndarray, np.ndarray]:
    """(values, affine) linearly resampled to ``resolution`` mm, as ``ants.resample_image`` would."""
    grid_shape, grid_affine = working_grid(values.shape, affine, resolution)
    return resample_aligned(values, itk_affine(affine), grid_shape, grid_affine), grid_affine


def register_template(
    reference: np.ndarray,
    affine: np.ndarray,
    template_file: str,
    out_prefix: str,
    *,
    seed: int = 42,
    threads: int = 1,
    overlap: str = SCALP,
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
        Where ANTs writes the working image and the transforms (inside the work
        directory, never $TMPDIR).
    seed : int
        Random seed of the metric sampling, for reproducible results.
    threads : int
        ITK threads.
    overlap : {SCALP, EDGES}
        What the registration check overlaps (:func:`registration_quality`).

    Returns
    -------
    RegistrationResult
        ``composite`` maps image points to template points (template -> image for
        ``ants.apply_transforms``).
    """
    use_itk_threads(threads)  # before ITK first runs in this process
    Path(out_prefix).parent.mkdir(parents=True, exist_ok=True)
    values, grid_affine = working_image(reference, affine)
    fixed_file = write_working_image(values, grid_affine, f"{out_prefix}working.nii")
    coarse_fixed = write_working_image(*_coarser(values, grid_affine, RIGID_RESOLUTION_MM), f"{out_prefix}rigid_working.nii")
    template = nib.load(str(template_file))
    coarse_template = write_working_image(
        *_coarser(template.get_fdata(dtype=np.float32), template.affine, RIGID_RESOLUTION_MM),
        f"{out_prefix}rigid_template.nii")
    common = ["--dimensionality", "3", "--float", "1", "--random-seed", str(seed),
              "--use-histogram-matching", "0", "--collapse-output-transforms", "1"]
    antslib.run("antsRegistration", [
        *common, "--initial-moving-transform", f"[{coarse_fixed},{coarse_template},1]",  # centres of mass
        *RIGID.arguments(coarse_fixed, coarse_template), "--output", f"[{out_prefix}rigid_]",
    ])
    antslib.run("antsRegistration", [
        *common, "--initial-moving-transform", f"{out_prefix}rigid_0GenericAffine.mat",
        *(argument for stage in STAGES for argument in stage.arguments(fixed_file, template_file)),
        "--write-composite-transform", "1", "--output", f"[{out_prefix}]",
    ])
    composite = f"{out_prefix}Composite.h5"
    return RegistrationResult(
        composite=composite,
        **registration_quality(values, grid_affine, template_file, composite, overlap=overlap),
        settings={
            "software": f"antspyx {antslib.version()}",
            "stages": ["Rigid", "Affine", "SyN"],
            "metric": "Mattes mutual information (32 bins)",
            "resolution_mm": WORKING_RESOLUTION_MM,
            "levels_mm": levels_mm(),
            "syn_iterations": list(STAGES[-1].iterations),
            "initialisation": "centres of mass",
            "random_seed": seed,
            "path": "own",
        },
    )


def registration_quality(
    image: np.ndarray, affine: np.ndarray, template_file: str, transforms, *, overlap: str = SCALP
) -> dict:
    """Similarity, overlap and verdict of a template -> image transform.

    Parameters
    ----------
    image : (I, J, K) ndarray
        The working image (:func:`working_image`).
    affine : (4, 4) ndarray
        Its voxel-to-world (RAS) affine.
    template_file : str
        The template head registered; its labels and brain mask lie beside it.
    transforms : str or list of str
        Template -> image transform file (or files, in ``ants.apply_transforms`` order).
    overlap : {SCALP, EDGES}
        What is overlapped: the scalp over the cranium (:func:`cranium_overlap`) or the
        strongest edges (:func:`edge_overlap`).

    Returns
    -------
    dict
        ``similarity`` (negative mutual information, lower is better,
        :func:`refacebids.core.similarity.mutual_information`), ``overlap``,
        ``head_dice`` and ``edge_dice`` (the one not scored is ``None``), ``peak_ratio``
        and ``ok``.
    """
    from .warp import template_image_at

    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    coords = map_points(read_transforms(transforms), world_grid(affine, image.shape))
    values = template_image_at(template_file, coords, outside=OUTSIDE_TEMPLATE)
    covered = values > 0.5 * OUTSIDE_TEMPLATE
    warped = np.where(covered, values, np.float32(0.0))  # ANTs' resampling writes 0 beyond the grid
    head_dice = edge_dice = None
    if overlap == EDGES:
        edge_dice, peak_ratio = edge_overlap(image, warped, covered, spacing)
    elif overlap == SCALP:
        folder = Path(template_file).parent
        labels = template_image_at(next(folder.glob("*_desc-reface_dseg.nii*")), coords, order=0)
        near_brain = template_image_at(next(folder.glob("*_desc-brain_mask.nii*")), coords)
        head_dice, peak_ratio = cranium_overlap(image, warped, labels, near_brain, spacing)
    else:
        raise ValueError(f"unknown registration overlap {overlap!r}")
    return {
        "similarity": mutual_information(image, warped),
        "overlap": overlap,
        "head_dice": head_dice,
        "edge_dice": edge_dice,
        "peak_ratio": peak_ratio,
        "ok": bool(peak_ratio >= MIN_PEAK_RATIO),
    }


def cranium_overlap(
    image: np.ndarray, warped: np.ndarray, labels: np.ndarray, near_brain: np.ndarray, spacing
) -> tuple[float, float]:
    """How well the registered template's scalp meets the image's, over the cranium.

    Returns the Dice of the two scalp shells and its ratio to the best Dice reached
    when the registered template is moved by ``PROBE_MM`` along any axis. A correct
    registration is a peak (ratio > 1); the absolute Dice depends on the contrast of
    the scalp, the ratio does not. The cranium (within ``CRANIUM_MM`` of the brain,
    face, cheeks, jaw and ears left out) has scalp in every contrast, where facial soft
    tissue may not show.

    Where skin and muscle are as dark as the air (FLAIR), the image's head ends at the
    scalp's fat, a few millimetres beneath the skin, and an 8 mm probe inwards would fit
    it as well as the registration. So the template's shell is also tried that much
    shrunk (``DARK_SKIN_MM``); the depth that fits the registration best is a property
    of the image's contrast, and the probes are scored at that same depth, so they gain
    nothing from it.

    Parameters
    ----------
    image : (I, J, K) ndarray
        The working image.
    warped, labels, near_brain : (I, J, K) ndarray
        The registered template's head, refacing labels and brain mask (0 to 1) on the
        image's grid.
    spacing : (3,) sequence
        Voxel size (mm).
    """
    from .warp import FOREHEAD, TISSUE_LABELS

    spacing = tuple(float(s) for s in spacing)
    distance = distance_mm(near_brain < 0.5, spacing)
    facial = np.isin(labels, [t for t in TISSUE_LABELS if t != FOREHEAD])
    cranium = (distance <= CRANIUM_MM) & ~facial
    image_shell = _shell(signed_depth(head_mask(image, spacing, join_mm=JOIN_MM), spacing)) & cranium
    template_depth = signed_depth(head_mask(warped, spacing, join_mm=JOIN_MM), spacing)
    dices = [_dice(image_shell, _shell(template_depth + dark) & cranium) for dark in DARK_SKIN_MM]
    dice, dark = max(dices), DARK_SKIN_MM[int(np.argmax(dices))]
    # The probes move the template's signed depth, not its image: the same overlap for a
    # fraction of the cost, and a continuous shift (a moved mask would snap to voxels).
    probes = []
    for axis, steps in probe_steps(spacing):
        moved = shifted_along(template_depth, axis, steps, outside=1e6)
        probes.append(_dice(image_shell, _shell(moved + dark) & cranium))
    return dice, dice / max(max(probes), 1e-6)


def edge_overlap(image: np.ndarray, template: np.ndarray, covered: np.ndarray, spacing) -> tuple[float, float]:
    """How well the registered template's strongest edges meet the image's.

    Edges are the ``EDGE_SHARE`` of the scored voxels with the steepest intensity
    gradient (:func:`edge_level`), in the image and in the template alike, so that
    their Dice does not depend on either's contrast; a probe keeps the registered
    template's level, as it keeps its image. A CT of the skull base and face
    has edges facing every way (skin of the nose, lips and chin, palate, orbits, skull
    base, airways) where its cranium, nearly a cylinder, has none facing up or down.

    Parameters
    ----------
    image : (I, J, K) ndarray
        The working image.
    template : (I, J, K) ndarray
        The registered template on the same grid (anything, e.g. 0, outside ``covered``).
    covered : (I, J, K) bool ndarray
        Where the template's grid reaches.
    spacing : (3,) sequence
        Voxel size (mm).

    Returns
    -------
    dice : float
        Dice of the two edge sets.
    peak_ratio : float
        ``dice`` over the best Dice of the template moved by ``PROBE_MM`` along any axis
        (:func:`probe_steps`). Both 0 when no voxel can be scored (the check refuses).

    Notes
    -----
    Only voxels that every probe sees under the template are scored
    (:func:`probe_region`): a probe moved towards an edge of the field of view or of
    the template's grid is scored on the same voxels as the registration.
    """
    spacing = np.asarray(spacing, float)
    region = probe_region(covered, spacing)
    if not region.any():
        return 0.0, 0.0
    image_gradient = gradient_magnitude(image, spacing)
    image_edges = (image_gradient > edge_level(image_gradient, region)) & region
    template_gradient = gradient_magnitude(template, spacing)
    level = edge_level(template_gradient, region)
    dice = _dice(image_edges, (template_gradient > level) & region)
    probes = [
        _dice(image_edges, (shifted_along(template_gradient, axis, steps, outside=0.0) > level) & region)
        for axis, steps in probe_steps(spacing)
    ]
    return dice, dice / max(max(probes), 1e-6)


def probe_steps(spacing) -> list[tuple[int, float]]:
    """(axis, voxel steps) of the six probes: ``PROBE_MM`` back and forth along each axis
    of a grid with voxel size ``spacing`` (3,) mm.

    Along the grid's axes, not the world's: the same probes where the two agree, as on
    most images, and on an oblique grid as good a set of directions (a head lies at an
    angle to both), for a shift that moves whole slabs (:func:`shifted_along`).

    >>> probe_steps((2.0, 2.0, 4.0))[4:]
    [(2, -2.0), (2, 2.0)]
    """
    return [(axis, sign * PROBE_MM / float(spacing[axis])) for axis in range(3) for sign in (-1, 1)]


def probe_region(covered: np.ndarray, spacing) -> np.ndarray:
    """(I, J, K) bool: voxels every probe sees under the template, away from the artefacts
    of its grid's edge.

    At least ``PROBE_MM`` inside the grid, and ``PROBE_MM`` plus twice
    ``EDGE_SMOOTHING_MM`` inside ``covered`` ((I, J, K) bool, where the template's grid
    reaches): the smoothed gradient sees the step to the value outside the template's
    grid that far, and a probe carries it ``PROBE_MM`` further in.
    """
    spacing = np.asarray(spacing, float)
    inside = distance_mm(covered, spacing) > PROBE_MM + 2.0 * EDGE_SMOOTHING_MM
    margin = np.ceil(PROBE_MM / spacing - 1e-6).astype(int)
    away_from_grid_edge = np.zeros(covered.shape, bool)
    away_from_grid_edge[tuple(slice(m, n - m) for m, n in zip(margin, covered.shape))] = True
    return inside & away_from_grid_edge


def gradient_magnitude(volume: np.ndarray, spacing) -> np.ndarray:
    """(I, J, K) float32 length of the intensity gradient (per mm) of an (I, J, K) volume,
    smoothed by a Gaussian of ``EDGE_SMOOTHING_MM``; ``spacing`` (3,) in mm."""
    spacing = np.asarray(spacing, float)
    sigma = EDGE_SMOOTHING_MM / spacing
    volume = np.asarray(volume, np.float32)
    squared = np.zeros(volume.shape, np.float32)
    for axis in range(3):
        order = [0, 0, 0]
        order[axis] = 1
        derivative = ndi.gaussian_filter(volume, sigma, order=order) / np.float32(spacing[axis])
        squared += derivative * derivative
    return np.sqrt(squared)


def edge_level(gradient: np.ndarray, region: np.ndarray) -> float:
    """The ``gradient`` above which the ``EDGE_SHARE`` of ``region``'s voxels lie (both
    (I, J, K); ``region`` bool, not empty): the steepest tenth are edges.

    >>> gradient = np.arange(20.0).reshape(20, 1, 1)
    >>> np.flatnonzero(gradient > edge_level(gradient, np.ones(gradient.shape, bool))).tolist()
    [18, 19]
    """
    return float(np.quantile(gradient[region], 1.0 - EDGE_SHARE))


def _shell(depth: np.ndarray) -> np.ndarray:
    """The outer ``SHELL_MM`` of a head (scalp and skull) from its signed depth: solid
    heads overlap even when off."""
    return (depth < 0) & (depth >= -SHELL_MM)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2.0 * np.logical_and(a, b).sum() / total) if total else 0.0
