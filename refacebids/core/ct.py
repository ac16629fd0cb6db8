"""CT heads: registering the T1-weighted template to Hounsfield units, and drawing in them.

Mutual information between the T1w template and a raw CT was measured unreliable
(settings disagreed by 2.7-6.6 mm on the face cut, ../shared/notes/feasibility.md): in
HU the brain, scalp, muscle and fat lie within 150 HU of each other while air and bone
span 3000, so the metric's histogram sees three classes (air, soft, bone) and the
template's bright fat and white matter and dark skull pair with the wrong ones. So:

- the CT is registered as a *pseudo-T1w*: each tissue's typical HU is mapped to its
  typical intensity in the template (fat and white matter bright, grey matter and
  muscle mid-grey, CSF and bone dark, air black), after a slight smoothing that keeps
  8 HU of noise from blurring the 12 HU between grey and white matter;
- the face is drawn from a *pseudo-CT* of the template (air, fat, soft tissue, bone,
  CSF and brain, from its T1w intensities and brain mask) through the lookup table
  learned on the subject's kept tissue, so bone, fat and soft tissue come out at the
  subject's own HU, and nothing outside the image's HU range is written.

On a CT simulated from a real T1w head (tests/test_pet_ct.py) the face cut found this
way lay 1.6 mm (mean) from the one found on the T1w itself; registering the pseudo-CT
template to an HU window instead gave 2.7 mm. Plain mutual information on the raw HU
gave 1.4 mm there, but that CT is made from T1w tissue classes, which flatters it; on a
real CT its settings disagreed by 2.7-6.6 mm.
"""

from __future__ import annotations

from dataclasses import dataclass

from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from .geometry import bounding_box, distance_mm
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
SOFT_RANGE_HU = (-150.0, 150.0)  # fat, fluid, brain and muscle
FLAT_BAND_HU = 60.0  # around the commonest soft tissue: muscle, without fat or bone
AIR_TO_TISSUE_HU = 500.0  # above air by this much, the noise is the tissue's
AIR_EDGE_HU = -400.0  # template HU from which a drawn voxel is partly air
# Teeth (enamel and dentine) and dental metal, and how far from the registered jaw they
# are looked for: a mouth is placed within ~1 cm, and the jaw label may miss a tooth row.
DENTAL_HU = 1500.0
METAL_HU = 3000.0
DENTAL_REACH_MM = 20.0
STREAK_MM = 40.0  # metal streaks run across the slice this far from the metal
# CT -> pseudo-T1w for registration: knots (HU) and template-like intensities. Fat
# -90, CSF 8, white matter 28, grey matter 40, muscle 60, bone from 200 HU.
PSEUDO_T1W_HU = (-1000.0, -300.0, -100.0, -40.0, 8.0, 28.0, 40.0, 60.0, 200.0, 1000.0)
PSEUDO_T1W_VALUES = (0.0, 10.0, 150.0, 120.0, 30.0, 140.0, 95.0, 88.0, 40.0, 15.0)
PSEUDO_T1W_SMOOTHING_VOXELS = 0.7
# Brain in HU: CSF, grey and white matter, fresh blood and oedema. The pseudo-T1w gives
# it 30 (CSF, 8 HU) to 140 (white matter, 28 HU); only air and lung (below -271 HU),
# fat (-114 to -80 HU) and dense bone or metal (above 520 HU) fall outside.
BRAIN_HU = (-20.0, 100.0)


def pseudo_t1w(hu: np.ndarray) -> np.ndarray:
    """(I, J, K) float32 T1w-like image of a CT in HU, for registering the T1w template.

    >>> [round(float(v)) for v in pseudo_t1w(np.full((3, 3, 3), -90.0))[1, 1]]
    [145, 145, 145]
    """
    smooth = ndi.gaussian_filter(hu.astype(np.float32), PSEUDO_T1W_SMOOTHING_VOXELS)
    return np.interp(smooth, PSEUDO_T1W_HU, PSEUDO_T1W_VALUES).astype(np.float32)


def pseudo_t1w_range(low: float, high: float) -> tuple[float, float]:
    """The least and the greatest :func:`pseudo_t1w` value of HU from ``low`` to ``high``
    (of the HU after its smoothing: a region of such HU gives no other value).

    >>> pseudo_t1w_range(*BRAIN_HU)
    (30.0, 140.0)
    >>> pseudo_t1w_range(-1000.0, -300.0)  # air
    (0.0, 10.0)
    """
    knots = [hu for hu in PSEUDO_T1W_HU if low < hu < high]
    values = np.interp([low, *knots, high], PSEUDO_T1W_HU, PSEUDO_T1W_VALUES)
    return float(values.min()), float(values.max())


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
    depth = distance_mm(head, zooms)
    extracranial = head & ~brain
    fat_level, dark_level = np.percentile(t1w[extracranial], [80.0, 30.0])
    # The skull is the shell around the brain mask; its marrow is bright in a T1w.
    skull = distance_mm(~brain, zooms) <= SKULL_MM
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
    """The template with its head redrawn as pseudo-CT (HU + ``TEMPLATE_OFFSET_HU``).

    Written once under ``out_dir``; deterministic, so every step that builds it agrees.
    Labels and brain mask stay the template's own.

    Returns
    -------
    refacebids.templates.Template
    """
    from dataclasses import replace

    head_file = Path(out_dir) / Path(template.t1w).name.replace("_T1w", "_desc-pseudo_ct")
    if not head_file.exists():
        img = nib.load(str(template.t1w))
        brain = np.asanyarray(nib.load(str(template.brain_mask)).dataobj) > 0
        hu = pseudo_ct(np.asanyarray(img.dataobj).astype(np.float32), brain, img.header.get_zooms()[:3])
        # Written under a temporary name first: a reader never sees half a file.
        partial = head_file.with_name("partial_" + head_file.name)
        nib.Nifti1Image(hu + TEMPLATE_OFFSET_HU, img.affine).to_filename(str(partial))
        partial.replace(head_file)
    return replace(template, t1w=head_file)


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


