"""The replacement-face template: the embedded one, a folder, or a TemplateFlow name.

A template folder holds, in TemplateFlow naming, a head ``*_T1w.nii.gz``, an
intracranial ``*_desc-brain_mask.nii.gz`` and the refacing labels
``*_desc-reface_dseg.nii.gz`` (see ``templates/build_template.py``). A TemplateFlow
template has no refacing labels; they are carried over from the embedded template by
registering it to the TemplateFlow head once per run.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

DEFAULT_TEMPLATE = "MNI152EXT"
# Labels reach this far beyond a template's head image, for the wrap band's air.
LABEL_PADDING_MM = 60.0


class TemplateError(ValueError):
    """A template that cannot be found or is incomplete."""


@dataclass(frozen=True)
class Template:
    """Files of a refacing template."""

    name: str
    path: Path
    t1w: Path
    brain_mask: Path
    dseg: Path

    @property
    def sha256(self) -> str:
        return _sha256(self.t1w)


@lru_cache(maxsize=None)
def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def embedded_templates_dir() -> Path:
    """``refacebids/templates`` in an installed wheel, ``templates/`` in a source checkout."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "templates", package.parent / "templates"):
        if candidate.is_dir():
            return candidate
    raise TemplateError("the embedded template is missing from this installation")


def _from_folder(folder: Path) -> Template:
    def one(pattern: str) -> Path:
        found = sorted(folder.glob(pattern))
        if not found:
            raise TemplateError(f"template folder {folder} has no {pattern}")
        return found[0]

    name = folder.name[4:] if folder.name.startswith("tpl-") else folder.name
    return Template(
        name=name,
        path=folder,
        t1w=one("*_T1w.nii*"),
        brain_mask=one("*_desc-brain_mask.nii*"),
        dseg=one("*_desc-reface_dseg.nii*"),
    )


def load_template(name_or_path: str | None = None, work_dir=None) -> Template:
    """Find a template by name (embedded or TemplateFlow) or by folder path.

    A TemplateFlow template is taken from the user's TemplateFlow home only (nothing
    is downloaded); its refacing labels are carried over from the embedded template
    into ``work_dir`` once and reused by later runs.
    """
    name_or_path = name_or_path or DEFAULT_TEMPLATE
    template = local_template(name_or_path)
    if template is not None:
        return template
    head = _templateflow_head(name_or_path)
    if head is not None:
        if work_dir is None:
            raise TemplateError("a TemplateFlow template needs a work directory for its labels")
        return _adopt_labels(name_or_path, head, Path(work_dir) / "templates")
    raise TemplateError(
        f"unknown template {name_or_path!r}: give a template folder, a TemplateFlow template "
        f"whose T1w head is in your TemplateFlow home, or one of "
        f"{sorted(p.name[4:] for p in embedded_templates_dir().glob('tpl-*'))}"
    )


def local_template(name_or_path: str | None = None) -> Template | None:
    """The template of a folder path or an embedded name, read as it is (nothing is
    written); ``None`` for any other name."""
    path = Path(name_or_path or DEFAULT_TEMPLATE)
    if path.is_dir():
        return _from_folder(path.resolve())
    embedded = embedded_templates_dir() / f"tpl-{path}"
    return _from_folder(embedded) if embedded.is_dir() else None


def _templateflow_head(name: str) -> Path | None:
    """The local T1w head of a TemplateFlow template closest to 2 mm, or None."""
    os.environ.setdefault("TEMPLATEFLOW_AUTOUPDATE", "0")
    try:
        import templateflow.api as tflow

        if name not in tflow.templates():
            return None
        candidates = tflow.ls(name, suffix="T1w", desc=None, extension=".nii.gz")
    except Exception:  # TemplateFlow not set up here: treat as not available
        return None
    local = [Path(c) for c in candidates if Path(c).is_file() and Path(c).stat().st_size > 0]
    if not local:
        return None
    return min(local, key=lambda p: abs(_resolution(p) - 2))


def _resolution(path: Path) -> float:
    match = re.search(r"_res-(\d+)", path.name)
    return float(match.group(1)) if match else 1.0


def _adopt_labels(name: str, head: Path, root: Path) -> Template:
    """Template folder for ``head`` with the embedded template's labels registered onto it."""
    import shutil

    import nibabel as nib
    import numpy as np

    from .core.geometry import to_ants
    from .core.registration import register_template
    from .core.warp import warp_image

    folder = root / f"tpl-{name}"
    prefix = folder / f"tpl-{name}"
    done = folder / "labels-adopted"
    if done.exists():
        return _from_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    embedded = load_template(DEFAULT_TEMPLATE)
    target = nib.load(str(head))
    shutil.copyfile(head, f"{prefix}_T1w.nii.gz")
    result = register_template(
        np.asanyarray(target.dataobj, dtype=np.float32), target.affine, str(embedded.t1w),
        f"{folder}/from-{embedded.name}_",
    )
    brain = warp_image(embedded.brain_mask, to_ants(np.zeros(target.shape, np.float32), target.affine),
                       result.composite, "linear")
    _save_like(brain > 0.5, target.affine, f"{prefix}_desc-brain_mask.nii.gz")
    zooms = np.asarray(target.header.get_zooms()[:3])
    pad_vox = np.ceil(LABEL_PADDING_MM / zooms).astype(int)
    padded_affine = target.affine.copy()
    padded_affine[:3, 3] -= target.affine[:3, :3] @ pad_vox
    padded_shape = tuple(np.asarray(target.shape[:3]) + 2 * pad_vox)
    labels = warp_image(embedded.dseg, to_ants(np.zeros(padded_shape, np.float32), padded_affine),
                        result.composite, "nearestNeighbor")
    _save_like(labels.astype(np.uint8), padded_affine, f"{prefix}_desc-reface_dseg.nii.gz")
    done.write_text(f"labels of {embedded.name} (sha256 {embedded.sha256}) registered onto {head}\n")
    return _from_folder(folder)


def _save_like(data, affine, path: str) -> None:
    import nibabel as nib
    import numpy as np

    img = nib.Nifti1Image(np.asarray(data, dtype=np.uint8), affine)
    img.set_qform(affine, 2)
    img.set_sform(affine, 2)
    img.to_filename(path)
