"""The template face in the image's own contrast.

One T1-weighted template serves every contrast: the mapping from template intensity
to image intensity is learned from the image's own tissue outside the face (scalp,
skull, neck, air), where the registration puts template and image tissue on top of
each other. For each template-intensity bin the image's typical value is taken, so the
map may be non-monotonic (fat is bright in T1w and T2w, CSF only in T2w).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .geometry import bounding_box

MIN_SAMPLES_PER_BIN = 30
# The skin, as a profile across it: from this far inside to this far outside (mm).
SKIN_PROFILE_MM = (-8.0, 4.0)
SKIN_PROFILE_STEP_MM = 0.5
SKIN_PROFILE_FADE_MM = 3.0  # inside it, the profile fades into the template-mapped tissue


def fit_intensity_map(
    template_values: np.ndarray,
    image_values: np.ndarray,
    *,
    n_bins: int = 48,
    noise_floor: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Learn a lookup table from template intensity to noise-free image intensity.

    Parameters
    ----------
    template_values, image_values : (N,) ndarray
        Paired samples at the same voxels.
    n_bins : int
        Number of template-intensity quantile bins.
    noise_floor : float
        Median magnitude of pure Rician noise in the image (0 for Gaussian noise).
        Magnitude images are biased upwards by noise; taking the bias out here
        (``S = sqrt(median**2 - floor**2)``, exact at zero signal and close above it)
        keeps the re-noised face from being brighter than the image at low signal.
        Medians, not means, because air holds ghosts and wrapped tissue.

    Returns
    -------
    template_levels, image_levels : (B,) ndarray
        Knots of a piecewise-linear map, ``template_levels`` increasing.
    """
    edges = np.unique(np.quantile(template_values, np.linspace(0, 1, n_bins + 1)))
    bins = np.clip(np.searchsorted(edges, template_values, side="right") - 1, 0, len(edges) - 2)
    counts = np.bincount(bins, minlength=len(edges) - 1)
    keep = counts >= MIN_SAMPLES_PER_BIN
    if keep.sum() < 2:
        raise ValueError("too little tissue outside the face to learn the image's contrast")
    levels, values = [], []
    order = np.argsort(bins, kind="stable")
    groups = np.split(order, np.cumsum(counts)[:-1])
    for index, group in enumerate(groups):
        if not keep[index]:
            continue
        levels.append(np.median(template_values[group]))
        typical = float(np.median(image_values[group]))
        values.append(np.sqrt(max(typical**2 - noise_floor**2, 0.0)) if noise_floor else typical)
    levels, values = np.asarray(levels, float), np.asarray(values, float)
    order = np.argsort(levels)
    return levels[order], values[order]


def apply_intensity_map(values: np.ndarray, levels: np.ndarray, mapped: np.ndarray) -> np.ndarray:
    """Map template intensities through the learned table (constant beyond its ends)."""
    return np.interp(values, levels, mapped).astype(np.float32)


def fit_skin_profile(
    values: np.ndarray, skin_distance: np.ndarray, *, noise_floor: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """The image's typical intensity as a function of distance to its own skin.

    The average template's skin is blurred over several millimetres, and its value maps
    to no particular tissue of the image; drawn through the template map, the new skin
    comes out dim and lumpy. The image's own scalp, outside the face, shows what its skin,
    subcutaneous fat and the edge to the air look like in this contrast and resolution.

    Parameters
    ----------
    values : (N,) ndarray
        Image intensities of head voxels outside the face.
    skin_distance : (N,) ndarray
        Their signed distance to the image's skin (mm; negative inside the head).
    noise_floor : float
        As in ``fit_intensity_map``.

    Returns
    -------
    distances, levels : (B,) ndarray
        Knots of a piecewise-linear profile, ``distances`` increasing.
    """
    low, high = SKIN_PROFILE_MM
    edges = np.arange(low, high + SKIN_PROFILE_STEP_MM, SKIN_PROFILE_STEP_MM)
    inside = (skin_distance >= low) & (skin_distance < edges[-1])
    bins = np.digitize(skin_distance[inside], edges) - 1
    values = values[inside]
    distances, levels = [], []
    for index in np.unique(bins):
        group = values[bins == index]
        if group.size < MIN_SAMPLES_PER_BIN:
            continue
        typical = float(np.median(group))
        distances.append(0.5 * (edges[index] + edges[index + 1]))
        levels.append(np.sqrt(max(typical**2 - noise_floor**2, 0.0)) if noise_floor else typical)
    if len(distances) < 2:
        raise ValueError("too little scalp outside the face to learn what the image's skin looks like")
    return np.asarray(distances), np.asarray(levels)


def typical_level(values: np.ndarray, *, noise_floor: float = 0.0) -> float:
    """Noise-free typical value of (N,) tissue ``values``: their median, Rician bias taken out.

    Of the face's own tissue, it fills the raised face under its new skin: the scalp's
    subcutaneous tissue is fat, bright in a T1w image, where the face is mostly muscle.
    """
    typical = float(np.median(values))
    return float(np.sqrt(max(typical**2 - noise_floor**2, 0.0))) if noise_floor else typical


def bordering_level(volume: np.ndarray, tissue: np.ndarray, below: float, *, noise_floor: float = 0.0) -> float:
    """Noise-free typical value of what the edges of ``tissue`` meet, darker than ``below``.

    Parameters
    ----------
    volume : (I, J, K) ndarray
        Intensities.
    tissue : (I, J, K) bool ndarray
        The tissue whose edges are meant.
    below : float
        Neighbours at or above this intensity are not counted (the tissue's own level).
    noise_floor : float
        As in ``typical_level``.

    Returns
    -------
    float
        ``typical_level`` of the voxels 6-connected to ``tissue``, outside it and darker
        than ``below``; NaN if there are none.
    """
    box = bounding_box(tissue, margin=1)
    inside = tissue[box]
    bordering = ndi.binary_dilation(inside) & ~inside & (volume[box] < below)
    if not bordering.any():
        return float("nan")
    return typical_level(volume[box][bordering], noise_floor=noise_floor)


def skin_profile_weight(skin_distance: np.ndarray) -> np.ndarray:
    """(N,) weight of the skin profile: 1 from ``SKIN_PROFILE_FADE_MM`` above its inner end out."""
    low = SKIN_PROFILE_MM[0]
    return np.clip((skin_distance - low) / SKIN_PROFILE_FADE_MM, 0.0, 1.0).astype(np.float32)


def distribution_distance(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Wasserstein-1 distance between two samples, in units of the reference's IQR.

    0 means identical distributions; 1 means the typical value is off by a whole
    interquartile range.
    """
    quantiles = np.linspace(0.01, 0.99, 99)
    ref_q = np.quantile(reference, quantiles)
    cand_q = np.quantile(candidate, quantiles)
    iqr = np.subtract(*np.quantile(reference, [0.75, 0.25]))
    return float(np.mean(np.abs(ref_q - cand_q)) / max(iqr, 1e-6))