@dataclass(frozen=True)
class CTContrast:
    """How one CT volume looks outside its face (:func:`learn_contrast`)."""

    noise: NoiseModel  # Gaussian, measured on the flat soft tissue
    air_hu: float  # the subject's own air
    air_sd: float  # its noise (0 where the scanner masked it)
    intensity_map: tuple[np.ndarray, np.ndarray]  # pseudo-CT levels, the subject's HU there


def learn_contrast(volume: np.ndarray, training: np.ndarray, template_at_training: np.ndarray,
                   air: np.ndarray, tissue: np.ndarray) -> CTContrast:
    """The contrast of one CT volume (HU, (I, J, K)), learned on its ``training`` voxels
    (the pseudo-CT's values there, (M,)), its ``air`` and the face's ``tissue``
    (arguments as for :func:`refacebids.core.replace.learn_contrast`)."""
    air_values = volume[air]
    return CTContrast(
        noise=estimate_noise(volume, np.zeros_like(tissue), homogeneous_soft_tissue(volume, tissue)),
        air_hu=float(np.median(air_values)) if air_values.size else AIR_HU,
        air_sd=local_noise_sd(volume, air) if air_values.size >= 1000 else 0.0,
        intensity_map=fit_intensity_map(template_at_training, volume[training]),
    )


def reface_volume(
    contrast: CTContrast,
    volume: np.ndarray,
    template_at_voxels: np.ndarray,
    replaced: np.ndarray,
    seam: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, NoiseModel]:
    """New HU for the replaced voxels of a CT volume, in its ``contrast``.

    Arguments and returns as for :func:`refacebids.core.replace.reface_volume`. The
    pseudo-CT template is mapped to the subject's HU by the lookup table learned on
    its kept scalp, skull, neck and air. The noise is Gaussian (CT noise is additive; a
    magnitude model would turn air's -1000 HU positive), with the SD and correlation of
    the subject's flat soft tissue, fading to the SD of the subject's own air (zero where
    the scanner masked it) where the new face is air. Values stay within the volume's
    own HU range.
    """
    model, air_hu, air_sd = contrast.noise, contrast.air_hu, contrast.air_sd
    box = bounding_box(replaced, margin=0)
    signal = np.zeros(volume[box].shape, np.float32)
    # The pseudo-CT is in HU: where it is air, the new face is the subject's own air,
    # whatever the lookup table learned there (a head filling the field of view leaves
    # too little air around it to learn from).
    template_hu = template_at_voxels - TEMPLATE_OFFSET_HU
    air_weight = np.clip((AIR_EDGE_HU - template_hu) / (AIR_EDGE_HU - AIR_HU), 0.0, 1.0)
    mapped_values = apply_intensity_map(template_at_voxels, *contrast.intensity_map)
    signal[replaced[box]] = air_weight * air_hu + (1.0 - air_weight) * mapped_values
    noise = correlated_noise(signal.shape, model, rng)
    noise /= max(local_noise_sd(noise), 1e-6)
    tissue_share = np.clip((signal - air_hu) / AIR_TO_TISSUE_HU, 0.0, 1.0)
    amplitude = np.nan_to_num(air_sd) + tissue_share * (model.tissue_roughness - np.nan_to_num(air_sd))
    noisy = (signal + amplitude * noise)[replaced[box]]
    noisy = np.clip(noisy, float(volume.min()), float(volume.max()))
    values = seam * noisy + (1.0 - seam) * volume[replaced]
    return values.astype(np.float32), model


def dental_region(hu: np.ndarray, labels: np.ndarray, affine: np.ndarray, zooms) -> np.ndarray:
    """Teeth, dental metal and its streaks near the registered jaw, outside the protected region.

    Parameters
    ----------
    hu : (I, J, K) ndarray
        The CT in HU (the reference of a 4D series).
    labels : (I, J, K) uint8 ndarray
        Refacing labels on the image grid (:func:`refacebids.core.warp.image_labels`).
    affine : (4, 4) ndarray
        Voxel-to-world affine (the slice axis is the one closest to head-foot).
    zooms : (3,) sequence

    Returns
    -------
    (I, J, K) bool ndarray
        Voxels of at least ``DENTAL_HU`` within ``DENTAL_REACH_MM`` of the teeth-and-jaw
        label, grown by a voxel, and for metal (``METAL_HU``) the ``STREAK_MM`` around
        it in its slices and the next ones, where reconstruction streaks run.
    """
    from .warp import PROTECTED, TEETH_JAW

    zooms = np.asarray(zooms, float)
    jaw = labels == TEETH_JAW
    if not jaw.any():
        return np.zeros(labels.shape, bool)
    near_jaw = distance_mm(~jaw, zooms) <= DENTAL_REACH_MM
    dense = (hu >= DENTAL_HU) & near_jaw & (labels != PROTECTED)
    region = ndi.binary_dilation(dense)
    metal = dense & (hu >= METAL_HU)
    if metal.any():
        slice_axis = int(np.argmax(np.abs(affine[2, :3]) / zooms))
        # Streaks lie in the slice: a step across slices counts as two thirds of the reach,
        # so the region covers the metal's slices and thins out on their neighbours.
        sampling = zooms.copy()
        sampling[slice_axis] = STREAK_MM / 1.5
        region |= distance_mm(~metal, sampling) <= STREAK_MM
    return region & (labels != PROTECTED)
