"""Thin Nipype interfaces around the engine steps in :mod:`refacebids.engine`."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import zlib
from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from .. import engine
from ..core.registration import SCALP, check_failures
from ..templates import load_template
from ..utils.memory import reuse_freed_memory
from ..utils.threads import use_itk_threads


def _set_up_node_process(threads: int) -> None:
    """A node may run in a process of its own (a batch job): threads and memory reuse
    as the command sets them for its own and its forked workers."""
    use_itk_threads(threads)
    reuse_freed_memory()


def _uncompressed(in_file: str, folder: str) -> str:
    """The image as the steps after registration read it: a compressed image decompressed
    once into ``folder`` (the same NIfTI bytes), as each step reads the whole image again
    (0.3 s for a 1 mm head). An uncompressed image, or one that does not decompress (the
    engine's reading then says what is wrong with it), is used where it is."""
    if not in_file.endswith(".gz"):
        return in_file
    out_file = os.path.join(folder, "image.nii")
    try:
        with gzip.open(in_file, "rb") as source, open(f"{out_file}.tmp", "wb") as target:
            shutil.copyfileobj(source, target, 1 << 22)
    except (OSError, EOFError, zlib.error):
        Path(f"{out_file}.tmp").unlink(missing_ok=True)
        return in_file
    os.replace(f"{out_file}.tmp", out_file)
    return out_file


class _RegisterInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="image to reface")
    template = traits.Str(mandatory=True, desc="template name or folder")
    seed = traits.Int(42, usedefault=True, desc="random seed of the metric sampling")
    num_threads = traits.Int(1, usedefault=True, nohash=True, desc="ITK threads")
    modality = traits.Str("T1w", usedefault=True, desc="BIDS suffix (T1w, ..., pet, ct)")
    frame_durations = traits.List(traits.Float, desc="PET FrameDuration (s), one per frame")


class _RegisterOutputSpec(TraitedSpec):
    composite = File(exists=True, desc="template -> image transform (ITK composite .h5)")
    registration = File(exists=True, desc="registration record (JSON)")
    image_file = File(exists=True, desc="the image, uncompressed, for the steps after this one")


class RegisterTemplate(SimpleInterface):
    """Register the template head to the image (rigid, affine, SyN; mutual information)."""

    input_spec = _RegisterInputSpec
    output_spec = _RegisterOutputSpec

    def _run_interface(self, runtime):
        _set_up_node_process(self.inputs.num_threads)
        image_file = _uncompressed(self.inputs.in_file, runtime.cwd)
        record = self._register(image_file, runtime.cwd)
        if not record["ok"]:
            raise engine.RegistrationFailed(
                f"template registration failed ({'; '.join(check_failures(record))}); not refaced")
        self._results["composite"] = record["composite"]
        self._results["registration"] = os.path.join(runtime.cwd, "registration.json")
        self._results["image_file"] = image_file
        return runtime

    def _register(self, image_file: str, out_dir: str) -> dict:
        return engine.register_image(image_file, load_template(self.inputs.template), out_dir, **self._options())

    def _options(self) -> dict:
        return {
            "seed": self.inputs.seed,
            "threads": self.inputs.num_threads,
            "modality": self.inputs.modality,
            "frame_durations": self.inputs.frame_durations or None,
        }


class _RegisterThroughAnatInputSpec(_RegisterInputSpec):
    anat_file = File(exists=True, mandatory=True, desc="T1w of the image's session")
    anat_xfm = File(exists=True, mandatory=True, desc="the T1w's template -> T1w transform")
    anat_registration = File(exists=True, mandatory=True,
                             desc="the T1w's registration record (JSON)")


class RegisterThroughAnat(RegisterTemplate):
    """Register the template to the image through its session's T1w (``--pet-anat auto``).

    Rigid to the T1w, then the T1w's template transform; the image's own registration
    when the composed transform fails the check (see :mod:`refacebids.through_anat`).
    """

    input_spec = _RegisterThroughAnatInputSpec

    def _register(self, image_file: str, out_dir: str) -> dict:
        from ..through_anat import register_through_anat

        return register_through_anat(
            image_file,
            self.inputs.anat_file,
            self.inputs.anat_xfm,
            self.inputs.anat_registration,
            load_template(self.inputs.template),
            out_dir,
            **self._options(),
        )


class _MasksInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True)
    template = traits.Str(mandatory=True)
    composite = File(exists=True, mandatory=True)
    registration = File(exists=True, desc="registration record (JSON), for the grid its check mapped")
    num_threads = traits.Int(1, usedefault=True, nohash=True, desc="ITK threads (resampling)")
    modality = traits.Str("T1w", usedefault=True, desc="BIDS suffix (T1w, ..., pet, ct)")
    frame_durations = traits.List(traits.Float, desc="PET FrameDuration (s), one per frame")


