"""How many threads ITK (inside antspyx) and the engine's numeric steps use in this process."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

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
