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

import numpy as np
from scipy import ndimage as ndi

from . import warp
from .geometry import bounding_box
from .intensity import apply_intensity_map, fit_intensity_map
from .noise import NoiseModel, add_noise, estimate_noise

BLEND_MM = 18.0  # from nonlinear (edge) to head-affine placement (interior)
# The average face lies within 2 mm of a real face over most of its surface, so the
# replacement skin is raised by this much above the template's (a fuller average face,
# the same for everyone), fading to 0 at the edges where it joins the subject's tissue.
SKIN_OFFSET_MM = 10.0
SEAM_MM = 3.0  # intensity feathering into the kept tissue
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


def edge_weight(replaced: np.ndarray, grid_affine: np.ndarray) -> np.ndarray:
    """(I, J, K) weight of the registration: 1 at the edge of ``replaced``, 0 ``BLEND_MM`` in."""
    zooms = np.linalg.norm(grid_affine[:3, :3], axis=0)
    depth = ndi.distance_transform_edt(replaced, sampling=zooms)
    return np.clip(1.0 - depth / BLEND_MM, 0.0, 1.0).astype(np.float32)


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


def sample_at(
    volume: np.ndarray, affine: np.ndarray, points: np.ndarray, outside: float = 0.0, order: int = 1
) -> np.ndarray:
    """Values of ``volume`` at world ``points`` (N, 3), ``outside`` beyond its grid."""
    inverse = np.linalg.inv(affine).astype(np.float32)
    ijk = points.astype(np.float32) @ inverse[:3, :3].T + inverse[:3, 3]
    return ndi.map_coordinates(volume, ijk.T, order=order, mode="constant", cval=outside)


def signed_skin_distance(head: np.ndarray, zooms) -> np.ndarray:
    """(I, J, K) signed distance to the skin in mm: negative inside the head, positive outside."""
    zooms = np.asarray(zooms, float)
    outside = ndi.distance_transform_edt(~head, sampling=zooms)
    inside = ndi.distance_transform_edt(head, sampling=zooms)
    # Smoothed by one voxel: the distance to a voxelised surface has terraces.
    return ndi.gaussian_filter((outside - inside).astype(np.float32), 1.0)


def outward_normals(signed_distance: np.ndarray, zooms) -> np.ndarray:
    """(I, J, K, 3) unit vectors pointing away from the skin, in voxel-axis order.

    The gradient of the smoothed signed distance; defined everywhere, so a point
    anywhere near the face can be moved along it.
    """
    zooms = np.asarray(zooms, float)
    smooth = ndi.gaussian_filter(signed_distance, 4.0 / zooms)
    gradient = np.stack(np.gradient(smooth, *zooms), axis=-1)
    norm = np.maximum(np.linalg.norm(gradient, axis=-1, keepdims=True), 1e-6)
    return (gradient / norm).astype(np.float32)


def crisp_skin(
    template_values: np.ndarray, signed_distance: np.ndarray, air: float, edge_mm: float = 0.5
) -> np.ndarray:
    """Template intensities with a skin edge as sharp as a scanner's.

    The average template's skin is blurred over several millimetres; drawn with the
    image's noise, such a shallow edge turns into a rough, terraced surface. A sigmoid
    of the signed distance puts the skin back at one place.

    Parameters
    ----------
    template_values : (N,) ndarray
        Template intensity of tissue at each sample (taken below the skin).
    signed_distance : (N,) ndarray
        Signed distance (mm) of each sample to the template's skin.
    air : float
        Template intensity of air.

    Returns
    -------
    (N,) ndarray
    """
    inside = 1.0 / (1.0 + np.exp(np.clip(signed_distance / edge_mm, -50, 50)))
    return inside * template_values + (1.0 - inside) * air


def raise_skin(points: np.ndarray, offset_mm: np.ndarray, normals: np.ndarray, affine: np.ndarray):
    """Template sample points moved inwards by ``offset_mm`` so the drawn skin rises by as much.

    Parameters
    ----------
    points : (N, 3) ndarray
        Template world coordinates to sample at.
    offset_mm : (N,) ndarray
    normals : (I, J, K, 3) ndarray
        ``outward_normals`` of the template, on the grid of ``affine`` (RAS axes).
    affine : (4, 4) ndarray

    Returns
    -------
    (N, 3) ndarray
    """
    inverse = np.linalg.inv(affine).astype(np.float32)
    ijk = (points.astype(np.float32) @ inverse[:3, :3].T + inverse[:3, 3]).T
    voxel_normals = np.stack(
        [ndi.map_coordinates(normals[..., k], ijk, order=1, mode="nearest") for k in range(3)], axis=1
    )
    rotation = (affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)).astype(np.float32)
    return points - offset_mm[:, None].astype(np.float32) * (voxel_normals @ rotation.T)


def air_level(volume: np.ndarray) -> float:
    """Typical value of the air at the border of a template's grid."""
    border = np.concatenate([volume[[0, -1]].ravel(), volume[:, [0, -1]].ravel(), volume[:, :, [0, -1]].ravel()])
    return float(np.median(border))


def seam_weights(replaced: np.ndarray, zooms) -> np.ndarray:
    """(N,) weight of the new value at each replaced voxel: 0 at the edge, 1 at ``SEAM_MM``."""
    box = bounding_box(replaced, margin=2)
    depth = ndi.distance_transform_edt(np.pad(replaced[box], 1), sampling=zooms)[1:-1, 1:-1, 1:-1]
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
    return ndi.binary_dilation(signal, iterations=iterations) & wrap_band


def reface_volume(
    volume: np.ndarray,
    template_at_voxels: np.ndarray,
    replaced: np.ndarray,
    training: np.ndarray,
    template_at_training: np.ndarray,
    air: np.ndarray,
    tissue: np.ndarray,
    seam: np.ndarray,
    tissue_level: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, NoiseModel]:
    """New values for the replaced voxels of one volume.

    Parameters
    ----------
    volume : (I, J, K) ndarray
        Scaled intensities of the volume.
    template_at_voxels : (N,) ndarray
        Template intensity to draw at each of the N replaced voxels.
    replaced : (I, J, K) bool ndarray
        The N replaced voxels.
    training : (I, J, K) bool ndarray
        Voxels outside the face where template and image tissue correspond (M voxels).
    template_at_training : (M,) ndarray
        Registered template intensity at those voxels.
    air, tissue : (I, J, K) bool ndarray
        Regions to measure the noise in (see ``estimate_noise``).
    seam : (N,) ndarray
        Weight of the new value (feathering at the edge).
    tissue_level : float
        Intensity from which the drawn signal counts as tissue (the skin threshold).
    rng : numpy.random.Generator

    Returns
    -------
    values : (N,) float32 ndarray
        Scaled intensities for the replaced voxels.
    noise : NoiseModel
    """
    noise = estimate_noise(volume, air, tissue)
    levels, mapped = fit_intensity_map(template_at_training, volume[training], noise_floor=noise.floor)
    signal = np.zeros(volume.shape, np.float32)
    box = bounding_box(replaced, margin=0)
    signal[replaced] = apply_intensity_map(template_at_voxels, levels, mapped)
    noisy = add_noise(signal[box], noise, rng, tissue_level)[replaced[box]]
    values = seam * noisy + (1.0 - seam) * volume[replaced]
    return values.astype(np.float32), noise
