"""The re-identification audit (``group --audit``) on real heads.

Fast tests: the attack's arithmetic on known embeddings; the recogniser on renders
of real IXI heads (faces found, the same head closer than another); pairing refaced
images with their originals in both output layouts; the command's outputs, which
must keep the output a valid BIDS dataset; and the one-line message without the
optional packages. The acceptance test (slow) refaces 21 real heads with the engine.
"""

from __future__ import annotations

import json
import shutil
import sys

import nibabel as nib
import numpy as np
import pytest

from refacebids.audit.attack import chance_rate, own_ranks, rank1_rate
from refacebids.audit.faces import GALLERY_VIEWS, PROBE_VIEWS, pair_embeddings, photo
from refacebids.audit.group import TSV_COLUMNS, find_pairs
from refacebids.audit.recogniser import INSTALL_HINT, load_recogniser
from refacebids.cli.run import main

from .conftest import DATA, validate

SUMMARY_KEYS = {"n_images", "chance", "rank1_original_vs_original", "rank1_original_vs_refaced",
                "detection_rate_refaced", "recogniser"}
IXI = sorted((DATA / "ixi").glob("*.nii.gz"))


@pytest.fixture(scope="module")
def recogniser():
    return load_recogniser()


# --- the attack -----------------------------------------------------------------------


def test_own_rank_counts_other_people_closer_than_the_closest_own_entry():
    gallery = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    ids = ["a", "b", "c", "a"]
    probes = np.array([[0.1, 0.0], [2.9, 0.0], [1.9, 0.0], [1.6, 0.0]])
    # a: own at 0 first; a: own at 3 first; c: own first; a at 1.6: b and c closer than 0 or 3
    np.testing.assert_array_equal(own_ranks(probes, gallery, ["a", "a", "c", "a"], ids),
                                  [1, 1, 1, 3])


def test_faceless_probes_miss_and_faceless_gallery_entries_rank_last():
    gallery = np.array([[0.0, 0.0], [np.nan, np.nan], [5.0, 0.0]])
    probes = np.array([[np.nan, np.nan], [0.0, 0.0], [5.0, 0.0]])
    ranks = own_ranks(probes, gallery, ["x", "y", "z"], ["x", "y", "z"])
    assert np.isnan(ranks[0]) and ranks[1] == 3 and ranks[2] == 1
    assert rank1_rate(ranks) == pytest.approx(1 / 3)  # the faceless probe is a miss


def test_chance_counts_every_own_entry():
    assert chance_rate(["a", "b"], ["a", "a", "b", "c"]) == pytest.approx((2 / 4 + 1 / 4) / 2)
    with pytest.raises(ValueError):
        own_ranks(np.zeros((1, 2)), np.zeros((1, 2)), ["a"], ["b"])


# --- the recogniser on renders of real heads --------------------------------------------


def test_recogniser_finds_faces_on_renders_and_tells_people_apart(recogniser):
    embeddings = {}
    for path in IXI[:3]:
        img = nib.load(path)
        volume = img.get_fdata(dtype=np.float32)
        images = photo(volume, img.affine, GALLERY_VIEWS[:1] + PROBE_VIEWS[:1])
        # IXI: 240 mm field of view at 1.25 mm per pixel, face about 110 pixels wide
        assert images[0].shape == (192, 192) and images[0].dtype == np.uint8
        boxes = [recogniser.find_face(image) for image in images]
        assert all(box is not None for box in boxes), path.name
        assert 80 <= boxes[0].width() <= 160
        embeddings[path.name] = [recogniser.embed(i, b) for i, b in zip(images, boxes)]
    assert recogniser.find_face(np.zeros((192, 192), np.uint8)) is None
    names = list(embeddings)
    for name in names:
        same = np.linalg.norm(embeddings[name][0] - embeddings[name][1])
        others = [np.linalg.norm(embeddings[name][1] - embeddings[o][0]) for o in names if o != name]
        assert same < min(others), name


def test_pair_of_an_image_with_itself_embeds_identically(recogniser):
    result = pair_embeddings(IXI[0], IXI[0], recogniser)
    assert result["refaced_detected"].all()
    np.testing.assert_array_equal(result["original"], result["refaced"])
    assert result["probe"].shape == (128,) and np.isfinite(result["probe"]).all()


