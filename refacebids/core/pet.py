"""PET heads: a registration image in which the scalp shows, and count-dependent noise.

In PET the face and scalp take up a tenth or less of what the brain does (FDG grey
matter ~12x skin), so a threshold or a mutual-information histogram made for the whole
range sees the brain and not the head. The activity is therefore registered and
thresholded on a logarithmic scale, ``log(1 + activity / scale)`` with ``scale`` 2 % of
the bright end, where brain, scalp and air are each a distinct step.

PET noise comes from counting: its variance grows with the activity (and falls with
frame length), and a reconstructed image has no negative activity. Each frame's noise is
therefore modelled as ``c * sqrt(signal)``, ``c`` measured on that frame's own kept
scalp and neck, with the spatial correlation the reconstruction gave it.
"""

from __future__ import annotations

import numpy as np

from .geometry import bounding_box
from .intensity import apply_intensity_map, fit_intensity_map
from .noise import NoiseModel, correlated_noise, estimate_noise, local_noise_sd
from .surface import skin_threshold

COMPRESSION_FRACTION = 0.02  # of the 99th percentile: FDG scalp maps to ~1.6, brain ~3.8


def compression_scale(activity: np.ndarray) -> float:
    """Activity at which the logarithmic scale bends (2 % of the 99th percentile)."""
    positive = activity[activity > 0]
    if positive.size == 0:
        return 1.0
    return max(float(np.percentile(positive, 99.0)) * COMPRESSION_FRACTION, 1e-12)


def registration_image(activity: np.ndarray) -> np.ndarray:
    """(I, J, K) float32 ``log(1 + activity / scale)``: brain, scalp and air all visible."""
    scale = compression_scale(activity)
    return np.log1p(np.maximum(activity, 0.0) / scale).astype(np.float32)


def skin_level(activity: np.ndarray) -> float:
    """Activity separating the head from the air (the skin threshold on the log scale).

    >>> rng = np.random.default_rng(0)
    >>> head = np.zeros((40, 40, 40)); head[5:35, 5:35, 5:35] = 700.0; head[12:28, 12:28, 12:28] = 8000.0
    >>> 0 < skin_level(head + rng.random(head.shape)) < 700
    True
    """
    scale = compression_scale(activity)
    return float(scale * np.expm1(skin_threshold(registration_image(activity))))


def frame_weights(n_frames: int, durations=None) -> np.ndarray | None:
    """Weights of the frames in the registration mean: their durations, if known.

    A time-weighted mean is the image a static scan over the whole acquisition would
    give; short early frames are noisy and count for little. ``None`` (a plain mean)
    when ``durations`` is absent or does not match the frames.

    >>> frame_weights(3, [60, 120, 300]).tolist()
    [60.0, 120.0, 300.0]
    >>> frame_weights(3, [600]) is None
    True
    """
    if durations is None or n_frames < 2:
        return None
    weights = np.asarray(durations, float).ravel()
    if weights.size != n_frames or not np.all(np.isfinite(weights)) or np.any(weights <= 0):
        return None
    return weights


def reface_frame(
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
    """New activity for the replaced voxels of one PET frame.

    Same arguments and returns as :func:`refacebids.core.replace.reface_volume`; the
    frame's own uptake levels come from the lookup table learned on it, and its noise
    is Gaussian with SD ``c * sqrt(signal)`` (``c`` from the frame's kept tissue), never
    negative when the frame has no negative values.
    """
    del air, tissue_level  # PET air holds no noise floor to measure
    model = estimate_noise(volume, np.zeros_like(tissue), tissue)  # Gaussian, from tissue
    levels, mapped = fit_intensity_map(template_at_training, volume[training])
    typical = float(np.median(volume[tissue])) if tissue.any() else 0.0
    per_sqrt_count = model.tissue_roughness / np.sqrt(typical) if typical > 0 else 0.0
    box = bounding_box(replaced, margin=0)
    signal = np.zeros(volume[box].shape, np.float32)
    signal[replaced[box]] = apply_intensity_map(template_at_voxels, levels, mapped)
    noise = correlated_noise(signal.shape, model, rng)
    # The drawn noise is measured as the image's was, so the two compare like for like.
    noise /= max(local_noise_sd(noise, np.ones(noise.shape, bool)), 1e-6)
    noisy = signal + per_sqrt_count * np.sqrt(np.maximum(signal, 0.0)) * noise
    noisy = noisy[replaced[box]]
    if volume.min() >= 0:
        noisy = np.maximum(noisy, 0.0)
    values = seam * noisy + (1.0 - seam) * volume[replaced]
    return values.astype(np.float32), model
