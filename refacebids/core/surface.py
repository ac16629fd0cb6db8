"""The head's skin: a contrast-independent head mask and how far refacing moved the face.

"Face removed" is measured as face recognition sees it, on the skin surface: for every
skin voxel of the original face, the distance to the nearest skin voxel of the refaced
image. A face counts as moved where that distance is at least 2 mm.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .geometry import bounding_box, distance_across_mm, distance_mm

MOVED_MM = 2.0


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(hist)
    weight_high = weight_low[-1] - weight_low
    mean_low = np.cumsum(hist * centres) / np.maximum(weight_low, 1)
    total = (hist * centres).sum()
    mean_high = (total - np.cumsum(hist * centres)) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(centres[np.argmax(between)])


def skin_threshold(volume: np.ndarray) -> float:
    """Intensity separating the head from the air around it, for any contrast.

    Half-way between the background level (1st percentile) and Otsu's threshold of the
    whole image: Otsu alone separates bright tissue from dark tissue in MRI and PET,
    and the skin lies well below it, but well above the air.

    Parameters
    ----------
    volume : (I, J, K) ndarray
        Scaled intensities (MRI, PET, or CT in HU).

    Returns
    -------
    float
    """
    values = volume[np.isfinite(volume)].ravel()
    if values.size > 2_000_000:
        values = values[:: values.size // 2_000_000]
    background = float(np.percentile(values, 1))
    return background + 0.5 * (_otsu(values) - background)


def _fill_holes_every_axis(mask: np.ndarray) -> np.ndarray:
    """``ndi.binary_fill_holes`` of every slice along each axis in turn, for a 3D ``mask``.

    One labelling of the background per axis, connected only within slices (4-neighbours),
    instead of one flood fill per slice: a hole is a background component that does not
    reach the slice's edge.
    """
    for axis in range(3):
        in_plane = [a for a in range(3) if a != axis]
        structure = np.zeros((3, 3, 3), bool)
        for a in in_plane:
            structure[tuple(slice(None) if b == a else 1 for b in range(3))] = True
        background, count = ndi.label(~mask, structure)
        reaches_edge = np.zeros(count + 1, bool)
        for a in in_plane:
            reaches_edge[np.moveaxis(background, a, 0)[[0, -1]].ravel()] = True
        reaches_edge[0] = True  # the mask itself
        mask = mask | ~reaches_edge[background]
    return mask


def _closing(mask: np.ndarray, zooms, radius_mm: float) -> np.ndarray:
    """(I, J, K) morphological closing of ``mask`` by a ball of ``radius_mm``: what a ball
    rolled over the mask from outside cannot reach (gaps narrower than its diameter)."""
    pad = int(np.ceil(radius_mm / np.min(zooms))) + 1  # the grid's edge is no wall for the ball
    grown = distance_mm(~np.pad(mask, pad), zooms) <= radius_mm
    closed = distance_mm(grown, zooms) > radius_mm
    return closed[pad:-pad, pad:-pad, pad:-pad]


def head_mask(
    volume: np.ndarray, zooms, threshold: float | None = None, *, join_mm: float = 0.0
) -> np.ndarray:
    """Solid head (skin and everything it encloses) of an (I, J, K) volume.

    Sinuses, mouth and ear canals are filled: the mask's surface is the skin a 3D
    rendering shows. With ``join_mm``, layers above the threshold that are less than
    twice that apart are joined first (a morphological closing): in a FLAIR image the
    scalp's fat and the brain are bright while skin, muscle, bone and CSF are as dark as
    the air, and unjoined, the fat's patchy ring does not enclose the dark bone and CSF
    beneath it, and the brain alone is the largest component.
    """
    zooms = np.asarray(zooms, float)
    smoothed = ndi.gaussian_filter(volume.astype(np.float32), 1.0 / zooms)
    if threshold is None:
        threshold = skin_threshold(smoothed)
    mask = smoothed > threshold
    if join_mm > 0:
        mask = _closing(mask, zooms, join_mm)
    labelled, count = ndi.label(mask)
    if count == 0:
        return mask
    mask = labelled == np.argmax(np.bincount(labelled.ravel())[1:]) + 1
    return _fill_holes_every_axis(mask)


def signed_depth(head: np.ndarray, zooms) -> np.ndarray:
    """(I, J, K) float32 distance (mm) to the surface of the (I, J, K) ``head`` mask:
    negative inside, positive outside."""
    across = distance_across_mm(head, zooms)
    return np.where(head, -across, across)


def skin_surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of a mask that touch the outside (6-connectivity)."""
    return mask & ~ndi.binary_erosion(mask, border_value=1)


def face_surface_moved(
    original: np.ndarray,
    refaced: np.ndarray,
    face_region: np.ndarray,
    zooms,
    *,
    threshold: float | None = None,
) -> tuple[float, int]:
    """Share of the original face's skin that refacing moved by at least ``MOVED_MM``.

    Parameters
    ----------
    original, refaced : (I, J, K) ndarray
        Scaled intensities before and after.
    face_region : (I, J, K) bool ndarray
        Where the face is (e.g. the warped brow-to-chin label).
    zooms : (3,) sequence
        Voxel size in mm.
    threshold : float, optional
        Skin intensity; by default that of the original, used for both images so that a
        change of intensity alone does not count as movement.

    Returns
    -------
    moved_fraction : float
        In [0, 1]; NaN if no skin of the original lies in the region.
    n_surface : int
        Number of original skin voxels in the region.
    """
    box = bounding_box(face_region, margin=int(np.ceil(15 / min(zooms))))
    original, refaced, face_region = original[box], refaced[box], face_region[box]
    if threshold is None:
        threshold = skin_threshold(original)
    before = skin_surface(head_mask(original, zooms, threshold)) & face_region
    after = skin_surface(head_mask(refaced, zooms, threshold))
    if not before.any():
        return float("nan"), 0
    distance = distance_mm(~after, zooms)
    return float(np.mean(distance[before] >= MOVED_MM)), int(before.sum())
