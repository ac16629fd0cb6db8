"""refacebids on a real SLURM cluster through Nipype's SLURM plugin (``--use-plugin``).

A one-node cluster on localhost (:mod:`tests.slurm_cluster`) runs every node of two
participants as its own batch job; the refaced images must be the ones MultiProc makes
on this machine, byte for byte (the engine is seeded and both runs use one ITK thread).
"""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from .conftest import REPO
from .slurm_cluster import slurm_cluster

DEMO = REPO / "demo" / "ds-demo"
# The two smallest real heads of the demo (IXI, 2 mm): the test's cost is the engine's.
PARTICIPANTS = ("03", "04")
ENGINE_JOBS_PER_IMAGE = 4  # register, mask, replace, report; the writers run in place


def _refacebids(out, work, env, *extra):
    command = [sys.executable, "-m", "refacebids.cli.run", str(DEMO), str(out), "participant",
               "--participant-label", *PARTICIPANTS, "-w", str(work), "--omp-nthreads", "1",
               "--skip-bids-validation", *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def _nifti_bytes(path):
    # gzip headers may carry a time stamp; the image is what must be identical.
    return gzip.decompress(path.read_bytes())


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="munged and slurmd are started as root")
def test_slurm_plugin_gives_the_multiproc_result(tmp_path):
    # The batch jobs run `sys.executable pyscript.py`: the same interpreter as this test,
    # and, through the environment sbatch exports, this checkout on the path.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    local = _refacebids(tmp_path / "multiproc", tmp_path / "work_multiproc", env,
                        "--nprocs", "2")
    assert local.returncode == 0, local.stdout[-3000:] + local.stderr

    settings = tmp_path / "slurm.yml"
    settings.write_text("plugin: SLURM\nplugin_args:\n  sbatch_args: --partition=test\n")
    with slurm_cluster() as cluster:
        result = _refacebids(tmp_path / "slurm", tmp_path / "work_slurm",
                             {**env, **cluster.env}, "--use-plugin", str(settings))
        assert result.returncode == 0, (result.stdout[-3000:] + result.stderr
                                        + cluster.logs())
        assert result.stderr == ""
        jobs = cluster.run("scontrol", "--oneliner", "show", "job")

    # Every engine node ran as a SLURM job that asked for the node's CPUs and memory.
    job_lines = [line for line in jobs.splitlines() if "JobState=COMPLETED" in line]
    assert len(job_lines) == ENGINE_JOBS_PER_IMAGE * len(PARTICIPANTS), jobs
    for line in job_lines:
        assert "NumCPUs=1 " in line, line
        memory = re.search(r"MinMemoryNode=(\d+)M", line).group(1)
        assert 600 <= int(memory) <= 800, line  # image_peak_gb of a 1.3 Mvoxel head
    batch_scripts = list((tmp_path / "work_slurm").rglob("batchscript_*.sh"))
    assert len(batch_scripts) == len(job_lines)
    assert all(sys.executable in script.read_text() for script in batch_scripts)

    for label in PARTICIPANTS:
        original = DEMO / f"sub-{label}/anat/sub-{label}_T1w.nii.gz"
        name = f"sub-{label}/anat/sub-{label}_desc-refaced_T1w.nii.gz"
        by_slurm, by_multiproc = tmp_path / "slurm" / name, tmp_path / "multiproc" / name
        assert _nifti_bytes(by_slurm) == _nifti_bytes(by_multiproc), name
        mask_name = f"sub-{label}/anat/sub-{label}_mod-T1w_defacemask.nii.gz"
        assert _nifti_bytes(tmp_path / "slurm" / mask_name) == _nifti_bytes(
            tmp_path / "multiproc" / mask_name)
        # And it is a refaced head, not a copy: the face changed, nothing else did.
        mask = np.asanyarray(nib.load(tmp_path / "slurm" / mask_name).dataobj) > 0
        before = np.asanyarray(nib.load(original).dataobj)
        after = np.asanyarray(nib.load(by_slurm).dataobj)
        assert np.array_equal(after[~mask], before[~mask])
        assert mask.sum() > 1000 and not np.array_equal(after[mask], before[mask])
