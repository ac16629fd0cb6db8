"""Build ``demo/ds-demo``: a small BIDS dataset of real heads (faces intact) for trying refacebids.

Only images whose licence allows redistribution are used, each with its notice:

* ``heads/t1w_xa30_2mm`` and ``heads/t1w_head-ext2_1.6mm`` (BSD-2-Clause),
* ``ixi/IXI049-HH-1358_T1`` and ``ixi/IXI092-HH-1436_T1`` (CC BY-SA 3.0, IXI dataset).

The images are copied byte for byte (checked against ``SHA256SUMS`` of the source
folder), so running the script again gives the same dataset. The source folder is
``../shared/data`` next to the repository, or ``--data``.

Usage::

    python demo/build_demo.py [--data /path/to/shared/data] [--out demo/ds-demo]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_OUT = REPO / "demo" / "ds-demo"

#: participant label -> (source file, sidecar, participants.tsv "source" column)
SUBJECTS = {
    "01": (
        "heads/t1w_xa30_2mm.nii.gz",
        {
            "Manufacturer": "Siemens",
            "ManufacturersModelName": "Prisma Fit",
            "SoftwareVersions": "MR XA30",
            "MagneticFieldStrength": 3,
        },
        "neurolabusc/dcm_qa_xa30",
    ),
    "02": ("heads/t1w_head-ext2_1.6mm.nii.gz", {}, "niivue/niivue-demo-images"),
    "03": (
        "ixi/IXI049-HH-1358_T1.nii.gz",
        {"Manufacturer": "Philips", "MagneticFieldStrength": 3,
         "InstitutionName": "Hammersmith Hospital"},
        "IXI049-HH-1358",
    ),
    "04": (
        "ixi/IXI092-HH-1436_T1.nii.gz",
        {"Manufacturer": "Philips", "MagneticFieldStrength": 3,
         "InstitutionName": "Hammersmith Hospital"},
        "IXI092-HH-1436",
    ),
}

BSD_2_CLAUSE = """\
Redistribution and use in source and binary forms, with or without modification, are
permitted provided that the following conditions are met:

1. Redistributions of source code must retain the above copyright notice, this list of
   conditions and the following disclaimer.
2. Redistributions in binary form must reproduce the above copyright notice, this list
   of conditions and the following disclaimer in the documentation and/or other
   materials provided with the distribution.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS" AND ANY
EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF
MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE DISCLAIMED. IN NO EVENT SHALL
THE COPYRIGHT HOLDER OR CONTRIBUTORS BE LIABLE FOR ANY DIRECT, INDIRECT, INCIDENTAL,
SPECIAL, EXEMPLARY, OR CONSEQUENTIAL DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT
OF SUBSTITUTE GOODS OR SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS
INTERRUPTION) HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT,
STRICT LIABILITY, OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF
THE USE OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
"""

README = """\
# ds-demo: four heads for trying refacebids

A small BIDS dataset of T1-weighted head MRI with the faces intact, built by
`demo/build_demo.py` of refacebids from redistributable public images. It exists to
try and test refacebids (`refacebids demo/ds-demo /tmp/out participant`); it is not
research data.

| participant | image | source | licence |
|---|---|---|---|
| sub-01 | T1w, Siemens Prisma Fit (XA30), 2 mm | github.com/neurolabusc/dcm_qa_xa30 @ 54a9f422 (DICOM converted to NIfTI); acquired by Hu Cheng, Isaiah Innis and Daniel Levitas at Indiana University | BSD-2-Clause |
| sub-02 | T1w, 1.6 mm | github.com/niivue/niivue-demo-images @ f6f98294 (`head-ext2`) | BSD-2-Clause |
| sub-03 | T1w, 2 mm | IXI dataset, subject IXI049-HH-1358 (Hammersmith Hospital) | CC BY-SA 3.0 |
| sub-04 | T1w, 2 mm | IXI dataset, subject IXI092-HH-1436 (Hammersmith Hospital) | CC BY-SA 3.0 |

## Notices

sub-03 and sub-04: IXI dataset, brain-development.org. Licensed under the Creative
Commons Attribution-ShareAlike 3.0 licence
(https://creativecommons.org/licenses/by-sa/3.0/); anything derived from these two
images and redistributed carries the same licence. The copies used here are those held
in github.com/CBICA/NiChart_Project @ 494c25e0 (downsampled to 2 mm there).

sub-01 and sub-02 are distributed under the BSD 2-Clause licence of their source
repositories; the copyright remains with the authors of those repositories. See
LICENSE for the licence text.
"""

LICENSE = f"""\
This dataset combines images under two licences; see README for which is which.

== sub-01, sub-02: BSD 2-Clause licence ==

sub-01: copyright the authors of github.com/neurolabusc/dcm_qa_xa30.
sub-02: copyright the authors of github.com/niivue/niivue-demo-images.

{BSD_2_CLAUSE}
== sub-03, sub-04: Creative Commons Attribution-ShareAlike 3.0 ==

IXI dataset, brain-development.org.
https://creativecommons.org/licenses/by-sa/3.0/legalcode
"""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _checksums(data: Path) -> dict:
    sums = {}
    for line in (data / "SHA256SUMS").read_text().splitlines():
        digest, _, name = line.partition("  ")
        sums[name.strip()] = digest
    return sums


def build(data: Path, out: Path) -> None:
    """Write the demo dataset to ``out`` (replacing it) from the images in ``data``."""
    sums = _checksums(data)
    if out.exists():
        shutil.rmtree(out)
    rows = ["participant_id\tsource"]
    for label, (source, sidecar, origin) in SUBJECTS.items():
        src = data / source
        if _sha256(src) != sums[source]:
            raise SystemExit(f"{src} does not match SHA256SUMS; refusing to build")
        dst = out / f"sub-{label}" / "anat" / f"sub-{label}_T1w.nii.gz"
        dst.parent.mkdir(parents=True)
        shutil.copyfile(src, dst)
        _write(dst.with_name(f"sub-{label}_T1w.json"), json.dumps(sidecar, indent=2) + "\n")
        rows.append(f"sub-{label}\t{origin}")
    _write(out / "participants.tsv", "\n".join(rows) + "\n")
    _write(out / "participants.json", json.dumps({
        "source": {"Description": "where the image comes from (repository or IXI subject)"}
    }, indent=2) + "\n")
    _write(out / "dataset_description.json", json.dumps({
        "Name": "refacebids demo: four T1w heads",
        "BIDSVersion": "1.10.0",
        "DatasetType": "raw",
        "License": "BSD-2-Clause AND CC-BY-SA-3.0 (see LICENSE)",
        "Authors": ["The refacebids developers"],
        "GeneratedBy": [{"Name": "refacebids demo/build_demo.py",
                         "Description": "byte-for-byte copies of public head images"}],
        "SourceDatasets": [
            {"URL": "https://github.com/neurolabusc/dcm_qa_xa30"},
            {"URL": "https://github.com/niivue/niivue-demo-images"},
            {"URL": "https://brain-development.org/ixi-dataset/"},
        ],
        "Acknowledgements": "IXI dataset, brain-development.org; neurolabusc/dcm_qa_xa30; "
                            "niivue/niivue-demo-images.",
        "HowToAcknowledge": "Cite the IXI dataset (brain-development.org) for sub-03 and "
                            "sub-04.",
    }, indent=2) + "\n")
    _write(out / "README", README)
    _write(out / "LICENSE", LICENSE)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared data folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="dataset to write")
    opts = parser.parse_args(argv)
    build(opts.data, opts.out)
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
