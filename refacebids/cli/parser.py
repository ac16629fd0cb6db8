"""The command-line contract of refacebids (BIDS Apps positional arguments + options)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .. import __version__
from ..utils.bids import strip_label


def _label(prefix):
    def parse(value: str) -> str:
        try:
            return strip_label(value, prefix)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = f"{prefix} label"
    return parse


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {value}")
    return number


def build_parser() -> argparse.ArgumentParser:
    """Build the ``refacebids`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="refacebids",
        description=(
            "Replace the face in head MRI, PET and CT images of a BIDS dataset with an "
            "average face; every voxel outside the face region stays byte-identical."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("bids_dir", type=Path, help="root of the input BIDS dataset (read only)")
    parser.add_argument(
        "output_dir",
        type=Path,
        help="output folder; must not be the input dataset or inside it, except "
        "BIDS_DIR/derivatives/<name>",
    )
    parser.add_argument(
        "analysis_level",
        choices=["participant", "group"],
        help="'participant' refaces images; 'group' builds dataset-level reports",
    )
    parser.add_argument(
        "--participant-label",
        "--participant_label",
        dest="participant_label",
        nargs="+",
        type=_label("sub"),
        metavar="LABEL",
        help="participants to process (with or without 'sub-'); default: all",
    )
    parser.add_argument(
        "--session-label",
        "--session_label",
        dest="session_label",
        nargs="+",
        type=_label("ses"),
        metavar="LABEL",
        help="sessions to process (with or without 'ses-'); default: all",
    )
    parser.add_argument(
        "--nprocs",
        "--n-cpus",
        dest="nprocs",
        type=_positive_int,
        default=os.cpu_count() or 1,
        help="maximum number of processes running at once",
    )
    parser.add_argument(
        "--omp-nthreads",
        dest="omp_nthreads",
        type=_positive_int,
        default=1,
        help="threads per process for ITK (registration, resampling); nodes that use "
        "them reserve as many CPUs",
    )
    parser.add_argument(
        "--mem-gb",
        "--mem_gb",
        dest="mem_gb",
        type=_positive_float,
        metavar="GB",
        help="memory available to the run (MultiProc: at most this much is used by the "
        "nodes running at once); also the most any one node asks a scheduler for. "
        "Default: 90%% of the machine's memory",
    )
    parser.add_argument(
        "--use-plugin",
        "--use_plugin",
        dest="use_plugin",
        type=Path,
        metavar="FILE",
        help="Nipype plugin settings (YAML or JSON: 'plugin:' MultiProc, Linear, SLURM, "
        "SGE, PBS... and 'plugin_args:'), to run the nodes on a cluster's scheduler; "
        "default: MultiProc with --nprocs",
    )
    parser.add_argument(
        "-w",
        "--work-dir",
        dest="work_dir",
        type=Path,
        default=Path("work"),
        help="folder for intermediate results and crash files; reuse it to resume a run",
    )
    parser.add_argument(
        "--output-layout",
        dest="output_layout",
        choices=["derivatives", "release"],
        default="derivatives",
        help="'derivatives': refaced images, masks, transforms and figures as a BIDS "
        "derivatives dataset; 'release': a full copy of the input dataset in which "
        "each image is replaced by its refaced version (no original face left)",
    )
    parser.add_argument(
        "--template",
        default="MNI152EXT",
        metavar="NAME_OR_PATH",
        help="replacement-face template: an embedded template name, a template folder, or a "
        "TemplateFlow template whose T1w head is in your TemplateFlow home (its refacing "
        "labels are registered from the embedded template into the work directory)",
    )
    parser.add_argument(
        "--pet-anat",
        "--pet_anat",
        dest="pet_anat",
        choices=["auto", "none"],
        default="auto",
        help="'auto': a PET whose subject and session have a T1w refaced in the same run is "
        "aligned rigidly to that T1w (mutual information) and reuses the T1w's template "
        "registration (its own registration if that fails the check); 'none': every PET is "
        "registered on its own. The PET sidecar's provenance says which was used",
    )
    parser.add_argument(
        "--keep-sidecar-field",
        dest="keep_sidecar_field",
        action="extend",  # repeatable, and several after one flag (as Boutiques writes lists)
        nargs="+",
        default=[],
        metavar="FIELD",
        help="keep this sidecar field although it identifies a person, visit, site or "
        "device (repeatable); by default names, IDs, birth dates, addresses, dates, "
        "physicians and operators, institution, station and device serial number, and "
        "free-text comments are removed from every sidecar written (the list is "
        "refacebids.utils.deidentify.IDENTIFYING_SIDECAR_FIELDS); what was removed is "
        "listed in the provenance",
    )
    parser.add_argument(
        "--scrub-tables",
        dest="scrub_tables",
        nargs="+",
        default=[],
        metavar="COLUMN",
        help="with --output-layout release: remove these columns from participants.tsv, "
        "*_sessions.tsv and *_scans.tsv (and their JSON data dictionaries) in the "
        "release; participant_id, session_id and filename are always kept",
    )
    parser.add_argument(
        "--skip-bids-validation",
        "--skip_bids_validation",
        dest="skip_bids_validation",
        action="store_true",
        help="do not check the input with the BIDS validator",
    )
    parser.add_argument(
        "--reports-only",
        "--reports_only",
        dest="reports_only",
        action="store_true",
        help="rebuild the subject reports (participant) from the outputs already written, "
        "without refacing; the group level always only reads the outputs",
    )
    parser.add_argument(
        "--audit",
        action="store_true",
        help="group level: attack the refaced images with an open face recogniser (photo-like "
        "renders of each original matched against all refaced images) and write "
        "OUTPUT_DIR/group_audit.tsv and .json; needs pip install 'refacebids[audit]'",
    )
    parser.add_argument("--version", action="version", version=f"refacebids {__version__}")
    return parser


def check_paths(bids_dir: Path, output_dir: Path) -> tuple[Path, Path]:
    """Resolve both folders and refuse an output that would write into the input.

    The one exception is ``BIDS_DIR/derivatives/<name>``, the place the BIDS
    specification reserves for derivatives of a dataset.

    Raises
    ------
    ValueError
        With a message for the user.
    """
    bids_dir, output_dir = bids_dir.resolve(), output_dir.resolve()
    if not bids_dir.is_dir():
        raise ValueError(f"BIDS_DIR {bids_dir} does not exist")
    if output_dir == bids_dir:
        raise ValueError("OUTPUT_DIR must not be BIDS_DIR: refacebids never writes into its input")
    if output_dir.is_relative_to(bids_dir):
        inside = output_dir.relative_to(bids_dir).parts
        if not (len(inside) == 2 and inside[0] == "derivatives"):
            raise ValueError(
                f"OUTPUT_DIR {output_dir} is inside BIDS_DIR; use a folder outside it "
                f"or {bids_dir / 'derivatives' / 'refacebids'}"
            )
    if bids_dir.is_relative_to(output_dir):
        raise ValueError(f"BIDS_DIR {bids_dir} is inside OUTPUT_DIR {output_dir}")
    return bids_dir, output_dir
