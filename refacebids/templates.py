"""The replacement-face template: the embedded one, a folder, or a TemplateFlow name.

A template folder holds, in TemplateFlow naming, a head ``*_T1w.nii.gz``, an
intracranial ``*_desc-brain_mask.nii.gz`` and the refacing labels
``*_desc-reface_dseg.nii.gz`` (see ``templates/build_template.py``). A TemplateFlow
template has no refacing labels; they are carried over from the embedded template by
registering it to the TemplateFlow head once per run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

DEFAULT_TEMPLATE = "MNI152EXT"


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


def load_template(name_or_path: str | None = None) -> Template:
    """Find a template by name (embedded or TemplateFlow) or by folder path."""
    name_or_path = name_or_path or DEFAULT_TEMPLATE
    path = Path(name_or_path)
    if path.is_dir():
        return _from_folder(path.resolve())
    embedded = embedded_templates_dir() / f"tpl-{name_or_path}"
    if embedded.is_dir():
        return _from_folder(embedded)
    raise TemplateError(
        f"unknown template {name_or_path!r}: give a template folder or one of "
        f"{sorted(p.name[4:] for p in embedded_templates_dir().glob('tpl-*'))}"
    )
