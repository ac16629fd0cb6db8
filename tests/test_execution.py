"""Execution options: plugin settings files, resources per node, ITK threads per process."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from refacebids.cli.execution import (
    BATCH_POLL_S,
    LOCAL_POLL_S,
    execution_from_options,
    load_plugin_file,
    prepare_batch_jobs,
)
from refacebids.cli.parser import build_parser
from refacebids.cli.run import main
from refacebids.templates import load_template
from refacebids.utils.bids import collect_images
from refacebids.workflows.base import init_refacebids_wf
from refacebids.workflows.resources import image_peak_gb

from .conftest import DATA, REPO, T1W_A


def _opts(*extra):
    return build_parser().parse_args(["in", "out", "participant", *extra])


def test_options_parse():
    opts = _opts("--mem-gb", "6.5", "--use-plugin", "plugin.yml")
    assert opts.mem_gb == 6.5 and str(opts.use_plugin) == "plugin.yml"
    assert _opts().mem_gb is None and _opts().use_plugin is None


@pytest.mark.parametrize("value", ["0", "-1", "nan", "lots"])
def test_bad_memory_is_refused(value, capsys):
    with pytest.raises(SystemExit) as exc:
        _opts("--mem-gb", value)
    assert exc.value.code == 2
    assert "--mem-gb" in capsys.readouterr().err


def test_help_lists_the_execution_options():
    result = subprocess.run([sys.executable, "-m", "refacebids.cli.run", "--help"],
                            capture_output=True, text=True, check=True)
    assert "--mem-gb" in result.stdout and "--use-plugin" in result.stdout


def test_default_is_multiproc_with_the_command_line_resources():
    execution = execution_from_options(_opts("--nprocs", "3", "--mem-gb", "5"))
    assert execution.plugin == "MultiProc"
    assert execution.plugin_args == {"n_procs": 3, "memory_gb": 5.0, "raise_insufficient": False}
    assert execution.poll_sleep_duration == LOCAL_POLL_S


def test_plugin_file_yaml_and_json(tmp_path):
    yml = tmp_path / "plugin.yml"
    yml.write_text("plugin: SLURM\nplugin_args:\n  sbatch_args: --partition=short\n"
                   "  max_jobs: 50\n")
    execution = execution_from_options(_opts("--use-plugin", str(yml)))
    assert execution.plugin == "SLURM"
    assert execution.plugin_args == {"sbatch_args": "--partition=short", "max_jobs": 50}
    assert execution.poll_sleep_duration == BATCH_POLL_S
    js = tmp_path / "plugin.json"
    js.write_text(json.dumps({"plugin": "MultiProc", "plugin_args": {"n_procs": 7}}))
    execution = execution_from_options(_opts("--use-plugin", str(js), "--nprocs", "2",
                                              "--mem-gb", "4"))
    # The file's n_procs wins; what it does not say comes from the command line.
    assert execution.plugin_args == {"n_procs": 7, "memory_gb": 4.0, "raise_insufficient": False}
    linear = tmp_path / "linear.yml"
    linear.write_text("plugin: Linear\n")
    assert execution_from_options(_opts("--use-plugin", str(linear))).plugin_args == {}


@pytest.mark.parametrize(("text", "message"), [
    ("plugin: Slurmish\n", "'Slurmish' is not a Nipype plugin"),
    ("plugin: SLURMGraph\n", "'SLURMGraph' submits the graph and returns without waiting"),
    ("plugin_args: {n_procs: 2}\n", "needs a 'plugin:' name"),
    ("plugin: MultiProc\nplugin_args: [1, 2]\n", "'plugin_args:' must be a mapping"),
    ("plugin: [MultiProc\n", "not YAML or JSON"),
])
def test_bad_plugin_file_is_one_line_naming_it(tmp_path, text, message):
    path = tmp_path / "plugin.yml"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(message)) as exc:
        load_plugin_file(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_bad_plugin_file_stops_the_command(bids_dataset, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(bids_dataset), str(tmp_path / "out"), "participant",
              "-w", str(tmp_path / "work"), "--use-plugin", str(tmp_path / "missing.yml")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"--use-plugin {tmp_path / 'missing.yml'}: cannot read it" in err
    assert not (tmp_path / "out").exists()


def test_linear_plugin_file_gives_the_multiproc_outputs(bids_dataset, tmp_path, stub_engine):
    linear = tmp_path / "linear.json"
    linear.write_text(json.dumps({"plugin": "Linear"}))
    outputs = {}
    runs = {"multiproc": ["--nprocs", "2"], "linear": ["--use-plugin", str(linear)]}
    for name, extra in runs.items():
        assert main([str(bids_dataset), str(tmp_path / name), "participant", "-w",
                     str(tmp_path / f"work_{name}"), "--participant-label", "02",
                     "--skip-bids-validation", *extra]) == 0
        outputs[name] = {path.relative_to(tmp_path / name): gzip.decompress(path.read_bytes())
                         for path in (tmp_path / name).rglob("*.nii.gz")}
    assert len(outputs["linear"]) == 2  # the refaced image and its mask
    assert outputs["linear"] == outputs["multiproc"]


def test_memory_estimate_follows_the_image_size():
    small = image_peak_gb(T1W_A)  # 120 x 120 x 90
    large = image_peak_gb(DATA / "heads" / "t1w_uih-1115_0.5mm.nii.gz")  # 460 x 512 x 160
    # The benchmark measured 0.63 and 3.46 GB peak for these two heads.
    assert 0.55 < small < 0.8
    assert 3.2 < large < 3.8
    assert image_peak_gb(REPO / "README.md") > 1.0  # not an image: a 1 mm head's share


def _workflow(tmp_path, omp_nthreads):
    jobs = collect_images(REPO / "demo" / "ds-demo", ["03"], None, validate=False)
    return init_refacebids_wf(jobs=jobs, output_dir=tmp_path / "out", work_dir=tmp_path / "w",
                              template=load_template(), omp_nthreads=omp_nthreads,
                              output_layout="derivatives", bids_dir=REPO / "demo" / "ds-demo")


def _sbatch_args(workflow):
    return {name.rsplit(".", 1)[-1]: workflow.get_node(name).plugin_args.get("sbatch_args")
            for name in workflow.list_node_names()}


def test_slurm_jobs_ask_for_their_node_resources(tmp_path, monkeypatch):
    monkeypatch.delenv("LOGNAME", raising=False)
    workflow = _workflow(tmp_path, omp_nthreads=2)
    settings = tmp_path / "slurm.yml"
    settings.write_text("plugin: SLURM\nplugin_args:\n  sbatch_args: --partition=short\n")
    prepare_batch_jobs(workflow, load_plugin_file(settings), mem_gb=None)
    requests = _sbatch_args(workflow)
    peak_mb = round(image_peak_gb(REPO / "demo/ds-demo/sub-03/anat/sub-03_T1w.nii.gz") * 1024)
    for threaded in ("register", "mask", "replace", "report"):
        assert requests[threaded] == f"--cpus-per-task=2 --mem={peak_mb}M"
    # Writers run inside the refacebids process, not as jobs.
    assert requests["ds_image"] is None and requests["start"] is None
    assert os.environ["LOGNAME"]  # nipype names the jobs after it


def test_mem_gb_caps_requests_and_user_flags_win(tmp_path):
    workflow = _workflow(tmp_path, omp_nthreads=1)
    settings = tmp_path / "slurm.yml"
    settings.write_text("plugin: SLURM\n")
    prepare_batch_jobs(workflow, load_plugin_file(settings), mem_gb=0.5)
    assert _sbatch_args(workflow)["replace"] == "--cpus-per-task=1 --mem=512M"
    workflow = _workflow(tmp_path, omp_nthreads=1)
    settings.write_text("plugin: SLURM\nplugin_args:\n  sbatch_args: --mem=8G -c 4\n")
    prepare_batch_jobs(workflow, load_plugin_file(settings), mem_gb=None)
    assert _sbatch_args(workflow)["replace"] is None
    workflow = _workflow(tmp_path, omp_nthreads=1)
    settings.write_text("plugin: Linear\n")
    prepare_batch_jobs(workflow, load_plugin_file(settings), mem_gb=None)
    assert set(_sbatch_args(workflow).values()) == {None}


PROBE = textwrap.dedent("""
    import os, sys
    import numpy as np
    from refacebids.utils.threads import use_itk_threads
    use_itk_threads(int(sys.argv[1]))
    before = len(os.listdir("/proc/self/task"))
    import ants
    ants.smooth_image(ants.from_numpy(np.ones((64, 64, 64), "float32")), 2.0)
    print(len(os.listdir("/proc/self/task")) - before)
""")


def _threads_started_by_antspyx(itk_threads: int) -> int:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}  # no ITK variable inherited
    result = subprocess.run([sys.executable, "-c", PROBE, str(itk_threads)], env=env,
                            capture_output=True, text=True, check=True)
    return int(result.stdout.strip().splitlines()[-1])


def test_itk_threads_are_set_in_a_fresh_node_process():
    """A batch job is a fresh process with the scheduler's environment, not ours.

    ITK sizes its pool of worker threads from the setting when antspyx first filters an
    image; antspyx cannot change it afterwards.
    """
    # More threads than this machine's cores, so that ITK's own default cannot pass.
    assert _threads_started_by_antspyx(8) - _threads_started_by_antspyx(1) >= 6
