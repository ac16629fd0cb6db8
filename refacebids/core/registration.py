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
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from ..utils.threads import in_parallel, use_itk_threads
from . import antslib
from .ct import BRAIN_HU, pseudo_t1w_range
from .geometry import (
    distance_mm,
    itk_affine,
    mapped_values,
    resample_aligned,
    shifted_along,
    working_grid,
)
from .similarity import mutual_information
from .surface import head_mask, signed_depth
from .transform import map_grid

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
# start lands within 2-4 mm with one thread or two. Its 4 mm level stops after 25
# iterations: with two threads ITK sums the metric in varying order, and the level ran
# 15-42 iterations (25-38 ms each) on the same 1 mm T1w from run to run, for a metric
# 0.25 % apart, which the affine stage refines anyway. Over the eleven heads below (the
# vtk CT aside), the template's face lay a mean 1.17 and 1.20 mm from the reference
# registration (two seeds), against 1.27 and 1.16 mm without the cap (2026-12-07).
RIGID_RESOLUTION_MM = 4.0
RIGID = Stage("Rigid[0.25]", ",Regular,0.2", iterations=(500, 25), shrink=(2, 1), smoothing=(1, 0))
# Then affine and SyN in one call: antspyx's "SyN" preset less the levels with no
# iterations at the working resolution itself (every stage of the preset ends with one,
# which only resamples the result: outputs identical with and without them), and with
# half the working image's voxels, not a fifth, sampling the affine stage's metric. With
# a fifth the result hung on float rounding: on the Trio head, eight random seeds (or
# the working grid's direction changed by 1e-9) put the template's face 0.6-5.8 mm from
# a reference registration that also ran SyN at 2 mm, two of them more than 5 mm (a 1 %
# difference in the affine's scale, amplified by SyN); with half, 0.7-1.1 mm for all
# eight (a third: up to 2.4 mm). The affine stage's 4 mm level smoothed by 2 voxels is
# left out too (its level smoothed by 1 starts from the 8 mm result), and SyN's 4 mm
# level, at 0.25-0.3 s an iteration the costliest of all, runs 3 (antspyx: 20). Judged
# against a reference registration run down to 2 mm (affine at 8, 4, 4 and 2 mm, SyN
# 40x20x10 at 8, 4 and 2 mm) on eleven real and simulated heads (T1w, T2w, PD, PET, the
# mricrogl CT), the template's face lay a mean 0.96 mm from it (another seed: 1.10),
# where both 4 mm affine levels and 5 SyN iterations put it 1.07 mm (another seed:
# 0.99), and ANTs took 0.6-2.0 s less on ten of them (2026-12-07). The vtk CT's
# registration hangs on the seed (the earlier levels failed its check with two of seven
# seeds and put the face 2.9-6.2 mm off with the rest): 2.2 and 2.5 mm. Fewer levels did
# not hold: with the rigid start at 8 mm alone the face lay a mean 1.4-5.4 mm from the
# reference on three of four heads (these levels: 0.8-2.5 mm).
STAGES = (
    Stage("Affine[0.25]", ",Regular,0.5", iterations=(2100, 1200), shrink=(4, 2), smoothing=(3, 1)),
    Stage("SyN[0.2,3,0]", "", iterations=(40, 3), shrink=(4, 2), smoothing=(2, 1), convergence="1e-7,8"),
)
# A registration is reported as failed, not used, unless its overlap with the image
# (SCALP or EDGES, below) beats that of the same template moved 8 mm along any axis
# (``peak_ratio``), and that of the same template turned TURN_DEGREES about any of its
# own axes through its brain's centre (``turn_ratio``), by this factor each. Shifted
# probes: correct registrations reached 1.36-1.95 on real and simulated heads of every
# contrast (T1w, T2w, PD, T2*, FLAIR, PET; CT on its edges 1.49-1.80; with the levels
# of 2026-12-07 the tests' cases reach 1.38-1.94 and 1.47-1.83), the registration
# moved as a whole by 15 mm along an axis 0.41-1.04, and by as much with a 10 degree
# turn 0.43-0.93 (IXI049 T1w, vtk and mricrogl CT). A turn alone about the brain's
# centre fits a shift-peak where the head is nearly round (IXI049 T1w up to 1.63,
# mricrogl CT 1.45, vtk CT 1.11): the turned probes see it.
MIN_PEAK_RATIO = 1.15
# What the check overlaps (chosen by the BIDS suffix, refacebids.modalities):
# - SCALP: the scalp shell over the cranium, which every contrast shows, where facial
#   soft tissue may not (cranium_overlap);
# - EDGES: the image's strongest intensity edges wherever the template covers it
#   (edge_overlap), for CT, which shows the face, the skull base and the airways sharply.
#   A CT of the skull base and face has too little cranium for the scalp: what is left
#   of it is nearly a cylinder, which a probe moved 8 mm along it fits as well.
SCALP, EDGES = "scalp", "edges"
# How far the turned probes turn, by overlap. A probe turned too little is a peak itself
# (the registration beats it by less than MIN_PEAK_RATIO); one turned too far leaves a
# registration turned less than it, or about another axis, nearer none of the probes
# than to the truth. The scalp over a nearly round cranium changes slowly with a turn
# about its centre: correct registrations beat probes turned 10 degrees by 1.12-1.20
# only, 15 degrees by 1.24-1.35 (every MRI and PET case of the tests; 1.18-1.36 with the
# levels of 2026-12-07, the simulated dynamic FDG PET lowest), and IXI049 T1w turned 10
# degrees alone then scores 0.86-0.98 (about a diagonal axis 1.00-1.06). A CT's edges
# change fast: 7.5 degrees is beaten by 1.37-1.52 (the CT cases; 1.39-1.49 with the
# levels of 2026-12-07) and refuses every 10 degree turn measured, about the three axes
# (vtk 0.59-0.79, mricrogl 0.69-0.78) and the diagonals (up to 1.12, vtk); at 15 degrees
# turns about a diagonal passed (mricrogl 1.15, vtk 1.22).
TURN_DEGREES = {SCALP: 15.0, EDGES: 7.5}
# A CT's check also asks that the image hold brain where the template's brain is: the
# registered image is the CT's pseudo-T1w (core/ct.py), in which brain (-20 to 100 HU)
# is 30-140 and only air, fat and dense bone fall outside. More than BRAIN_DEPTH_MM
# inside the registered template's brain (clear of the skull a correct registration may
# miss by a few mm, and of its partial volume), at least MIN_BRAIN_LIKE of the voxels in
# view must hold brain values. Correct CT registrations: 0.983-0.999 (mricrogl,
# simulated IXI049, vtk; mricrogl cut at 140-180 mm above its lowest slice); CTs of the
# face and neck alone (cut at 112 and 124 mm) registered with the template's brain on
# the face, 110 mm off: 0.839 and 0.847 (sinuses, mouth, jaw and fat in the template's
# brain); the vtk CT registered 80 mm off: 0.818.
BRAIN_DEPTH_MM = 15.0
BRAIN_VALUES = pseudo_t1w_range(*BRAIN_HU)
MIN_BRAIN_LIKE = 0.90
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
    scored the other; ``peak_ratio`` and ``turn_ratio`` are that of ``overlap`` over its
    shifted and its turned probes; ``brain_like`` is a CT's share of brain values where
    the template's brain is (``None`` otherwise). ``None`` in a record written before
    they were measured. ``grid_coordinates`` is a ``.npz`` file of the template
    coordinates of the working grid's voxels as the check mapped them (``coords``,
    (I, J, K, 3)) and of the grid's ``affine``, which the mask step reads rather than
    map the grid again (``None`` where no file was written, as through a T1w).
    """

    composite: str
    similarity: float
    head_dice: float | None
    peak_ratio: float
    ok: bool
    overlap: str = SCALP
    edge_dice: float | None = None
    turn_ratio: float | None = None
    brain_like: float | None = None
    grid_coordinates: str | None = None
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
    # Clipped as float32, between float32 bounds: rounding is monotonic, so this is the
    # float64 clip rounded, without a float64 copy of the image (0.4 s at 1 mm).
    bounds = np.float32([np.min(volume), np.percentile(volume, 99.8)])
    clipped = np.clip(np.asarray(volume, np.float32), *bounds)
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
    coords = map_grid(composite, values.shape, grid_affine, threads)
    grid_coordinates = f"{out_prefix}grid_coordinates.npz"
    np.savez(grid_coordinates, coords=coords, affine=grid_affine)
    return RegistrationResult(
        composite=composite,
        grid_coordinates=grid_coordinates,
        **registration_quality(values, grid_affine, template_file, composite, overlap=overlap, threads=threads,
                               coords=coords),
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
    image: np.ndarray, affine: np.ndarray, template_file: str, transforms, *, overlap: str = SCALP,
    threads: int = 1, coords: np.ndarray | None = None,
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
    threads : int
        Independent measurements run on as many threads at once, with the same result.
    coords : (I, J, K, 3) ndarray, optional
        The template coordinates of the image's voxels through ``transforms``, when the
        caller has mapped them already.

    Returns
    -------
    dict
        ``similarity`` (negative mutual information, lower is better,
        :func:`refacebids.core.similarity.mutual_information`), ``overlap``,
        ``head_dice`` and ``edge_dice`` (the one not scored is ``None``), ``peak_ratio``
        (over the shifted probes), ``turn_ratio`` (over the turned ones), ``brain_like``
        (:func:`brain_like_share` for EDGES, else ``None``) and ``ok``: both ratios at
        least ``MIN_PEAK_RATIO`` and ``brain_like``, when measured, ``MIN_BRAIN_LIKE``.
    """
    from .warp import brain_depth_at, template_image_at, template_mask_centre

    if overlap not in (SCALP, EDGES):
        raise ValueError(f"unknown registration overlap {overlap!r}")
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if coords is None:
        coords = map_grid(transforms, image.shape, affine, threads)
    folder = Path(template_file).parent
    brain_file = next(folder.glob("*_desc-brain_mask.nii*"))
    samplings = [lambda: template_image_at(template_file, coords, outside=OUTSIDE_TEMPLATE)]
    if overlap == SCALP:  # its labels and brain, sampled with its head
        samplings += [
            lambda: template_image_at(next(folder.glob("*_desc-reface_dseg.nii*")), coords, order=0),
            lambda: template_image_at(brain_file, coords),
        ]
    values, *scalp_samples = in_parallel(threads, *samplings)
    covered = values > 0.5 * OUTSIDE_TEMPLATE
    warped = np.where(covered, values, np.float32(0.0))  # ANTs' resampling writes 0 beyond the grid
    turns = turned_probes(linear_fit(coords, covered), template_mask_centre(brain_file), TURN_DEGREES[overlap])

    def overlap_scores() -> tuple:
        """(head_dice, edge_dice, peak_ratio, turn_ratio, brain_like)"""
        if overlap == EDGES:
            every_other = (slice(None, None, 2),) * 3
            brain_like = brain_like_share(image[every_other], brain_depth_at(coords[every_other], brain_file),
                                          BRAIN_VALUES)
            edge_dice, peak_ratio, turn_ratio = edge_overlap(image, warped, covered, spacing, turns, threads=threads)
            return None, edge_dice, peak_ratio, turn_ratio, brain_like
        labels, near_brain = scalp_samples
        head_dice, peak_ratio, turn_ratio = cranium_overlap(image, warped, labels, near_brain, spacing, turns,
                                                            threads=threads)
        return head_dice, None, peak_ratio, turn_ratio, None

    # The similarity is measured beside the overlap, which only partly fills the threads.
    similarity, (head_dice, edge_dice, peak_ratio, turn_ratio, brain_like) = in_parallel(
        threads, partial(mutual_information, image, warped), overlap_scores)
    return {
        "similarity": similarity,
        "overlap": overlap,
        "head_dice": head_dice,
        "edge_dice": edge_dice,
        "peak_ratio": peak_ratio,
        "turn_ratio": turn_ratio,
        "brain_like": brain_like,
        "ok": bool(peak_ratio >= MIN_PEAK_RATIO and turn_ratio >= MIN_PEAK_RATIO
                   and (brain_like is None or brain_like >= MIN_BRAIN_LIKE)),
    }


