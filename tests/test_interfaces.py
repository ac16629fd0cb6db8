"""The thin Nipype interfaces' own file handling."""

from __future__ import annotations

import gzip

from refacebids.interfaces.reface import _uncompressed

from .conftest import DATA


def test_a_compressed_image_is_decompressed_once_byte_for_byte(tmp_path):
    source = DATA / "ixi" / "IXI049-HH-1358_T1.nii.gz"
    copy = _uncompressed(str(source), str(tmp_path))
    assert copy == str(tmp_path / "image.nii")
    assert (tmp_path / "image.nii").read_bytes() == gzip.decompress(source.read_bytes())
    assert _uncompressed(copy, str(tmp_path / "elsewhere")) == copy  # already uncompressed


def test_an_image_that_does_not_decompress_is_left_to_the_engine_to_refuse(tmp_path):
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes((DATA / "ixi" / "IXI049-HH-1358_T1.nii.gz").read_bytes()[:300_000])
    out = tmp_path / "out"
    out.mkdir()
    assert _uncompressed(str(truncated), str(out)) == str(truncated)
    assert list(out.iterdir()) == []  # no partial copy left
