"""The README figure: 3D renders and slices before/after for three heads of different contrasts.

    python docs/make_figure.py   # needs ../shared/data beside the repository

Heads: a real T1w (xa30, BSD-2-Clause), a real T2w (register, BSD-2-Clause, face partly
in view) and a FLAIR simulated from a real T1w head (philips, BSD-2-Clause; no FLAIR
with a face is redistributable) by tests/simulate.py, seed 7.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO / "tests"))

from refacebids import engine  # noqa: E402
from refacebids.core.warp import PROTECTED  # noqa: E402
from refacebids.reports.reportlets import renders_before_after, slices_before_after  # noqa: E402
from refacebids.templates import load_template  # noqa: E402


def flair_from_philips(path: Path) -> None:
    from simulate import simulate_flair

    img = nib.load(DATA / "heads/t1w_philips-adni_1mm.nii.gz")
    values = simulate_flair(img.get_fdata(dtype=np.float32), img.header.get_zooms()[:3], seed=7)
    nib.Nifti1Image(np.rint(values).astype(np.int16), img.affine).to_filename(path)


def panel(in_file: Path, title: str, work: Path) -> Image.Image:
    template = load_template()
    result = engine.reface(in_file, template, work)
    metrics = result["metrics"]
    before, after = nib.load(in_file), nib.load(result["out_file"])
    b, a = before.get_fdata(dtype=np.float32), after.get_fdata(dtype=np.float32)
    replaced = np.asanyarray(nib.load(result["mask_file"]).dataobj) > 0
    protected = np.asanyarray(nib.load(result["masks"].labels).dataobj) == PROTECTED
    renders_before_after(b, a, before.affine, work / "renders.png")
    slices_before_after(b, a, before.affine, replaced, protected, work / "slices.png")
    images = [Image.open(work / "renders.png").convert("RGB"), Image.open(work / "slices.png").convert("RGB")]
    width = max(i.width for i in images)
    out = Image.new("RGB", (width, 24 + sum(i.height for i in images)), "white")
    text = f"{title}: face skin moved >= 2 mm on {metrics['face_surface_moved_fraction']:.0%}"
    ImageDraw.Draw(out).text((6, 6), text, fill="black")
    y = 24
    for image in images:
        out.paste(image, (0, y))
        y += image.height
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        flair = tmp / "flair.nii.gz"
        flair_from_philips(flair)
        heads = [
            (DATA / "heads/t1w_xa30_2mm.nii.gz", "T1w (Siemens XA30, 2 mm)"),
            (DATA / "heads/t2w_register_1x1x2mm.nii.gz", "T2w (1x1x2 mm, face partly in view)"),
            (flair, "FLAIR simulated from a real T1w head (1 mm)"),
        ]
        panels = []
        for index, (path, title) in enumerate(heads):
            (tmp / str(index)).mkdir()
            panels.append(panel(path, title, tmp / str(index)))
    width = max(p.width for p in panels)
    figure = Image.new("RGB", (width, sum(p.height for p in panels)), "white")
    y = 0
    for image in panels:
        figure.paste(image, (0, y))
        y += image.height
    out = REPO / "docs" / "figures" / "before_after.png"
    figure.convert("P", palette=Image.Palette.ADAPTIVE).save(out, optimize=True)
    print(out)


if __name__ == "__main__":
    main()