def check_failures(record: dict) -> list[str]:
    """What a registration record's check failed on, one phrase per test (empty when it
    passed), for the refusal's message. A record written before a test was measured
    (``turn_ratio`` or ``brain_like`` missing) is judged on what it holds.

    >>> for failure in check_failures({"head_dice": 0.85, "peak_ratio": 1.02, "turn_ratio": 1.1}):
    ...     print(failure)
    scalp overlap 0.85 is not a peak: 1.02 < 1.15 of the overlap 8 mm off
    1.10 < 1.15 of the overlap turned 15 degrees
    >>> check_failures({"overlap": "edges", "edge_dice": 0.36, "peak_ratio": 1.52, "turn_ratio": 1.39,
    ...                 "brain_like": 0.839})
    ["84% of the image where the template's brain lies deep holds brain values, < 90%"]
    """
    overlap = record.get("overlap", SCALP)
    dice = record["edge_dice"] if overlap == EDGES else record["head_dice"]
    failures = []
    if record["peak_ratio"] < MIN_PEAK_RATIO:
        failures.append(f"{overlap} overlap {dice:.2f} is not a peak: {record['peak_ratio']:.2f} < "
                        f"{MIN_PEAK_RATIO} of the overlap {PROBE_MM:g} mm off")
    turn_ratio = record.get("turn_ratio")
    if turn_ratio is not None and turn_ratio < MIN_PEAK_RATIO:
        failures.append(f"{turn_ratio:.2f} < {MIN_PEAK_RATIO} of the overlap turned "
                        f"{TURN_DEGREES[overlap]:g} degrees")
    brain_like = record.get("brain_like")
    if brain_like is not None and brain_like < MIN_BRAIN_LIKE:
        failures.append(f"{brain_like:.0%} of the image where the template's brain lies deep holds brain "
                        f"values, < {MIN_BRAIN_LIKE:.0%}")
    return failures


