"""Everything refacebids writes into an output dataset.

Two layouts (``--output-layout``):

``derivatives``
    A BIDS derivatives dataset::

        sub-<L>/[ses-<S>/]<datatype>/<entities>_desc-refaced_<suffix>.nii.gz (+ .json)
        sub-<L>/[ses-<S>/]<datatype>/<entities>_mod-<suffix>_defacemask.nii.gz (+ .json)
        sub-<L>/[ses-<S>/]<datatype>/<entities>_from-<tpl>_to-<suffix>_mode-image_xfm.h5
        sub-<L>/figures/<entities>_desc-<reportlet>_<suffix>.<ext>

    The mask uses the BIDS ``defacemask`` suffix with ``mod-<suffix>`` so that masks of
    a T1w and a T2w of the same session do not collide.

``release``
    A copy of the input dataset (hard links where possible) in which each refaced image
    takes the place and name of its original, and no original face image is left.
    Masks, transforms and figures (which show the original face) are kept out of the
    release: they go to a derivatives dataset in ``<work dir>/qc``.

Every file is written atomically (:mod:`refacebids.utils.atomic`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe
from niworkflows.engine.workflows import LiterateWorkflow as Workflow

from .. import __version__
from ..interfaces.bids import WriteFile, WriteRefaced, WriteReportlets
from ..utils.atomic import (
    atomic_copy,
    atomic_open,
    temporary_sibling,
    write_json,
    write_text,
)
from ..utils.bids import content_missing, is_head_image, sidecar_path
from ..utils.deidentify import (
    is_table,
    scrub_data_dictionary,
    scrub_sidecar,
    scrub_sidecar_file,
    scrub_table,
)

LOGGER = logging.getLogger("refacebids")

BIDS_VERSION = "1.10.0"
CODE_URL = "https://github.com/refacebids/refacebids"
#: Files that BIDS has no rule for yet, listed in the output's ``.bidsignore``:
#: CT is BEP024, transforms BEP014, and masks are only defined for anatomical MRI.
DERIVATIVES_BIDSIGNORE = ("sub-*.html", "**/figures", "logs", "*_xfm.h5", "**/pet/*_defacemask.*",
                          "**/ct")
RELEASE_BIDSIGNORE = ("**/ct",)
#: Dataset-level results of ``group --audit``, which BIDS has no rule for.
GROUP_AUDIT_BIDSIGNORE = ("group_audit.*",)
#: Top-level folders of the input never copied into a release: they may hold the
#: original faces (DICOMs in sourcedata, FreeSurfer T1.mgz in derivatives).
RELEASE_EXCLUDED_FOLDERS = ("sourcedata", "derivatives")


def init_outputs_wf(*, job, output_dir, derivatives_dir, output_layout, template_name,
                    command_line="", keep_sidecar_fields=(), name="outputs_wf"):
    """Write the results of one refaced image into the output dataset.

    Workflow Graph
        .. workflow::
            :graph2use: orig
            :simple_form: yes

            from pathlib import Path
            from refacebids.utils.bids import ImageJob
            from refacebids.workflows.outputs import init_outputs_wf
            job = ImageJob(Path('/data/sub-01/anat/sub-01_T1w.nii.gz'),
                           'sub-01/anat/sub-01_T1w.nii.gz', '01', None, 'anat', 'T1w',
                           {'sub': '01'}, 'T1w', {})
            wf = init_outputs_wf(job=job, output_dir='/out', derivatives_dir='/out',
                                 output_layout='derivatives', template_name='MNI152EXT')

    Parameters
    ----------
    job : refacebids.utils.bids.ImageJob
        The input image.
    output_dir : Path
        Root of the output dataset (where the refaced image goes).
    derivatives_dir : Path
        Root of the derivatives dataset for masks, transforms and figures: the output
        dataset itself in the derivatives layout, a folder outside the release otherwise.
    output_layout : {"derivatives", "release"}
    template_name : str
        Name of the template, used in the transform's ``from-`` entity.
    command_line : str
        The command being run, recorded in the sidecar's provenance.
    keep_sidecar_fields : tuple of str
        Identifying sidecar fields kept nonetheless (see
        :data:`refacebids.utils.deidentify.IDENTIFYING_SIDECAR_FIELDS`).
    name : str
        Workflow name.

    Inputs
    ------
    source_file
        The original image.
    out_file, mask_file, xfm_file, metrics_file, reportlets
        The outputs of ``init_reface_wf``.
    start_time
        ISO 8601 time the image was started.

    Outputs
    -------
    out_file
        The refaced image as written in the output dataset.
    out_json
        Its sidecar.
    """
    output_dir, derivatives_dir = Path(output_dir), Path(derivatives_dir)
    # One methods paragraph for the whole run is in init_refacebids_wf, not per image.
    workflow = Workflow(name=name)
    source_uri = f"bids:raw:{job.relpath}"
    image_path = refaced_path(job, output_dir, output_layout)
    if output_layout == "release":
        # Only the image's own sidecar is rewritten; inherited sidecars are copied as is.
        metadata = _own_sidecar(job.path)
        extra_metadata = {}
    else:
        metadata = job.metadata
        # SkullStripped is required for derivative images; the brain is untouched.
        extra_metadata = {"Sources": [source_uri], "SkullStripped": False}
    metadata, removed_fields = scrub_sidecar(metadata, keep_sidecar_fields)
    mask_path = derivatives_dir / job.folder / job.filename(
        mod=job.suffix, suffix="defacemask", extension=".nii.gz"
    )
    xfm_path = derivatives_dir / job.folder / job.filename(
        **{"from": _alnum(template_name), "to": job.suffix, "mode": "image"},
        suffix="xfm",
        extension=".h5",
    )
    figures_dir = derivatives_dir / f"sub-{job.subject}" / "figures"

    inputnode = pe.Node(
        niu.IdentityInterface(
            fields=["source_file", "out_file", "mask_file", "xfm_file", "metrics_file",
                    "reportlets", "start_time"]
        ),
        name="inputnode",
    )
    outputnode = pe.Node(niu.IdentityInterface(fields=["out_file", "out_json"]),
                         name="outputnode")

    ds_image = pe.Node(
        WriteRefaced(out_path=str(image_path), metadata=metadata,
                     extra_metadata=extra_metadata, command_line=command_line,
                     removed_fields=removed_fields),
        name="ds_image",
        run_without_submitting=True,
    )
    ds_mask = pe.Node(
        WriteFile(
            out_path=str(mask_path),
            sidecar={
                "Sources": [source_uri],
                "Description": "1 = voxel replaced by the template face, 0 = unchanged",
                "SkullStripped": False,
            },
        ),
        name="ds_mask",
        run_without_submitting=True,
    )
    ds_xfm = pe.Node(WriteFile(out_path=str(xfm_path)), name="ds_xfm",
                     run_without_submitting=True)
    # Hook for the HTML report: reportlets land in sub-<L>/figures/ (fMRIPrep layout)
    # and the report builder collects them from there.
    ds_reportlets = pe.Node(
        WriteReportlets(
            out_dir=str(figures_dir),
            name_template=job.filename(desc="{desc}", suffix=job.suffix, extension=""),
        ),
        name="ds_reportlets",
        run_without_submitting=True,
    )

    workflow.connect([
        (inputnode, ds_image, [("source_file", "in_file"),
                               ("out_file", "refaced_file"),
                               ("metrics_file", "metrics_file"),
                               ("start_time", "start_time")]),
        (inputnode, ds_mask, [("mask_file", "in_file")]),
        (inputnode, ds_xfm, [("xfm_file", "in_file")]),
        (inputnode, ds_reportlets, [("reportlets", "in_files")]),
        (ds_image, outputnode, [("out_file", "out_file"), ("out_json", "out_json")]),
    ])  # fmt:skip
    return workflow


def refaced_path(job, output_dir, output_layout) -> Path:
    """Where the refaced version of ``job`` is written."""
    if output_layout == "release":
        return Path(output_dir) / job.relpath
    name = job.filename(desc="refaced", suffix=job.suffix, extension=".nii.gz")
    return Path(output_dir) / job.folder / name


def generated_by() -> dict:
    """The ``GeneratedBy`` entry of refacebids.

    A container build sets ``REFACEBIDS_CONTAINER_TYPE`` (``docker``, ``apptainer``)
    and ``REFACEBIDS_CONTAINER_TAG`` so that the output names the exact image.
    """
    entry = {"Name": "refacebids", "Version": __version__, "CodeURL": CODE_URL}
    container_type = os.environ.get("REFACEBIDS_CONTAINER_TYPE")
    if container_type:
        entry["Container"] = {"Type": container_type}
        if os.environ.get("REFACEBIDS_CONTAINER_TAG"):
            entry["Container"]["Tag"] = os.environ["REFACEBIDS_CONTAINER_TAG"]
    return entry


def write_derivatives_description(derivatives_dir, bids_dir, *, with_ct=False) -> None:
    """Write ``dataset_description.json`` and ``.bidsignore`` of a derivatives dataset.

    ``DatasetLinks.raw`` is the input's path relative to the derivatives dataset, so
    that the ``bids:raw:`` URIs in ``Sources`` resolve when both are moved together.
    """
    derivatives_dir, bids_dir = Path(derivatives_dir), Path(bids_dir)
    source = _read_json(bids_dir / "dataset_description.json")
    source_dataset = {"URL": "bids:raw:"}
    if source.get("DatasetDOI"):
        source_dataset["DOI"] = source["DatasetDOI"]
    description = {
        "Name": f"refacebids: {source.get('Name', 'dataset')} with faces replaced",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated_by()],
        "SourceDatasets": [source_dataset],
        "DatasetLinks": {"raw": os.path.relpath(bids_dir, derivatives_dir)},
    }
    if source.get("License"):
        description["License"] = source["License"]
    write_json(derivatives_dir / "dataset_description.json", description)
    add_bidsignore(derivatives_dir, DERIVATIVES_BIDSIGNORE if with_ct
                    else DERIVATIVES_BIDSIGNORE[:-1])


def prepare_release(bids_dir, output_dir, jobs, *, keep_sidecar_fields=(),
                    scrub_columns=()) -> None:
    """Copy the input dataset into ``output_dir``, leaving out every original face.

    Files are hard-linked when the file system allows it (no space used; a later
    atomic write in the release replaces the link, never the input), else copied.
    Left out: the images of ``jobs`` and their own sidecars (the refacing writes
    them), every other image in ``anat/``, ``pet/`` and ``ct/`` with its sidecar (not
    refaced in this run, so it may show a face), ``sourcedata/``, ``derivatives/``
    and hidden folders. Images of other datatypes (func, dwi, fmap, ...) are copied
    as they are.

    Identifying metadata is left out too: every JSON sidecar copied loses the fields
    of :data:`refacebids.utils.deidentify.IDENTIFYING_SIDECAR_FIELDS` (but
    ``keep_sidecar_fields``), and ``participants.tsv``, ``*_sessions.tsv`` and
    ``*_scans.tsv`` lose the columns ``scrub_columns`` (and their data dictionaries
    the entries). A file whose content is not present (DataLad) or a sidecar that is
    not valid JSON is left out, with a warning.
    """
    bids_dir, output_dir = Path(bids_dir), Path(output_dir)
    selected = {job.relpath for job in jobs}
    copies, not_refaced = [], []
    for root, dirs, files in os.walk(bids_dir):
        rel_root = Path(root).relative_to(bids_dir)
        dirs[:] = sorted(
            d for d in dirs
            if not d.startswith(".")
            and not (rel_root == Path(".") and d in RELEASE_EXCLUDED_FOLDERS)
        )
        for name in sorted(files):
            rel = (rel_root / name).as_posix()
            if is_head_image(rel):
                if rel not in selected:
                    not_refaced.append(rel)
            elif rel != "dataset_description.json":
                copies.append(rel)
    # The own sidecar of a refaced image is rewritten with provenance; that of a face
    # image left out would describe a missing file.
    sidecars_of_faces = {str(sidecar_path(rel)) for rel in selected | set(not_refaced)}
    tables = {rel for rel in copies if is_table(rel)}
    for rel in copies:
        if rel in sidecars_of_faces:
            continue
        missing = content_missing(bids_dir / rel)
        if missing:
            LOGGER.warning("release: %s is left out: %s", rel, missing)
        elif rel in tables and scrub_columns:
            _copy_table(bids_dir / rel, output_dir / rel, scrub_columns)
        elif rel.endswith(".json") and _is_sidecar(rel):
            _copy_sidecar(bids_dir / rel, output_dir / rel, keep_sidecar_fields)
        elif rel.endswith(".json") and scrub_columns and rel[:-5] + ".tsv" in tables:
            text = scrub_data_dictionary((bids_dir / rel).read_text(), scrub_columns)
            if text is None:
                _link_or_copy(bids_dir / rel, output_dir / rel)
            else:
                write_text(output_dir / rel, text)
        else:
            _link_or_copy(bids_dir / rel, output_dir / rel)
    if not_refaced:
        LOGGER.info(
            "release: %d anat/pet/ct image(s) not refaced in this run are left out: %s",
            len(not_refaced), ", ".join(not_refaced[:5]) + (" ..." if len(not_refaced) > 5 else ""),
        )
    for folder in RELEASE_EXCLUDED_FOLDERS:
        if (bids_dir / folder).is_dir():
            LOGGER.info("release: %s/ of the input is left out (it may hold faces)", folder)

    description = _read_json(bids_dir / "dataset_description.json")
    # BIDS defaults DatasetType to raw, but the validator takes a description with
    # GeneratedBy and no DatasetType for a derivative (and asks for SkullStripped).
    description.setdefault("DatasetType", "raw")
    description["GeneratedBy"] = [
        entry for entry in description.get("GeneratedBy", []) if entry.get("Name") != "refacebids"
    ] + [generated_by()]
    write_json(output_dir / "dataset_description.json", description)
    if any(job.datatype == "ct" for job in jobs):
        add_bidsignore(output_dir, RELEASE_BIDSIGNORE)


def finalize_release(output_dir, failed_relpaths) -> None:
    """Drop the rows of images that are not in the release from its ``scans.tsv`` files."""
    output_dir = Path(output_dir)
    for failed in failed_relpaths:
        LOGGER.warning("release: %s failed and is left out of the release", failed)
    for scans in sorted(output_dir.glob("sub-*/**/*_scans.tsv")):
        text = scans.read_text()
        rows = list(csv.reader(io.StringIO(text), delimiter="\t"))
        if not rows or "filename" not in rows[0]:
            continue
        column = rows[0].index("filename")
        kept = [rows[0]] + [
            row for row in rows[1:] if row and (scans.parent / row[column]).exists()
        ]
        if len(kept) != len(rows):
            buffer = io.StringIO()
            csv.writer(buffer, delimiter="\t", lineterminator="\n").writerows(kept)
            write_text(scans, buffer.getvalue())


def write_group_audit(output_dir, table: str, summary: dict) -> tuple[Path, Path]:
    """Write ``group_audit.tsv`` and ``group_audit.json`` at the root of the output dataset.

    Both are listed in its ``.bidsignore``, so the output stays a valid BIDS dataset.
    """
    output_dir = Path(output_dir)
    add_bidsignore(output_dir, GROUP_AUDIT_BIDSIGNORE)
    return (write_text(output_dir / "group_audit.tsv", table),
            write_json(output_dir / "group_audit.json", summary))


def _is_sidecar(rel: str) -> bool:
    """A JSON file describing data files (not a dataset or table description)."""
    name = Path(rel).name
    descriptions = ("dataset_description.json", "participants.json", "genetic_info.json")
    return name not in descriptions and not name.endswith(("_sessions.json", "_scans.json"))


def _copy_sidecar(src: Path, dst: Path, keep) -> None:
    try:
        scrubbed = scrub_sidecar_file(src, keep)
    except ValueError as exc:
        LOGGER.warning("release: %s is left out: it may hold identifiers and is %s", src, exc)
        return
    if scrubbed is None:
        _link_or_copy(src, dst)
    else:
        text, removed = scrubbed
        write_text(dst, text)
        LOGGER.info("release: %s without %s", dst.name, ", ".join(removed))


def _copy_table(src: Path, dst: Path, columns) -> None:
    text, removed = scrub_table(src.read_text(encoding="utf-8"), columns)
    if removed:
        write_text(dst, text)
        LOGGER.info("release: %s without column(s) %s", dst.name, ", ".join(removed))
    else:
        _link_or_copy(src, dst)


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists() and os.path.samefile(src, dst):
        return
    tmp = temporary_sibling(dst)
    try:
        tmp.unlink()
        os.link(src, tmp)
        os.replace(tmp, dst)
    except OSError:
        tmp.unlink(missing_ok=True)
        atomic_copy(src, dst)


def add_bidsignore(dataset_dir, patterns) -> None:
    """Add the ``patterns`` missing from ``dataset_dir/.bidsignore``, keeping its lines."""
    dataset_dir = Path(dataset_dir)
    path = dataset_dir / ".bidsignore"
    lines = path.read_text().splitlines() if path.exists() else []
    missing = [p for p in patterns if p not in lines]
    if missing:
        with atomic_open(path, "w") as fobj:
            fobj.write("\n".join(lines + missing) + "\n")


def _own_sidecar(image: Path) -> dict:
    sidecar = sidecar_path(image)
    return _read_json(sidecar) if sidecar.exists() else {}


def _read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text()) if Path(path).exists() else {}


def _alnum(text: str) -> str:
    return "".join(ch for ch in text if ch.isalnum())
