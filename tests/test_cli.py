"""The command-line contract: arguments, refusals, exit status and stderr format."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from refacebids import __version__
from refacebids.cli.parser import build_parser, check_paths
from refacebids.cli.run import main

OPTIONS = [
    "--participant-label", "--session-label", "--nprocs", "--omp-nthreads", "--work-dir",
    "--output-layout", "--template", "--skip-bids-validation", "--reports-only", "--version",
    "--keep-sidecar-field", "--scrub-tables",
]


def test_positional_arguments_and_defaults(tmp_path):
    opts = build_parser().parse_args([str(tmp_path / "in"), str(tmp_path / "out"), "group"])
    assert opts.bids_dir == tmp_path / "in"
    assert opts.output_dir == tmp_path / "out"
    assert opts.analysis_level == "group"
    assert opts.participant_label is None and opts.session_label is None
    assert opts.output_layout == "derivatives"
    assert opts.work_dir == Path("work")
    assert opts.omp_nthreads == 1 and opts.nprocs >= 1
    assert opts.template == "MNI152EXT"
    assert opts.skip_bids_validation is False


def test_all_options_parse():
    opts = build_parser().parse_args([
        "in", "out", "participant", "--participant-label", "sub-01", "02",
        "--session-label", "ses-pre", "post", "--nprocs", "3", "--omp-nthreads", "2",
        "-w", "/tmp/w", "--output-layout", "release", "--template", "/tpl",
        "--skip-bids-validation", "--reports-only",
    ])
    assert opts.participant_label == ["01", "02"]
    assert opts.session_label == ["pre", "post"]
    assert (opts.nprocs, opts.omp_nthreads) == (3, 2)
    assert opts.work_dir == Path("/tmp/w")
    assert opts.output_layout == "release"
    assert opts.template == "/tpl"
    assert opts.skip_bids_validation
    assert opts.reports_only


@pytest.mark.parametrize("args", [
    ["--participant-label", "../x"],
    ["--participant-label", "sub-01/../../etc"],
    ["--participant-label", "sub-"],
    ["--session-label", "ses-a_b"],
    ["--output-layout", "inplace"],
    ["--nprocs", "0"],
])
def test_bad_arguments_are_refused(args, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["in", "out", "participant", *args])
    assert exc.value.code == 2
    assert "refacebids: error:" in capsys.readouterr().err


def test_traversal_label_message(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["in", "out", "participant", "--participant-label", "../x"])
    assert "invalid sub label '../x'" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"refacebids {__version__}"


def test_help_lists_every_option():
    result = subprocess.run([sys.executable, "-m", "refacebids.cli.run", "--help"],
                            capture_output=True, text=True, check=True)
    for option in OPTIONS + ["-w", "participant", "group", "derivatives", "release"]:
        assert option in result.stdout, option


def test_output_paths(tmp_path):
    bids = tmp_path / "bids"
    bids.mkdir()
    with pytest.raises(ValueError, match="must not be BIDS_DIR"):
        check_paths(bids, bids)
    with pytest.raises(ValueError, match="inside BIDS_DIR"):
        check_paths(bids, bids / "sub-01")
    with pytest.raises(ValueError, match="inside BIDS_DIR"):
        check_paths(bids, bids / "derivatives")
    with pytest.raises(ValueError, match="inside BIDS_DIR"):
        check_paths(bids, bids / "derivatives" / "refacebids" / "deeper")
    with pytest.raises(ValueError, match="inside OUTPUT_DIR"):
        check_paths(bids, tmp_path)
    assert check_paths(bids, bids / "derivatives" / "refacebids")[1] == (
        bids / "derivatives" / "refacebids").resolve()
    assert check_paths(bids, tmp_path / "out") == (bids.resolve(), (tmp_path / "out").resolve())


def test_output_inside_input_refused_by_command(bids_dataset, tmp_path, capsys):
    before = sorted(p for p in bids_dataset.rglob("*"))
    with pytest.raises(SystemExit) as exc:
        main([str(bids_dataset), str(bids_dataset / "out"), "participant"])
    assert exc.value.code == 2
    assert "inside BIDS_DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(bids_dataset), str(tmp_path / "out"), "participant",
              "-w", str(bids_dataset / "work")])
    assert "work dir" in capsys.readouterr().err
    assert sorted(p for p in bids_dataset.rglob("*")) == before


def test_group_level_needs_participant_outputs(bids_dataset, tmp_path, capfd):
    assert main([str(bids_dataset), str(tmp_path / "out"), "group",
                 "-w", str(tmp_path / "work")]) == 1
    err = capfd.readouterr().err
    assert err.splitlines() == [
        f"refacebids: ERROR: {(tmp_path / 'out').resolve()} holds no refacebids output (no "
        "dataset_description.json); run the participant level first"
    ]
    assert not (tmp_path / "out").exists()


def _run(bids, tmp_path, *extra):
    return main([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                 "--nprocs", "2", *extra])


def test_failed_image_does_not_stop_the_others(bids_dataset, tmp_path, stub_engine, capfd):
    broken = bids_dataset / "sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz"
    broken.write_bytes(broken.read_bytes()[:20000])  # truncated gzip stream
    status = _run(bids_dataset, tmp_path, "--skip-bids-validation")
    out, err = capfd.readouterr()
    assert status == 1
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert re.fullmatch(
        r"refacebids: ERROR: sub-01/ses-2/anat/sub-01_ses-2_T1w\.nii\.gz: \S.*", lines[0]
    ), lines[0]
    assert "Traceback" not in lines[0]
    assert "found 6 image(s)" in out
    assert "5 image(s) refaced, 1 failed" in out
    written = sorted(p.name for p in (tmp_path / "out").rglob("*_desc-refaced_*.nii.gz"))
    assert len(written) == 5
    assert "sub-01_ses-2_desc-refaced_T1w.nii.gz" not in written
    # The subject report shows the failed image, flagged, with the same reason.
    report = (tmp_path / "out" / "sub-01.html").read_text()
    reason = lines[0].split(".nii.gz: ", 1)[1]
    assert f"not refaced: {html.escape(reason, quote=False)}" in report


def test_rerun_resumes_from_the_work_dir(bids_dataset, tmp_path, stub_engine, capfd):
    assert _run(bids_dataset, tmp_path, "--participant-label", "02") == 0
    sidecar = tmp_path / "out/sub-02/anat/sub-02_run-1_desc-refaced_T1w.json"
    first = json.loads(sidecar.read_text())["RefacebidsProvenance"]
    results = list((tmp_path / "work").rglob("result_stub.pklz"))
    assert len(results) == 1
    mtime = results[0].stat().st_mtime_ns
    assert _run(bids_dataset, tmp_path, "--participant-label", "02") == 0
    # The engine node was not run again, and the start time is the one of the first run.
    assert results[0].stat().st_mtime_ns == mtime
    assert json.loads(sidecar.read_text())["RefacebidsProvenance"]["StartTime"] == (
        first["StartTime"])
    # Writers always run: a deleted output is restored from the cache.
    sidecar.unlink()
    assert _run(bids_dataset, tmp_path, "--participant-label", "02") == 0
    assert results[0].stat().st_mtime_ns == mtime
    assert json.loads(sidecar.read_text())["RefacebidsProvenance"]["OutputSHA256"] == (
        first["OutputSHA256"])
    assert capfd.readouterr().err == ""


def test_invalid_dataset_is_refused_unless_validation_skipped(bids_dataset, tmp_path,
                                                               stub_engine, capfd):
    (bids_dataset / "sub-02/anat/sub-02_bogus.nii.gz").write_bytes(b"not an image")
    assert _run(bids_dataset, tmp_path, "--participant-label", "02") == 1
    err = capfd.readouterr().err
    assert err.startswith("refacebids: ERROR:") and "not a valid BIDS dataset" in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
    assert _run(bids_dataset, tmp_path, "--participant-label", "02",
                "--skip-bids-validation") == 0


def test_entry_point_runs_as_a_process(bids_dataset, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run(
        [sys.executable, "-m", "refacebids.cli.run", str(bids_dataset), str(tmp_path / "o"),
         "participant", "--participant-label", "nosuch", "-w", str(tmp_path / "w")],
        capture_output=True, text=True, env=env, check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"refacebids: ERROR: participant(s) not found in {bids_dataset.resolve()}: nosuch"
    ]


def test_image_the_engine_refuses_is_reported(bids_dataset, tmp_path, stub_engine, capfd):
    stub = stub_engine.init_reface_wf

    def refuse_ct(*, modality, **kwargs):
        if modality == "ct":
            raise ValueError("modality ct is not supported\nby this engine")
        return stub(modality=modality, **kwargs)

    stub_engine.init_reface_wf = refuse_ct
    assert _run(bids_dataset, tmp_path, "--session-label", "2") == 1
    out, err = capfd.readouterr()
    assert err.splitlines() == [
        "refacebids: ERROR: sub-01/ses-2/ct/sub-01_ses-2_ct.nii.gz: "
        "modality ct is not supported by this engine"]
    assert "done: sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz" in out
