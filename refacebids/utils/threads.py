"""How many threads ITK (inside antspyx) and the engine's numeric steps use in this process."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np

ITK_THREADS_VARIABLE = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"


def use_itk_threads(threads: int) -> None:
    """Make ITK in this process run ``threads`` threads.

    ITK reads the variable once, when antspyx is first imported, and antspyx offers no
    call to change it afterwards. refacebids imports antspyx lazily, so a process that
    runs one node (a batch job under SLURM, whose environment may not be the one the
    command had) takes the setting here, before its first import. MultiProc workers
    are forked from the command, which sets the same value before it imports antspyx.
    """
    os.environ[ITK_THREADS_VARIABLE] = str(max(1, int(threads)))


def in_parallel(threads: int, *computations):
    """The results of independent ``computations`` (callables without arguments), in order.

    With ``threads`` > 1 they run on that many threads: NumPy, SciPy's ndimage and ITK
    release Python's lock while they work on arrays, so the engine's independent steps
    share the cores a node was given. With 1, they run one after the other.
    """
    if threads < 2 or len(computations) < 2:
        return tuple(compute() for compute in computations)
    with ThreadPoolExecutor(max_workers=min(threads, len(computations))) as pool:
        running = [pool.submit(compute) for compute in computations]
        return tuple(job.result() for job in running)


def in_slabs(threads: int, function, *arrays: np.ndarray, reach: int, **options) -> np.ndarray:
    """``function(*arrays, **options)``, computed in ``threads`` slabs of the first axis at once.

    For a function of arrays of one shape that returns an array of that shape, whose
    value at a voxel depends on the arrays within ``reach`` voxels of it (filters and
    what they feed): each slab is computed with ``reach`` voxels of its neighbours on
    either side and cut back, which gives exactly the whole-array result.
    """
    length = arrays[0].shape[0]
    if threads < 2 or length < 4 * reach:
        return function(*arrays, **options)
    bounds = np.linspace(0, length, threads + 1).round().astype(int)

    def slab(start: int, stop: int) -> np.ndarray:
        low, high = max(start - reach, 0), min(stop + reach, length)
        result = function(*(array[low:high] for array in arrays), **options)
        return result[start - low: result.shape[0] - (high - stop)]

    return np.concatenate(in_parallel(threads, *(partial(slab, a, b) for a, b in zip(bounds[:-1], bounds[1:]))))
