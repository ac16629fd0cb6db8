"""Replacing the face, ears, teeth and wrapped face parts with the template's.

Where the replacement comes from matters as much as where it goes. The nonlinear
registration that places the labels also reshapes the template's face into the
subject's (on real heads, SyN-warped template faces stayed within 2 mm of 80-99% of the
subject's face surface), so a face drawn through it would give the subject's face back.
The replacement face is therefore sampled through the *affine that the head outside
the face determines* (scalp, skull, brain and neck: head size, position and
orientation), and only near the edges of
the replaced region does the placement blend into the full nonlinear registration, so
the new face joins the subject's own scalp, cheeks and neck without a step.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage as ndi

from . import warp
from .geometry import bounding_box, distance_mm, world_to_voxel
from .intensity import (
    apply_intensity_map, bordering_level, fit_intensity_map, fit_skin_profile, skin_profile_weight, typical_level,
)
from .noise import (
    NoiseModel, add_noise, dark_patch_share, dark_patches, estimate_noise, feather, local_noise_sd,
    mean_run_length, soften_structure, value_spread,
)
from .surface import signed_depth

# From nonlinear (edge) to head-affine placement (interior). Narrow: whatever follows
# the registration is the subject's shape, and an 18 mm band gave the recogniser of the
# audit the subject's jaw and chin back (6 of 21 heads matched first, 2 of 21 with 4 mm).
BLEND_MM = 4.0
JOIN_REACH_MM = 10.0  # kept voxels this near the skin are where the new face joins the old
# The average face lies within 2 mm of a real face over most of its surface, so the
# replacement skin is raised by this much above the template's (a fuller average face:
# more subcutaneous tissue over the template's anatomy), fading to 0 at the edges where
# it joins the subject's tissue.
SKIN_OFFSET_MM = 10.0
# A face that stands out from the placed template by about the raise (a heavy brow ridge,
# a long nose) meets the raised skin there and is not moved: the raise grows, in steps,
# as long as a larger one would leave more than this share of the face's skin clear
# (Trio's brow and nose stand out 8-11 mm: 10 % of its face skin met at 10 mm).
COINCIDENT_SKIN_TOLERANCE = 0.01
SKIN_OFFSET_STEP_MM = 0.5
MAX_SKIN_OFFSET_MM = 20.0
# The raise fades over a wider band than the placement blends: the raised face ramps down
# to the kept skin (and to the ears, drawn unraised) instead of ending in a 4 mm step,
# while the shape in the ramp stays the template's. The audit matched no more heads (1 of
# 21 against 2 of 21 with the raise fading over BLEND_MM); 18 mm took the moved share of
# the face below 90 % on a simulated T2* head (89 %; 93 % with 10 mm).
RAISE_FADE_MM = 10.0
FOV_CLEARANCE_MM = 4.0  # the new skin stays this far inside the image's field of view
SEAM_MM = 3.0  # intensity feathering into the kept tissue
SMOOTH_SKIN_MM = 1.5  # scanner noise only this near the new skin; full texture twice as deep
# Dark patches are anatomy, not noise: drawn from a generator of their own with this seed,
# so that every volume of a 4D image has the same ones.
PATCH_SEED = 0
TRAINING_REACH_MM = 25.0  # air around the head used to learn the contrast
WRAP_SIGNAL_DILATION_MM = 4.0


def fit_head_affine(coords: np.ndarray, region: np.ndarray, grid_affine: np.ndarray) -> np.ndarray:
    """Least-squares affine from image world to template world over ``region``.

    Parameters
    ----------
    coords : (I, J, K, 3) ndarray
        Template coordinates of every voxel of a grid (from the registration).
    region : (I, J, K) bool ndarray
        Voxels whose mapping should decide the affine (the head outside the face).
    grid_affine : (4, 4) ndarray
        Voxel-to-world affine of the grid.

    Returns
    -------
    (4, 4) ndarray
        Maps image world (mm) to template world (mm).
    """
    idx = np.argwhere(region)
    world = idx @ grid_affine[:3, :3].T + grid_affine[:3, 3]
    design = np.c_[world, np.ones(len(world))]
    solution, *_ = np.linalg.lstsq(design, coords[region].astype(np.float64), rcond=None)
    affine = np.eye(4)
    affine[:3, :] = solution.T
    return affine


def edge_weight(
    replaced: np.ndarray, joins: np.ndarray, grid_affine: np.ndarray, reach_mm: float = BLEND_MM
) -> np.ndarray:
    """(I, J, K) weight of the registration inside ``replaced``.

    1 where the replaced region meets kept voxels of ``joins`` (the kept skin and the
    tissue just beneath it, where the new face has to join the subject's), falling to 0
    ``reach_mm`` away from them. Elsewhere the region ends inside tissue (against the
    protected brain, say), where the intensity seam hides a step, and the face keeps the
    head-affine placement: near the brow, blending towards the registration there would
    give back the subject's brow. With ``reach_mm=RAISE_FADE_MM`` the same weight fades
    the raise of the new skin.
    """
    zooms = np.linalg.norm(grid_affine[:3, :3], axis=0)
    ends = ~replaced & joins
    if not ends.any():
        return np.zeros(replaced.shape, np.float32)
    distance = distance_mm(~ends, zooms)
    return np.where(replaced, np.clip(1.0 - distance / reach_mm, 0.0, 1.0), 1.0).astype(np.float32)


def blended_coordinates(
    coords: np.ndarray, weight: np.ndarray, head_affine: np.ndarray, grid_affine: np.ndarray
) -> np.ndarray:
    """Template coordinates for sampling the replacement on a (coarse) grid.

    ``weight`` 1 follows the registration (``coords``), 0 follows ``head_affine``.

    Parameters
    ----------
    coords : (I, J, K, 3) ndarray
    weight : (I, J, K) ndarray, see ``edge_weight``
    head_affine, grid_affine : (4, 4) ndarray

    Returns
    -------
    (I, J, K, 3) float32 ndarray
    """
    weight = weight[..., None]
    ijk = np.indices(coords.shape[:3], dtype=np.float32)
    world = np.moveaxis(np.tensordot(grid_affine[:3, :3], ijk, axes=1), 0, -1) + grid_affine[:3, 3]
    affine_coords = world @ head_affine[:3, :3].T + head_affine[:3, 3]
    valid = coords[..., :1] > warp.OUTSIDE / 2
    blended = np.where(valid, affine_coords + weight * (coords - affine_coords), affine_coords)
    return blended.astype(np.float32)


def clearing_skin_offset(
    protrusion: np.ndarray, raise_weight: np.ndarray, raise_cap: np.ndarray, clearance: float
) -> float:
    """Raise of the new skin (template mm) that keeps it clear of the subject's face skin.

    The smallest raise from ``SKIN_OFFSET_MM`` up to ``MAX_SKIN_OFFSET_MM`` (steps of
    ``SKIN_OFFSET_STEP_MM``) whose new skin passes within ``clearance`` of at most
    ``COINCIDENT_SKIN_TOLERANCE`` more of the face's skin than the best raise's does.
    Counted where the raise applies in full: towards the joins it fades to nothing, and
    the new skin meets the old there whatever the raise. One number for the whole face:
    the new face's shape stays the template's wherever the subject's face lies.

    Parameters
    ----------
    protrusion : (F,) ndarray
        Signed distance (template mm, positive outside) from the placed template's skin
        to each of the F skin voxels of the subject's face.
    raise_weight : (F,) ndarray
        Share of the raise applied at each (1 in the face, 0 where it joins the kept skin).
    raise_cap : (F,) ndarray
        Largest raise (template mm) the field of view leaves room for at each.
    clearance : float
        Template mm: skin nearer the new skin than this does not count as moved.

    Returns
    -------
    float

    Examples
    --------
    >>> clearing_skin_offset(np.array([2.0, 3.0, 9.5]), np.ones(3), np.full(3, 50.0), 2.0)
    11.5
    """
    candidates = np.arange(SKIN_OFFSET_MM, MAX_SKIN_OFFSET_MM + SKIN_OFFSET_STEP_MM / 2, SKIN_OFFSET_STEP_MM)
    full = raise_weight >= 1.0
    skin, room = protrusion[full], raise_cap[full]
    coincident = np.array([
        np.count_nonzero(np.abs(skin - np.minimum(offset, room)) < clearance) for offset in candidates
    ])
    acceptable = coincident <= coincident.min() + COINCIDENT_SKIN_TOLERANCE * len(protrusion)
    return float(candidates[np.argmax(acceptable)])


def field_of_view_depth(indices, shape: tuple, zooms) -> np.ndarray:
    """(N,) distance in mm from voxels to the nearest edge of the grid.

    ``indices`` holds three (N,) arrays of voxel indices, as ``np.nonzero`` gives them.
    """
    depth = np.full(len(indices[0]), np.inf, np.float32)
    for along, n, zoom in zip(indices, shape[:3], zooms):
        np.minimum(depth, np.minimum(along, n - 1 - along).astype(np.float32) * np.float32(zoom), out=depth)
    return depth


def field_of_view_room(indices, shape: tuple, zooms, outward: np.ndarray) -> np.ndarray:
    """(N,) distance in mm from voxels to the edge of the grid along ``outward``.

    ``indices`` holds three (N,) arrays of voxel indices; ``outward`` (N, 3) are
    directions in mm along the grid's axes (any length). Where a direction is zero the
    distance to the nearest edge is given, which is never more than the room along any
    direction.
    """
    length = np.linalg.norm(outward, axis=1)
    defined = length > 1e-6
    unit = outward / np.where(defined, length, 1.0)[:, None]
    room = np.full(len(indices[0]), np.inf, np.float32)
    for axis, (along, n, zoom) in enumerate(zip(indices, shape[:3], zooms)):
        step = unit[:, axis]
        ahead = np.where(step > 0, n - 1 - along, along).astype(np.float32) * np.float32(zoom)
        with np.errstate(divide="ignore", invalid="ignore"):
            np.minimum(room, np.where(np.abs(step) > 1e-6, ahead / np.abs(step), np.inf), out=room)
    return np.where(defined, room, field_of_view_depth(indices, shape, zooms)).astype(np.float32)


def sample_at(
    volume: np.ndarray, affine: np.ndarray, points: np.ndarray, outside: float = 0.0, order: int = 1
) -> np.ndarray:
    """Values of ``volume`` at world ``points`` (N, 3), ``outside`` beyond its grid."""
    ijk = world_to_voxel(points, affine)
    return ndi.map_coordinates(volume, ijk.T, order=order, mode="constant", cval=outside)


def signed_skin_distance(head: np.ndarray, zooms) -> np.ndarray:
    """(I, J, K) signed distance to the skin in mm: negative inside the head, positive outside."""
    return smooth_skin_distance(signed_depth(head, np.asarray(zooms, float)))


def smooth_skin_distance(depth: np.ndarray) -> np.ndarray:
    """(I, J, K) signed skin distance from a head mask's (I, J, K) signed depth.

    Smoothed by one voxel: the distance to a voxelised surface has terraces.
    """
    return ndi.gaussian_filter(depth, 1.0)


def air_level(volume: np.ndarray) -> float:
    """Typical value of the air at the border of a template's grid."""
    border = np.concatenate([volume[[0, -1]].ravel(), volume[:, [0, -1]].ravel(), volume[:, :, [0, -1]].ravel()])
    return float(np.median(border))


def seam_weights(replaced: np.ndarray, zooms) -> np.ndarray:
    """(N,) weight of the new value at each replaced voxel: 0 at the edge, 1 at ``SEAM_MM``."""
    box = bounding_box(replaced, margin=2)
    depth = distance_mm(np.pad(replaced[box], 1), zooms)[1:-1, 1:-1, 1:-1]
    return np.clip(depth[replaced[box]] / SEAM_MM, 0.0, 1.0).astype(np.float32)


def wrap_signal(volume: np.ndarray, wrap_band: np.ndarray, threshold: float, zooms) -> np.ndarray:
    """Voxels of the wrap band that hold signal (wrapped face parts), with a margin.

    The rest of the band is already the image's own background and stays as it is.
    """
    box = bounding_box(wrap_band, margin=1)
    signal = np.zeros_like(wrap_band)
    signal[box] = wrap_band[box] & (ndi.uniform_filter(volume[box], size=3) > threshold)
    if not signal.any():
        return signal
    iterations = max(1, int(round(WRAP_SIGNAL_DILATION_MM / min(zooms))))
    grown = bounding_box(signal, margin=iterations)
    signal[grown] = ndi.binary_dilation(signal[grown], iterations=iterations) & wrap_band[grown]
    return signal


@dataclasses.dataclass(frozen=True)
class Contrast:
    """How one volume looks outside its face: what its new face is drawn with
    (:func:`learn_contrast`)."""

    noise: NoiseModel
    intensity_map: tuple[np.ndarray, np.ndarray]  # template levels, the image's values there
    skin_profile: tuple[np.ndarray, np.ndarray]  # distances to the skin (mm), the values there
    face_level: float  # the face's typical tissue value
    spread: float  # how widely the face's values vary, noise included
    dark: float  # what the face's edges meet where it is rougher than spread; NaN otherwise


def learn_contrast(
    volume: np.ndarray,
    training: np.ndarray,
    template_at_training: np.ndarray,
    scalp: np.ndarray,
    scalp_skin_distance: np.ndarray,
    air: np.ndarray,
    tissue: np.ndarray,
    tissue_level: float,
    threads: int = 1,
) -> Contrast:
    """The contrast of one volume, learned outside the face.

    Parameters
    ----------
    volume : (I, J, K) ndarray
        Scaled intensities of the volume.
    training : (I, J, K) bool ndarray
        Voxels outside the face where template and image tissue correspond (M voxels).
    template_at_training : (M,) ndarray
        Registered template intensity at those voxels.
    scalp : (I, J, K) bool ndarray
        Head voxels near the image's own skin outside the face (S voxels).
    scalp_skin_distance : (S,) ndarray
        Their signed distance to the image's skin (mm, negative inside).
    air, tissue : (I, J, K) bool ndarray
        Regions to measure the noise in (see ``estimate_noise``); ``tissue``, the face
        before refacing, also gives the typical value that fills the raised face and,
        where it is rougher than its values are spread, what its edges meet (the dark
        patches of the new face).
    tissue_level : float
        Intensity from which a value counts as tissue (the skin threshold).
    threads : int
        Threads of the noise measurement.
    """
    noise = estimate_noise(volume, air, tissue, threads)
    face_values = volume[tissue]
    spread = value_spread(face_values)
    # Noise spreads a tissue's values as widely as it makes the tissue rough: a face
    # rougher than its values are spread owes the rest to its tissue's edges against
    # darker tissue (in a FLAIR, fat in layers and lobules among skin and muscle as dark
    # as the air). That roughness is drawn as edges (see ``reface_volume``), against
    # what the face's edges meet.
    rougher_than_spread = noise.tissue_roughness > spread
    return Contrast(
        noise=noise,
        intensity_map=fit_intensity_map(template_at_training, volume[training], noise_floor=noise.floor),
        skin_profile=fit_skin_profile(volume[scalp], scalp_skin_distance, noise_floor=noise.floor),
        face_level=typical_level(face_values, noise_floor=noise.floor),
        spread=spread,
        dark=(bordering_level(volume, tissue, tissue_level, noise_floor=noise.floor) if rougher_than_spread
              else np.nan),
    )


def reface_volume(
    contrast: Contrast,
    volume: np.ndarray,
    template_at_voxels: np.ndarray,
    new_skin_distance: np.ndarray,
    padding: np.ndarray,
    replaced: np.ndarray,
    tissue: np.ndarray,
    seam: np.ndarray,
    tissue_level: float,
    rng: np.random.Generator,
    threads: int = 1,
) -> tuple[np.ndarray, NoiseModel]:
    """New values for the replaced voxels of one volume, in its ``contrast``.

    Parameters
    ----------
    contrast : Contrast
        The volume's, from :func:`learn_contrast`.
    volume : (I, J, K) ndarray
        Scaled intensities of the volume.
    template_at_voxels : (N,) ndarray
        Template intensity to draw at each of the N replaced voxels.
    new_skin_distance : (N,) ndarray
        Signed distance (mm, negative inside) of each replaced voxel to the new skin.
    padding : (N,) bool ndarray
        Voxels between the template's own skin and the raised one: subcutaneous tissue.
    replaced : (I, J, K) bool ndarray
        The N replaced voxels.
    tissue : (I, J, K) bool ndarray
        The face before refacing: how long its runs are (the dark patches of the new
        face), and where the new face's roughness is matched to the old.
    seam : (N,) ndarray
        Weight of the new value (feathering at the edge).
    tissue_level : float
        Intensity from which the drawn signal counts as tissue (the skin threshold).
    rng : numpy.random.Generator
    threads : int
        Threads of the softening and the noise.

    Returns
    -------
    values : (N,) float32 ndarray
        Scaled intensities for the replaced voxels.
    noise : NoiseModel
    """
    noise, face_level, spread, dark = contrast.noise, contrast.face_level, contrast.spread, contrast.dark
    box = bounding_box(replaced, margin=0)
    in_box = replaced[box]
    signal = np.zeros(in_box.shape, np.float32)
    distances, profile = contrast.skin_profile
    near_skin = skin_profile_weight(new_skin_distance)
    beneath = np.where(padding, face_level, apply_intensity_map(template_at_voxels, *contrast.intensity_map))
    signal[in_box] = near_skin * np.interp(new_skin_distance, distances, profile) + (1.0 - near_skin) * beneath
    # The tissue's roughness is texture as much as noise; within a few millimetres of
    # the new skin only the scanner's noise applies, or the skin would turn lumpy.
    roughness = np.zeros(in_box.shape, np.float32)
    roughness[in_box] = np.clip(signal[in_box] / max(tissue_level, 1e-6), 0.0, 1.0) * np.clip(
        (-new_skin_distance - SMOOTH_SKIN_MM) / SMOOTH_SKIN_MM, 0.0, 1.0
    )
    # The drawn anatomy has some roughness of its own, at places more than the face had.
    drawn = soften_structure(signal, in_box, noise.tissue_roughness, roughness, threads)
    # A face rougher than its values are spread (``dark`` found): as noise, its roughness
    # would spread the new face's values far wider than the old face's; it is drawn as
    # edges instead: beneath the new skin's profile, patches of what the face's edges
    # meet, between bright runs as long as the face's own, and as many as give the face's
    # roughness. The noise then spreads the values as widely as the face's are spread.
    if np.isfinite(dark):
        runs = mean_run_length(tissue)
        anatomy_rng = np.random.default_rng(PATCH_SEED)
        share = dark_patch_share(face_level, dark, runs, spread, noise, anatomy_rng)
        beneath_profile = np.zeros(in_box.shape, np.float32)
        beneath_profile[in_box] = 1.0 - near_skin
        patches = dark_patches(np.where(drawn > tissue_level, beneath_profile, 0.0), runs, share, anatomy_rng)
        drawn = np.where(patches, np.float32(dark), drawn)
        roughness = np.where(patches, np.float32(0.0), roughness)  # dark tissue: the scanner's noise
        noisy = add_noise(drawn, noise, rng, roughness, amplitude=spread, threads=threads)
    else:
        # The noise makes up the rest of the roughness. Matched where old and new face are
        # both tissue, to the old face's roughness there; inside by a voxel, as a box
        # residual at the region's edge would see the unfilled grid beyond it.
        both = (drawn > tissue_level) & ndi.binary_erosion(in_box) & tissue[box]
        face_roughness = local_noise_sd(volume[box], both)
        target = dataclasses.replace(noise, tissue_roughness=face_roughness) if np.isfinite(face_roughness) else noise
        noisy = add_noise(drawn, target, rng, roughness, both, threads=threads)
    original = volume[replaced]
    # Feathered into the image's tissue, never into its air: new tissue faded towards
    # the air that was in front of the old skin would leave a dark cleft there, and the
    # old skin would show through it.
    seam = np.where((original < tissue_level) & (signal[in_box] >= tissue_level), 1.0, seam)
    values = feather(original, drawn[in_box], noisy[in_box], seam)
    return values.astype(np.float32), noise
