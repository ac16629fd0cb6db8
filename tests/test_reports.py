"""Reports: QC flags, the group level, --reports-only, methods text, and the pages in Chromium.

The fast tests run the real graph, writers and report builders with the engine replaced
by a stand-in that changes a slab of each image, draws the real reportlets and records
metrics like the engine's (taken from real runs, one failure mode per image). The slow
test opens reports of the real engine's demo outputs.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import sys
import types
from pathlib import Path

import pytest

from refacebids.cli.run import main
from refacebids.reports.audit import read_audit
from refacebids.reports.methods import REFERENCES, citation_markdown, methods_paragraph
from refacebids.reports.qc import TSV_COLUMNS, flag_reasons

from .conftest import REPO, T1W_A, T1W_B, T2W, validate

# Metrics as the engine recorded them on real heads; each image shows one failure mode.
PASSING = {
    "registration": {"software": "antspyx 0.6.3", "stages": ["Rigid", "Affine", "SyN"],
                     "metric": "Mattes mutual information (32 bins)",
                     "rigid_resolution_mm": 4.0, "resolution_mm": 2.0,
                     "syn_iterations": [40, 20, 0], "initialisation": "centres of mass",
                     "random_seed": 42, "similarity": -0.696, "head_dice": 0.933,
                     "peak_ratio": 1.77, "ok": True},
    "protected_voxels_changed": 0, "changed_voxels_outside_replaced": 0,
    "face_surface_moved_fraction": 0.974, "face_in_fov_fraction": 1.0,
    "noise_sd_ratio": 0.92, "intensity_distance": 0.155,
}
CASES = {
    # image file name -> (changes to PASSING, expected reasons as regular expressions)
    "sub-01_ses-1_T1w.nii.gz": ({}, []),
    "sub-01_ses-1_T2w.nii.gz": (
        {"face_in_fov_fraction": 0.74, "face_surface_moved_fraction": 0.86},
        [r"face partly outside the field of view \(74% inside\)",
         r"face surface moved on 86% of its area \(target 90%\)"]),
    "sub-01_ses-2_T1w.nii.gz": (
        {"registration": {**PASSING["registration"], "head_dice": 0.736, "peak_ratio": 1.36}},
        [r"registration suspect: scalp overlap 0\.74 \(Dice\), 1\.36 times"]),
    "sub-02_T1w.nii.gz": (
        {"protected_voxels_changed": 3, "noise_sd_ratio": 1.5},
        [r"3 voxel\(s\) changed that must never change",
         r"noise match: SD ratio 1\.50 outside 0\.8–1\.2"]),
}


def _engine_stand_in(in_file, template_name, cases):
    """Slab "refacing", the real reportlets, and the case's metrics (see CASES)."""
    import json
    from pathlib import Path

    import nibabel as nib
    import numpy as np

    from refacebids.engine import quality_warnings
    from refacebids.reports.reportlets import renders_before_after, slices_before_after

    img = nib.load(in_file)
    raw = np.asanyarray(img.dataobj).copy()
    replaced = np.zeros(img.shape[:3], bool)
    replaced[:, :8, :] = True
    raw[replaced] = 0
    out = Path("refaced.nii.gz").absolute()
    nib.Nifti1Image(raw, img.affine, img.header).to_filename(out)
    mask = Path("mask.nii.gz").absolute()
    nib.Nifti1Image(replaced.astype("uint8"), img.affine).to_filename(mask)
    xfm = Path("xfm.h5").absolute()
    xfm.write_bytes(b"stand-in transform")
    protected = np.zeros_like(replaced)
    i, j, k = (s // 4 for s in replaced.shape)
    protected[i:-i, 2 * j:-j, k:-k] = True
    before = np.asanyarray(img.dataobj, dtype=np.float32)
    after = raw.astype(np.float32)
    slices_before_after(before, after, img.affine, replaced, protected, "slices.png")
    renders_before_after(before, after, img.affine, "renders.png")
    changes, _ = cases[Path(in_file).name]
    metrics = {**cases["passing"], **changes, "replaced_voxels": int(replaced.sum()),
               "template": {"name": template_name, "sha256": "0" * 64}}
    metrics["warnings"] = quality_warnings(metrics)
    metrics_file = Path("metrics.json").absolute()
    metrics_file.write_text(json.dumps(metrics))
    reportlets = [str(Path(name).absolute()) for name in ("slices.png", "renders.png")]
    return str(out), str(mask), str(xfm), str(metrics_file), reportlets


def _stand_in_reface_wf(*, modality, template, omp_nthreads=1, mem_gb=1.6, frame_durations=None,
                        through_anat=False, name="reface_wf"):  # no PET here: never through a T1w
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    fields = ["out_file", "mask_file", "xfm_file", "metrics_file", "reportlets"]
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["in_file"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=fields), name="outputnode")
    engine = pe.Node(niu.Function(function=_engine_stand_in,
                                  input_names=["in_file", "template_name", "cases"],
                                  output_names=fields), name="stand_in")
    engine.inputs.template_name = template.name
    engine.inputs.cases = {**CASES, "passing": PASSING}
    workflow.connect([(inputnode, engine, [("in_file", "in_file")]),
                      (engine, outputnode, [(f, f) for f in fields])])
    return workflow


