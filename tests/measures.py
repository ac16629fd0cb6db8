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


def skin_level(volume: np.ndarray) -> float:
    """Head/air intensity: half-way from the background to Otsu's threshold."""
    background = float(np.percentile(volume, 1))
    return background + 0.5 * (threshold_otsu(volume[::2, ::2, ::2]) - background)


def outer_skin(volume: np.ndarray, zooms, level: float) -> np.ndarray:
    """(V, 3) vertices (mm, voxel axes) of the outer skin: the 3D-filled head's surface."""
    smooth = ndi.gaussian_filter(volume.astype(np.float32), 1.0 / np.asarray(zooms))
    head = smooth > level
    labels, count = ndi.label(head)
    if count:
        head = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    # Seal nostrils and lips (a 5 mm closing) so nasal and oral cavities count as inside.
    radius = np.maximum(np.rint(5.0 / np.asarray(zooms)), 1).astype(int)
    ball = np.sum((np.indices(2 * radius + 1).T - radius).T ** 2 / np.maximum(radius, 1)[:, None, None, None] ** 2, axis=0) <= 1
    head = ndi.binary_fill_holes(ndi.binary_closing(np.pad(head, radius.max()), ball))
    head = head[tuple(slice(radius.max(), -radius.max()) for _ in range(3))]
    padded = np.pad(ndi.gaussian_filter(head.astype(np.float32), 0.7), 1)
    vertices, *_ = marching_cubes(padded, 0.5, spacing=tuple(float(z) for z in zooms))
    return vertices - np.asarray(zooms, float)


def face_moved_fraction(original, refaced, face_region, zooms, moved_mm=2.0, level=None) -> float:
    """Share of the original's face skin that lies ``moved_mm`` or more from the new skin.

    ``level`` is the skin's intensity (default ``skin_level(original)``; PET, whose scalp
    is a tenth of the brain, passes its own).
    """
    if level is None:
        level = skin_level(original)
    before = outer_skin(original, zooms, level)
    after = outer_skin(refaced, zooms, level)
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