def test_refaced_render_without_a_face_is_embedded_in_the_originals_box(recogniser, tmp_path):
    img = nib.load(IXI[0])
    blank = tmp_path / "blank.nii.gz"  # no contrast: no skin, no face
    nib.Nifti1Image(np.full(img.shape, 100, np.int16), img.affine).to_filename(blank)
    result = pair_embeddings(IXI[0], blank, recogniser)
    assert not result["refaced_detected"].any()
    assert np.isfinite(result["refaced"]).all()  # the attacker crops by hand
    assert np.linalg.norm(result["refaced"] - result["original"]) > 0.3


# --- pairing, command and outputs ---------------------------------------------------------


def _audited(bids_dataset, tmp_path, stub_engine, *layout):
    out, work = tmp_path / "out", tmp_path / "work"
    assert main([str(bids_dataset), str(out), "participant", "-w", str(work), "--nprocs", "2",
                 "--participant-label", "01", *layout]) == 0
    return out, work


def test_pairs_in_the_derivatives_layout_follow_sources(bids_dataset, tmp_path, stub_engine):
    out, _ = _audited(bids_dataset, tmp_path, stub_engine)
    pairs = find_pairs(bids_dataset, out)
    assert {(p.file, p.original.relative_to(bids_dataset).as_posix()) for p in pairs} == {
        ("sub-01/ses-1/anat/sub-01_ses-1_desc-refaced_T1w.nii.gz", "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz"),
        ("sub-01/ses-1/anat/sub-01_ses-1_desc-refaced_T2w.nii.gz", "sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz"),
        ("sub-01/ses-1/pet/sub-01_ses-1_trc-FDG_desc-refaced_pet.nii.gz",
         "sub-01/ses-1/pet/sub-01_ses-1_trc-FDG_pet.nii.gz"),
        ("sub-01/ses-2/anat/sub-01_ses-2_desc-refaced_T1w.nii.gz", "sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz"),
        ("sub-01/ses-2/ct/sub-01_ses-2_desc-refaced_ct.nii.gz", "sub-01/ses-2/ct/sub-01_ses-2_ct.nii.gz"),
    }
    assert {(p.subject, p.session, p.modality) for p in pairs if p.modality == "pet"} == {("01", "1", "pet")}


def test_pairs_in_a_release_keep_their_path(bids_dataset, tmp_path, stub_engine):
    out, _ = _audited(bids_dataset, tmp_path, stub_engine, "--output-layout", "release")
    pairs = find_pairs(bids_dataset, out)
    assert sorted(p.file for p in pairs) == [
        "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz", "sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz",
        "sub-01/ses-1/pet/sub-01_ses-1_trc-FDG_pet.nii.gz", "sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz",
        "sub-01/ses-2/ct/sub-01_ses-2_ct.nii.gz",
    ]
    assert all(p.original == bids_dataset / p.file for p in pairs)


def test_group_audit_writes_its_tables_and_the_output_still_validates(bids_dataset, tmp_path,
                                                                      stub_engine, capfd):
    out, work = _audited(bids_dataset, tmp_path, stub_engine)
    # A refaced image whose original is gone is left out, with a warning.
    (out / "sub-01/ses-2/ct/sub-01_ses-2_desc-refaced_ct.json").write_text(
        json.dumps({"Sources": ["bids:raw:sub-01/ses-2/ct/missing_ct.nii.gz"]}))
    capfd.readouterr()
    assert main([str(bids_dataset), str(out), "group", "--audit", "-w", str(work),
                 "--nprocs", "2"]) == 0
    stdout, err = capfd.readouterr()
    assert err == "" and "missing_ct.nii.gz is not in" in stdout

    rows = [line.split("\t") for line in (out / "group_audit.tsv").read_text().splitlines()]
    assert tuple(rows[0]) == TSV_COLUMNS
    table = [dict(zip(rows[0], row)) for row in rows[1:]]
    assert len(table) == 4 and all((out / row["file"]).is_file() for row in table)
    for row in table:
        assert row["top1_is_own"] in ("True", "False") and row["face_detected"] in ("True", "False")
        assert row["own_rank"] == "n/a" or 1 <= int(row["own_rank"]) <= 4
        assert (row["top1_is_own"] == "True") == (row["own_rank"] == "1")
    summary = json.loads((out / "group_audit.json").read_text())
    assert set(summary) == SUMMARY_KEYS
    assert summary["n_images"] == 4 and summary["chance"] == 1.0  # one participant
    assert "ResNet" in summary["recogniser"]
    assert "group_audit.*" in (out / ".bidsignore").read_text().splitlines()
    assert validate(out) == []


def test_audit_of_too_few_images_is_one_clear_line(bids_dataset, tmp_path, capfd):
    out = tmp_path / "out"
    out.mkdir()
    assert main([str(bids_dataset), str(out), "group", "--audit", "-w", str(tmp_path / "w")]) == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "at least 2 refaced images" in err
    assert not (out / "group_audit.tsv").exists()


