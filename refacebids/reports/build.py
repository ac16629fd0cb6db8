"""Build every report of an output from what is on disk, never from the engine.

The participant level calls :func:`build_subject_reports` after its graph ran;
``--reports-only`` calls it without running the graph; the group level calls
:func:`build_group_report`. All read the sidecars (:mod:`refacebids.reports.qc`) and
figures that the participant level wrote, so reports can be rebuilt at any time.

Where things go: the subject reports beside the figures (the output in the derivatives
layout, ``WORK_DIR/qc`` for a release, since they show the original face); the
README-ready methods text in ``logs/CITATION.md`` of the same dataset; the group table
and page in ``OUTPUT_DIR``.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..utils.atomic import write_text
from ..workflows.outputs import add_bidsignore, refaced_path
from .audit import read_audit
from .group import write_group_report
from .methods import REFERENCES, citation_markdown, dataset_methods
from .qc import qc_row, sort_rows, write_qc_tsv
from .subject import reportlet_paths, section_anchor, write_subject_reports

GROUP_REPORT = "group_report.html"
GROUP_QC = "group_qc.tsv"
CITATION = Path("logs") / "CITATION.md"
#: Group files are not BIDS files: listed in the output's ``.bidsignore`` (both layouts).
GROUP_BIDSIGNORE = (GROUP_REPORT, GROUP_QC, "group_audit.*")


def output_layout(output_dir) -> str:
    """The layout a participant run gave ``output_dir``: ``derivatives`` or ``release``.

    Raises
    ------
    ValueError
        When ``output_dir`` was not written by refacebids.
    """
    description_file = Path(output_dir) / "dataset_description.json"
    if not description_file.is_file():
        raise ValueError(f"{output_dir} holds no refacebids output (no dataset_description.json);"
                         " run the participant level first")
    description = json.loads(description_file.read_text())
    if not any(entry.get("Name") == "refacebids" for entry in description.get("GeneratedBy", [])):
        raise ValueError(f"{description_file} does not name refacebids in GeneratedBy: "
                         "not a refacebids output")
    return "derivatives" if description.get("DatasetType") == "derivative" else "release"


def qc_rows(jobs, output_dir, layout) -> list:
    """The QC row of every job, read from its refaced image's sidecar."""
    return [qc_row(job, refaced_path(job, output_dir, layout), output_dir) for job in jobs]


def build_subject_reports(jobs, output_dir, derivatives_dir, layout, *, failures=None,
                          command_line=None) -> list[Path]:
    """Write ``sub-<L>.html`` of every subject of ``jobs`` and ``logs/CITATION.md``.

    Parameters
    ----------
    jobs : list of refacebids.utils.bids.ImageJob
        Selected images, failed ones included.
    output_dir, derivatives_dir : Path
        The output dataset and the dataset of figures and reports
        (:func:`refacebids.workflows.base.qc_dir`).
    layout : {"derivatives", "release"}
    failures, command_line
        See :func:`refacebids.reports.subject.write_subject_reports`.

    Returns
    -------
    list of Path
        The subject reports.
    """
    rows = qc_rows(jobs, output_dir, layout)
    reports = write_subject_reports(derivatives_dir, derivatives_dir, rows, failures=failures,
                                    command_line=command_line)
    write_citation(Path(derivatives_dir) / CITATION, rows)
    return reports


def build_group_report(jobs, output_dir, derivatives_dir, layout) -> tuple[Path, Path, list]:
    """Write ``group_qc.tsv`` and ``group_report.html`` in ``output_dir``.

    The subject reports of ``derivatives_dir`` are linked, and their render figures
    shown small, when they exist. When ``output_dir`` holds a re-identification audit
    (:mod:`refacebids.reports.audit`), images it matched to their own original are
    flagged.

    Returns
    -------
    (Path, Path, list of refacebids.reports.qc.QCRow)
        The table, the page and the rows as shown (flagged first).
    """
    output_dir, derivatives_dir = Path(output_dir), Path(derivatives_dir)
    rows = qc_rows(jobs, output_dir, layout)
    audit = read_audit(output_dir)
    if audit is not None:
        for row in rows:
            match = audit.row_for(row)
            if match is not None and match["top1_is_own"]:
                row.reasons.append(
                    "re-identification audit: the recogniser matched the refaced face to its "
                    f"own original first (rank {match.get('own_rank', 1)})"
                )
    rows = sort_rows(rows)
    add_bidsignore(output_dir, GROUP_BIDSIGNORE)
    table = write_qc_tsv(output_dir / GROUP_QC, rows)
    report_links, thumbnails = {}, {}
    for row in rows:
        report = derivatives_dir / f"sub-{row.subject}.html"
        if report.exists():
            report_links[row.source] = report.with_name(f"{report.name}#{section_anchor(row)}")
        renders = [p for p in reportlet_paths(derivatives_dir, row) if "desc-renders" in p.name]
        if renders:
            thumbnails[row.source] = renders[0]
    refaced = [(row.modality, row.provenance) for row in rows if row.provenance]
    page = write_group_report(
        output_dir / GROUP_REPORT,
        rows,
        title=_dataset_name(output_dir),
        report_links=report_links,
        thumbnails=thumbnails,
        methods=dataset_methods(refaced),
        references=list(REFERENCES.values()),
        audit=audit,
        created=content_time(rows),
    )
    write_citation(derivatives_dir / CITATION, rows)
    return table, page, rows


def write_citation(path, rows) -> Path:
    """``logs/CITATION.md``: the methods text of the refaced images among ``rows``."""
    refaced = [row for row in rows if row.provenance]
    return write_text(path, citation_markdown(
        [(row.modality, row.provenance) for row in refaced],
        len({row.subject for row in refaced}),
    ))


def _dataset_name(output_dir: Path) -> str:
    description = json.loads((output_dir / "dataset_description.json").read_text())
    return description.get("Name") or output_dir.name


def content_time(rows) -> str | None:
    """When the outputs behind ``rows`` were written, so that a rebuilt report is the same."""
    end_times = [row.provenance["EndTime"] for row in rows if row.provenance.get("EndTime")]
    return f"from outputs written up to {max(end_times)}" if end_times else None
