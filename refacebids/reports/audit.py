"""The re-identification audit's results, as the group report shows them.

``refacebids BIDS_DIR OUTPUT_DIR group --audit`` writes ``OUTPUT_DIR/group_audit.tsv``
(columns ``subject, session, modality, file, own_rank, top1_is_own, face_detected``) and
``OUTPUT_DIR/group_audit.json`` (``n_images, chance, rank1_original_vs_original,
rank1_original_vs_refaced, detection_rate_refaced, recogniser``). This module only
reads them; an image whose refaced face a recogniser still matched first to its own
original is flagged in the group report.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

AUDIT_TSV = "group_audit.tsv"
AUDIT_JSON = "group_audit.json"
#: Summary numbers shown, with their labels, in the order shown.
SUMMARY_LABELS = {
    "n_images": "images audited",
    "recogniser": "face recogniser",
    "chance": "rank-1 rate expected by chance",
    "rank1_original_vs_original": "rank-1 rate, original vs original (the recogniser works)",
    "rank1_original_vs_refaced": "rank-1 rate, refaced vs originals (re-identification)",
    "detection_rate_refaced": "share of refaced images in which a face was detected",
}


class AuditError(ValueError):
    """The audit files exist but cannot be read."""


@dataclass
class Audit:
    """Summary numbers and per-image rows of a re-identification audit."""

    summary: dict
    rows: list[dict]

    def row_for(self, qc_row) -> dict | None:
        """The audit row of a QC row: same file (refaced or source), else same entities."""
        for row in self.rows:
            if row.get("file") in (qc_row.file, qc_row.source):
                return row
        same = [
            row for row in self.rows
            if (str(row.get("subject")).removeprefix("sub-"), _session(row.get("session")),
                row.get("modality"))
            == (qc_row.subject, qc_row.session, qc_row.modality)
        ]
        return same[0] if len(same) == 1 else None


def read_audit(output_dir) -> Audit | None:
    """Read the audit of ``output_dir``; ``None`` when there is none.

    Raises
    ------
    AuditError
        With the file name and the problem, when the files are there but unreadable.
    """
    tsv, summary = Path(output_dir) / AUDIT_TSV, Path(output_dir) / AUDIT_JSON
    if not (tsv.exists() or summary.exists()):
        return None
    try:
        numbers = json.loads(summary.read_text()) if summary.exists() else {}
        rows = list(csv.DictReader(tsv.open(newline=""), delimiter="\t")) if tsv.exists() else []
    except (OSError, ValueError, csv.Error) as exc:
        raise AuditError(f"{tsv.parent}: the audit files cannot be read: {exc}") from None
    for row in rows:
        row["top1_is_own"] = is_true(row.get("top1_is_own"))
        row["face_detected"] = is_true(row.get("face_detected"))
    return Audit(summary=numbers, rows=rows)


def is_true(value) -> bool:
    """A TSV truth value (``true``, ``True``, ``1``, ``yes``)."""
    return str(value).strip().lower() in ("true", "1", "yes")


def _session(value) -> str:
    return "" if value in (None, "", "n/a") else str(value).removeprefix("ses-")