def cranium_overlap(
    image: np.ndarray, warped: np.ndarray, labels: np.ndarray, near_brain: np.ndarray, spacing, turns=(),
    threads: int = 1,
) -> tuple[float, float, float | None]:
    """How well the registered template's scalp meets the image's, over the cranium.

    Returns the Dice of the two scalp shells, its ratio to the best Dice reached when
    the registered template is moved by ``PROBE_MM`` along any axis, and its ratio to
    the best reached when it is turned by each of ``turns`` (``None`` without). A
    correct registration is a peak (ratios > 1); the absolute Dice depends on the
    contrast of the scalp, the ratios do not. The cranium (within ``CRANIUM_MM`` of the brain,
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
    turns : sequence of (4, 4) ndarray
        Voxel maps of the turned probes (:func:`turned_probes`).
    threads : int
        The image's and the template's shells and the distance to the brain are found,
        and the turned probes interpolated, on as many threads at once.
    """
    from .warp import FOREHEAD, TISSUE_LABELS

    spacing = tuple(float(s) for s in spacing)
    image_depth, template_depth, distance = in_parallel(
        threads, *(partial(_head_depth, head, spacing) for head in (image, warped)),
        partial(distance_mm, near_brain < 0.5, spacing),
    )
    facial = np.isin(labels, [t for t in TISSUE_LABELS if t != FOREHEAD])
    cranium = (distance <= CRANIUM_MM) & ~facial
    image_shell = _shell(image_depth) & cranium
    dices = [_dice(image_shell, _shell(template_depth + dark) & cranium) for dark in DARK_SKIN_MM]
    dice, dark = max(dices), DARK_SKIN_MM[int(np.argmax(dices))]
    # The probes move the template's signed depth, not its image: the same overlap for a
    # fraction of the cost, and a continuous shift (a moved mask would snap to voxels).
    probes = []
    for axis, steps in probe_steps(spacing):
        moved = shifted_along(template_depth, axis, steps, outside=1e6)
        probes.append(_dice(image_shell, _shell(moved + dark) & cranium))
    # A turned probe is scored on the cranium's voxels alone, which hold every voxel of
    # the image's shell: the same Dice, interpolated at a fraction of the voxels.
    image_shell_at = image_shell[cranium]
    turned = [_dice(image_shell_at, _shell(depth + dark))
              for depth in mapped_values(template_depth, turns, cranium, outside=1e6, threads=threads)]
    return dice, _peak_ratio(dice, probes), _peak_ratio(dice, turned)


