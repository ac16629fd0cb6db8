"""CT heads: registering the T1-weighted template to Hounsfield units, and drawing in them.

Mutual information between the T1w template and a raw CT was measured unreliable
(settings disagreed by 2.7-6.6 mm on the face cut, ../shared/notes/feasibility.md): in
HU the brain, scalp, muscle and fat lie within 150 HU of each other while air and bone
span 3000, so the metric's histogram sees three classes (air, soft, bone) and the
template's bright fat and dark skull pair with the wrong ones. Two things fix it:

- the template is redrawn as a *pseudo-CT* (air, fat, soft tissue, bone, CSF, brain in
  HU, from its T1w intensities and brain mask), so template and image show the same
  tissues with the same order of brightness: skull bright, fat darker than muscle;
- both are registered through one *HU window* that spreads fat, fluid, brain and soft
  tissue over most of the metric's range and compresses air and bone.

The pseudo-CT also serves the replacement: the face is drawn from it through the
learned template-to-image lookup table, so bone, fat and soft tissue come out at the
subject's own HU, and nothing outside the image's HU range is written.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from .geometry import bounding_box
from .intensity import apply_intensity_map, fit_intensity_map
from .noise import NoiseModel, correlated_noise, estimate_noise, local_noise_sd
from .surface import head_mask, skin_threshold

AIR_HU = -1000.0
# The pseudo-CT template is stored as HU + 1024 (as many scanners store CT): air near 0,
# tissue positive, like the MRI template whose levels the replacement step assumes.
TEMPLATE_OFFSET_HU = 1024.0
# Typical values of adult head tissue (HU), used only to draw the template.
TISSUE_HU = {"fat": -90.0, "soft_tissue": 45.0, "bone": 900.0, "csf": 8.0, "brain": 35.0}
BONE_MIN_DEPTH_MM = 3.0  # the skin and the fat under it are never bone
SKULL_MM = 6.0  # skull thickness outside the intracranial mask
# Registration window: HU -> unitless, piecewise linear (knots, values). Fat, fluid,
# brain and muscle get most of the range; air and dense bone are compressed.
SOFT_RANGE_HU = (-150.0, 150.0)  # fat, fluid, brain and muscle
FLAT_BAND_HU = 60.0  # around the commonest soft tissue: muscle, without fat or bone
AIR_TO_TISSUE_HU = 500.0  # above air by this much, the noise is the tissue's
WINDOW_HU = (-1000.0, -300.0, -120.0, 0.0, 20.0, 60.0, 300.0, 1500.0)
WINDOW_VALUES = (0.0, 0.05, 0.2, 0.45, 0.55, 0.7, 0.85, 1.0)


def registration_window(hu: np.ndarray) -> np.ndarray:
    """Map HU to the unitless image that is registered (same shape, float32).

    >>> [round(float(v), 3) for v in registration_window(np.array([-2000.0, -1000.0, 0.0, 40.0, 3000.0]))]
    [0.0, 0.0, 0.45, 0.625, 1.0]
    """
    return np.interp(hu, WINDOW_HU, WINDOW_VALUES).astype(np.float32)


def pseudo_ct(t1w: np.ndarray, brain: np.ndarray, zooms) -> np.ndarray:
    """A T1-weighted head template redrawn in Hounsfield units.

    Parameters
    ----------
    t1w : (I, J, K) ndarray
        Template head, T1-weighted (bright fat, dark skull, bright white matter).
    brain : (I, J, K) bool ndarray
        Intracranial mask of the template.
    zooms : (3,) sequence
        Voxel size (mm).

    Returns
    -------
    (I, J, K) float32 ndarray
        Air -1000 HU outside the head; inside, by T1w intensity relative to the head's:
        voxels at least ``BONE_MIN_DEPTH_MM`` under the skin are bone if they are dark
        (facial bones, teeth, and the sinuses, which a T1w cannot tell from bone) or
        within ``SKULL_MM`` of the brain mask (the skull, diploe included),
        bright ones fat, the rest soft tissue; within the brain mask dark is CSF and the
        rest brain. Smoothed by one voxel, as a scanner's resolution would.
    """
    zooms = np.asarray(zooms, float)
    level = skin_threshold(t1w)
    head = head_mask(t1w, zooms, level)
    depth = ndi.distance_transform_edt(head, sampling=zooms)
    extracranial = head & ~brain
    fat_level, dark_level = np.percentile(t1w[extracranial], [80.0, 30.0])
    # The skull is the shell around the brain mask; its marrow is bright in a T1w.
    skull = ndi.distance_transform_edt(~brain, sampling=zooms) <= SKULL_MM
    deep = extracranial & (depth >= BONE_MIN_DEPTH_MM)
    hu = np.full(t1w.shape, AIR_HU, np.float32)
    hu[extracranial] = TISSUE_HU["soft_tissue"]
    hu[extracranial & (t1w >= fat_level)] = TISSUE_HU["fat"]
    hu[deep & ((t1w <= dark_level) | skull)] = TISSUE_HU["bone"]
    brain_dark = np.percentile(t1w[brain], 15.0)
    hu[brain] = TISSUE_HU["brain"]
    hu[brain & (t1w <= brain_dark)] = TISSUE_HU["csf"]
    return ndi.gaussian_filter(hu, 0.5).astype(np.float32)


def ct_template(template, out_dir):
    """The template with its head redrawn as pseudo-CT, written under ``out_dir``.

    Two heads are written: the pseudo-CT in HU + ``TEMPLATE_OFFSET_HU`` (the template's
    ``t1w``, from which the face is drawn) and its registration window (``registration_head``). The labels
    and brain mask are copied beside them: the registration check looks for them next
    to the head it registered. Deterministic, so every step that builds it agrees.

    Returns
    -------
    refacebids.templates.Template
    """
    from dataclasses import replace

    folder = Path(out_dir) / "template_ct"
    folder.mkdir(parents=True, exist_ok=True)
    head_file = folder / Path(template.t1w).name.replace("_T1w", "_desc-pseudo_ct")
    if not (head_file.exists() and registration_head(head_file).exists()):
        img = nib.load(str(template.t1w))
        brain = np.asanyarray(nib.load(str(template.brain_mask)).dataobj) > 0
        hu = pseudo_ct(np.asanyarray(img.dataobj).astype(np.float32), brain, img.header.get_zooms()[:3])
        _save(hu + TEMPLATE_OFFSET_HU, img.affine, head_file)
        _save(registration_window(hu), img.affine, registration_head(head_file))
    copies = {}
    for name in ("brain_mask", "dseg"):
        source = Path(getattr(template, name))
        target = folder / source.name
        if not target.exists():
            shutil.copyfile(source, target)
        copies[name] = target
    return replace(template, path=folder, t1w=head_file, **copies)


def registration_head(pseudo_ct_file) -> Path:
    """The registration window of a pseudo-CT head written by ``ct_template``."""
    path = Path(pseudo_ct_file)
    return path.with_name(path.name.replace("_desc-pseudo_ct", "_desc-window_ct"))


def _save(volume, affine, path: Path) -> None:
    # Written under a temporary name first: a reader never sees half a file.
    partial = path.with_name("partial_" + path.name)
    nib.Nifti1Image(volume.astype(np.float32), affine).to_filename(str(partial))
    partial.replace(path)


def homogeneous_soft_tissue(volume: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """Voxels of ``tissue`` in its most common soft tissue, a voxel away from anything else.

    CT noise is measured where the anatomy is flat: next to bone, air or fat a voxel's
    neighbours differ by tens to hundreds of HU, which is structure, not noise.
    """
    values = volume[tissue]
    values = values[(values > SOFT_RANGE_HU[0]) & (values < SOFT_RANGE_HU[1])]
    if values.size < 1000:
        return tissue
    counts, edges = np.histogram(values, bins=np.arange(SOFT_RANGE_HU[0], SOFT_RANGE_HU[1] + 5, 5))
    mode = edges[np.argmax(counts)] + 2.5
    flat = tissue & (np.abs(volume - mode) < FLAT_BAND_HU)
    eroded = ndi.binary_erosion(flat)
    return eroded if eroded.sum() >= 1000 else flat


def reface_volume(
    volume: np.ndarray,
    template_at_voxels: np.ndarray,
    replaced: np.ndarray,
    training: np.ndarray,
    template_at_training: np.ndarray,
    air: np.ndarray,
    tissue: np.ndarray,
    seam: np.ndarray,
    tissue_level: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, NoiseModel]:
    """New HU for the replaced voxels of a CT volume.

    Same arguments and returns as :func:`refacebids.core.replace.reface_volume`. The
    pseudo-CT template is mapped to the subject's HU by the lookup table learned on
    its kept scalp, skull, neck and air. The noise is Gaussian (CT noise is additive; a
    magnitude model would turn air's -1000 HU positive), with the SD and correlation of
    the subject's flat soft tissue, fading to the SD of the subject's own air (zero where
    the scanner masked it) where the new face is air. Values stay within the volume's
    own HU range.
    """
    del tissue_level  # CT levels are absolute: air is 500 HU below any tissue
    model = estimate_noise(volume, np.zeros_like(tissue), homogeneous_soft_tissue(volume, tissue))
    air_values = volume[air]
    air_hu = float(np.median(air_values)) if air_values.size else AIR_HU
    air_sd = local_noise_sd(volume, air) if air_values.size >= 1000 else 0.0
    levels, mapped = fit_intensity_map(template_at_training, volume[training])
    box = bounding_box(replaced, margin=0)
    signal = np.zeros(volume[box].shape, np.float32)
    signal[replaced[box]] = apply_intensity_map(template_at_voxels, levels, mapped)
    noise = correlated_noise(signal.shape, model, rng)
    noise /= max(local_noise_sd(noise, np.ones(noise.shape, bool)), 1e-6)
    tissue_share = np.clip((signal - air_hu) / AIR_TO_TISSUE_HU, 0.0, 1.0)
    amplitude = np.nan_to_num(air_sd) + tissue_share * (model.tissue_roughness - np.nan_to_num(air_sd))
    noisy = (signal + amplitude * noise)[replaced[box]]
    noisy = np.clip(noisy, float(volume.min()), float(volume.max()))
    values = seam * noisy + (1.0 - seam) * volume[replaced]
    return values.astype(np.float32), model
