"""One refacebids run at a time per output dataset and per work directory.

Two runs writing the same OUTPUT_DIR would race on its shared files (the dataset
description, ``scans.tsv`` in a release, the reports) and a release being built by one
would be pruned by the other; two runs sharing a work directory would share Nipype's
cache. The first run holds an exclusive ``flock`` on a hidden file in each folder until
it exits (the kernel releases it when the process dies, even
on SIGKILL); a second run stops at once with one line instead of waiting.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".refacebids.lock"


class FolderInUse(ValueError):
    """Another run holds the folder; the message is for the user."""


@contextmanager
def folder_lock(folder, what: str = "OUTPUT_DIR"):
    """Hold the lock of ``folder`` (created if needed) for the ``with`` block.

    Parameters
    ----------
    folder : path-like
    what : str
        How the folder is named in the message (``OUTPUT_DIR``, ``the work dir``).

    Raises
    ------
    FolderInUse
        When another process holds it.
    """
    path = Path(folder) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            os.close(fd)
            raise FolderInUse(
                f"{what} {folder} is in use by another refacebids run"
                f"{f' (process {holder})' if holder else ''}; wait for it to finish "
                f"or use another {what}"
            ) from None
        # The holder before us may have removed the file between our open and our
        # lock: then we hold a lock on a file nobody else can see; start again.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)
