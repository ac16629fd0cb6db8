"""The image's noise, measured and reproduced in the replaced face.

A smooth average face in a noisy image is conspicuous, and a different noise texture
gives refacing away. The noise is characterised by its level, whether it is Rician
(magnitude MRI: an air background that is noise, not zeros) or Gaussian, and its
spatial correlation along each axis (reconstruction filters and interpolation make
neighbouring voxels correlated).

For noise made by Gaussian filtering of white noise with width ``s`` voxels, the
correlation of neighbours is ``rho = exp(-1 / (4 s**2))``; that is how ``s`` is recovered
from the measured neighbour correlation and used to synthesise the same texture.

Not all of a tissue's roughness is noise: noise spreads a tissue's values as widely as
it makes the tissue rough, and a tissue rougher than its values are spread has edges
against darker tissue (a FLAIR's thin fat among skin and muscle as dark as the air).
That part is drawn as edges: dark patches in the tissue (``dark_patches``), as many as
give its roughness (``dark_patch_share``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial

import numpy as np
from scipy import ndimage as ndi
from scipy.special import ndtr, ndtri

from ..utils.threads import in_parallel, in_slabs
from .geometry import bounding_box

MAD_TO_SD = 1.4826
MAX_SAMPLES = 200_000
STRUCTURE_SMOOTHING_VOXELS = 1.5  # how local the roughness of drawn anatomy is
SOFTENING_VOXELS = 1.5  # Gaussian width that takes drawn anatomy down to a face's roughness
GAUSSIAN_TRUNCATE = 3.0  # ndimage's radius of a Gaussian: int(truncate * sigma + 0.5) voxels
CALIBRATION_STEPS = 4  # secant steps for the noise amplitude (two reach 0.5 % on real heads)
RAYLEIGH_MEDIAN = float(np.sqrt(2.0 * np.log(2.0)))  # median of Rayleigh(sigma) / sigma
PATCH_CALIBRATION_VOXELS = 48  # side of the flat tissue on which dark patches are calibrated
PATCH_CALIBRATION_STEPS = 8  # bisection steps for their share (to within 0.002)
MAX_DARK_SHARE = 0.9  # beyond it the bright tissue between the patches is no more than specks


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


def local_noise_sd(volume: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Noise SD in a region: robust SD of the residual from a 3-voxel box mean.

    The residual keeps what changes from voxel to voxel (noise, and the fine texture
    of real tissue) and drops smooth shading, so the same number can be asked of the
    image and of the drawn face. ``mask`` (bool, the shape of ``volume``) is the
    region; without one, the whole volume.
    """
    if mask is None:
        values = np.asarray(volume, np.float32)
        residual = (values - ndi.uniform_filter(values, 3)).ravel()
    elif not mask.any():
        return float("nan")
    else:
        box = bounding_box(mask, margin=1)
        values = volume[box].astype(np.float32)
        residual = (values - ndi.uniform_filter(values, 3))[mask[box]]
    if residual.size < 50:
        return float("nan")
    if residual.size > MAX_SAMPLES:
        residual = residual[:: residual.size // MAX_SAMPLES]
    # 27/26: a voxel's own value is one of the 27 averaged, which shrinks white noise.
    return float(MAD_TO_SD * np.median(np.abs(residual - np.median(residual))) * np.sqrt(27 / 26))


def estimate_noise(volume: np.ndarray, air: np.ndarray, tissue: np.ndarray, threads: int = 1) -> NoiseModel:
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
    threads : int
        The roughness and the three axes' correlations are measured at once on as many.

    Returns
    -------
    NoiseModel
    """
    background = volume[air]
    has_noise_floor = background.size > 1000 and np.mean(background != background.min()) > 0.5
    region = air if has_noise_floor else tissue
    roughness, *difference_sds = in_parallel(
        threads,
        partial(local_noise_sd, volume, tissue),
        *(partial(neighbour_difference_sd, volume, region, axis) for axis in range(3)),
    )
    if has_noise_floor:
        # Air is Rayleigh-distributed; medians ignore ghosts and wrapped tissue in it.
        sigma = float(np.median(background)) / RAYLEIGH_MEDIAN
        kind = "rician"
        marginal = MAD_TO_SD * float(np.median(np.abs(background - np.median(background))))
    else:
        # A background set to a constant (masked or zero-filled) has no noise to match:
        # the new air stays as clean as the old.
        sigma = MAD_TO_SD * float(np.median(np.abs(background - np.median(background)))) if background.size else 0.0
        kind = "gaussian"
        marginal = roughness
    widths = []
    for diff_sd in difference_sds:
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
    return gaussian_field(shape, model.correlation_voxels, rng)


def gaussian_field(shape: tuple, widths, rng: np.random.Generator) -> np.ndarray:
    """(I, J, K) float32 zero-mean, unit-SD white noise smoothed by a Gaussian of ``widths``.

    ``widths`` (3,) are the Gaussian's SDs in voxels along each axis (all 0: white noise).
    """
    return _smoothed(rng.standard_normal(shape, dtype=np.float32), widths)


def _smoothed(white: np.ndarray, widths) -> np.ndarray:
    if not any(widths):
        return white
    smooth = ndi.gaussian_filter(white, widths)
    return smooth / max(float(smooth.std()), 1e-12)


def local_structure(signal: np.ndarray, region: np.ndarray) -> np.ndarray:
    """(I, J, K) roughness that a noise-free (I, J, K) ``signal`` already has, voxel by voxel.

    The RMS residual from a 3-voxel box mean taken over ``region`` only (values outside
    it, zeros of an unfilled grid say, are no neighbours), averaged over a few voxels:
    the same residual that ``local_noise_sd`` measures, as a map. Drawn anatomy is rough
    where its edges are (a template's fat against muscle, a skin) and smooth elsewhere,
    so one figure for the whole face adds noise on top of rough anatomy.
    """
    return _structure(signal, _RegionFilters(region))


class _RegionFilters:
    """A region's own box and Gaussian weights, shared by every map computed over it."""

    def __init__(self, region: np.ndarray):
        self.region = region
        self._inside = region.astype(np.float32)
        self.neighbours = np.maximum(ndi.uniform_filter(self._inside, 3), 1e-6)
        self._coverage: dict[float, np.ndarray] = {}

    def coverage(self, sigma_voxels: float) -> np.ndarray:
        """Gaussian-weighted share of the region around each voxel (at least 1e-6)."""
        if sigma_voxels not in self._coverage:
            weight = ndi.gaussian_filter(self._inside, sigma_voxels, truncate=GAUSSIAN_TRUNCATE)
            self._coverage[sigma_voxels] = np.maximum(weight, 1e-6)
        return self._coverage[sigma_voxels]

    def within(self, signal: np.ndarray) -> np.ndarray:
        return np.where(self.region, signal, 0.0).astype(np.float32)


def _structure(signal: np.ndarray, filters: _RegionFilters) -> np.ndarray:
    values = filters.within(signal)
    deviation = values - ndi.uniform_filter(values, 3) / filters.neighbours
    np.abs(deviation, out=deviation)
    deviation[~filters.region] = 0.0
    spread = ndi.gaussian_filter(deviation, STRUCTURE_SMOOTHING_VOXELS, truncate=GAUSSIAN_TRUNCATE)
    # Mean absolute residual, scaled to an SD for Gaussian noise: it weighs a few strong
    # edges as a median would, less than the RMS does.
    spread *= np.float32(np.sqrt(np.pi / 2.0 * 27 / 26))
    spread /= filters.coverage(STRUCTURE_SMOOTHING_VOXELS)
    spread[~filters.region] = 0.0
    return spread


def _gaussian_reach(sigma_voxels: float) -> int:
    return int(GAUSSIAN_TRUNCATE * sigma_voxels + 0.5)


# How far the softened value of a voxel looks: the smoothing, then the structure of the
# smoothed signal (a 3-voxel box, then its Gaussian spread).
SOFTENING_REACH = _gaussian_reach(SOFTENING_VOXELS) + 1 + _gaussian_reach(STRUCTURE_SMOOTHING_VOXELS)


def soften_structure(
    signal: np.ndarray, region: np.ndarray, roughness: float, share: np.ndarray, threads: int = 1
) -> np.ndarray:
    """(I, J, K) ``signal`` smoothed where its structure is rougher than the image's tissue.

    A template drawn into an image of lower resolution or flatter contrast (2.4 mm
    slices through a 2 mm template; proton density, where fat and muscle look alike)
    has more voxel-to-voxel contrast than the subject's face ever had, and noise cannot
    take that back. Where ``local_structure`` exceeds ``roughness`` the signal is blended
    towards its Gaussian smoothing (within ``region``) just enough to come down to it;
    ``share`` (same shape, 0 to 1) says where texture may change at all (0 at the new
    skin, whose profile is the image's own). Every step is local: with ``threads`` > 1
    slabs of the grid are softened at once, with the same result.
    """
    return in_slabs(threads, _soften, signal, region, share, reach=SOFTENING_REACH, roughness=roughness)


def _soften(signal: np.ndarray, region: np.ndarray, share: np.ndarray, roughness: float) -> np.ndarray:
    filters = _RegionFilters(region)
    structure = _structure(signal, filters)
    if not np.any((structure > roughness) & (share > 0)):
        return signal
    smooth = ndi.gaussian_filter(filters.within(signal), SOFTENING_VOXELS, truncate=GAUSSIAN_TRUNCATE)
    smooth /= filters.coverage(SOFTENING_VOXELS)
    # The blend's roughness is close to the weighted mean of the two roughnesses.
    smooth_structure = _structure(smooth, filters)
    excess = np.clip((structure - roughness) / np.maximum(structure - smooth_structure, 1e-6), 0.0, 1.0)
    weight = np.where(region, share * excess, 0.0)
    return (signal + weight * (smooth - signal)).astype(np.float32)


def add_noise(
    signal: np.ndarray,
    model: NoiseModel,
    rng: np.random.Generator,
    roughness_share: np.ndarray,
    region: np.ndarray | None = None,
    amplitude: float | None = None,
    threads: int = 1,
) -> np.ndarray:
    """Noise-free (I, J, K) ``signal`` with the image's noise added.

    The noise amplitude goes from the air's ``sigma`` (``roughness_share`` 0) to the
    amplitude that gives the tissue's roughness (``roughness_share`` 1, same shape as
    ``signal``). Drawn anatomy is rough already where its edges are; given ``region``
    (same shape, bool: the drawn tissue), the tissue amplitude is the one with which the
    noisy signal there has the tissue's roughness, as ``local_noise_sd`` measures it.
    Adding the roughnesses in quadrature instead overshoots: noise on a smooth padding
    and on a skin edge do not add up the way two noises do. Given ``amplitude``, that is
    the tissue amplitude, and ``region`` and the model's roughness are not used. The real
    and imaginary noises of a Rician model are correlated, and slabs of the grid made
    noisy, on ``threads`` at once.
    """
    # Drawn in turn, correlated at once: the same noise as drawing each in full in turn.
    # The real noise's own roughness, which scales the tissue amplitude, is measured
    # while the imaginary noise is correlated.
    whites = [rng.standard_normal(signal.shape, dtype=np.float32) for _ in range(2 if model.kind == "rician" else 1)]
    calibrated = amplitude is None

    def real_noise_and_roughness() -> tuple[np.ndarray, float]:
        real = _smoothed(whites[0], model.correlation_voxels)
        return real, (local_noise_sd(real) if calibrated else np.nan)

    (real_noise, roughness_per_unit), *imaginary_noise = in_parallel(
        threads, real_noise_and_roughness, *(partial(_smoothed, white, model.correlation_voxels) for white in whites[1:])
    )
    noises = (real_noise, *imaginary_noise)

    def noisy(tissue_amplitude: float, where=np.s_[:]) -> np.ndarray:
        arrays = (signal[where], roughness_share[where], *(noise[where] for noise in noises))
        return in_slabs(threads, _noisy, *arrays, reach=0, sigma=model.sigma, tissue_amplitude=tissue_amplitude)

    if amplitude is not None:
        return noisy(amplitude)
    amplitude = model.tissue_roughness / max(roughness_per_unit, 1e-6)
    if region is None or not region.any():
        return noisy(amplitude)
    # Only the region (and its box residual's margin) decides the amplitude.
    box = bounding_box(region, margin=1)
    inside = region[box]

    def roughness(tissue_amplitude: float) -> float:
        return local_noise_sd(noisy(tissue_amplitude, box), inside)

    # Both ends of the search at once; the second is wasted only when the air's noise
    # alone is rough enough.
    least, first_guess = in_parallel(threads, partial(roughness, model.sigma), partial(roughness, amplitude))
    if not np.isfinite(least):
        return noisy(amplitude)
    if least >= model.tissue_roughness:
        return noisy(model.sigma)  # rough enough with the air's noise alone
    # The squared roughness grows close to linearly with the squared amplitude
    # (structure plus noise): a few secant steps on those squares find the amplitude.
    points = [(model.sigma, least), (amplitude, first_guess)]
    for _ in range(CALIBRATION_STEPS):
        (a0, r0), (a1, r1) = points[-2:]
        if abs(r1 - model.tissue_roughness) < 0.005 * model.tissue_roughness or r1 == r0:
            break
        slope = (r1**2 - r0**2) / (a1**2 - a0**2)
        guess = np.sqrt(max(a1**2 + (model.tissue_roughness**2 - r1**2) / max(slope, 1e-12), model.sigma**2))
        guess = float(min(guess, 4.0 * amplitude))
        points.append((guess, roughness(guess)))
    return noisy(points[-1][0])


def _noisy(signal, share, real_noise, *imaginary_noise, sigma: float, tissue_amplitude: float) -> np.ndarray:
    """``signal`` plus noise whose amplitude goes from ``sigma`` (``share`` 0) to
    ``tissue_amplitude`` (``share`` 1): the magnitude of the complex sum given
    ``imaginary_noise`` (Rician), else the real sum. Arrays of one shape."""
    amplitude = sigma + share * (max(tissue_amplitude, sigma) - sigma)
    real = signal + amplitude * real_noise
    if not imaginary_noise:
        return real
    return np.sqrt(real**2 + (amplitude * imaginary_noise[0]) ** 2)


def value_spread(values: np.ndarray) -> float:
    """How widely (N,) tissue ``values`` vary, noise included: 1.4826 median absolute deviations.

    Noise of SD ``s`` on a uniform tissue spreads its values by ``s``: a tissue rougher
    than its values are spread owes the rest of its roughness to edges, not to noise.
    """
    return float(MAD_TO_SD * np.median(np.abs(values - np.median(values))))


def mean_run_length(mask: np.ndarray) -> np.ndarray:
    """(3,) mean length in voxels of the runs of (I, J, K) bool ``mask`` along each axis.

    How thick the mask's pieces are: a slab 3 voxels thick has runs of 3 across it.
    """
    inside = mask[bounding_box(mask)].astype(np.int8)
    lengths = []
    for axis in range(3):
        along = np.moveaxis(inside, axis, 0)
        runs = np.count_nonzero(along[0]) + np.count_nonzero(along[1:] > along[:-1])
        lengths.append(np.count_nonzero(inside) / max(runs, 1))
    return np.asarray(lengths, float)


def patch_widths(run_length, dark_share: float) -> np.ndarray:
    """(3,) widths (voxels) of the Gaussian field whose bright runs are ``run_length`` (3,) long.

    The field is dark below its ``dark_share`` quantile ``t`` and bright above. By Rice's
    formula, a unit Gaussian field smoothed by a Gaussian of width ``s`` crosses ``t``
    upwards ``exp(-t**2 / 2) / (2 pi sqrt(2) s)`` times per voxel along an axis, so its
    bright runs are ``(1 - dark_share) 2 pi sqrt(2) s exp(t**2 / 2)`` voxels long.
    """
    level = ndtri(dark_share)
    per_width = (1.0 - dark_share) * 2.0 * np.pi * np.sqrt(2.0) * np.exp(level**2 / 2.0)
    return np.asarray(run_length, float) / per_width


def dark_patches(
    weight: np.ndarray, run_length, dark_share: float, rng: np.random.Generator
) -> np.ndarray:
    """Where tissue is drawn dark, in random patches.

    A Gaussian random field (``patch_widths``) is dark below its ``dark_share * weight``
    quantile: where ``weight`` is 1, ``dark_share`` of the voxels are dark and the bright
    tissue between them comes in runs of ``run_length`` voxels along each axis; towards
    ``weight`` 0 the dark patches thin out, without intermediate values.

    Parameters
    ----------
    weight : (I, J, K) ndarray
        0 to 1: how far the patches apply (0: none).
    run_length : (3,) array_like
        Mean length (voxels) of the bright runs along each axis where ``weight`` is 1.
    dark_share : float
        Share of dark voxels where ``weight`` is 1, in (0, 1).
    rng : numpy.random.Generator

    Returns
    -------
    (I, J, K) bool ndarray
    """
    dark = np.zeros(weight.shape, bool)
    where = weight > 0
    if not where.any():
        return dark
    box = bounding_box(where)
    field = gaussian_field(weight[box].shape, patch_widths(run_length, dark_share), rng)
    dark[box][where[box]] = ndtr(field[where[box]]) < dark_share * weight[box][where[box]]
    return dark


def dark_patch_share(
    bright: float,
    dark: float,
    run_length,
    amplitude: float,
    model: NoiseModel,
    rng: np.random.Generator,
) -> float:
    """Share of dark patches that gives bright tissue the model's roughness.

    Calibrated by bisection on a flat tissue with ``dark_patches``, its noise drawn as
    ``add_noise`` draws it (``amplitude`` on the bright tissue, the air's on the dark).
    Its roughness (``local_noise_sd`` of the bright voxels) grows with the share, as more
    of the bright voxels have dark neighbours.

    Parameters
    ----------
    bright, dark : float
        Noise-free values of the tissue and of its patches.
    run_length : (3,) array_like
        Mean length (voxels) of the bright runs along each axis.
    amplitude : float
        Noise amplitude on the bright tissue.
    model : NoiseModel
        The image's noise; ``tissue_roughness`` is the roughness to reach.
    rng : numpy.random.Generator

    Returns
    -------
    float
        The share, at most ``MAX_DARK_SHARE`` (when even that is not rough enough); near
        0 when the noise alone is as rough.
    """
    shape = (PATCH_CALIBRATION_VOXELS,) * 3
    inside = np.zeros(shape, bool)
    inside[1:-1, 1:-1, 1:-1] = True  # the grid's border has no neighbours beyond it
    low, high = 0.0, MAX_DARK_SHARE
    for _ in range(PATCH_CALIBRATION_STEPS):
        share = 0.5 * (low + high)
        is_bright = ~dark_patches(np.ones(shape, np.float32), run_length, share, rng)
        tissue = np.where(is_bright, np.float32(bright), np.float32(dark))
        noisy = add_noise(tissue, model, rng, is_bright.astype(np.float32), amplitude=amplitude)
        if local_noise_sd(noisy, inside & is_bright) < model.tissue_roughness:
            low = share
        else:
            high = share
    return 0.5 * (low + high)


def feather(original: np.ndarray, signal: np.ndarray, noisy: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """(N,) new values blended into the ``original`` ones (N,) with ``weight`` (N,), 0 to 1.

    The noise-free ``signal`` blends linearly; its noise (``noisy - signal``) is weighted
    so that the image's noise and the new one add up to one noise level: two independent
    noises of the same SD blended linearly would give less, 0.71 of it half-way, and the
    feathered edge of the new face would be smoother than either side.
    """
    noise_weight = np.sqrt(np.clip(1.0 - (1.0 - weight) ** 2, 0.0, 1.0))
    return weight * signal + (1.0 - weight) * original + noise_weight * (noisy - signal)