def test_missing_extra_is_one_line_naming_the_install(bids_dataset, tmp_path, capfd, monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)  # as if dlib-bin were not installed
    out = tmp_path / "out"
    out.mkdir()
    assert main([str(bids_dataset), str(out), "group", "--audit", "-w", str(tmp_path / "w")]) == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "pip install 'refacebids[audit]'" in err
    assert INSTALL_HINT in err


def test_audit_belongs_to_the_group_level(bids_dataset, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(bids_dataset), str(tmp_path / "out"), "participant", "--audit"])
    assert exc.value.code == 2 and "group level" in capsys.readouterr().err


# --- acceptance: 21 real heads refaced by the engine ----------------------------------------

ACCEPTANCE_HEADS = [*IXI[:20], DATA / "heads" / "t1w_xa30_2mm.nii.gz"]


def _reface(job):
    """Reface one image with the engine's three steps (as tests/test_engine.py does)."""
    from refacebids import engine
    from refacebids.templates import load_template

    in_file, out_file, work = job
    work.mkdir(parents=True)
    template = load_template()
    shutil.copyfile(engine.reface(in_file, template, work)["out_file"], out_file)


def _derivatives(bids, out, refaced_files):
    """The derivatives layout of the participant level: refaced images, ``Sources`` sidecars."""
    from refacebids.workflows.outputs import write_derivatives_description

    write_derivatives_description(out, bids)
    for original, refaced in refaced_files.items():
        relpath = original.relative_to(bids).as_posix()
        target = out / relpath.replace("_T1w.nii.gz", "_desc-refaced_T1w.nii.gz")
        target.parent.mkdir(parents=True)
        shutil.copyfile(refaced, target)
        target.with_name(target.name.replace(".nii.gz", ".json")).write_text(
            json.dumps({"Sources": [f"bids:raw:{relpath}"], "SkullStripped": False}))


@pytest.fixture(scope="module")
def acceptance(tmp_path_factory):
    import multiprocessing

    root = tmp_path_factory.mktemp("audit_acceptance")
    bids = root / "bids"
    originals = []
    for number, head in enumerate(ACCEPTANCE_HEADS, start=1):
        path = bids / f"sub-{number:02d}" / "anat" / f"sub-{number:02d}_T1w.nii.gz"
        path.parent.mkdir(parents=True)
        shutil.copyfile(head, path)
        originals.append(path)
    (bids / "dataset_description.json").write_text(
        json.dumps({"Name": "IXI and XA30 heads", "BIDSVersion": "1.10.0"}))
    jobs = [(p, root / f"refaced_{i}.nii.gz", root / "work" / str(i)) for i, p in enumerate(originals)]
    with multiprocessing.get_context("fork").Pool(2) as pool:
        pool.map(_reface, jobs, chunksize=1)
    results = {}
    for case, files in (("refaced", {p: out for p, out, _ in jobs}),
                        ("broken", {p: p for p in originals})):  # face left untouched
        out = root / case
        _derivatives(bids, out, files)
        assert main([str(bids), str(out), "group", "--audit", "-w", str(root / "w"),
                     "--nprocs", "2"]) == 0
        results[case] = json.loads((out / "group_audit.json").read_text())
        results[case]["flagged"] = (out / "group_audit.tsv").read_text().count("\tTrue\t")
        print(case, results[case])
    return results


@pytest.mark.slow
@pytest.mark.extended
def test_recogniser_matches_originals_across_views(acceptance):
    summary = acceptance["refaced"]
    assert summary["n_images"] == 21 and summary["chance"] == pytest.approx(1 / 21)
    assert summary["rank1_original_vs_original"] >= 0.8  # chance: 4.8 %


@pytest.mark.slow
@pytest.mark.extended
def test_refaced_images_are_matched_at_most_twice_as_often_as_chance(acceptance):
    summary = acceptance["refaced"]
    assert summary["rank1_original_vs_refaced"] <= 2 * summary["chance"]


@pytest.mark.slow
@pytest.mark.extended
def test_refacing_that_left_the_face_is_caught(acceptance):
    baseline = acceptance["refaced"]["rank1_original_vs_original"]
    broken = acceptance["broken"]
    assert broken["rank1_original_vs_refaced"] >= baseline - 0.1
    assert broken["flagged"] == round(broken["rank1_original_vs_refaced"] * 21)
    assert broken["detection_rate_refaced"] >= 0.9
