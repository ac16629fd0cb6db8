"""A throw-away single-node SLURM cluster on localhost (munged, slurmctld, slurmd).

Everything lives in one temporary folder: configuration, munge key and socket, state,
spool and logs. The daemons run in the foreground as children of the test, so that
stopping them is stopping those processes. Clients find the cluster through
``SLURM_CONF`` in :attr:`SlurmCluster.env`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from .debian import ensure_packages

CPUS = 2
MEMORY_MB = 16_000  # generous: jobs ask for their node's estimate, the machine decides


class SlurmCluster:
    def __init__(self, root: Path, env: dict):
        self.root = root
        self.env = env

    def run(self, *command: str) -> str:
        """Run a SLURM client command against this cluster; return its stdout."""
        return subprocess.run(command, env=self.env, capture_output=True, text=True,
                              check=True, timeout=30).stdout

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
                         for log in sorted(self.root.glob("*.log")))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _slurm_conf(root: Path, node: str) -> str:
    return f"""\
ClusterName=refacebids-test
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge.socket
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=3600
NodeName={node} NodeAddr=127.0.0.1 CPUs={CPUS} RealMemory={MEMORY_MB} State=UNKNOWN
PartitionName=test Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def _wait_for(condition, timeout: float, what: str, cluster: SlurmCluster) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except subprocess.SubprocessError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what} within {timeout:.0f} s\n{cluster.logs()}")


@contextmanager
def slurm_cluster():
    """Install SLURM and munge if missing, start a one-node cluster, stop it on exit."""
    sbin = Path(ensure_packages("slurm-wlm", "munge", provides="slurmctld")).parent
    root = Path(tempfile.mkdtemp(prefix="slurm-"))  # short: the munge socket path is limited
    daemons = []
    node = socket.gethostname().split(".")[0]
    env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf"),
           "PATH": f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"}
    cluster = SlurmCluster(root, env)
    try:
        for folder in ("state", "spool"):
            (root / folder).mkdir()
        (root / "slurm.conf").write_text(_slurm_conf(root, node))
        subprocess.run([str(sbin / "mungekey"), "--create", f"--keyfile={root}/munge.key"],
                       check=True, capture_output=True)
        daemons.append(subprocess.Popen(
            [str(sbin / "munged"), "--foreground", "--force", f"--socket={root}/munge.socket",
             f"--key-file={root}/munge.key", f"--pid-file={root}/munged.pid",
             f"--seed-file={root}/munged.seed", f"--log-file={root}/munged.log"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        ))
        _wait_for(lambda: (root / "munge.socket").exists(), 10, "munged did not start", cluster)
        # -c: start from a clean state; -D: stay in the foreground (our child).
        daemons.append(subprocess.Popen([str(sbin / "slurmctld"), "-D", "-c"], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        daemons.append(subprocess.Popen([str(sbin / "slurmd"), "-D", "-N", node], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        _wait_for(lambda: cluster.run("sinfo", "-h", "-o", "%T").strip() == "idle", 60,
                  "the SLURM node did not come up idle", cluster)
        yield cluster
    finally:
        try:
            jobs = cluster.run("squeue", "-h", "-o", "%i").split()
            if jobs:
                cluster.run("scancel", *jobs)
        except (subprocess.SubprocessError, OSError):
            pass
        for daemon in reversed(daemons):
            daemon.terminate()
        for daemon in reversed(daemons):
            try:
                daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        shutil.rmtree(root, ignore_errors=True)
