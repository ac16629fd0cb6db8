"""Nothing lost, nothing leaked: read-only input, DataLad files not fetched, one run per
output folder, identifying metadata scrubbed, and a run killed mid-way then resumed.

The fast tests run the real command (graph, writers, validator, header writer) with the
engine replaced by the stub of conftest; the kill test runs the real engine (slow).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from refacebids.cli.run import main
from refacebids.core.image import DESCRIP_MARKER
from refacebids.utils.deidentify import IDENTIFYING_SIDECAR_FIELDS
from refacebids.utils.lock import LOCK_NAME, FolderInUse, folder_lock

from . import inputs
from .conftest import REPO, T1W_A, T1W_B, validate

ANNEX_KEY = "MD5E-s1234--0123456789abcdef0123456789abcdef.nii.gz"


def snapshot(folder: Path) -> dict:
    """Relative path -> (content hash or link target, mode, mtime) of everything in it."""
    state = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        if path.is_symlink():
            content = os.readlink(path)
        elif path.is_file():
            content = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            content = "dir"
        state[path.relative_to(folder).as_posix()] = (content, info.st_mode, info.st_mtime_ns)
    return state


def set_writable(root: Path, writable: bool) -> None:
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            mode = path.stat().st_mode
            path.chmod(mode | stat.S_IWUSR if writable
                       else mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def run_command(*args, env=None, stub=True, **popen):
    """Start ``refacebids`` (with the stub engine unless ``stub`` is False) as a process,
    bound by file permissions even when the tests run as root."""
    module = "tests.stub_cli" if stub else "refacebids.cli.run"
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **popen}
    return subprocess.Popen([*inputs.permission_bound(), sys.executable, "-m", module,
                             *map(str, args)], cwd=REPO, env=environment, text=True, **popen)


def add_unfetched(bids: Path, relpath: str) -> None:
    """A DataLad/git-annex file whose content was not fetched: a link to nowhere."""
    path = bids / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    depth = "../" * (len(Path(relpath).parts) - 1)
    os.symlink(f"{depth}.git/annex/objects/Qx/7J/{ANNEX_KEY}/{ANNEX_KEY}", path)


def test_read_only_dataset_with_unfetched_datalad_files(bids_dataset, tmp_path):
    """The input cannot be written, some files were never fetched: the rest is refaced."""
    bids = tmp_path / "bids-read-only"
    shutil.copytree(bids_dataset, bids, symlinks=True)
    add_unfetched(bids, "sub-03/anat/sub-03_T1w.nii.gz")
    add_unfetched(bids, "sub-02/dwi/sub-02_acq-annexed_dwi.nii.gz")  # copied by a release
    (bids / "participants.tsv").write_text(
        (bids / "participants.tsv").read_text() + "sub-03\t50\n")
    set_writable(bids, False)
    before = snapshot(bids)
    for layout in ("derivatives", "release"):
        out, work = tmp_path / f"out-{layout}", tmp_path / f"work-{layout}"
        process = run_command(bids, out, "participant", "-w", work, "--nprocs", "2",
                              "--output-layout", layout)
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 1, stdout + stderr
        assert stderr.splitlines() == [
            "refacebids: ERROR: sub-03/anat/sub-03_T1w.nii.gz: content not present (a "
            "DataLad/git-annex file that was not fetched); run `datalad get "
            f"{bids}/sub-03/anat/sub-03_T1w.nii.gz` first"], stderr
        assert "6 image(s) refaced, 1 failed" in stdout
        assert snapshot(bids) == before, "the read-only input was modified"
        if layout == "derivatives":
            assert len(list(out.rglob("*_desc-refaced_*.nii.gz"))) == 6
            assert not list(out.glob("sub-03/**/*.nii*"))
        else:
            assert "sub-02_acq-annexed_dwi.nii.gz is left out: content not present" in stdout
            assert not (out / "sub-03/anat/sub-03_T1w.nii.gz").exists()
            assert not (out / "sub-02/dwi/sub-02_acq-annexed_dwi.nii.gz").exists()
            assert (out / "sub-02/anat/sub-02_run-1_T1w.nii").is_file()
    set_writable(bids, True)  # for pytest's clean-up


def test_two_runs_on_one_output_dir(bids_dataset, tmp_path):
    """A second run on the same OUTPUT_DIR (or work dir) stops at once; the first is intact."""
    out = tmp_path / "out"
    first = run_command(bids_dataset, out, "participant", "-w", tmp_path / "work1",
                        "--nprocs", "2", env={"REFACEBIDS_TEST_STUB_DELAY": "6"})
    deadline = time.time() + 120
    while not (out / LOCK_NAME).exists():
        assert first.poll() is None and time.time() < deadline, first.communicate()
        time.sleep(0.1)
    second = run_command(bids_dataset, out, "participant", "-w", tmp_path / "work2")
    third = run_command(bids_dataset, tmp_path / "other", "participant", "-w",
                        tmp_path / "work1")
    for process, what in ((second, "OUTPUT_DIR"), (third, "the work dir")):
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 1
        lines = stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"refacebids: ERROR: {what} "), stderr
        assert "is in use by another refacebids run (process" in lines[0]
    assert first.poll() is None, "the second run did not wait for nor disturb the first"
    stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stdout + stderr
    assert not list((tmp_path / "other").rglob("*")), "the refused run wrote something"
    assert not (out / LOCK_NAME).exists()
    assert len(list(out.rglob("*_desc-refaced_*.nii.gz"))) == 6
    assert validate(out) == []
    # Once the first is done, the next run may go.
    again = run_command(bids_dataset, out, "participant", "-w", tmp_path / "work2")
    assert again.wait(timeout=600) == 0
    assert validate(out) == []


def test_lock_is_released_when_the_holder_dies(tmp_path):
    with folder_lock(tmp_path):
        with pytest.raises(FolderInUse, match=f"OUTPUT_DIR {tmp_path} is in use"):
            with folder_lock(tmp_path):
                pass
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]);"
        "from refacebids.utils.lock import folder_lock;"
        "lock = folder_lock(sys.argv[2]); lock.__enter__(); print('held', flush=True);"
        "time.sleep(600)"), str(REPO), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(FolderInUse, match=f"process {holder.pid}"):
        with folder_lock(tmp_path):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / LOCK_NAME).exists()  # left behind by the killed holder
    with folder_lock(tmp_path):  # but no longer held
        pass


def test_traversal_labels_refused_before_anything_is_written(tmp_path, capfd):
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.10.0"}')
    for label in ("../x", "sub-01/../../etc", "..", "01/../../x"):
        with pytest.raises(SystemExit) as exc:
            main([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w"),
                  "--participant-label", label])
        assert exc.value.code == 2
        err = capfd.readouterr().err.strip().splitlines()
        assert err[-1].startswith("refacebids: error:") and "label" in err[-1], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bids"]


def plant_identifiers(bids: Path) -> None:
    """Identifiers in an image header, its extensions, sidecars and the tables."""
    image = bids / "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz"
    inputs.with_planted_text(nib.load(image)).to_filename(image)
    inputs.write_sidecar(image, {**inputs.PLANTED_SIDECAR, "Manufacturer": "Siemens"})
    top = json.loads((bids / "T1w.json").read_text())
    (bids / "T1w.json").write_text(json.dumps({**top, "StationName": "Doe^Jane"}))
    (bids / "participants.tsv").write_text(
        "participant_id\tage\tname\nsub-01\t30\tDoe^Jane\nsub-02\t40\tMRN-PLANTED-77\n")
    (bids / "participants.json").write_text(json.dumps(
        {"age": {"Description": "age"}, "name": {"Description": "name, e.g. Doe^Jane"}}))
    scans = bids / "sub-01/ses-1/sub-01_ses-1_scans.tsv"
    rows = scans.read_text().splitlines()
    scans.write_text("\n".join([rows[0] + "\toperator"] + [r + "\tJane Doe 1970" for r in rows[1:]])
                     + "\n")


def output_bytes(folder: Path):
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            yield path, gzip.decompress(data) if path.name.endswith(".gz") else data


def test_identifying_metadata_scrubbed(bids_dataset, tmp_path, stub_engine, capfd):
    """Planted in descrip, aux_file, db_name, intent_name, two extensions, sidecar fields
    (own and inherited) and table columns: none reaches any output file."""

    plant_identifiers(bids_dataset)
    out, release, work = tmp_path / "out", tmp_path / "release", tmp_path / "work"
    common = ["participant", "-w", str(work), "--nprocs", "2", "--skip-bids-validation"]
    assert main([str(bids_dataset), str(out), *common]) == 0
    assert main([str(bids_dataset), str(release), *common, "--output-layout", "release",
                 "--scrub-tables", "name", "operator",
                 "--keep-sidecar-field", "DeviceSerialNumber"]) == 0
    capfd.readouterr()

    for folder in (out, release, work / "qc"):
        for path, data in output_bytes(folder):
            for planted in inputs.PLANTED:
                if planted == "SN-0042-PLANTED" and folder == release and path.suffix == ".json":
                    continue  # kept on request (checked below)
                assert planted.encode() not in data, (planted, path)

    refaced = nib.load(out / "sub-01/ses-1/anat/sub-01_ses-1_desc-refaced_T1w.nii.gz")
    assert refaced.header["descrip"].tobytes().rstrip(b"\0").decode() == DESCRIP_MARKER
    assert len(refaced.header.extensions) == 0
    sidecar = json.loads((out / "sub-01/ses-1/anat/sub-01_ses-1_desc-refaced_T1w.json")
                         .read_text())
    assert sidecar["Manufacturer"] == "Siemens" and sidecar["RepetitionTime"] == 2.3
    assert not set(sidecar) & set(IDENTIFYING_SIDECAR_FIELDS)
    assert sidecar["RefacebidsProvenance"]["RemovedSidecarFields"] == sorted(
        ["DeviceSerialNumber", "ImageComments", "InstitutionName", "PatientBirthDate",
         "PatientID", "PatientName", "StationName"])

    released = json.loads((release / "sub-01/ses-1/anat/sub-01_ses-1_T1w.json").read_text())
    assert released["DeviceSerialNumber"] == "SN-0042-PLANTED"
    assert "DeviceSerialNumber" not in released["RefacebidsProvenance"]["RemovedSidecarFields"]
    assert "StationName" not in json.loads((release / "T1w.json").read_text())
    assert (release / "participants.tsv").read_text() == (
        "participant_id\tage\nsub-01\t30\nsub-02\t40\n")
    assert set(json.loads((release / "participants.json").read_text())) == {"age"}
    assert (release / "sub-01/ses-1/sub-01_ses-1_scans.tsv").read_text().splitlines()[0] == (
        "filename\tacq_time")
    # The input itself is untouched.
    assert b"Doe^Jane" in (bids_dataset / "participants.tsv").read_bytes()


def test_scrub_tables_needs_the_release_layout(bids_dataset, tmp_path, capsys):

    with pytest.raises(SystemExit) as exc:
        main([str(bids_dataset), str(tmp_path / "out"), "participant",
              "--scrub-tables", "age"])
    assert exc.value.code == 2
    assert "--scrub-tables needs --output-layout release" in capsys.readouterr().err


def _complete(path: Path) -> None:
    """Raise unless ``path`` is a whole NIfTI or JSON file."""
    if path.name.endswith((".nii", ".nii.gz")):
        np.asanyarray(nib.load(path).dataobj)
    elif path.suffix == ".json":
        json.loads(path.read_text())


def _visible_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")]


@pytest.mark.slow
def test_killed_run_leaves_no_partial_file_and_resumes(tmp_path):
    """SIGKILL a real run when its first image is written; the rerun does only the rest."""
    bids = tmp_path / "bids"
    for subject, source in (("01", T1W_A), ("02", T1W_B)):
        (bids / f"sub-{subject}/anat").mkdir(parents=True)
        shutil.copyfile(source, bids / f"sub-{subject}/anat/sub-{subject}_T1w.nii.gz")
    (bids / "dataset_description.json").write_text(
        '{"Name": "kill test", "BIDSVersion": "1.10.0"}')
    out, work = tmp_path / "out", tmp_path / "work"
    args = (bids, out, "participant", "-w", work, "--nprocs", "1", "--skip-bids-validation")
    # The log goes to a file: a pipe nobody reads while the run goes on could fill up.
    with open(tmp_path / "killed.log", "w") as log:
        process = run_command(*args, stub=False, start_new_session=True, stdout=log,
                              stderr=subprocess.STDOUT)
    deadline = time.time() + 900
    first_out = None
    while first_out is None:
        assert process.poll() is None and time.time() < deadline, (
            tmp_path / "killed.log").read_text()
        # At every moment, what carries a final name is complete.
        for path in _visible_files(out) if out.exists() else []:
            _complete(path)
            if path.name.endswith("_desc-refaced_T1w.nii.gz"):
                first_out = path
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()

    # The kill may land inside an atomic write: its hidden temporary stays until the
    # rerun sweeps it, and nothing else may be left.
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".")
                 and p.name not in (".bidsignore", LOCK_NAME)]
    assert all(re.fullmatch(r"\..+\.tmp(\.nii(\.gz)?)?", p.name) for p in leftovers), leftovers
    for path in _visible_files(out):
        _complete(path)
    done_subject = first_out.name.split("_")[0]
    other = "sub-02" if done_subject == "sub-01" else "sub-01"
    assert not list(out.glob(f"{other}/anat/*_desc-refaced_T1w.nii.gz")), "killed too late"
    register_result = next(work.glob(
        f"refacebids_wf/image_sub_{done_subject[4:]}_T1w_anat_wf/reface_wf/register/"
        "result_register.pklz"))
    registered_at = register_result.stat().st_mtime_ns

    process = run_command(*args, stub=False)
    stdout, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, stdout + stderr
    assert stderr == ""
    assert register_result.stat().st_mtime_ns == registered_at, "finished image redone"
    for subject in ("sub-01", "sub-02"):
        sidecar = json.loads(
            (out / f"{subject}/anat/{subject}_desc-refaced_T1w.json").read_text())
        image = out / f"{subject}/anat/{subject}_desc-refaced_T1w.nii.gz"
        assert sidecar["RefacebidsProvenance"]["OutputSHA256"] == hashlib.sha256(
            image.read_bytes()).hexdigest()
    assert not [p for p in out.rglob(".*") if p.name != ".bidsignore"]
