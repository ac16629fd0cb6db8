"""Identifying metadata removed from what refacebids writes (besides the face).

A face is not the only identifier in a dataset: DICOM converters copy names, IDs,
dates, sites and device serial numbers into JSON sidecars, and ``participants.tsv``
and friends may hold more. Image headers are scrubbed where they are written
(:func:`refacebids.core.image.scrubbed_header`); this module does the sidecars and,
on request, the tables of a release.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

#: Sidecar fields removed by default (``--keep-sidecar-field`` keeps one). They are
#: the DICOM attributes of the PS3.15 basic de-identification profile that DICOM to
#: BIDS converters (dcm2niix, heudiconv) write into sidecars: the person (name, IDs,
#: birth date, address, free-text notes), the visit (dates, accession and study
#: identifiers), the people who scanned (physicians, operators) and the place and
#: device (institution, station, serial number).
IDENTIFYING_SIDECAR_FIELDS = (
    # the person
    "PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames",
    "PatientBirthDate", "PatientBirthTime", "PatientBirthName", "PatientMotherBirthName",
    "PatientAddress", "PatientTelephoneNumbers", "PatientInsurancePlanCodeSequence",
    "MilitaryRank", "BranchOfService", "MedicalRecordLocator", "PatientComments",
    "AdditionalPatientHistory", "ImageComments", "Comments",
    # the visit
    "AccessionNumber", "StudyID", "StudyInstanceUID", "SeriesInstanceUID",
    "SOPInstanceUID", "FrameOfReferenceUID", "AcquisitionDateTime", "AcquisitionDate",
    "StudyDate", "SeriesDate", "ContentDate", "InstanceCreationDate",
    "PerformedProcedureStepStartDate", "RequestedProcedureID", "AdmissionID",
    # the people who scanned
    "ReferringPhysicianName", "PerformingPhysicianName", "PhysiciansOfRecord",
    "RequestingPhysician", "OperatorsName", "NameOfPhysiciansReadingStudy",
    # the place and the device
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
    "StationName", "DeviceSerialNumber",
)

#: Columns BIDS requires in those tables; never removed.
REQUIRED_COLUMNS = ("participant_id", "session_id", "filename")


def is_table(relpath: str) -> bool:
    """Whether a file (path relative to the dataset root) is a table ``--scrub-tables`` edits.

    >>> [is_table(p) for p in ("participants.tsv", "sub-1/sub-1_scans.tsv", "sub-1/x.tsv")]
    [True, True, False]
    """
    return relpath == "participants.tsv" or relpath.endswith(("_sessions.tsv", "_scans.tsv"))


def scrub_sidecar(metadata: dict, keep=()) -> tuple[dict, list[str]]:
    """Remove the identifying fields of a sidecar.

    Parameters
    ----------
    metadata : dict
        Sidecar fields.
    keep : iterable of str
        Fields of :data:`IDENTIFYING_SIDECAR_FIELDS` to keep nonetheless.

    Returns
    -------
    clean : dict
        ``metadata`` without the removed fields (same order otherwise).
    removed : list of str
        Names of the removed fields, sorted.

    >>> scrub_sidecar({"PatientName": "Doe^J", "RepetitionTime": 2.3}, keep=())
    ({'RepetitionTime': 2.3}, ['PatientName'])
    """
    drop = set(IDENTIFYING_SIDECAR_FIELDS) - set(keep)
    removed = sorted(key for key in metadata if key in drop)
    return {k: v for k, v in metadata.items() if k not in drop}, removed


def scrub_sidecar_file(src: Path, keep=()) -> tuple[str, list[str]] | None:
    """The scrubbed JSON text of sidecar ``src``, and the removed names.

    Returns None when nothing is to be removed (the file can be copied as it is).

    Raises
    ------
    ValueError
        When ``src`` is not a JSON object (it cannot be checked, so it must not be
        copied blindly).
    """
    try:
        data = json.loads(Path(src).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    clean, removed = scrub_sidecar(data, keep)
    if not removed:
        return None
    return json.dumps(clean, indent=2, ensure_ascii=False) + "\n", removed


def scrub_table(text: str, columns) -> tuple[str, list[str]]:
    """Remove ``columns`` from a BIDS TSV table.

    Returns
    -------
    text : str
        The table without those columns (unchanged when it has none of them).
    removed : list of str
        The columns removed, in table order.

    >>> scrub_table("participant_id\\tage\\tname\\nsub-01\\t30\\tDoe\\n", ["name"])
    ('participant_id\\tage\\nsub-01\\t30\\n', ['name'])
    """
    rows = list(csv.reader(io.StringIO(text), delimiter="\t"))
    if not rows:
        return text, []
    drop = [i for i, name in enumerate(rows[0])
            if name in set(columns) and name not in REQUIRED_COLUMNS]
    if not drop:
        return text, []
    kept = [[cell for i, cell in enumerate(row) if i not in drop] for row in rows]
    buffer = io.StringIO()
    csv.writer(buffer, delimiter="\t", lineterminator="\n").writerows(kept)
    return buffer.getvalue(), [rows[0][i] for i in drop]


def scrub_data_dictionary(text: str, columns) -> str | None:
    """The JSON data dictionary of a table without the entries of removed ``columns``.

    Returns None when it describes none of them.
    """
    data = json.loads(text)
    if not isinstance(data, dict) or not set(columns) & set(data):
        return None
    return json.dumps({k: v for k, v in data.items() if k not in set(columns)},
                      indent=2, ensure_ascii=False) + "\n"
