"""The population-to-sample attack on face embeddings, as plain array functions.

An attacker holds a photograph of a participant (a *probe*) and the released images of
the whole study (the *gallery*), ranks the gallery by embedding distance to the probe
and takes the closest as the participant. Identity here is the participant, so a
probe is re-identified when any gallery image of the same participant ranks first.
"""

from __future__ import annotations

import numpy as np


def own_ranks(probes: np.ndarray, gallery: np.ndarray, probe_ids, gallery_ids) -> np.ndarray:
    """Rank of the best-placed gallery entry of each probe's own identity.

    Parameters
    ----------
    probes : (N, D) array
        Probe embeddings; a row of NaN is a probe without a face (it cannot attack).
    gallery : (M, D) array
        Gallery embeddings; a row of NaN is an entry without a face (never matched).
    probe_ids : (N,) sequence
        Identity of each probe.
    gallery_ids : (M,) sequence
        Identity of each gallery entry; every probe's identity must occur.

    Returns
    -------
    (N,) float array
        1 when the probe's own identity is the closest, ``1 + k`` when ``k`` entries of
        other identities are strictly closer than its closest own entry; NaN for
        probes without a face. An own entry without a face ranks last (M).

    Examples
    --------
    >>> gallery = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]])
    >>> own_ranks(np.array([[0.9, 0.0], [0.1, 0.0]]), gallery, ["a", "a"], ["b", "a", "c"])
    array([1., 2.])
    """
    probes, gallery = np.asarray(probes, float), np.asarray(gallery, float)
    probe_ids, gallery_ids = np.asarray(probe_ids), np.asarray(gallery_ids)
    distance = np.linalg.norm(probes[:, None, :] - gallery[None, :, :], axis=2)
    distance = np.where(np.isnan(distance), np.inf, distance)
    own = probe_ids[:, None] == gallery_ids[None, :]
    if not own.any(axis=1).all():
        raise ValueError("every probe's identity must be in the gallery")
    closest_own = np.where(own, distance, np.inf).min(axis=1)
    closer_others = (~own & (distance < closest_own[:, None])).sum(axis=1)
    ranks = np.where(np.isinf(closest_own), gallery.shape[0], 1 + closer_others).astype(float)
    ranks[np.isnan(probes).any(axis=1)] = np.nan
    return ranks


def rank1_rate(ranks: np.ndarray) -> float:
    """Share of probes whose own identity ranked first; probes without a face count as misses."""
    ranks = np.asarray(ranks, float)
    return float(np.mean(ranks == 1)) if ranks.size else float("nan")


def chance_rate(probe_ids, gallery_ids) -> float:
    """Rank-1 rate of an attacker who picks a gallery entry at random.

    >>> chance_rate(["a", "b"], ["a", "b", "c", "d"])
    0.25
    """
    probe_ids, gallery_ids = np.asarray(probe_ids), np.asarray(gallery_ids)
    own = probe_ids[:, None] == gallery_ids[None, :]
    return float(own.sum(axis=1).mean() / len(gallery_ids))
