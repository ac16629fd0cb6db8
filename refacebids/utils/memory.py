"""How a refacebids process keeps the memory NumPy frees, for the next array."""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
KEPT_BYTES = 1 << 30


@lru_cache(maxsize=1)
def reuse_freed_memory() -> bool:
    """Have glibc keep freed image-sized arrays in the process; True where it took.

    By default glibc maps every allocation above 32 MB afresh and hands it back to the
    kernel when freed, so each image-sized temporary of the engine is page-faulted and
    zeroed again: on a 1 mm head a fifth of the mask and replace steps' CPU time went to
    the kernel (6.6 of 27 s), ~2 s with the memory kept. Peak memory is unchanged (the
    freed arrays are reused, not added). One arena for every thread, as the engine's
    threads allocate whole arrays, not many small objects. Elsewhere than glibc this
    does nothing.

    NumPy also stops asking Linux for transparent huge pages for its arrays
    (``NUMPY_MADVISE_HUGEPAGE=0``, which NumPy reads only when imported). Where the
    kernel compacts memory to find one on a page fault (``defrag`` set to ``madvise``,
    Debian's default), the replace step spent 2.1 s in the kernel on a 1 mm head with
    them and 0.4 s without; it ran 1.4-1.6 s faster, with the same result.
    """
    _without_huge_pages()
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return all(mallopt(parameter, value) == 1 for parameter, value in (
        (M_MMAP_THRESHOLD, KEPT_BYTES), (M_TRIM_THRESHOLD, 2 * KEPT_BYTES), (M_ARENA_MAX, 1)))


def _without_huge_pages() -> None:
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:  # another NumPy: its own default
        return
    _set_madvise_hugepage(False)
