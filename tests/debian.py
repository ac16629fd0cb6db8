"""Install Debian packages a test needs (Chromium, SLURM) when they are missing.

CI starts on a machine with nothing installed that the project does not install itself;
tests that drive a real browser or scheduler bring their own packages through this.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess

# Test workers (pytest-xdist) may ask at once; apt/dpkg allow one install at a time.
LOCK_FILE = "/tmp/refacebids-tests-apt.lock"
# Daemons (slurmctld, munged) install to sbin, which a user's PATH often leaves out.
SYSTEM_BIN = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")


def ensure_packages(*packages: str, provides: str) -> str:
    """Install ``packages`` with apt-get unless the ``provides`` command is on PATH.

    Returns
    -------
    str
        Absolute path of the ``provides`` command (searched on PATH and in ``SYSTEM_BIN``).
    """
    search = os.pathsep.join([os.environ.get("PATH", ""), *SYSTEM_BIN])
    with open(LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = shutil.which(provides, path=search)
        if found:
            return found
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": os.pathsep.join(SYSTEM_BIN)}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
                       check=True, env=env, capture_output=True)
    found = shutil.which(provides, path=search)
    if not found:
        raise RuntimeError(f"installing {' '.join(packages)} did not provide {provides}")
    return found
