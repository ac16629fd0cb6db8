"""Write files so that a reader never sees a half-written one.

Every writer puts the data in a temporary file in the destination folder, flushes it
to disk and renames it over the destination with :func:`os.replace`, which is atomic
within one file system. An interrupted run therefore leaves either the old file or the
new one, never a truncated image that looks valid. Renaming over a hard link replaces
the link only, so the file it pointed to (an input, in the release layout) is untouched.

A process killed outright (SIGKILL, the scheduler's time limit, power loss) cannot
delete its temporary file; every temporary name is hidden and carries ``.tmp`` so that
the next run, holding the folder's lock, can sweep them with
:func:`remove_stale_temporaries`.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "atomic_copy",
    "atomic_open",
    "remove_stale_temporaries",
    "temporary_sibling",
    "write_json",
    "write_nifti",
    "write_text",
]

# ".{final name}.{anything}.tmp", optionally followed by the NIfTI ending nibabel needs.
_TEMPORARY_NAME = re.compile(r"\..+\.tmp(\.nii(\.gz)?)?")


def temporary_sibling(path, tag: str = "") -> Path:
    """A fresh hidden temporary name beside ``path`` that the sweep recognises.

    Parameters
    ----------
    path : path-like
        The final destination.
    tag : str
        An ending after ``.tmp`` (``".nii.gz"``), for writers that choose the format
        from the file name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + tag)
    os.close(fd)
    return Path(tmp)


def remove_stale_temporaries(folder) -> list[Path]:
    """Delete the temporary files that killed runs left anywhere under ``folder``.

    Call it only while holding the folder's lock (:mod:`refacebids.utils.lock`): a
    temporary file of a live run would otherwise be deleted under it.

    Returns
    -------
    list of Path
        The files removed.
    """
    stale = [path for path in Path(folder).rglob(".*")
             if _TEMPORARY_NAME.fullmatch(path.name) and path.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


@contextmanager
def atomic_open(path, mode: str = "wb"):
    """Open a temporary file beside ``path``; on success it replaces ``path``.

    Parameters
    ----------
    path : path-like
        Final destination; its parent folders are created.
    mode : str
        ``"wb"`` or ``"w"`` (text, UTF-8).

    Yields
    ------
    file object
        Write to it; on normal exit it is fsynced and renamed to ``path``; on an
        exception it is deleted and ``path`` is left as it was.
    """
    encoding = None if "b" in mode else "utf-8"
    with _published(Path(path)) as tmp, open(tmp, mode, encoding=encoding) as fobj:
        yield fobj


@contextmanager
def _published(path: Path, tag: str = ""):
    """Yield a temporary name beside ``path``; once the block has written it, it
    is flushed to disk and renamed to ``path``. On an exception it is deleted."""
    tmp = temporary_sibling(path, tag)
    try:
        yield tmp
        with open(tmp, "rb") as fobj:
            os.fsync(fobj.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w") as fobj:
        fobj.write(text)
    return Path(path)


def write_json(path, data) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    return write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def atomic_copy(src, dst) -> Path:
    """Copy ``src`` to ``dst`` atomically, converting between ``.nii`` and ``.nii.gz``.

    The bytes of the NIfTI stream are kept exactly: compressing or decompressing only
    changes the container, so a refaced image keeps its header and stored values.
    """
    src, dst = Path(src), Path(dst)
    src_gz, dst_gz = src.name.endswith(".gz"), dst.name.endswith(".gz")
    opener = gzip.open if src_gz and not dst_gz else open
    with opener(src, "rb") as fin, atomic_open(dst, "wb") as fout:
        if dst_gz and not src_gz:
            # No time or (temporary) name in the header: the same image always gives
            # the same file, and checksum.
            with gzip.GzipFile(filename="", fileobj=fout, mode="wb", mtime=0) as gz:
                shutil.copyfileobj(fin, gz)
        else:
            shutil.copyfileobj(fin, fout)
    return dst


def write_nifti(img, path) -> Path:
    """Save a nibabel image to ``path`` atomically.

    nibabel chooses compression from the file name, so the temporary file is named
    with the same ``.nii``/``.nii.gz`` ending as ``path`` before it is renamed.
    """
    path = Path(path)
    with _published(path, ".nii.gz" if path.name.endswith(".gz") else ".nii") as tmp:
        img.to_filename(tmp)
    return path