def _dataset(root: Path) -> Path:
    root.mkdir(parents=True)
    # No DatasetType, as in many datasets: a release of it must still validate.
    (root / "dataset_description.json").write_text(json.dumps({
        "Name": "refacebids report test", "BIDSVersion": "1.10.0", "License": "CC-BY-SA-3.0",
        "Authors": ["IXI dataset, brain-development.org"]}))
    (root / "README").write_text("Heads from IXI and VTK, for the report tests of refacebids.\n")
    for source, rel in [(T1W_A, "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz"),
                        (T2W, "sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz"),
                        (T1W_B, "sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz"),
                        (T1W_A, "sub-02/anat/sub-02_T1w.nii.gz")]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, root / rel)
    return root


def _run(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Both layouts of the participant level (stand-in engine) on four real heads."""
    root = tmp_path_factory.mktemp("reports")
    bids = _dataset(root / "bids")
    module = types.ModuleType("refacebids.workflows.reface")
    module.init_reface_wf = _stand_in_reface_wf
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "refacebids.workflows.reface", module)
        for layout in ("derivatives", "release"):
            assert _run(bids, root / layout, "participant", "-w", root / "work",
                        "--nprocs", "2", "--output-layout", layout) == 0
    return types.SimpleNamespace(bids=bids, root=root, work=root / "work",
                                 derivatives=root / "derivatives", release=root / "release",
                                 qc=root / "work" / "qc")


@pytest.fixture
def no_engine(monkeypatch):
    """Make any attempt to build or run the refacing graph fail the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the refacing graph was built")

    module = types.ModuleType("refacebids.workflows.reface")
    module.init_reface_wf = refuse
    monkeypatch.setitem(sys.modules, "refacebids.workflows.reface", module)
    monkeypatch.setattr("refacebids.workflows.base.init_refacebids_wf", refuse)


def _read_tsv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def test_flag_reasons_from_provenance():
    def provenance(**changes):
        metrics = {**PASSING, **changes}
        return {"Registration": metrics["registration"],
                "ProtectedVoxelsChanged": metrics["protected_voxels_changed"],
                "Quality": {k: metrics[k] for k in (
                    "face_surface_moved_fraction", "face_in_fov_fraction", "noise_sd_ratio",
                    "intensity_distance", "changed_voxels_outside_replaced")},
                "Warnings": metrics.get("warnings", [])}

    assert flag_reasons(provenance()) == []
    for changes, expected in CASES.values():
        reasons = flag_reasons(provenance(**changes))
        assert len(reasons) == len(expected), reasons
        assert all(re.match(e, r) for e, r in zip(expected, reasons)), reasons
    # The engine's warnings are not repeated; a warning no number stands for is kept.
    engine_warning = "face surface moved on 50% of its area (target 90%)"
    assert flag_reasons(provenance(face_surface_moved_fraction=0.5,
                                   warnings=[engine_warning, "header text kept"])) == [
        engine_warning, "header text kept"]
    assert flag_reasons(provenance(intensity_distance=float("nan"))) == [
        "intensity match: distance nan above 0.5"]
    assert flag_reasons(provenance(registration={"ok": False})) == [
        "registration suspect: the registration check failed"]
    # A CT's check overlaps its edges: their Dice is no scalp Dice, and only the peak
    # ratio of a passing fit can call for a look.
    edges = {**PASSING["registration"], "overlap": "edges", "head_dice": None, "edge_dice": 0.45}
    assert flag_reasons(provenance(registration={**edges, "peak_ratio": 1.6})) == []
    assert flag_reasons(provenance(registration={**edges, "peak_ratio": 1.3})) == [
        "registration suspect: edges overlap 0.45 (Dice), 1.30 times that 8 mm off (look below 1.5)"]
    # The turned probes and a CT's brain content: a pass by a small margin calls for a look.
    scalp = PASSING["registration"]
    assert flag_reasons(provenance(registration={**scalp, "turn_ratio": 1.31})) == []
    assert flag_reasons(provenance(registration={**scalp, "turn_ratio": 1.18})) == [
        "registration suspect: 1.18 times the overlap of the template turned 15 degrees (look below 1.2)"]
    ct = {**edges, "peak_ratio": 1.6, "turn_ratio": 1.45, "brain_like": 0.99}
    assert flag_reasons(provenance(registration=ct)) == []
    assert flag_reasons(provenance(registration={**ct, "turn_ratio": 1.17, "brain_like": 0.93})) == [
        "registration suspect: 1.17 times the overlap of the template turned 7.5 degrees (look below 1.2)",
        "registration suspect: 93% of the template's deep brain holds brain values (look below 95%)"]


@pytest.mark.parametrize("layout", ["derivatives", "release"])
def test_group_level_table(outputs, layout, no_engine):
    out = getattr(outputs, layout)
    assert _run(outputs.bids, out, "group", "-w", outputs.work) == 0
    rows = _read_tsv(out / "group_qc.tsv")
    assert list(rows[0]) == list(TSV_COLUMNS)
    assert len(rows) == 4
    statuses = [row["status"] for row in rows]
    assert statuses == sorted(statuses), "flagged rows come first"
    by_name = {Path(row["file"]).name.replace("_desc-refaced", ""): row for row in rows}
    for name, (_, expected) in CASES.items():
        row = by_name[name.split(".")[0] + ".nii.gz"]
        assert row["status"] == ("flag" if expected else "pass")
        reasons = row["reasons"].split("; ") if expected else []
        assert len(reasons) == len(expected) and all(
            re.match(e, r) for e, r in zip(expected, reasons)), row["reasons"]
        assert (out / row["file"]).is_file()
    t2w = by_name["sub-01_ses-1_T2w.nii.gz"]
    assert (t2w["subject"], t2w["session"], t2w["modality"]) == ("01", "1", "T2w")
    assert float(t2w["face_in_fov_fraction"]) == 0.74
    assert by_name["sub-02_T1w.nii.gz"]["session"] == "n/a"
    assert validate(out) == []

    page = (out / "group_report.html").read_text()
    assert page.index("sub-01_ses-1_T2w") < page.index("sub-01_ses-1_T1w")
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    # Links to the subject reports and their figures, where the layout put them.
    for target in re.findall(r'(?:src|href)="([^"#]+)', page):
        assert (out / target).resolve().is_file(), target
    qc = out if layout == "derivatives" else outputs.qc
    assert (qc / "logs" / "CITATION.md").is_file()
    assert "Methods" in page and REFERENCES["icbm152"] in page


@pytest.mark.parametrize("layout", ["derivatives", "release"])
def test_reports_only_rebuilds_the_same_pages_without_the_engine(outputs, layout, no_engine):
    out = getattr(outputs, layout)
    reports = out if layout == "derivatives" else outputs.qc
    pages = {p.name: p.read_text() for p in reports.glob("sub-*.html")}
    citation = (reports / "logs" / "CITATION.md").read_text()
    assert len(pages) == 2
    for page in reports.glob("sub-*.html"):
        page.unlink()
    (reports / "logs" / "CITATION.md").unlink()
    engine_files = sorted(p.relative_to(outputs.work) for p in outputs.work.rglob("*")
                          if not p.is_relative_to(outputs.qc))
    assert _run(outputs.bids, out, "participant", "--reports-only", "-w", outputs.work) == 0
    assert {p.name: p.read_text() for p in reports.glob("sub-*.html")} == pages
    assert (reports / "logs" / "CITATION.md").read_text() == citation
    assert sorted(p.relative_to(outputs.work) for p in outputs.work.rglob("*")
                  if not p.is_relative_to(outputs.qc)) == engine_files
    assert validate(out) == []


def test_subject_report_content(outputs):
    page = (outputs.derivatives / "sub-01.html").read_text()
    # Every number the issue asks for, the command line and the versions.
    for text in ("registration similarity", "protected voxels changed",
                 "share of the face surface moved", "noise match", "intensity match",
                 "Software versions", "antspyx", "Methods", "MNI152EXT"):
        assert text in page, text
    command = f"refacebids {outputs.bids} {outputs.derivatives} participant -w {outputs.work}"
    assert command in page
    assert page.count("<section") == 3
    assert re.search(r'<span class="status status-flag">flag</span>', page)
    assert "face partly outside the field of view (74% inside)" in page
    for source in re.findall(r'<img src="([^"]+)"', page):
        assert (outputs.derivatives / source).is_file()
    assert "<script" not in page and not re.search(r"(src|href)=\"(https?:)?//", page)


def test_methods_text_names_versions_template_and_settings(outputs):
    citation = (outputs.derivatives / "logs" / "CITATION.md").read_text()
    assert "4 refaced image(s) of 2 participant(s)" in citation
    assert "Each T1w and T2w image was registered to the MNI152EXT" in citation
    assert "antspyx 0.6.3" in citation and "at 2 mm (40x20x0 SyN iterations)" in citation
    assert "rigid at 4 mm from the centres of mass" in citation
    assert all(reference in citation for reference in REFERENCES.values())
    # This version's record gives every stage's levels.
    current = methods_paragraph("T1w", "MNI152EXT", registration={
        "software": "antspyx 0.6.3", "stages": ["Rigid", "Affine", "SyN"], "resolution_mm": 2.0,
        "levels_mm": {"Rigid": [8.0], "Affine": [8.0, 4.0, 4.0], "SyN": [8.0, 4.0]}, "syn_iterations": [40, 10],
        "initialisation": "centres of mass"})
    assert ("rigid at 8 mm from the centres of mass, then affine and SyN [5] at 8 and 4 mm, coarse to fine "
            "on a 2 mm working image (40x10 SyN iterations)") in current
    mixed = citation_markdown([("T1w", {"Software": {"refacebids": "0.1.0"}}),
                               ("T1w", {"Software": {"refacebids": "0.2.0"}})], 1)
    assert "refaced by refacebids 0.1.0, 0.2.0" in mixed


def test_group_report_shows_the_audit(outputs, no_engine, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(outputs.derivatives, out)
    (out / "group_audit.json").write_text(json.dumps({
        "n_images": 4, "chance": 0.25, "rank1_original_vs_original": 1.0,
        "rank1_original_vs_refaced": 0.25, "detection_rate_refaced": 0.5,
        "recogniser": "stand-in recogniser 1.0"}))
    (out / "group_audit.tsv").write_text(
        "subject\tsession\tmodality\tfile\town_rank\ttop1_is_own\tface_detected\n"
        "01\t1\tT1w\tsub-01/ses-1/anat/sub-01_ses-1_desc-refaced_T1w.nii.gz\t1\ttrue\ttrue\n"
        "01\t1\tT2w\tsub-01/ses-1/anat/sub-01_ses-1_desc-refaced_T2w.nii.gz\t3\tfalse\tfalse\n"
        "01\t2\tT1w\tsub-01/ses-2/anat/sub-01_ses-2_desc-refaced_T1w.nii.gz\t2\tfalse\ttrue\n"
        "02\tn/a\tT1w\tsub-02/anat/sub-02_desc-refaced_T1w.nii.gz\t4\tfalse\tfalse\n")
    assert read_audit(out).summary["chance"] == 0.25
    assert _run(outputs.bids, out, "group", "-w", outputs.work) == 0
    rows = {Path(r["file"]).name: r for r in _read_tsv(out / "group_qc.tsv")}
    matched = rows["sub-01_ses-1_desc-refaced_T1w.nii.gz"]
    assert matched["status"] == "flag"
    assert "re-identification audit" in matched["reasons"]
    assert sum("re-identification" in r["reasons"] for r in rows.values()) == 1
    page = (out / "group_report.html").read_text()
    assert 'id="audit"' in page and "stand-in recogniser 1.0" in page
    assert "<b>1</b> of 4 refaced image(s) were matched first" in page
    assert validate(out) == []


def test_group_and_subject_reports_in_chromium(outputs, no_engine, tmp_path):
    from .browser import Chromium

    out = outputs.derivatives
    assert _run(outputs.bids, out, "group", "-w", outputs.work) == 0
    with Chromium() as browser:
        browser.open(out / "sub-01.html")
        images = browser.images()
        assert len(images) == 6 and all(image["width"] > 0 for image in images), images
        browser.screenshot(tmp_path / "sub-01.png")

        browser.open(out / "group_report.html")
        images = browser.images()
        assert len(images) == 4 and all(image["width"] > 0 for image in images), images
        rows = "Array.from(document.querySelectorAll('#qc tbody tr'))"
        statuses = browser.evaluate(f"{rows}.map((tr) => tr.className)")
        assert statuses == ["flag", "flag", "flag", "pass"]
        browser.screenshot(tmp_path / "group_report.png")
        # Sorting in the page: "face moved" ascending puts the T2w (0.86) first.
        column = browser.evaluate(
            "Array.from(document.querySelectorAll('#qc th')).findIndex("
            "(th) => th.textContent === 'face moved')")
        browser.evaluate(f"document.querySelectorAll('#qc th')[{column}].click()")
        moved = browser.evaluate(f"{rows}.map((tr) => tr.cells[{column}].textContent)")
        assert moved == sorted(moved) and moved[0] == "0.86"
    for name in ("sub-01.png", "group_report.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_real_engine_reports_in_chromium(tmp_path, tmp_path_factory):
    """Reports of the real engine on a demo head (work dir shared with test_outputs)."""
    from .browser import Chromium

    demo, out = REPO / "demo" / "ds-demo", tmp_path / "out"
    work = tmp_path_factory.getbasetemp() / "demo_work"
    assert _run(demo, out, "participant", "-w", work, "--participant-label", "01") == 0
    assert _run(demo, out, "group", "-w", work, "--participant-label", "01") == 0
    assert validate(out) == []
    row, = _read_tsv(out / "group_qc.tsv")
    assert row["protected_voxels_changed"] == "0"
    assert 0 < float(row["face_surface_moved_fraction"]) <= 1
    with Chromium() as browser:
        for page in ("sub-01.html", "group_report.html"):
            browser.open(out / page)
            images = browser.images()
            assert images and all(image["width"] > 0 for image in images), images
            browser.screenshot(tmp_path / page.replace(".html", ".png"))
