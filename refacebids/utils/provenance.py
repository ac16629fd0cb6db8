"""The provenance record written into the sidecar of every refaced image."""

from __future__ import annotations

import hashlib
from importlib.metadata import PackageNotFoundError, version

from .. import __version__

#: Sidecar key of the provenance object (a custom key, accepted by the BIDS validator).
PROVENANCE_KEY = "RefacebidsProvenance"
#: Engine metrics copied into the provenance (docs/architecture.md).
QUALITY_KEYS = (
    "face_surface_moved_fraction",
    "face_in_fov_fraction",
    "noise_sd_ratio",
    "intensity_distance",
    "changed_voxels_outside_replaced",
)


def sha256(path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fobj:
        for block in iter(lambda: fobj.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def software_versions() -> dict:
    """Versions of refacebids and of the libraries that shape its output."""
    versions = {"refacebids": __version__}
    for dist in ("antspyx", "nipype", "nibabel", "numpy", "scipy"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = None
    return versions


def refaced_sidecar(*, metadata, metrics, in_file, out_file, start_time, end_time,
                    command_line=None, removed_fields=()) -> dict:
    """Sidecar of a refaced image: the original metadata plus a provenance object.

    Parameters
    ----------
    metadata : dict
        Original sidecar fields (and any derivative fields such as ``Sources``).
    metrics : dict
        The engine's metrics (see docs/architecture.md).
    in_file, out_file : path-like
        Original and refaced image, checksummed as they lie on disk.
    start_time, end_time : str
        ISO 8601 times.
    command_line : str, optional
        The command that refaced the image, as typed (shown in the reports).
    removed_fields : list of str
        Names of the identifying fields removed from the original sidecar (values
        are not recorded).
    """
    template = metrics.get("template", {})
    provenance = {
        "Software": software_versions(),
        "CommandLine": command_line,
        "Template": {"Name": template.get("name"), "SHA256": template.get("sha256")},
        "Registration": metrics.get("registration"),
        "ProtectedVoxelsChanged": metrics.get("protected_voxels_changed"),
        "ReplacedVoxels": metrics.get("replaced_voxels"),
        "Quality": {key: metrics.get(key) for key in QUALITY_KEYS if key in metrics},
        "Warnings": metrics.get("warnings", []),
        "RemovedSidecarFields": sorted(removed_fields),
        "InputSHA256": sha256(in_file),
        "OutputSHA256": sha256(out_file),
        "StartTime": start_time,
        "EndTime": end_time,
    }
    return {**metadata, PROVENANCE_KEY: provenance}
