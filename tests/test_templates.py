"""Templates: the embedded one is complete; a TemplateFlow head gets the refacing labels."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from refacebids.core.warp import FACE, PROTECTED
from refacebids.templates import TemplateError, load_template

from .conftest import DATA, T1W_A


def test_embedded_template_is_complete():
    template = load_template()
    assert template.name == "MNI152EXT"
    labels = np.asanyarray(nib.load(template.dseg).dataobj)
    assert set(np.unique(labels)) == {0, 1, 2, 3, 4, 5, 6}
    brain = nib.load(template.brain_mask)
    volume_ml = np.asanyarray(brain.dataobj).astype(bool).sum() * np.prod(brain.header.get_zooms()) / 1000
    assert 1500 < volume_ml < 2600  # an intracranial volume, not a head


def test_unknown_template_is_refused():
    with pytest.raises(TemplateError, match="unknown template"):
        load_template("NoSuchTemplate")


@pytest.mark.slow
@pytest.mark.extended
def test_templateflow_template_from_the_users_home(tmp_path):
    """A TemplateFlow template found in TEMPLATEFLOW_HOME (no network) refaces a head."""
    home = tmp_path / "templateflow" / "tpl-Colin27Local"
    home.mkdir(parents=True)
    shutil.copyfile(DATA / "templates/colin27_1mm.nii.gz", home / "tpl-Colin27Local_res-01_T1w.nii.gz")
    (home / "template_description.json").write_text(json.dumps({"Name": "Colin27, local copy"}))
    bids = tmp_path / "bids"
    (bids / "sub-01/anat").mkdir(parents=True)
    shutil.copyfile(T1W_A, bids / "sub-01/anat/sub-01_T1w.nii.gz")
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.10.0"}))
    env = {**os.environ, "TEMPLATEFLOW_HOME": str(home.parent), "TEMPLATEFLOW_AUTOUPDATE": "0"}
    command = [str(Path(sys.executable).parent / "refacebids"), str(bids), str(tmp_path / "out"),
               "participant", "-w", str(tmp_path / "work"), "--template", "Colin27Local",
               "--skip-bids-validation"]
    subprocess.run(command, check=True, env=env, capture_output=True)
    adopted = load_template(str(tmp_path / "work/templates/tpl-Colin27Local"))
    labels = np.asanyarray(nib.load(adopted.dseg).dataobj)
    assert (labels == FACE).sum() > 100_000 and PROTECTED not in labels
    sidecar = json.loads((tmp_path / "out/sub-01/anat/sub-01_desc-refaced_T1w.json").read_text())
    provenance = sidecar["RefacebidsProvenance"]
    assert provenance["Template"]["Name"] == "Colin27Local"
    assert provenance["ProtectedVoxelsChanged"] == 0
