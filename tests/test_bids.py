"""Collecting the images to reface from a BIDS dataset of real heads."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from refacebids.utils.bids import (
    BIDSError,
    collect_images,
    is_face_image,
    is_head_image,
    parse_name,
    strip_label,
)

ALL = {
    "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz": "T1w",
    "sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz": "T2w",
    "sub-01/ses-1/pet/sub-01_ses-1_trc-FDG_pet.nii.gz": "pet",
    "sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz": "T1w",
    "sub-01/ses-2/ct/sub-01_ses-2_ct.nii.gz": "ct",
    "sub-02/anat/sub-02_run-1_T1w.nii": "T1w",
}


def test_collects_anat_pet_ct_and_skips_dwi(bids_dataset, caplog):
    with caplog.at_level(logging.INFO, logger="refacebids"):
        jobs = collect_images(bids_dataset)
    assert {job.relpath: job.modality for job in jobs} == ALL
    assert [job.relpath for job in jobs] == sorted(ALL)
    assert "sub-02/dwi/sub-02_dwi.nii.gz" in caplog.text
    assert "datatype dwi is not refaced" in caplog.text


def test_job_fields(bids_dataset):
    jobs = {job.relpath: job for job in collect_images(bids_dataset)}
    pet = jobs["sub-01/ses-1/pet/sub-01_ses-1_trc-FDG_pet.nii.gz"]
    assert pet.path == bids_dataset.resolve() / pet.relpath
    assert (pet.subject, pet.session, pet.datatype, pet.suffix) == ("01", "1", "pet", "pet")
    assert list(pet.entities.items()) == [("sub", "01"), ("ses", "1"), ("trc", "FDG")]
    assert pet.metadata["TracerName"] == "FDG"
    ct = jobs["sub-01/ses-2/ct/sub-01_ses-2_ct.nii.gz"]
    assert (ct.datatype, ct.suffix, ct.session) == ("ct", "ct", "2")
    assert ct.metadata == {"Manufacturer": "VTK"}
    plain = jobs["sub-02/anat/sub-02_run-1_T1w.nii"]
    assert plain.session is None and plain.extension == ".nii"
    assert plain.filename(desc="refaced", suffix="T1w", extension=".nii.gz") == (
        "sub-02_run-1_desc-refaced_T1w.nii.gz")


def test_inherited_sidecar_metadata(bids_dataset):
    jobs = {job.relpath: job for job in collect_images(bids_dataset)}
    # Top-level T1w.json applies to every T1w; the image's own sidecar overrides it.
    ses1 = jobs["sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz"].metadata
    assert ses1["MagneticFieldStrength"] == 1.5
    assert ses1["Manufacturer"] == "Siemens"
    ses2 = jobs["sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz"].metadata
    assert ses2 == {"MagneticFieldStrength": 1.5, "Manufacturer": "Philips"}
    assert "MagneticFieldStrength" not in jobs[
        "sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz"].metadata


def test_inherited_ct_metadata(bids_dataset):
    (bids_dataset / "ct.json").write_text(json.dumps({"Manufacturer": "top",
                                                      "KVP": 120}))
    (bids_dataset / "sub-01" / "sub-01_ct.json").write_text(json.dumps({"KVP": 100}))
    ct = [job for job in collect_images(bids_dataset) if job.suffix == "ct"][0]
    assert ct.metadata == {"Manufacturer": "VTK", "KVP": 100}


def test_session_filter(bids_dataset):
    jobs = collect_images(bids_dataset, session_labels=["ses-1"])
    assert {job.relpath for job in jobs} == {p for p in ALL if "/ses-1/" in p}


def test_participant_filter(bids_dataset):
    jobs = collect_images(bids_dataset, participant_labels=["02"])
    assert [job.relpath for job in jobs] == ["sub-02/anat/sub-02_run-1_T1w.nii"]
    both = collect_images(bids_dataset, participant_labels=["sub-01"], session_labels=["2"])
    assert {job.relpath for job in both} == {
        "sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz", "sub-01/ses-2/ct/sub-01_ses-2_ct.nii.gz"}


def test_unknown_participant_is_an_error(bids_dataset):
    with pytest.raises(BIDSError, match="not found.*: 07"):
        collect_images(bids_dataset, participant_labels=["07"])


def test_not_a_dataset(tmp_path):
    with pytest.raises(BIDSError, match="no dataset_description.json"):
        collect_images(tmp_path)


def test_validation(bids_dataset):
    (bids_dataset / "sub-01/ses-1/anat/sub-01_ses-1_blah.nii.gz").write_bytes(b"x")
    with pytest.raises(BIDSError, match="not a valid BIDS dataset.*blah"):
        collect_images(bids_dataset)
    assert len(collect_images(bids_dataset, validate=False)) == len(ALL)


def test_is_face_image():
    assert is_face_image("sub-01/anat/sub-01_FLAIR.nii.gz")
    assert is_face_image("sub-01/ses-x/pet/sub-01_ses-x_pet.nii")
    assert is_face_image("sub-01/ct/sub-01_ct.nii.gz")
    assert not is_face_image("sub-01/anat/sub-01_T1w.json")
    assert not is_face_image("sub-01/dwi/sub-01_dwi.nii.gz")
    assert not is_face_image("sub-01/anat/sub-01_pet.nii.gz")
    assert not is_face_image("derivatives/x/sub-01/anat/sub-01_T1w.nii.gz")


@given(st.text(alphabet="abcXYZ019", min_size=1, max_size=12))
def test_strip_label_accepts_alphanumerics(label):
    assert strip_label(label, "sub") == label
    assert strip_label(f"sub-{label}", "sub") == label


@given(st.text(min_size=1, max_size=12).filter(lambda s: not s.isascii() or not s.isalnum()))
def test_strip_label_refuses_everything_else(label):
    with pytest.raises(ValueError, match="letters and digits"):
        strip_label(label, "ses")


def test_parse_name_keeps_entity_order():
    assert parse_name("sub-1_acq-b_ce-a_rec-x_run-2_T1w.nii") == (
        {"sub": "1", "acq": "b", "ce": "a", "rec": "x", "run": "2"}, "T1w", ".nii")
    with pytest.raises(BIDSError):
        parse_name("sub-1_bad_T1w.nii.gz")


def test_is_head_image():
    assert is_head_image("sub-01/anat/sub-01_inplaneT2.nii.gz")
    assert is_head_image("sub-01/ses-1/pet/sub-01_ses-1_pet.nii")
    assert not is_head_image("sub-01/anat/sub-01_inplaneT2.json")
    assert not is_head_image("sub-01/func/sub-01_task-x_bold.nii.gz")
    assert not is_head_image("sourcedata/sub-01/anat/sub-01_T1w.nii.gz")
