"""Thin interfaces that put results in the output dataset, atomically.

Paths are decided when the graph is built (:mod:`refacebids.workflows.outputs`); these
interfaces only copy files and compose sidecars at run time, when checksums, metrics
and timestamps are known. Like nipype's DataSink they always run, even when their
inputs are cached, so that a rerun restores an output folder that was deleted or edited.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from ..utils.atomic import atomic_copy, write_json
from ..utils.bids import sidecar_path
from ..utils.provenance import refaced_sidecar


class _WriteFileInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="file to put in the output dataset")
    out_path = traits.Str(mandatory=True, desc="absolute destination path")
    sidecar = traits.Dict(desc="JSON sidecar written beside the file (same stem)")


class _WriteFileOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the written file")


class WriteFile(SimpleInterface):
    """Copy a file to its place in the output dataset, with an optional sidecar."""

    input_spec = _WriteFileInputSpec
    output_spec = _WriteFileOutputSpec
    _always_run = True

    def _run_interface(self, runtime):
        out_path = Path(self.inputs.out_path)
        self._results["out_file"] = str(atomic_copy(self.inputs.in_file, out_path))
        if self.inputs.sidecar:
            write_json(sidecar_path(out_path), self.inputs.sidecar)
        return runtime


class _WriteRefacedInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="original input image")
    refaced_file = File(exists=True, mandatory=True, desc="refaced image from the engine")
    metrics_file = File(exists=True, mandatory=True, desc="engine metrics JSON")
    metadata = traits.Dict(desc="original sidecar metadata to carry over")
    extra_metadata = traits.Dict(desc="fields added to the sidecar (Sources, SkullStripped)")
    removed_fields = traits.List(traits.Str, desc="identifying fields removed from metadata")
    start_time = traits.Str(mandatory=True, desc="ISO 8601 time the image was started")
    out_path = traits.Str(mandatory=True, desc="absolute destination path of the image")
    command_line = traits.Str(desc="the command that refaced the image, for the provenance")


class _WriteRefacedOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the refaced image in the output dataset")
    out_json = File(exists=True, desc="its sidecar")


class WriteRefaced(SimpleInterface):
    """Write the refaced image, then its sidecar with provenance.

    The image is written first so that the sidecar can state the checksum of the file
    as it lies in the output dataset; a sidecar therefore never describes a missing
    image.
    """

    input_spec = _WriteRefacedInputSpec
    output_spec = _WriteRefacedOutputSpec
    _always_run = True

    def _run_interface(self, runtime):
        out_path = Path(self.inputs.out_path)
        atomic_copy(self.inputs.refaced_file, out_path)
        sidecar = refaced_sidecar(
            metadata={**self.inputs.metadata, **self.inputs.extra_metadata},
            metrics=json.loads(Path(self.inputs.metrics_file).read_text()),
            in_file=self.inputs.in_file,
            out_file=out_path,
            start_time=self.inputs.start_time,
            end_time=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            command_line=self.inputs.command_line or None,
            removed_fields=self.inputs.removed_fields or [],
        )
        self._results["out_file"] = str(out_path)
        self._results["out_json"] = str(write_json(sidecar_path(out_path), sidecar))
        return runtime


class _WriteReportletsInputSpec(BaseInterfaceInputSpec):
    in_files = InputMultiObject(File(exists=True), desc="reportlets from the engine")
    out_dir = traits.Str(mandatory=True, desc="figures folder of the subject")
    name_template = traits.Str(
        mandatory=True, desc="file name with a '{desc}' field, e.g. sub-01_desc-{desc}_T1w"
    )


class _WriteReportletsOutputSpec(TraitedSpec):
    out_files = traits.List(File(exists=True), desc="reportlets as written")


class WriteReportlets(SimpleInterface):
    """Copy reportlets to ``sub-<L>/figures/`` named after their source image.

    This is the hook the HTML report reads from (fMRIPrep layout):
    ``<entities>_desc-<name>_<suffix>.<ext>``, where ``<name>`` is the engine's
    reportlet file name reduced to letters and digits.
    """

    input_spec = _WriteReportletsInputSpec
    output_spec = _WriteReportletsOutputSpec
    _always_run = True

    def _run_interface(self, runtime):
        out_files = []
        for in_file in self.inputs.in_files or []:
            in_file = Path(in_file)
            name, _, ext = in_file.name.partition(".")
            desc = "".join(ch for ch in name if ch.isalnum())
            out_name = self.inputs.name_template.format(desc=desc) + f".{ext}"
            out_file = Path(self.inputs.out_dir) / out_name
            out_files.append(str(atomic_copy(in_file, out_file)))
        self._results["out_files"] = out_files
        return runtime
