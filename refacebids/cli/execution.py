"""Where and how the nodes run: Nipype plugin settings from the command line.

``--use-plugin FILE`` takes the settings file fMRIPrep uses (YAML or JSON)::

    plugin: SLURM
    plugin_args:
      sbatch_args: --partition=short --time=00:30:00

Without it, nodes run with MultiProc on this machine (``--nprocs``, ``--mem-gb``).
The same graph runs unchanged on Linear, MultiProc or a batch scheduler.
"""

from __future__ import annotations

import getpass
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

# Plugins that run the nodes on this machine: they can poll their workers often.
LOCAL_PLUGINS = ("Linear", "MultiProc", "LegacyMultiProc", "Debug")
# Nipype's default poll (2 s) added ~2 s to every node of an image; 50 ms is free.
LOCAL_POLL_S = 0.05
# Batch plugins poll by running the scheduler's query command once per pending job:
# polling every second keeps that load reasonable on a shared cluster, and is small
# next to a batch job's own start-up.
BATCH_POLL_S = 1.0
# Per-job resource flags for the schedulers whose syntax does not vary between sites.
RESOURCE_FLAGS = {"SLURM": ("sbatch_args", ("--cpus-per-task", "-c ", "--mem"))}


@dataclass
class Execution:
    """A Nipype plugin, its arguments, and how often its loop polls."""

    plugin: str
    plugin_args: dict = field(default_factory=dict)

    @property
    def poll_sleep_duration(self) -> float:
        return LOCAL_POLL_S if self.plugin in LOCAL_PLUGINS else BATCH_POLL_S


def execution_from_options(opts) -> Execution:
    """The plugin to run with: the ``--use-plugin`` file, or MultiProc.

    For MultiProc, ``--nprocs`` and ``--mem-gb`` fill ``n_procs`` and ``memory_gb``
    unless the file sets them.

    Raises
    ------
    ValueError
        One line naming the settings file and what is wrong with it.
    """
    if opts.use_plugin is None:
        execution = Execution("MultiProc")
    else:
        execution = load_plugin_file(opts.use_plugin)
    if execution.plugin in ("MultiProc", "LegacyMultiProc"):
        execution.plugin_args.setdefault("n_procs", opts.nprocs)
        if opts.mem_gb is not None:
            execution.plugin_args.setdefault("memory_gb", opts.mem_gb)
        # A node asking more than the machine has still runs, alone.
        execution.plugin_args.setdefault("raise_insufficient", False)
    return execution


def load_plugin_file(path: Path) -> Execution:
    """Read a Nipype plugin settings file (``plugin:`` and optional ``plugin_args:``)."""
    import yaml
    from nipype.pipeline import plugins
    from nipype.pipeline.plugins.base import GraphPluginBase

    path = Path(path)
    try:
        settings = yaml.safe_load(path.read_text())  # JSON is YAML too
    except OSError as exc:
        raise ValueError(f"--use-plugin {path}: cannot read it ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where else ""
        raise ValueError(f"--use-plugin {path}: not YAML or JSON{line}") from None
    if not isinstance(settings, dict) or not isinstance(settings.get("plugin"), str):
        raise ValueError(f"--use-plugin {path}: needs a 'plugin:' name, e.g. 'plugin: SLURM'")
    name = settings["plugin"]
    # Graph plugins submit the whole graph and return at once: refacebids could not
    # tell which images were refaced.
    waiting = sorted(
        attr[: -len("Plugin")] for attr in dir(plugins)
        if attr.endswith("Plugin") and not issubclass(getattr(plugins, attr), GraphPluginBase)
    )
    if name not in waiting:
        why = ("submits the graph and returns without waiting"
               if hasattr(plugins, f"{name}Plugin") else "is not a Nipype plugin")
        raise ValueError(f"--use-plugin {path}: {name!r} {why}; use one of {', '.join(waiting)}")
    plugin_args = settings.get("plugin_args") or {}
    if not isinstance(plugin_args, dict):
        raise ValueError(f"--use-plugin {path}: 'plugin_args:' must be a mapping")
    return Execution(name, dict(plugin_args))


def prepare_batch_jobs(workflow, execution: Execution, mem_gb: float | None) -> None:
    """Ask the scheduler, per job, for the CPUs and memory its node declares.

    Batch plugins submit every node as its own job, but do not turn ``n_procs`` and
    ``mem_gb`` into job options; without them a 2-thread registration would get one
    CPU and the site's default memory. Flags the user's settings file already gives
    for all jobs are left to the user. ``mem_gb`` caps any one request.
    """
    if execution.plugin in LOCAL_PLUGINS:
        return
    # Nipype's batch plugins name jobs after $LOGNAME, which minimal environments
    # (containers, CI) do not set.
    os.environ.setdefault("LOGNAME", getpass.getuser())
    if execution.plugin not in RESOURCE_FLAGS:
        return
    key, flags = RESOURCE_FLAGS[execution.plugin]
    if any(flag in str(execution.plugin_args.get(key, "")) for flag in flags):
        return
    for name in workflow.list_node_names():
        node = workflow.get_node(name)
        if node.run_without_submitting:
            continue
        memory_gb = node.mem_gb if mem_gb is None else min(node.mem_gb, mem_gb)
        request = f"--cpus-per-task={node.n_procs} --mem={max(1, round(memory_gb * 1024))}M"
        node.plugin_args = {**node.plugin_args, key: request}


def describe(execution: Execution) -> str:
    """One line for the log: plugin and arguments."""
    return f"{execution.plugin} {json.dumps(execution.plugin_args, default=str)}"
