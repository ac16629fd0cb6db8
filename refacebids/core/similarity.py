"""How alike two registered images are, whatever their contrasts: mutual information.

The figure reported for a registration (its ``similarity``), never a decision: the
registration check decides (``registration.registration_quality``). Negative, as ANTs
reports its metrics, so that lower is better.
"""

from __future__ import annotations

import numpy as np

BINS = 32  # as the registration's Mattes metric


def mutual_information(first: np.ndarray, second: np.ndarray, bins: int = BINS) -> float:
    """Negative mutual information (nats) of two images' intensities, voxel by voxel.

    From their joint histogram of ``bins`` x ``bins`` equal bins between each image's
    minimum and maximum: 0 for independent images, minus the entropy of the binned
    intensities for an image with itself.

    Parameters
    ----------
    first, second : (I, J, K) ndarray
        Two images on one grid.

    Returns
    -------
    float

    Examples
    --------
    >>> ramp = np.linspace(0.0, 1.0, 64 * 64).reshape(64, 64)  # each bin equally full
    >>> bool(np.isclose(mutual_information(ramp, ramp), -np.log(32)))
    True
    >>> bool(np.isclose(mutual_information(ramp, 1.0 - ramp), -np.log(32)))  # a contrast reversed
    True
    >>> noise = np.random.default_rng(0).random((64, 64, 64))
    >>> mutual_information(noise, noise[::-1]) > -0.01
    True
    """
    joint, _, _ = np.histogram2d(np.ravel(first), np.ravel(second), bins=bins)
    joint /= max(joint.sum(), 1.0)
    marginals = np.outer(joint.sum(axis=1), joint.sum(axis=0))
    present = joint > 0
    return -float(np.sum(joint[present] * np.log(joint[present] / marginals[present])))
