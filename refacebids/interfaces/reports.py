"""Thin Nipype interface drawing the per-image report figures."""

from __future__ import annotations

import dataclasses
import os

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from ..core.image import load_head_image
from ..core.warp import PROTECTED
from ..reports.reportlets import renders_before_after, slices_before_after
from ..utils.memory import reuse_freed_memory
from ..utils.threads import in_parallel


class _ReportletsInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="original image")
    values_file = File(exists=True, mandatory=True,
                       desc="the refaced image's stored values (.npy; in_file's header)")
    mask_file = File(exists=True, mandatory=True, desc="replaced voxels")
    labels_file = File(exists=True, mandatory=True, desc="labels with the protected region (.npy)")
    num_threads = traits.Int(1, usedefault=True, nohash=True, desc="slices and renders at once")


class _ReportletsOutputSpec(TraitedSpec):
    reportlets = InputMultiObject(File(exists=True), desc="PNG figures")


class FaceReportlets(SimpleInterface):
    """Slices with outlines and 3D renders, before and after."""

    input_spec = _ReportletsInputSpec
    output_spec = _ReportletsOutputSpec

    def _run_interface(self, runtime):
        reuse_freed_memory()
        threads = self.inputs.num_threads
        before, refaced_raw, replaced, labels = in_parallel(
            threads,
            lambda: load_head_image(self.inputs.in_file),
            lambda: np.load(self.inputs.values_file),
            lambda: np.asanyarray(nib.load(self.inputs.mask_file).dataobj) > 0,
            lambda: np.load(self.inputs.labels_file),
        )
        after = dataclasses.replace(before, raw=refaced_raw)
        protected = labels == PROTECTED
        slices = os.path.join(runtime.cwd, "slices.png")
        renders = os.path.join(runtime.cwd, "renders.png")
        before_values, after_values = before.reference(), after.reference()
        in_parallel(
            threads,
            lambda: slices_before_after(
                before_values, after_values, before.affine, replaced, protected, slices, labels=labels,
            ),
            lambda: renders_before_after(before_values, after_values, before.affine, renders, threads=threads),
        )
        self._results["reportlets"] = [slices, renders]
        return runtime
