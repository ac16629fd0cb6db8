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

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .geometry import bounding_box
from .intensity import apply_intensity_map, fit_intensity_map
from .noise import NoiseModel, correlated_noise, estimate_noise, local_noise_sd
from .surface import skin_threshold

COMPRESSION_FRACTION = 0.02  # of the 99th percentile: FDG scalp maps to ~1.6, brain ~3.8
FLAT_SHARE = 0.3  # of the kept tissue, by gradient, where the noise is measured
# Resolution the drawn face is given: clinical brain PET is 4-6 mm FWHM after
# reconstruction, and a sidecar has no field that states it.
RESOLUTION_FWHM_MM = 5.0
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


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


def flat_tissue(volume: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """The flattest ``FLAT_SHARE`` of ``tissue``: where the uptake barely changes.

    The residual from a local mean holds noise and the blurred edges of uptake; in long
    frames, whose noise is low, the edges would dominate. Their gradient finds them.
    """
    if tissue.sum() < 1000:
        return tissue
    box = bounding_box(tissue, margin=2)
    smooth = ndi.gaussian_filter(volume[box].astype(np.float32), 1.5)
    gradient = ndi.gaussian_gradient_magnitude(smooth, 1.0)
    inside = tissue[box]
    flat = np.zeros_like(tissue)
    flat[box] = inside & (gradient <= np.percentile(gradient[inside], 100 * FLAT_SHARE))
    return flat


def noise_per_sqrt_activity(volume: np.ndarray, region: np.ndarray) -> float:
    """``c`` of noise SD = ``c * sqrt(activity)``, measured in ``region``.

    The frame is divided by the square root of its local mean (variance stabilisation),
    so that regions of different uptake all measure the same ``c``.
    """
    if not region.any():
        return 0.0
    box = bounding_box(region, margin=2)
    values = volume[box].astype(np.float32)
    local_mean = ndi.uniform_filter(values, 3)
    stabilised = values / np.sqrt(np.maximum(local_mean, 1e-6 * max(float(values.max()), 1e-12)))
    return float(np.nan_to_num(local_noise_sd(stabilised, region[box])))


@dataclass(frozen=True)
class FrameContrast:
    """How one PET frame looks outside its face (:func:`learn_frame`)."""

    noise: NoiseModel  # Gaussian, measured on the frame's flattest kept tissue
    intensity_map: tuple[np.ndarray, np.ndarray]  # template levels, the frame's activity there
    per_sqrt_count: float  # noise SD per square root of the activity


def learn_frame(volume: np.ndarray, training: np.ndarray, template_at_training: np.ndarray,
                tissue: np.ndarray) -> FrameContrast:
    """The contrast of one PET frame (scaled activity, (I, J, K)), learned on its
    ``training`` voxels (the template's values there, (M,)) and the face's ``tissue``
    (arguments as for :func:`refacebids.core.replace.learn_contrast`)."""
    flat = flat_tissue(volume, tissue)
    return FrameContrast(
        noise=estimate_noise(volume, np.zeros_like(tissue), flat),  # PET air holds no noise floor
        intensity_map=fit_intensity_map(template_at_training, volume[training]),
        per_sqrt_count=noise_per_sqrt_activity(volume, flat),
    )


def reface_frame(
    contrast: FrameContrast,
    volume: np.ndarray,
    template_at_voxels: np.ndarray,
    replaced: np.ndarray,
    seam: np.ndarray,
    rng: np.random.Generator,
    *,
    zooms,
) -> tuple[np.ndarray, NoiseModel]:
    """New activity for the replaced voxels of one PET frame, in its ``contrast``.

    Arguments and returns as for :func:`refacebids.core.replace.reface_volume`, plus
    the voxel size ``zooms`` (mm). The frame's own uptake levels come from the lookup
    table learned on it; the drawn face is blurred to ``RESOLUTION_FWHM_MM``; its noise
    is Gaussian with SD ``c * sqrt(signal)`` (``c`` from the frame's flattest kept
    tissue), never negative when the frame has no negative values.
    """
    box = bounding_box(replaced, margin=0)
    # The drawn face is blurred to PET resolution on a canvas of the frame itself, so its
    # skin is as soft as the subject's and its edge meets the kept tissue smoothly.
    signal = volume[box].astype(np.float32)
    signal[replaced[box]] = apply_intensity_map(template_at_voxels, *contrast.intensity_map)
    sigma_voxels = RESOLUTION_FWHM_MM / FWHM_PER_SIGMA / np.asarray(zooms, float)
    signal = ndi.gaussian_filter(signal, sigma_voxels)
    noise = correlated_noise(signal.shape, contrast.noise, rng)
    # The drawn noise is measured as the image's was, so the two compare like for like.
    noise /= max(local_noise_sd(noise), 1e-6)
    noisy = signal + contrast.per_sqrt_count * np.sqrt(np.maximum(signal, 0.0)) * noise
    noisy = noisy[replaced[box]]
    if volume.min() >= 0:
        noisy = np.maximum(noisy, 0.0)
    values = seam * noisy + (1.0 - seam) * volume[replaced]
    return values.astype(np.float32), contrast.noise