class _MasksOutputSpec(TraitedSpec):
    labels_file = File(exists=True, desc="refacing labels and protected region, image grid (.npy)")
    coords_file = File(exists=True, desc="template coordinates on the 2 mm working grid (.npz)")
    skin_file = File(exists=True, desc="signed distance (mm) to the image's skin, image grid (.npy)")
    placement_file = File(exists=True, desc="image -> template affine placing the new face (JSON)")


class WarpLabels(SimpleInterface):
    """Carry the face/ear/teeth/wrap labels and the protected brain region to the image."""

    input_spec = _MasksInputSpec
    output_spec = _MasksOutputSpec

    def _run_interface(self, runtime):
        _set_up_node_process(self.inputs.num_threads)
        masks = engine.compute_masks(
            self.inputs.in_file,
            load_template(self.inputs.template),
            self.inputs.composite,
            runtime.cwd,
            modality=self.inputs.modality,
            frame_durations=self.inputs.frame_durations or None,
            threads=self.inputs.num_threads,
            grid_coordinates=(json.loads(Path(self.inputs.registration).read_text()).get("grid_coordinates")
                              if isdefined(self.inputs.registration) else None),
        )
        self._results.update(labels_file=masks.labels, coords_file=masks.coords, skin_file=masks.skin,
                             placement_file=masks.placement)
        return runtime


class _ReplaceInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True)
    template = traits.Str(mandatory=True)
    modality = traits.Str("T1w", usedefault=True, desc="BIDS suffix (T1w, ..., pet, ct)")
    frame_durations = traits.List(traits.Float, desc="PET FrameDuration (s), one per frame")
    labels_file = File(exists=True, mandatory=True)
    coords_file = File(exists=True, mandatory=True)
    skin_file = File(exists=True, mandatory=True)
    placement_file = File(exists=True, mandatory=True)
    registration = File(exists=True, mandatory=True)
    seed = traits.Int(42, usedefault=True)
    num_threads = traits.Int(1, usedefault=True, nohash=True, desc="threads of the numeric steps")


class _ReplaceOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="refaced image")
    values_file = File(exists=True, desc="the refaced image's stored values (.npy, C order; the "
                       "input's header), for the report to read without decompressing out_file")
    mask_file = File(exists=True, desc="replaced voxels (uint8 mask)")
    metrics_file = File(exists=True, desc="quality numbers and registration record (JSON)")


class ReplaceFace(SimpleInterface):
    """Draw the template's face in the image's contrast and noise; verify the brain."""

    input_spec = _ReplaceInputSpec
    output_spec = _ReplaceOutputSpec

    def _run_interface(self, runtime):
        _set_up_node_process(self.inputs.num_threads)
        template = load_template(self.inputs.template)
        values_file = os.path.join(runtime.cwd, "refaced.npy")
        out_file, mask_file, metrics = engine.replace_face(
            self.inputs.in_file,
            template,
            engine.MaskFiles(self.inputs.labels_file, self.inputs.coords_file, self.inputs.skin_file,
                             self.inputs.placement_file),
            runtime.cwd,
            seed=self.inputs.seed,
            modality=self.inputs.modality,
            frame_durations=self.inputs.frame_durations or None,
            threads=self.inputs.num_threads,
            values_file=values_file,
        )
        with open(self.inputs.registration) as handle:
            registration = json.load(handle)
        metrics["registration"] = {
            **registration["settings"],
            "similarity": registration["similarity"],
            "overlap": registration.get("overlap", SCALP),
            "head_dice": registration["head_dice"],
            "edge_dice": registration.get("edge_dice"),
            "peak_ratio": registration["peak_ratio"],
            "turn_ratio": registration.get("turn_ratio"),
            "brain_like": registration.get("brain_like"),
            "ok": registration["ok"],
        }
        # A registration through the session's T1w that fell back says so.
        metrics["warnings"] = registration.get("warnings", []) + metrics["warnings"]
        metrics["template"] = {"name": template.name, "sha256": template.sha256}
        if metrics["protected_voxels_changed"] or metrics["changed_voxels_outside_replaced"]:
            raise RuntimeError("refacing changed voxels it must not touch; output withheld")
        metrics_file = os.path.join(runtime.cwd, "metrics.json")
        with open(metrics_file, "w") as handle:
            json.dump(metrics, handle, indent=2)
        self._results.update(out_file=out_file, mask_file=mask_file, metrics_file=metrics_file,
                             values_file=values_file)
        return runtime
