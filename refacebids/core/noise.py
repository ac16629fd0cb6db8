"""The image's noise, measured and reproduced in the replaced face.

A smooth average face in a noisy image is conspicuous, and a different noise texture
gives refacing away. The noise is characterised by its level, whether it is Rician
(magnitude MRI: an air background that is noise, not zeros) or Gaussian, and its
spatial correlation along each axis (reconstruction filters and interpolation make
neighbouring voxels correlated).

For noise made by Gaussian filtering of white noise with width ``s`` voxels, the
correlation of neighbours is ``rho = exp(-1 / (4 s**2))``; that is how ``s`` is recovered
from the measured neighbour correlation and used to synthesise the same texture.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi

from .geometry import bounding_box

MAD_TO_SD = 1.4826
MAX_SAMPLES = 200_000
RAYLEIGH_MEDIAN = float(np.sqrt(2.0 * np.log(2.0)))  # median of Rayleigh(sigma) / sigma


@dataclass
class NoiseModel:
    """Noise of an image.

    ``sigma`` is the thermal noise (what the air shows), ``tissue_roughness`` the
    neighbour-to-neighbour variability of soft tissue (noise plus fine texture that a
    smooth average face lacks), both in image units; ``kind`` and correlation widths
    as measured.
    """

    sigma: float
    kind: str  # "rician" or "gaussian"
    correlation_voxels: tuple[float, float, float]
    tissue_roughness: float

    @property
    def floor(self) -> float:
        """Median magnitude of pure noise (0 for Gaussian noise)."""
        return self.sigma * RAYLEIGH_MEDIAN if self.kind == "rician" else 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def neighbour_difference_sd(volume: np.ndarray, mask: np.ndarray, axis: int) -> float:
    """Robust SD of differences between neighbours along ``axis`` within ``mask``."""
    diff = np.diff(volume, axis=axis)
    both = np.logical_and(np.delete(mask, 0, axis=axis), np.delete(mask, -1, axis=axis))
    values = diff[both]
    if values.size < 50:
        return float("nan")
    if values.size > MAX_SAMPLES:  # a regular subsample: the median needs no more
        values = values[:: values.size // MAX_SAMPLES]
    return float(MAD_TO_SD * np.median(np.abs(values - np.median(values))))


def local_noise_sd(volume: np.ndarray, mask: np.ndarray) -> float:
    """Noise SD in a region: robust SD of the residual from a 3-voxel box mean.

    The residual keeps what changes from voxel to voxel (noise, and the fine texture
    of real tissue) and drops smooth shading, so the same number can be asked of the
    image and of the drawn face.
    """
    if not mask.any():
        return float("nan")
    box = bounding_box(mask, margin=1)
    values = volume[box].astype(np.float32)
    residual = (values - ndi.uniform_filter(values, 3))[mask[box]]
    if residual.size < 50:
        return float("nan")
    if residual.size > MAX_SAMPLES:
        residual = residual[:: residual.size // MAX_SAMPLES]
    # 27/26: a voxel's own value is one of the 27 averaged, which shrinks white noise.
    return float(MAD_TO_SD * np.median(np.abs(residual - np.median(residual))) * np.sqrt(27 / 26))


def estimate_noise(volume: np.ndarray, air: np.ndarray, tissue: np.ndarray) -> NoiseModel:
    """Measure an image's noise from its air background and, failing that, its tissue.

    Parameters
    ----------
    volume : (I, J, K) ndarray
        Scaled intensities.
    air : (I, J, K) bool ndarray
        Air well away from the head (no wrapped parts, no skin).
    tissue : (I, J, K) bool ndarray
        Soft tissue whose roughness the new tissue should have (the face before
        refacing).

    Returns
    -------
    NoiseModel
    """
    roughness = local_noise_sd(volume, tissue)
    background = volume[air]
    has_noise_floor = background.size > 1000 and np.mean(background != background.min()) > 0.5
    if has_noise_floor:
        # Air is Rayleigh-distributed; medians ignore ghosts and wrapped tissue in it.
        sigma = float(np.median(background)) / RAYLEIGH_MEDIAN
        region, kind = air, "rician"
        marginal = MAD_TO_SD * float(np.median(np.abs(background - np.median(background))))
    else:
        # A background set to a constant (masked or zero-filled) has no noise to match:
        # the new air stays as clean as the old.
        sigma = MAD_TO_SD * float(np.median(np.abs(background - np.median(background)))) if background.size else 0.0
        region, kind = tissue, "gaussian"
        marginal = roughness
    widths = []
    for axis in range(3):
        diff_sd = neighbour_difference_sd(volume, region, axis)
        rho = 1.0 - diff_sd**2 / (2.0 * marginal**2) if marginal > 0 else 0.0
        widths.append(float(np.sqrt(-1.0 / (4.0 * np.log(rho)))) if 0.05 < rho < 0.98 else 0.0)
    return NoiseModel(
        sigma=float(np.nan_to_num(sigma)),
        kind=kind,
        correlation_voxels=tuple(widths),
        tissue_roughness=float(np.nan_to_num(roughness, nan=sigma)),
    )


def correlated_noise(shape: tuple, model: NoiseModel, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-SD Gaussian noise with the model's spatial correlation."""
    white = rng.standard_normal(shape, dtype=np.float32)
    if not any(model.correlation_voxels):
        return white
    smooth = ndi.gaussian_filter(white, model.correlation_voxels)
    return smooth / max(float(smooth.std()), 1e-12)


def add_noise(
    signal: np.ndarray, model: NoiseModel, rng: np.random.Generator, roughness_share: np.ndarray
) -> np.ndarray:
    """Noise-free (I, J, K) ``signal`` with the image's noise added.

    The noise amplitude goes from the air's ``sigma`` (``roughness_share`` 0) to the
    amplitude that gives the tissue's roughness (``roughness_share`` 1, same shape as
    ``signal``).
    """
    real_noise = correlated_noise(signal.shape, model, rng)
    roughness_per_unit = local_noise_sd(real_noise, np.ones(signal.shape, bool))
    tissue_amplitude = model.tissue_roughness / max(roughness_per_unit, 1e-6)
    amplitude = model.sigma + roughness_share * (max(tissue_amplitude, model.sigma) - model.sigma)
    real = signal + amplitude * real_noise
    if model.kind != "rician":
        return real
    imaginary = amplitude * correlated_noise(signal.shape, model, rng)
    return np.sqrt(real**2 + imaginary**2)
