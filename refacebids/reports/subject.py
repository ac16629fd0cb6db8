"""Per-subject HTML reports assembled from the written derivatives."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from ..utils.provenance import PROVENANCE_KEY
from .html import write_subject_report


def write_subject_reports(
    report_dir, figures_root, jobs, refaced_sidecars: dict, failures: dict, command_line: str,
    methods: dict,
) -> list[Path]:
    """Write ``report_dir/sub-<L>.html`` for every subject of ``jobs``.

    Parameters
    ----------
    report_dir : path-like
        Where the reports go (beside ``sub-<L>/figures``).
    figures_root : path-like
        Folder holding ``sub-<L>/figures``.
    jobs : list of refacebids.utils.bids.ImageJob
    refaced_sidecars : dict
        ``relpath -> sidecar path`` of each refaced image.
    failures : dict
        ``relpath -> reason`` of the images that were not refaced.
    command_line : str
    methods : dict
        ``relpath -> methods paragraph``.
    """
    report_dir, figures_root = Path(report_dir), Path(figures_root)
    by_subject = defaultdict(list)
    for job in jobs:
        by_subject[job.subject].append(job)
    written = []
    for subject, subject_jobs in sorted(by_subject.items()):
        sections = [
            _section(job, report_dir, figures_root, refaced_sidecars, failures, command_line, methods)
            for job in subject_jobs
        ]
        written.append(write_subject_report(report_dir / f"sub-{subject}.html", subject, sections))
    return written


def _section(job, report_dir, figures_root, refaced_sidecars, failures, command_line, methods):
    section = {"title": job.relpath, "command_line": command_line}
    if job.relpath in failures:
        section["metrics"] = {"warnings": [f"not refaced: {failures[job.relpath]}"]}
        return section
    sidecar = json.loads(Path(refaced_sidecars[job.relpath]).read_text())
    provenance = sidecar[PROVENANCE_KEY]
    figures = figures_root / f"sub-{job.subject}" / "figures"
    stem = Path(job.relpath).name.split(".")[0].rsplit("_", 1)[0]
    section["reportlets"] = [
        str(path.relative_to(report_dir)) if path.is_relative_to(report_dir) else str(path)
        for path in sorted(figures.glob(f"{stem}_desc-*_{job.suffix}.png"))
    ]
    section["metrics"] = {
        "protected voxels changed": provenance["ProtectedVoxelsChanged"],
        "replaced voxels": provenance["ReplacedVoxels"],
        **provenance.get("Quality", {}),
        "registration": provenance["Registration"],
        "warnings": provenance["Warnings"],
    }
    section["versions"] = provenance["Software"]
    section["methods"] = methods.get(job.relpath, "")
    return section
