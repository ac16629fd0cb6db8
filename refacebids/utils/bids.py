"""Find the images to reface in a BIDS dataset, and name what is written for them.

Anatomical MRI (T1w, T2w, FLAIR, PDw, T2starw, PD) and PET images are queried with
pybids. CT (BEP024, ``sub-<L>/[ses-<S>/]ct/*_ct.nii[.gz]``) is not part of the BIDS
specification yet, so pybids does not index it and the official validator reports it
as not included: CT files are found by globbing and parsed here, and validator issues
about them are not held against the dataset.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

LOGGER = logging.getLogger("refacebids")

#: Image suffix -> modality handed to the engine.
MODALITIES = {
    "T1w": "T1w",
    "T2w": "T2w",
    "FLAIR": "FLAIR",
    "PDw": "PDw",
    "T2starw": "T2starw",
    "PD": "PD",
    "pet": "pet",
    "ct": "ct",
}
#: Datatype folder of each suffix.
DATATYPES = {suffix: "anat" for suffix in ("T1w", "T2w", "FLAIR", "PDw", "T2starw", "PD")}
DATATYPES.update(pet="pet", ct="ct")

LABEL_RE = re.compile(r"^[a-zA-Z0-9]+$")
NIFTI_EXTENSIONS = (".nii.gz", ".nii")


class BIDSError(ValueError):
    """A BIDS dataset or selection that cannot be processed; the message is for the user."""


@dataclass(frozen=True)
class ImageJob:
    """One input image to reface.

    Attributes
    ----------
    path : Path
        Absolute path of the input NIfTI.
    relpath : str
        POSIX path relative to the BIDS root (used in logs, ``Sources`` and the release).
    subject, session : str, str or None
        Labels without their ``sub-``/``ses-`` prefixes.
    datatype : str
        ``anat``, ``pet`` or ``ct``.
    suffix : str
        BIDS suffix, e.g. ``T1w``.
    entities : dict
        Short entity name -> label, in the order of the file name (``sub`` first).
    modality : str
        What the engine is told the image is (see :data:`MODALITIES`).
    metadata : dict
        Sidecar metadata with inheritance applied.
    problem : str or None
        Why the image cannot be processed, found before reading it (content not
        fetched, sidecar not valid JSON); one line for the user.
    """

    path: Path
    relpath: str
    subject: str
    session: str | None
    datatype: str
    suffix: str
    entities: dict = field(hash=False)
    modality: str
    metadata: dict = field(hash=False, repr=False)
    problem: str | None = None

    @property
    def extension(self) -> str:
        return ".nii.gz" if self.path.name.endswith(".nii.gz") else ".nii"

    @property
    def folder(self) -> Path:
        """``sub-<L>[/ses-<S>]/<datatype>``, relative to a dataset root."""
        return Path(self.relpath).parent

    def filename(self, *, suffix: str, extension: str, **extra: str) -> str:
        """A file name with this image's entities, then ``extra`` entities and ``suffix``.

        >>> job = ImageJob(Path('/d/sub-1/anat/sub-1_run-2_T1w.nii.gz'),
        ...     'sub-1/anat/sub-1_run-2_T1w.nii.gz', '1', None, 'anat', 'T1w',
        ...     {'sub': '1', 'run': '2'}, 'T1w', {})
        >>> job.filename(desc='refaced', suffix='T1w', extension='.nii.gz')
        'sub-1_run-2_desc-refaced_T1w.nii.gz'
        """
        entities = {**self.entities, **extra}
        return "_".join([f"{k}-{v}" for k, v in entities.items()] + [suffix]) + extension

    @property
    def node_name(self) -> str:
        """A Nipype-safe name that is stable across runs (so the cache is reused)."""
        return "_".join(
            [f"{k}_{v}" for k, v in self.entities.items()] + [self.suffix, self.datatype]
        )


def strip_label(label: str, prefix: str) -> str:
    """Drop an optional ``sub-``/``ses-`` prefix and check the label is alphanumeric.

    >>> strip_label('sub-01', 'sub')
    '01'
    >>> strip_label('../x', 'sub')
    Traceback (most recent call last):
    ...
    ValueError: invalid sub label '../x': a label is letters and digits only
    """
    bare = label[len(prefix) + 1 :] if label.startswith(f"{prefix}-") else label
    if not LABEL_RE.match(bare):
        raise ValueError(f"invalid {prefix} label {label!r}: a label is letters and digits only")
    return bare


def parse_name(name: str) -> tuple[dict, str, str]:
    """Split a BIDS file name into (entities in order, suffix, extension).

    >>> parse_name('sub-01_ses-a_trc-FDG_pet.nii.gz')
    ({'sub': '01', 'ses': 'a', 'trc': 'FDG'}, 'pet', '.nii.gz')
    """
    extension = next((e for e in NIFTI_EXTENSIONS if name.endswith(e)), "")
    if not extension:
        stem, dot, ext = name.partition(".")
        extension = dot + ext
    else:
        stem = name[: -len(extension)]
    *pairs, suffix = stem.split("_")
    entities = {}
    for pair in pairs:
        key, sep, value = pair.partition("-")
        if not sep or not LABEL_RE.match(key) or not LABEL_RE.match(value):
            raise BIDSError(f"{name}: not a BIDS file name ({pair!r} is not key-label)")
        entities[key] = value
    return entities, suffix, extension


def is_face_image(relpath: str) -> bool:
    """Whether a file (path relative to the BIDS root) is an image refacebids refaces."""
    parts = Path(relpath).parts
    if len(parts) < 3 or not parts[0].startswith("sub-"):
        return False
    name = parts[-1]
    if not name.endswith(NIFTI_EXTENSIONS):
        return False
    try:
        _, suffix, _ = parse_name(name)
    except BIDSError:
        return False
    return DATATYPES.get(suffix) == parts[-2]


def is_head_image(relpath: str) -> bool:
    """Whether a file is an image in ``anat/``, ``pet/`` or ``ct/``, refaced or not.

    Such images may show a face even when refacebids does not reface their suffix
    (e.g. ``_MP2RAGE``, ``_angio``), so a release leaves out those not refaced.
    """
    parts = Path(relpath).parts
    return (
        len(parts) >= 3
        and parts[0].startswith("sub-")
        and parts[-2] in ("anat", "pet", "ct")
        and parts[-1].endswith(NIFTI_EXTENSIONS)
    )


def validate_dataset(bids_dir: Path) -> None:
    """Run the official BIDS validator and refuse a dataset with errors.

    Errors about CT (BEP024, not in the released schema) are not counted. When the
    validator is not installed, pybids' filename validation is used instead (see
    :func:`collect_images`).

    Raises
    ------
    BIDSError
        With the number of errors and the first few of them.
    """
    exe = _validator()
    result = subprocess.run(
        [exe, "--format", "json", "--ignoreWarnings", str(bids_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        issues = json.loads(result.stdout)["issues"]["issues"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise BIDSError(
            f"the BIDS validator did not run on {bids_dir}: {result.stderr.strip()[:300]}"
        ) from exc
    errors = [
        issue
        for issue in issues
        if issue.get("severity") == "error"
        and not _is_ct_issue(issue)
        # Reported per image, with what to do (see content_missing).
        and not content_missing(bids_dir / issue.get("location", "").lstrip("/"))
    ]
    if errors:
        shown = "; ".join(
            f"{e.get('code')} {e.get('location', '')}".strip() for e in errors[:5]
        )
        raise BIDSError(
            f"{bids_dir} is not a valid BIDS dataset ({len(errors)} validator errors: "
            f"{shown}{' ...' if len(errors) > 5 else ''}); fix it or use --skip-bids-validation"
        )


def validator_available() -> bool:
    return _validator() is not None


def _validator() -> str | None:
    # The validator is installed as a console script next to the interpreter (the test
    # extra), which PATH may not include when the venv is not activated.
    beside = Path(sys.executable).parent / "bids-validator-deno"
    return str(beside) if beside.exists() else shutil.which("bids-validator-deno")


def _is_ct_issue(issue: dict) -> bool:
    """An issue only because the schema has no CT: a file in ``ct/`` or a CT sidecar."""
    location = issue.get("location", "")
    name = location.rsplit("/", 1)[-1]
    about_ct = "/ct/" in location + "/" or name == "ct.json" or name.endswith("_ct.json")
    return about_ct and issue.get("code") in ("NOT_INCLUDED", "SIDECAR_WITHOUT_DATAFILE")


def collect_images(
    bids_dir,
    participant_labels=None,
    session_labels=None,
    *,
    validate: bool = True,
) -> list[ImageJob]:
    """List the images to reface, with their metadata.

    Parameters
    ----------
    bids_dir : path-like
        Root of a BIDS dataset.
    participant_labels, session_labels : list of str, optional
        Keep only these subjects / sessions (labels with or without prefix).
        Images without a session are dropped when sessions are selected.
    validate : bool
        Check the dataset with the BIDS validator first (see :func:`validate_dataset`).

    Returns
    -------
    list of ImageJob
        Sorted by relative path.
    """
    from bids import BIDSLayout, BIDSLayoutIndexer

    bids_dir = Path(bids_dir).resolve()
    if not (bids_dir / "dataset_description.json").is_file():
        raise BIDSError(f"{bids_dir} is not a BIDS dataset (no dataset_description.json)")
    subjects = [strip_label(s, "sub") for s in participant_labels or []]
    sessions = [strip_label(s, "ses") for s in session_labels or []]

    use_pybids_validation = False
    if validate:
        if validator_available():
            validate_dataset(bids_dir)
        else:
            LOGGER.warning(
                "bids-validator-deno is not installed: only file names are checked (pybids)"
            )
            use_pybids_validation = True
    # Metadata is read per image (_inherited_metadata), so that one unreadable sidecar
    # fails its image, not the indexing of the whole dataset.
    layout = BIDSLayout(
        bids_dir,
        validate=use_pybids_validation,
        indexer=BIDSLayoutIndexer(validate=use_pybids_validation, index_metadata=False),
    )

    known_subjects = set(layout.get_subjects()) | {
        p.name[4:] for p in bids_dir.glob("sub-*") if p.is_dir()
    }
    missing = sorted(set(subjects) - known_subjects)
    if missing:
        raise BIDSError(f"participant(s) not found in {bids_dir}: {', '.join(missing)}")

    jobs, skipped = [], {}
    for bids_file in layout.get(extension=[".nii", ".nii.gz"]):
        path = Path(bids_file.path)
        relpath = path.relative_to(bids_dir).as_posix()
        if not relpath.startswith("sub-"):
            continue
        reason = _skip_reason(relpath)
        if reason:
            skipped.setdefault(reason, []).append(relpath)
            continue
        jobs.append(_make_job(bids_dir, path, relpath))
    # pybids does not know CT: it may leave the files out (validate=True); they are
    # found here.
    jobs = [job for job in jobs if job.datatype != "ct"]
    for path in sorted(bids_dir.glob("sub-*/ct/*_ct.nii*")) + sorted(
        bids_dir.glob("sub-*/ses-*/ct/*_ct.nii*")
    ):
        relpath = path.relative_to(bids_dir).as_posix()
        if is_face_image(relpath):
            jobs.append(_make_job(bids_dir, path, relpath))

    selected = []
    for job in sorted(jobs, key=lambda j: j.relpath):
        if subjects and job.subject not in subjects:
            continue
        if sessions and job.session not in sessions:
            skipped.setdefault("not in the selected sessions", []).append(job.relpath)
            continue
        selected.append(job)
    for reason, files in sorted(skipped.items()):
        LOGGER.info("skipped %d file(s) %s: %s", len(files), reason, ", ".join(files[:5])
                    + (" ..." if len(files) > 5 else ""))
    return selected


def _skip_reason(relpath: str) -> str | None:
    parts = Path(relpath).parts
    datatype = parts[-2]
    try:
        _, suffix, _ = parse_name(parts[-1])
    except BIDSError:
        return "(not a BIDS file name)"
    if datatype not in ("anat", "pet", "ct"):
        return f"(datatype {datatype} is not refaced)"
    if DATATYPES.get(suffix) != datatype:
        return f"(suffix {suffix} in {datatype}/ is not refaced)"
    return None


def _make_job(bids_dir: Path, path: Path, relpath: str) -> ImageJob:
    entities, suffix, _ = parse_name(path.name)
    problem = content_missing(path)
    metadata = {}
    if not problem:
        try:
            metadata = _inherited_metadata(bids_dir, relpath)
        except SidecarError as exc:
            problem = str(exc)
    return ImageJob(
        path=path,
        relpath=relpath,
        subject=entities["sub"],
        session=entities.get("ses"),
        datatype=DATATYPES[suffix],
        suffix=suffix,
        entities=entities,
        modality=MODALITIES[suffix],
        metadata=dict(metadata),
        problem=problem,
    )


def content_missing(path: Path) -> str | None:
    """Why a file's content is not there, or None when it is.

    A DataLad/git-annex dataset holds every file as a symbolic link into
    ``.git/annex/objects``; until ``datalad get`` fetches it, the link is broken.
    """
    path = Path(path)
    if not path.is_symlink() or path.exists():
        return None
    target = os.readlink(path)
    if "annex/objects" in target:
        return (f"content not present (a DataLad/git-annex file that was not fetched); "
                f"run `datalad get {path}` first")
    return f"broken symbolic link to {target}"


class SidecarError(BIDSError):
    """A JSON sidecar that cannot be read; the message names it."""


def _inherited_metadata(bids_dir: Path, relpath: str) -> dict:
    """Merge the JSON sidecars that apply to ``relpath`` (BIDS inheritance principle).

    A sidecar applies when it sits in the image's folder or above it and its entities
    are a subset of the image's with the same suffix; the closer one wins.

    Raises
    ------
    SidecarError
        When one of them is not fetched, not readable or not a JSON object.
    """
    entities, suffix, _ = parse_name(Path(relpath).name)
    folders = [bids_dir]
    for part in Path(relpath).parent.parts:
        folders.append(folders[-1] / part)
    metadata: dict = {}
    for folder in folders:
        applicable = []
        for sidecar in folder.glob(f"*{suffix}.json"):
            try:
                side_entities, side_suffix, _ = parse_name(sidecar.name)
            except BIDSError:
                continue
            if side_suffix == suffix and all(
                entities.get(k) == v for k, v in side_entities.items()
            ):
                applicable.append((len(side_entities), sidecar.name, sidecar))
        # Within a folder the sidecar with fewer entities is the more general one:
        # apply it first so that more specific values override it.
        for _, _, sidecar in sorted(applicable):
            metadata.update(_read_sidecar(sidecar, bids_dir))
    return metadata


def _read_sidecar(sidecar: Path, bids_dir: Path) -> dict:
    relpath = sidecar.relative_to(bids_dir).as_posix()
    missing = content_missing(sidecar)
    if missing:
        raise SidecarError(f"sidecar {relpath}: {missing}")
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise SidecarError(f"sidecar {relpath} is not readable ({exc})") from None
    except json.JSONDecodeError as exc:
        raise SidecarError(f"sidecar {relpath} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise SidecarError(f"sidecar {relpath} is not a JSON object")
    return data


def sidecar_path(image) -> Path:
    """The JSON sidecar beside a NIfTI image."""
    image = str(image)
    for ext in (".nii.gz", ".nii"):
        if image.endswith(ext):
            return Path(image[: -len(ext)] + ".json")
    return Path(image + ".json")
