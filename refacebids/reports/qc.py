"""Quality-control rows of refaced images, read back from the sidecars of an output.

Everything here reads what a participant run wrote (``RefacebidsProvenance`` in each
refaced image's sidecar, :mod:`refacebids.utils.provenance`); nothing is recomputed from
the images. The per-subject and the group reports show the same rows, and the group
level writes them as ``group_qc.tsv``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..core.registration import EDGES, SCALP, TURN_DEGREES
from ..core.surface import MOVED_MM
from ..engine import MIN_FACE_IN_FOV, MIN_MOVED_FRACTION, quality_warnings
from ..utils.atomic import write_text
from ..utils.bids import sidecar_path
from ..utils.provenance import PROVENANCE_KEY

# The registration check refuses a fit whose overlap with the image (its scalp; a CT's
# strongest edges) beats that of the template moved 8 mm by less than 1.15
# (core.registration.MIN_PEAK_RATIO); correct fits reached 1.36-1.95 on real and
# simulated heads. A fit that passed by a small margin, or whose scalp overlap is low,
# deserves a look. So does one that beat the template turned (15 degrees; a CT's edges
# 7.5) by little, where it refuses below 1.15 and correct fits reached 1.24-1.35 (MRI,
# PET) and 1.37-1.52 (CT); and a CT whose deep template brain holds brain values on
# less than 95 % of its voxels, where it refuses below 90 % and correct fits reached
# 98-100 %.
SUSPECT_PEAK_RATIO = 1.5
SUSPECT_HEAD_DICE = 0.8
SUSPECT_TURN_RATIO = 1.2
SUSPECT_BRAIN_LIKE = 0.95
# Targets of the replacement's look (issue 1 and the README's table).
NOISE_SD_RATIO_RANGE = (0.8, 1.2)
MAX_INTENSITY_DISTANCE = 0.5

@dataclass(frozen=True)
class Metric:
    """One number of the QC table.

    Attributes
    ----------
    column : str
        Column of ``group_qc.tsv``.
    keys : tuple of str
        Where the number is in ``RefacebidsProvenance``.
    label, short : str
        Its name in the subject reports, and as a column title of the group report.
    low, high : float
        The range it must lie in; outside it (or NaN), the image is flagged.
    """

    column: str
    keys: tuple
    label: str
    short: str
    low: float = -math.inf
    high: float = math.inf

    def out_of_range(self, value) -> bool:
        # A number not recorded is not a flag by itself; NaN (it could not be measured) is.
        return value is not None and not (self.low <= value <= self.high)


METRICS = (
    Metric("registration_similarity", ("Registration", "similarity"),
           "registration similarity (mutual information)", "MI"),
    Metric("registration_head_dice", ("Registration", "head_dice"),
           f"registration: scalp overlap, Dice (look below {SUSPECT_HEAD_DICE:g})", "scalp Dice",
           low=SUSPECT_HEAD_DICE),
    Metric("registration_peak_ratio", ("Registration", "peak_ratio"),
           f"registration: overlap (scalp; edges for CT) / overlap 8 mm off (look below "
           f"{SUSPECT_PEAK_RATIO:g})",
           "peak ratio", low=SUSPECT_PEAK_RATIO),
    Metric("registration_turn_ratio", ("Registration", "turn_ratio"),
           f"registration: overlap / overlap turned {TURN_DEGREES[SCALP]:g}° (CT: "
           f"{TURN_DEGREES[EDGES]:g}°) (look below {SUSPECT_TURN_RATIO:g})",
           "turn ratio", low=SUSPECT_TURN_RATIO),
    Metric("registration_brain_like", ("Registration", "brain_like"),
           f"registration, CT: share of the template's deep brain holding brain values (look "
           f"below {SUSPECT_BRAIN_LIKE:.0%})", "brain-like", low=SUSPECT_BRAIN_LIKE),
    Metric("protected_voxels_changed", ("ProtectedVoxelsChanged",),
           "protected voxels changed (must be 0)", "protected changed", high=0),
    Metric("changed_voxels_outside_replaced", ("Quality", "changed_voxels_outside_replaced"),
           "voxels changed outside the replaced region (must be 0)", "outside changed", high=0),
    Metric("replaced_voxels", ("ReplacedVoxels",), "replaced voxels", "replaced voxels"),
    Metric("face_surface_moved_fraction", ("Quality", "face_surface_moved_fraction"),
           f"share of the face surface moved ≥ {MOVED_MM:g} mm "
           f"(target ≥ {MIN_MOVED_FRACTION:.0%})", "face moved", low=MIN_MOVED_FRACTION),
    Metric("face_in_fov_fraction", ("Quality", "face_in_fov_fraction"),
           f"share of the face in the field of view (target ≥ {MIN_FACE_IN_FOV:.0%})",
           "face in view", low=MIN_FACE_IN_FOV),
    Metric("noise_sd_ratio", ("Quality", "noise_sd_ratio"),
           f"noise match: SD after / before (target {NOISE_SD_RATIO_RANGE[0]:g}–"
           f"{NOISE_SD_RATIO_RANGE[1]:g})", "noise ratio",
           low=NOISE_SD_RATIO_RANGE[0], high=NOISE_SD_RATIO_RANGE[1]),
    Metric("intensity_distance", ("Quality", "intensity_distance"),
           f"intensity match: distance in IQR units (target ≤ {MAX_INTENSITY_DISTANCE:g})",
           "intensity dist.", high=MAX_INTENSITY_DISTANCE),
)
BY_COLUMN = {metric.column: metric for metric in METRICS}
IDENTITY_COLUMNS = ("subject", "session", "modality", "file")
TSV_COLUMNS = (*IDENTITY_COLUMNS, "status", "reasons",
               *(metric.column for metric in METRICS), "refacebids_version")


@dataclass
class QCRow:
    """The QC record of one selected image.

    Attributes
    ----------
    subject, session, modality : str
        Labels (session ``""`` when there is none) and BIDS suffix.
    file : str
        The refaced image, relative to the output dataset (or the input image, relative
        to the input dataset, when there is no output).
    source : str
        The input image, relative to the input dataset.
    metrics : dict
        Column of :data:`METRICS` -> number (``None`` when not recorded).
    reasons : list of str
        Why the image needs a human look; empty when it passes.
    provenance : dict
        The whole provenance record (empty when there is no output).
    """

    subject: str
    session: str
    modality: str
    file: str
    source: str
    metrics: dict = field(default_factory=dict)
    reasons: list = field(default_factory=list)
    provenance: dict = field(default_factory=dict, repr=False)

    @property
    def flagged(self) -> bool:
        return bool(self.reasons)

    @property
    def status(self) -> str:
        return "flag" if self.reasons else "pass"


def qc_row(job, refaced_file, output_dir) -> QCRow:
    """Read the QC record of ``job`` from the sidecar of its refaced image.

    Parameters
    ----------
    job : refacebids.utils.bids.ImageJob
    refaced_file : path-like
        Where the participant level writes the refaced image
        (:func:`refacebids.workflows.outputs.refaced_path`).
    output_dir : path-like
        Root of the output dataset, for the ``file`` column.
    """
    refaced_file, output_dir = Path(refaced_file), Path(output_dir)
    row = QCRow(job.subject, job.session or "", job.suffix, job.relpath, job.relpath)
    sidecar = sidecar_path(refaced_file)
    if not (refaced_file.exists() and sidecar.exists()):
        row.reasons.append("not refaced: no refaced image in the output")
        return row
    try:
        provenance = json.loads(sidecar.read_text()).get(PROVENANCE_KEY)
    except (OSError, ValueError) as exc:
        row.reasons.append(f"sidecar {sidecar.name} cannot be read: {exc}")
        return row
    if not provenance:
        row.reasons.append(f"sidecar {sidecar.name} has no {PROVENANCE_KEY}")
        return row
    row.file = refaced_file.relative_to(output_dir).as_posix()
    row.provenance = provenance
    row.metrics = {metric.column: _lookup(provenance, metric.keys) for metric in METRICS}
    row.reasons = flag_reasons(provenance)
    return row


def flag_reasons(provenance: dict) -> list[str]:
    """Why a refaced image needs a human look, one sentence each (empty: it passes).

    Parameters
    ----------
    provenance : dict
        ``RefacebidsProvenance`` of the image's sidecar.
    """
    value = {metric.column: _lookup(provenance, metric.keys) for metric in METRICS}
    out = _out_of_range(value)
    reasons = []
    if {"protected_voxels_changed", "changed_voxels_outside_replaced"} & out:
        changed = (value["protected_voxels_changed"] or 0) + (
            value["changed_voxels_outside_replaced"] or 0)
        reasons.append(f"{changed} voxel(s) changed that must never change (brain or outside "
                       "the replaced region)")
    registration = provenance.get("Registration") or {}
    overlap_kind = registration.get("overlap", SCALP)
    if registration.get("ok") is False:
        reasons.append("registration suspect: the registration check failed")
    else:
        if {"registration_head_dice", "registration_peak_ratio"} & out:
            if overlap_kind == SCALP:
                overlap = f"scalp overlap {_fmt(value['registration_head_dice'])}"
                look_below = f"{SUSPECT_HEAD_DICE:g} or {SUSPECT_PEAK_RATIO:g}"
            else:
                overlap = f"{registration['overlap']} overlap {_fmt(registration.get('edge_dice'))}"
                look_below = f"{SUSPECT_PEAK_RATIO:g}"
            reasons.append(
                f"registration suspect: {overlap} (Dice), {_fmt(value['registration_peak_ratio'])} "
                f"times that 8 mm off (look below {look_below})"
            )
        if "registration_turn_ratio" in out:
            reasons.append(
                f"registration suspect: {_fmt(value['registration_turn_ratio'])} times the overlap of "
                f"the template turned {TURN_DEGREES[overlap_kind]:g} degrees (look below "
                f"{SUSPECT_TURN_RATIO:g})"
            )
        if "registration_brain_like" in out:
            reasons.append(
                f"registration suspect: {value['registration_brain_like']:.0%} of the template's deep "
                f"brain holds brain values (look below {SUSPECT_BRAIN_LIKE:.0%})"
            )
    quality = provenance.get("Quality") or {}
    if {"face_in_fov_fraction", "face_surface_moved_fraction"} & out:
        # The engine's own sentences, so that its warnings below are not repeated.
        reasons += quality_warnings({"face_in_fov_fraction": 1.0,
                                     "face_surface_moved_fraction": 1.0, **quality})
    if "noise_sd_ratio" in out:
        low, high = NOISE_SD_RATIO_RANGE
        reasons.append(f"noise match: SD ratio {_fmt(value['noise_sd_ratio'])} outside "
                       f"{low:g}–{high:g}")
    if "intensity_distance" in out:
        reasons.append(f"intensity match: distance {_fmt(value['intensity_distance'])} above "
                       f"{MAX_INTENSITY_DISTANCE:g}")
    # Warnings of the engine that no number above stands for.
    reasons += [w for w in provenance.get("Warnings") or [] if w not in reasons]
    return reasons


def out_of_range_columns(row: QCRow) -> set[str]:
    """The metric columns of ``row`` whose value is outside its range."""
    return _out_of_range(row.metrics)


def sort_rows(rows: list[QCRow]) -> list[QCRow]:
    """Flagged rows first, then by subject, session and file."""
    return sorted(rows, key=lambda r: (not r.flagged, r.subject, r.session, r.file))


def qc_tsv(rows: list[QCRow]) -> str:
    """``group_qc.tsv``: one row per image, :data:`TSV_COLUMNS`, ``n/a`` when missing."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(TSV_COLUMNS)
    for row in rows:
        version = (row.provenance.get("Software") or {}).get("refacebids")
        writer.writerow([
            row.subject, row.session or "n/a", row.modality, row.file, row.status,
            "; ".join(row.reasons) or "n/a",
            *(_tsv_value(row.metrics.get(metric.column)) for metric in METRICS),
            version or "n/a",
        ])
    return buffer.getvalue()


def write_qc_tsv(path, rows: list[QCRow]) -> Path:
    """Write :func:`qc_tsv` of ``rows`` (flagged first) atomically."""
    return write_text(path, qc_tsv(sort_rows(rows)))


def _out_of_range(values: dict) -> set[str]:
    return {column for column, number in values.items() if BY_COLUMN[column].out_of_range(number)}


def _lookup(provenance: dict, keys: tuple):
    value = provenance
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _tsv_value(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:.6g}" if isinstance(value, float) else str(value)