def _head_depth(volume: np.ndarray, spacing) -> np.ndarray:
    """(I, J, K) signed depth (mm) of the head in ``volume`` (I, J, K): negative inside."""
    return signed_depth(head_mask(volume, spacing, join_mm=JOIN_MM), spacing)


def edge_overlap(
    image: np.ndarray, template: np.ndarray, covered: np.ndarray, spacing, turns=(), threads: int = 1,
) -> tuple[float, float, float | None]:
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
    turns : sequence of (4, 4) ndarray
        Voxel maps of the turned probes (:func:`turned_probes`).
    threads : int
        The turned probes are interpolated on as many threads at once.

    Returns
    -------
    dice : float
        Dice of the two edge sets.
    peak_ratio : float
        ``dice`` over the best Dice of the template moved by ``PROBE_MM`` along any axis
        (:func:`probe_steps`).
    turn_ratio : float or None
        ``dice`` over the best Dice of the template turned by ``turns``; ``None``
        without. The ratios are 0 when no voxel can be scored (the check refuses).

    Notes
    -----
    Only voxels that every shifted probe sees under the template are scored
    (:func:`probe_region`): a probe moved towards an edge of the field of view or of
    the template's grid is scored on the same voxels as the registration. A turn
    carries voxels far from its axis further than a shift: the template's gradient
    within the smoothing's reach of its grid's end (the step to the value beyond it)
    is no edge for a turned probe.
    """
    spacing = np.asarray(spacing, float)
    covered_depth = distance_mm(covered, spacing)
    region = probe_region(covered, spacing, covered_depth)
    if not region.any():
        return 0.0, 0.0, (0.0 if len(turns) else None)
    image_gradient = gradient_magnitude(image, spacing)
    image_edges = (image_gradient > edge_level(image_gradient, region)) & region
    template_gradient = gradient_magnitude(template, spacing)
    level = edge_level(template_gradient, region)
    dice = _dice(image_edges, (template_gradient > level) & region)
    probes = [
        _dice(image_edges, (shifted_along(template_gradient, axis, steps, outside=0.0) > level) & region)
        for axis, steps in probe_steps(spacing)
    ]
    turned = []
    if len(turns):
        template_gradient = np.where(covered_depth > 2.0 * EDGE_SMOOTHING_MM, template_gradient, np.float32(0.0))
        image_edges_at = image_edges[region]
        turned = [_dice(image_edges_at, gradient > level)
                  for gradient in mapped_values(template_gradient, turns, region, outside=0.0, threads=threads)]
    return dice, _peak_ratio(dice, probes), _peak_ratio(dice, turned)


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


def linear_fit(coords: np.ndarray, where: np.ndarray) -> np.ndarray:
    """(4, 4) affine from voxel indices to template coordinates, closest (least squares)
    to the registration's ``coords`` (I, J, K, 3) at the True voxels of ``where`` (I, J, K)
    bool: the registration less its nonlinear part.

    Fitted on every other voxel along each axis (the eighth of them: the same affine
    within a small fraction of a millimetre, at an eighth of the cost), or on all of
    them when that leaves fewer than 100. The identity when ``where`` holds fewer than
    4 voxels.

    >>> coords = np.moveaxis(np.indices((6, 5, 4), dtype=np.float32), 0, -1) * 2.0 + 10.0
    >>> linear_fit(coords, np.ones((6, 5, 4), bool)).round(6).tolist()[0]
    [2.0, 0.0, 0.0, 10.0]
    """
    step = (slice(None, None, 2),) * 3
    if np.count_nonzero(where[step]) < 100:
        step = (slice(None),) * 3
    index = np.nonzero(where[step])
    fit = np.eye(4)
    if len(index[0]) < 4:
        return fit
    stride = np.array([s.step or 1 for s in step], float)
    voxels = np.column_stack([np.stack(index, axis=-1) * stride, np.ones(len(index[0]))])
    solution, *_ = np.linalg.lstsq(voxels, coords[step][index].astype(float), rcond=None)
    fit[:3] = solution.T
    return fit


def turned_probes(voxel_to_template: np.ndarray, centre, degrees: float) -> list[np.ndarray]:
    """Voxel maps of the six turned probes: the registered template turned by ``degrees``
    one way and the other about each of its own axes (left-right, back-front, down-up)
    through ``centre`` (3,) (template mm, its brain's centre).

    Parameters
    ----------
    voxel_to_template : (4, 4) ndarray
        The registration as an affine from the image grid's voxels to template mm
        (:func:`linear_fit`).
    centre : (3,) sequence
        Template RAS mm.
    degrees : float

    Returns
    -------
    list of (4, 4) ndarray
        For each probe, the map from an image voxel to the voxel where the registered
        template shows what the probe shows there (:func:`geometry.mapped_values`).
        Empty when ``voxel_to_template`` is singular (no turn can be scored).

    >>> maps = turned_probes(np.diag([2.0, 2.0, 2.0, 1.0]), (10.0, 0.0, 0.0), 90.0)
    >>> (maps[1] @ [5.0, 0.0, 3.0, 1.0]).round(6).tolist()  # +90 degrees about x
    [5.0, -3.0, 0.0, 1.0]
    """
    try:
        to_voxel = np.linalg.inv(voxel_to_template)
    except np.linalg.LinAlgError:
        return []
    centre = np.asarray(centre, float)
    maps = []
    for axis in range(3):
        a, b = [other for other in range(3) if other != axis]
        for sign in (-1, 1):
            angle = np.deg2rad(sign * degrees)
            turn = np.eye(4)
            turn[[a, a, b, b], [a, b, a, b]] = np.cos(angle), -np.sin(angle), np.sin(angle), np.cos(angle)
            turn[:3, 3] = centre - turn[:3, :3] @ centre
            maps.append(to_voxel @ turn @ voxel_to_template)
    return maps


def brain_like_share(image: np.ndarray, brain_depth: np.ndarray, values) -> float | None:
    """Share of the image's voxels more than ``BRAIN_DEPTH_MM`` inside the registered
    template's brain whose value lies in ``values`` (low, high), or ``None`` when the
    field of view holds no such voxel (nothing to say).

    Parameters
    ----------
    image : (I, J, K) ndarray
        The working image (or every other voxel of it: the same share within a fraction
        of a percent, for an eighth of the look-ups).
    brain_depth : (I, J, K) ndarray
        Depth (template mm) inside the template's brain at those voxels'
        template positions (:func:`refacebids.core.warp.brain_depth_at`): a brain the
        field of view cuts is as deep at the cut as beneath it.
    values : (2,) sequence
        The values brain can have in ``image``.

    >>> depth = np.array([0.0, 10.0, 20.0, 20.0, 30.0, 40.0])
    >>> image = np.array([0.0, 0.0, 0.0, 50.0, 90.0, 200.0])  # air, then brain, then bone
    >>> brain_like_share(image, depth, (30.0, 140.0))
    0.5
    >>> brain_like_share(image, np.zeros(6), (30.0, 140.0)) is None
    True
    """
    inside = np.asarray(image)[np.asarray(brain_depth) > BRAIN_DEPTH_MM]
    if not inside.size:
        return None
    return float(np.mean((inside >= values[0]) & (inside <= values[1])))


def probe_region(covered: np.ndarray, spacing, covered_depth: np.ndarray | None = None) -> np.ndarray:
    """(I, J, K) bool: voxels every shifted probe sees under the template, away from the
    artefacts of its grid's edge.

    At least ``PROBE_MM`` inside the grid, and ``PROBE_MM`` plus twice
    ``EDGE_SMOOTHING_MM`` inside ``covered`` ((I, J, K) bool, where the template's grid
    reaches): the smoothed gradient sees the step to the value outside the template's
    grid that far, and a probe carries it ``PROBE_MM`` further in. ``covered_depth``
    (I, J, K), ``distance_mm(covered, spacing)``, when the caller has it.
    """
    spacing = np.asarray(spacing, float)
    if covered_depth is None:
        covered_depth = distance_mm(covered, spacing)
    inside = covered_depth > PROBE_MM + 2.0 * EDGE_SMOOTHING_MM
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


def _peak_ratio(dice: float, probes: list) -> float | None:
    return dice / max(max(probes), 1e-6) if probes else None


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2.0 * np.logical_and(a, b).sum() / total) if total else 0.0
