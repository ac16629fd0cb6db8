"""Test-side measurements of refacing outcomes, independent of the engine's own metrics.

The engine reports its metrics from voxel surfaces and distance transforms; these
measure the same targets differently (a marching-cubes skin, KD-tree distances, a
box-filter noise residual), so a bug in one is not hidden by the same bug in the other.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree
from scipy.stats import wasserstein_distance
from skimage.filters import threshold_otsu
from skimage.measure import marching_cubes

MAD_TO_SD = 1.4826
MAX_TRACE_STEPS = 200


def skin_level(volume: np.ndarray) -> float:
    """Head/air intensity: half-way from the background to Otsu's threshold."""
    background = float(np.percentile(volume, 1))
    return background + 0.5 * (threshold_otsu(volume[::2, ::2, ::2]) - background)


def visible_skin(volume: np.ndarray, zooms, level: float) -> np.ndarray:
    """(V, 3) vertices (mm, voxel axes) of the skin that can be seen from outside the head.

    A renderer, and so a face recogniser, sees the first skin a ray from outside meets:
    a vertex counts if a straight line leaves it, along one of ``VIEW_DIRECTIONS``,
    without entering the head again. Walls of cavities that are open to the air (a
    nasal cavity behind nostrils, an airway cut by the field of view) count only as far
    as a line of sight reaches into them.
    """
    zooms = np.asarray(zooms, float)
    smooth = ndi.gaussian_filter(volume.astype(np.float32), 1.0 / zooms)
    head = smooth > level
    labels, count = ndi.label(head)
    if count:
        head = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    padded = np.pad(ndi.gaussian_filter(head.astype(np.float32), 0.7), 1)
    vertices, *_ = marching_cubes(padded, 0.5, spacing=tuple(float(z) for z in zooms))
    vertices = vertices - zooms
    return vertices[_seen_from_outside(head, zooms, vertices)]


def _seen_from_outside(head: np.ndarray, zooms: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Sphere tracing: each step goes as far as the distance to the nearest head voxel."""
    clearance = ndi.distance_transform_edt(~head, sampling=zooms).astype(np.float32)
    extent = np.multiply(head.shape, zooms)
    step = float(zooms.min())
    seen = np.zeros(len(vertices), bool)
    for direction in VIEW_DIRECTIONS:
        rays = np.flatnonzero(~seen)
        points = vertices[rays] + 1.5 * step * direction
        for _ in range(MAX_TRACE_STEPS):
            gone = np.any((points < 0) | (points > extent), axis=1)
            seen[rays[gone]] = True
            rays, points = rays[~gone], points[~gone]
            free = ndi.map_coordinates(clearance, (points / zooms).T, order=1)
            moving = free >= 0.5 * step
            rays, points, free = rays[moving], points[moving], free[moving]
            if not len(rays):
                break
            points = points + np.maximum(free, 0.5 * step)[:, None] * direction
        seen[rays] = True  # still travelling: counted as seen, which can only lower the share moved
    return seen


def _view_directions() -> np.ndarray:
    """The 26 directions to a cube's faces, edges and corners, as unit vectors."""
    grid = np.stack(np.meshgrid(*[[-1, 0, 1]] * 3, indexing="ij"), -1).reshape(-1, 3).astype(float)
    grid = grid[np.any(grid != 0, axis=1)]
    return grid / np.linalg.norm(grid, axis=1, keepdims=True)


VIEW_DIRECTIONS = _view_directions()


def face_moved_fraction(original, refaced, face_region, zooms, moved_mm=2.0, level=None) -> float:
    """Share of the original's visible face skin lying ``moved_mm`` or more from the new one.

    ``level`` is the skin's intensity (default ``skin_level(original)``; PET, whose scalp
    is a tenth of the brain, passes its own).
    """
    if level is None:
        level = skin_level(original)
    before = visible_skin(original, zooms, level)
    after = visible_skin(refaced, zooms, level)
    voxel = np.clip(np.rint(before / np.asarray(zooms)).astype(int), 0, np.array(face_region.shape) - 1)
    in_face = face_region[tuple(voxel.T)]
    if not in_face.any():
        return float("nan")
    distance, _ = cKDTree(after).query(before[in_face])
    return float(np.mean(distance >= moved_mm))


def noise_sd(volume: np.ndarray, region: np.ndarray) -> float:
    """Robust SD of the residual from a 3-voxel box mean, within ``region``."""
    residual = volume.astype(np.float64) - ndi.uniform_filter(volume.astype(np.float64), 3)
    values = residual[region]
    return float(MAD_TO_SD * np.median(np.abs(values - np.median(values))))


def intensity_distance(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Wasserstein-1 distance between two intensity samples, in reference IQRs."""
    iqr = np.subtract(*np.percentile(reference, [75, 25]))
    return float(wasserstein_distance(reference, candidate) / iqr)
