"""Write files so that a reader never sees a half-written one.

Every writer puts the data in a temporary file in the destination folder, flushes it
to disk and renames it over the destination with :func:`os.replace`, which is atomic
within one file system. An interrupted run therefore leaves either the old file or the
new one, never a truncated image that looks valid. Renaming over a hard link replaces
the link only, so the file it pointed to (an input, in the release layout) is untouched.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_copy", "atomic_open", "write_json", "write_nifti", "write_text"]


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The name keeps the final suffixes so that tools sniffing extensions (nibabel)
    # recognise the temporary file; the leading dot hides it from BIDS tools.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp)
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as fobj:
            yield fobj
            fobj.flush()
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
            # mtime=0 so that the same image always gives the same file (and checksum).
            with gzip.GzipFile(fileobj=fout, mode="wb", mtime=0) as gz:
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
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = ".nii.gz" if path.name.endswith(".gz") else ".nii"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=ext)
    os.close(fd)
    tmp = Path(tmp)
    try:
        img.to_filename(tmp)
        with open(tmp, "rb") as fobj:
            os.fsync(fobj.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
