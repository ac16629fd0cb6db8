"""How many threads ITK (inside antspyx) uses in this process."""

from __future__ import annotations

import os

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
