"""Per-subject HTML reports assembled from the written derivatives.

A report is made only from what the participant level wrote: the QC rows read from the
sidecars (:mod:`refacebids.reports.qc`) and the figures in ``sub-<L>/figures``. The
same outputs therefore give the same page, whenever it is (re)built.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from .html import write_subject_report
from .methods import image_methods
from .qc import METRICS


def write_subject_reports(report_dir, figures_root, rows, *, failures=None,
                          command_line=None) -> list[Path]:
    """Write ``report_dir/sub-<L>.html`` for every subject of ``rows``.

    Parameters
    ----------
    report_dir : path-like
        Where the reports go (beside ``sub-<L>/figures``).
    figures_root : path-like
        Folder holding ``sub-<L>/figures``.
    rows : list of refacebids.reports.qc.QCRow
        One per selected image, in the order the sections should appear.
    failures : dict, optional
        ``source relpath -> reason`` of images that failed in this run: the reason
        replaces the generic "no refaced image" one.
    command_line : str, optional
        Shown for images whose sidecar did not record the command that refaced them.
    """
    report_dir, figures_root = Path(report_dir), Path(figures_root)
    by_subject = defaultdict(list)
    for row in rows:
        by_subject[row.subject].append(row)
    written = []
    for subject, subject_rows in sorted(by_subject.items()):
        sections = [
            _section(row, report_dir, figures_root, failures or {}, command_line)
            for row in subject_rows
        ]
        # The outputs' own time, not the time of writing: a rebuilt report is the same.
        end_times = [row.provenance["EndTime"] for row in subject_rows
                     if row.provenance.get("EndTime")]
        written.append(write_subject_report(
            report_dir / f"sub-{subject}.html", subject, sections,
            created=f"from outputs written up to {max(end_times)}" if end_times else None,
        ))
    return written


def reportlet_paths(figures_root, row) -> list[Path]:
    """The figures of ``row`` in ``figures_root/sub-<L>/figures``, sorted by name."""
    figures = Path(figures_root) / f"sub-{row.subject}" / "figures"
    stem = Path(row.source).name.split(".")[0].rsplit("_", 1)[0]
    return sorted(figures.glob(f"{stem}_desc-*_{row.modality}.png"))


def section_anchor(row) -> str:
    """The id of ``row``'s section in its subject report: its input file name's stem."""
    return Path(row.source).name.split(".")[0]


def _section(row, report_dir, figures_root, failures, command_line) -> dict:
    section = {"title": row.source, "anchor": section_anchor(row), "status": row.status,
               "reasons": list(row.reasons)}
    if not row.provenance:
        if row.source in failures:
            section["reasons"] = [f"not refaced: {failures[row.source]}"]
        return section
    provenance = row.provenance
    section["reportlets"] = [
        path.relative_to(report_dir).as_posix() if path.is_relative_to(report_dir) else str(path)
        for path in reportlet_paths(figures_root, row)
    ]
    section["metrics"] = {
        "refaced image": row.file,
        **{metric.label: row.metrics.get(metric.column) for metric in METRICS},
    }
    registration = dict(provenance.get("Registration") or {})
    registration.pop("composite", None)  # a work-directory path, not a setting
    section["details"] = {
        "registration": registration,
        "template": provenance.get("Template"),
        "checksums (SHA-256)": {"input": provenance.get("InputSHA256"),
                                "output": provenance.get("OutputSHA256")},
        "started": provenance.get("StartTime"),
        "finished": provenance.get("EndTime"),
    }
    section["command_line"] = provenance.get("CommandLine") or command_line
    section["versions"] = provenance.get("Software")
    section["methods"] = image_methods(row.modality, provenance)
    return section
