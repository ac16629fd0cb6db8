"""The Boutiques descriptor: committed as generated, valid, and it drives the real parser."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from refacebids.cli.boutiques import descriptor_text
from refacebids.cli.parser import build_parser

from .conftest import REPO

DESCRIPTOR = REPO / "refacebids.boutiques.json"
bosh = pytest.importorskip("boutiques.bosh").bosh


def test_committed_descriptor_is_the_generated_one():
    assert DESCRIPTOR.read_text() == descriptor_text(), (
        "refacebids.boutiques.json is out of date: python -m refacebids.cli.boutiques"
    )


def test_descriptor_validates():
    # bosh raises on an invalid descriptor; its schema ships with the package (offline).
    bosh(["validate", str(DESCRIPTOR)])


def test_command_boutiques_builds_is_the_one_the_parser_reads(tmp_path):
    invocation = {
        "bids_dir": str(REPO / "demo" / "ds-demo"),
        "output_dir": str(tmp_path / "out"),
        "analysis_level": "participant",
        "participant_label": ["01", "sub-02"],
        "session_label": ["pre"],
        "nprocs": 3,
        "omp_nthreads": 2,
        "mem_gb": 6.5,
        "use_plugin": str(REPO / "README.md"),
        "work_dir": str(tmp_path / "work"),
        "output_layout": "release",
        "template": "MNI152EXT",
        "pet_anat": "none",
        "skip_bids_validation": True,
        "keep_sidecar_field": ["DeviceSerialNumber", "InstitutionName"],
        "scrub_tables": ["age", "handedness"],
        "reports_only": True,
        "audit": True,
    }
    # Every input of the descriptor is exercised, and every option of the parser.
    ids = {item["id"] for item in json.loads(DESCRIPTOR.read_text())["inputs"]}
    assert ids == set(invocation)
    path = tmp_path / "invocation.json"
    path.write_text(json.dumps(invocation))
    command = bosh(["exec", "simulate", str(DESCRIPTOR), "-i", str(path)]).shell_command
    words = shlex.split(command)
    assert words[0] == "refacebids"
    opts = build_parser().parse_args(words[1:])
    assert opts.participant_label == ["01", "02"] and opts.session_label == ["pre"]
    assert (opts.nprocs, opts.omp_nthreads, opts.mem_gb) == (3, 2, 6.5)
    assert opts.use_plugin == Path(invocation["use_plugin"])
    assert opts.work_dir == Path(invocation["work_dir"])
    assert opts.output_layout == "release" and opts.skip_bids_validation
    assert opts.pet_anat == "none"
    assert opts.keep_sidecar_field == ["DeviceSerialNumber", "InstitutionName"]
    assert opts.scrub_tables == ["age", "handedness"]
    assert opts.reports_only and opts.audit
