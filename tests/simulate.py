"""Simulate FLAIR, T2*-weighted and PET head images from a real T1-weighted head.

No FLAIR, T2*-weighted or PET image *with the face intact* exists in redistributable form, so
the tests derive them from the real T1w heads in ``/work/shared/data``.  Every function here is a
pure function of arrays (voxel data plus voxel size in mm); randomness comes only from a
``numpy.random.Generator`` seeded by the caller, so a given seed always gives the same image.
The images are *plausible*, not quantitatively exact: they exist to exercise refacing on
contrasts where the face, scalp and brain look different from a T1w.

Tissue classes (:func:`tissue_classes`)
    0 air, 1 skin and soft tissue (muscle), 2 fat (and fatty marrow), 3 bone and sinus air
    (dark inside the head), 4 CSF, fluid and eyes, 5 grey matter, 6 white matter.
    Head = everything above half the Otsu threshold of the image, largest connected component,
    closed (4 mm) and hole-filled in 3D and slice by slice (so sinuses, airways and mouth count
    as head).  White matter core = largest component of the voxels deeper than 15 mm in the
    head that fall in the brightest of three k-means intensity clusters, after flattening
    coil shading (division by the 30 mm local in-head mean) and a 2 mm erosion.  Brain = that
    core grown by up to 9 mm through non-dark voxels only (geodesic dilation, so the dark
    skull stops it), closed and hole-filled (so the ventricles are inside).  A bias field (white-matter intensity smoothed over 20 mm by
    normalised convolution) is divided out, then a k-means on the brain gives CSF, GM and WM
    levels; brain voxels are CSF below 35 % of the way from the CSF to the GM level, WM above
    the GM–WM midpoint, GM between.  Outside the brain a second k-means, on the head's own
    non-brain voxels, gives dark (bone, air, fluid), soft-tissue and fat levels, cut at the
    midpoints: fat above the soft–fat midpoint, "dark" below the dark–soft midpoint.  (Cuts
    taken from the brain's levels, as before, put the skin and most facial muscle in the
    dark class: the brain's CSF centre sits at half the WM level, lifted by partial volume,
    above a T1w's skin and facial muscle; on the Philips head 55 % of the head's second
    millimetre was "bone", 28 % now, the rest of it the skin's partial volume with the air.)
    Dark voxels within 3 mm of the brain (extra-axial CSF) or in thick non-air-dark blobs
    (surviving a 5 mm-ball opening: the eyeballs, ~24 mm across) are class 4, the rest
    (skull, sinus and ear-canal air) class 3; everything else in the head is soft tissue.
    Morphology runs on a grid of at most 2 mm voxels (fast on 0.5–1 mm heads).  No random numbers are used, so this
    function takes no seed.

Tissue parameters (:data:`TISSUE_MR`), 3 T
    Relative proton density, T1, T2 and T2* per class.  GM, WM, muscle (skin / soft tissue):
    T1 from Stanisz et al., MRM 54:507 (2005) (WM 1084 ms, GM 1820 ms, muscle 1412 ms), T2
    of GM and WM from the same (99 and 69 ms).  Muscle T2 is an in vivo value, 34 ms: 34 ± 7 ms
    in human muscle at 3 T over spin-echo, multi-echo, fast spin-echo, spiral and SPGR
    measurements (Pai et al., MRI 26:1215, 2008; 27-45 ms by sequence, longer with the
    echo-train length), 29 ms in paravertebral muscle (de Bazelaire et al., Radiology
    230:652, 2004); Stanisz's 50 ms was measured in vitro, on mouse muscle.  Skin takes
    the soft-tissue values: the dermis is hypointense on spin-echo images (Eur J Radiol
    80:e176, 2011), and no in vivo 3 T dermis T2 was found.  CSF T1 4300 ms (Lu et al.,
    MRM 53:808, 2005), T2 ~2000 ms; fat T1 380 ms, T2 130 ms (Gold et al., AJR 183:343,
    2004, subcutaneous fat; de Bazelaire: T1 382 ms; fast spin-echo, like FLAIR's
    readout, shows fat's longer T2 values, up to 143 ms in Pai et al.).  T2* at 3 T: WM
    45 ms, GM 60 ms (Peters et al., MRI 25:748, 2007), muscle 28 ms, fat 30 ms, CSF taken
    as 300 ms (long; flow dephasing shortens it).  Proton densities: WM 0.69, GM 0.80, CSF 1.0,
    muscle 0.75, fat 0.90 (relative to water); cortical bone 0.05 with T2* of 1 ms.
    Class 3 mixes cortical bone and air and is given the bone values; the eyes take CSF values.

MR acquisition and noise (:func:`simulate_flair`, :func:`simulate_t2star`)
    Each class gets its signal from the sequence equation; the label image is smoothed with a
    Gaussian of 1 voxel FWHM (partial volume), multiplied by a smooth random receive-bias
    field (±10 %, a few cycles across the field of view, as in BrainWeb's INU fields), and
    Rician noise is added (independent Gaussian noise on real and imaginary parts, magnitude
    taken) with σ = 3 % of the brightest tissue signal.  The result is scaled to 0–1000 and
    rounded, so it can be stored as int16.

    FLAIR (2D/3D TSE with inversion, TR 9000 ms, TI 2500 ms, TE 120 ms; TI nulls CSF at 3 T):
    S = PD |1 − 2 exp(−TI/T1) + exp(−TR/T1)| exp(−TE/T2).  Gives CSF ≈ 0, GM slightly above
    WM, fat (and fatty marrow) bright: 3.0 times GM; muscle and skin 0.12 times GM.  With
    the noise above (3 % of fat, the brightest tissue) muscle and skin are 1.4 σ, nearly as
    dark as the air, like bone and CSF: the scalp's fat is the head's only bright layer.

    T2*-weighted spoiled GRE (TR 650 ms, TE 20 ms, flip 20°):
    S = PD sin α (1 − E1)/(1 − cos α E1) exp(−TE/T2*), E1 = exp(−TR/T1), so CSF > GM > WM.
    Susceptibility dropout: a susceptibility map (tissue −9.05 ppm, air 0, bone −11.4 ppm; air
    pockets inside the head are the thick parts of class 3, kept by an opening with a 4 mm
    ball, Schenck, Med Phys 23:815, 1996) is turned into a field map by the dipole kernel in
    k-space, D = 1/3 − k_B0²/|k|² (Salomir 2003, Marques & Bowtell 2005), on a grid padded
    with air.  The field gradient across each voxel dephases the spins within it; for a
    linear gradient the signal is multiplied by Π_i |sinc(Δf_i TE)|, Δf_i being the frequency
    change across the voxel along axis i (Fernández-Seara & Wehrli, MRM 44:358, 2000).  This
    darkens the orbitofrontal cortex above the sinuses and the temporal lobes near the ear
    canals.  B0 is along array axis ``b0_axis`` (the caller knows the orientation).

PET (:func:`simulate_pet`)
    Tissue activity comes from compartment models driven by one plasma input function, the
    Feng et al. (Int J Biomed Comput 32:95, 1993) FDG input shape, scaled so that plasma
    activity at 60 min equals the injected activity over body mass (70 kg, i.e. plasma SUV 1).
    Per class, the two-tissue model with rate constants K1, k2, k3, k4 and blood volume vB
    (:data:`PET_KINETICS`) is solved analytically (impulse response convolved with the input)
    on a 1-s grid and averaged over each frame.  FDG: GM K1 0.102 mL/min/mL, k2 0.130, k3
    0.062 /min, WM 0.054/0.109/0.045 (Huang et al., AJP 238:E69, 1980; Phelps et al., Ann
    Neurol 6:371, 1979), k4 = 0; skin and muscle Ki ≈ 0.003 mL/min/mL, fat and bone lower,
    CSF and vitreous only a small reversible exchange.  "amyloid" is an amyloid-negative
    florbetapir/PiB-like reversible tracer: white matter binds non-specifically and stays
    higher than the cortex late (WM VT ≈ 7.5, GM VT ≈ 3), while the cortex is brighter in the
    first minutes (higher K1, perfusion).  "tau" is a flortaucipir/MK-6240-like tau-positive
    tracer: GM VT ≈ 5, WM VT ≈ 3, and off-target binding in the scalp and meninges (skin class).
    Every class except air has non-zero uptake, so the face is visible, as in real PET.

    The activity image (decay-corrected to injection) is blurred with a Gaussian PSF of
    ``fwhm_mm`` (default 5 mm; clinical brain PET after reconstruction is 4–6 mm), using the
    voxel size.  Noise is Poisson-like: Gaussian with variance k·mean·exp(λ t_mid)/duration
    (counts fall with frame length and with decay; the decay correction scales the noise back
    up), k = 6·10⁴ Bq·s/mL, which gives ~10 % voxel noise for a 10-min frame at 10 kBq/mL.
    The noise is spatially correlated (white noise smoothed by 3 mm FWHM and renormalised, like
    reconstruction noise), and negative values are clipped (OSEM is non-negative).
    A static image is one frame in the tracer's usual window (FDG 45–60 min, amyloid 50–70 min,
    tau 80–100 min); a dynamic one has contiguous frames of the given durations starting at
    injection.  The metadata dict holds every sidecar key the BIDS PET specification requires
    (bids-validator 3 schema), with values describing this simulation.
"""

import numpy as np
from scipy import fft, ndimage
from skimage.filters import threshold_otsu

AIR, SOFT_TISSUE, FAT, BONE, CSF, GM, WM = range(7)
CLASS_NAMES = ("air", "soft_tissue", "fat", "bone_air", "csf_eyes", "gm", "wm")

# Per class: relative proton density, T1 (ms), T2 (ms), T2* (ms) at 3 T (sources in the module
# docstring).  Air has no protons.
TISSUE_MR = {
    AIR: (0.0, 1000.0, 1.0, 1.0),
    SOFT_TISSUE: (0.75, 1412.0, 34.0, 28.0),
    FAT: (0.90, 380.0, 130.0, 30.0),
    BONE: (0.05, 1000.0, 1.0, 1.0),
    CSF: (1.0, 4300.0, 2000.0, 300.0),
    GM: (0.80, 1820.0, 99.0, 60.0),
    WM: (0.69, 1084.0, 69.0, 45.0),
}

# Per tracer and class: K1 (mL/min/mL), k2, k3, k4 (/min), blood volume fraction vB.
PET_KINETICS = {
    "fdg": {
        AIR: (0.0, 0.0, 0.0, 0.0, 0.0),
        SOFT_TISSUE: (0.030, 0.30, 0.030, 0.0, 0.02),
        FAT: (0.020, 0.30, 0.020, 0.0, 0.01),
        BONE: (0.010, 0.20, 0.020, 0.0, 0.01),
        CSF: (0.005, 0.10, 0.0, 0.0, 0.0),
        GM: (0.102, 0.130, 0.062, 0.0, 0.05),
        WM: (0.054, 0.109, 0.045, 0.0, 0.03),
    },
    "amyloid": {
        AIR: (0.0, 0.0, 0.0, 0.0, 0.0),
        SOFT_TISSUE: (0.050, 0.10, 0.0, 0.0, 0.02),
        FAT: (0.020, 0.10, 0.0, 0.0, 0.01),
        BONE: (0.020, 0.10, 0.010, 0.010, 0.01),
        CSF: (0.005, 0.05, 0.0, 0.0, 0.0),
        GM: (0.30, 0.15, 0.02, 0.04, 0.05),
        WM: (0.15, 0.04, 0.02, 0.02, 0.03),
    },
    "tau": {
        AIR: (0.0, 0.0, 0.0, 0.0, 0.0),
        SOFT_TISSUE: (0.08, 0.10, 0.02, 0.02, 0.02),
        FAT: (0.020, 0.10, 0.0, 0.0, 0.01),
        BONE: (0.030, 0.10, 0.010, 0.010, 0.01),
        CSF: (0.005, 0.05, 0.0, 0.0, 0.0),
        GM: (0.25, 0.12, 0.03, 0.02, 0.05),
        WM: (0.15, 0.08, 0.02, 0.03, 0.03),
    },
}

# Per tracer: BIDS TracerName, molecular weight (g/mol), molar activity at injection
# (GBq/umol, typical clinical production), injected activity (MBq) and static window (s).
PET_TRACERS = {
    "fdg": ("FDG", 181.15, 200.0, 185.0, (2700.0, 900.0)),
    "amyloid": ("florbetapir", 359.4, 200.0, 370.0, (3000.0, 1200.0)),
    "tau": ("flortaucipir", 262.3, 150.0, 370.0, (4800.0, 1200.0)),
}

F18_HALF_LIFE_S = 6586.2
BODY_MASS_G = 70000.0
PET_NOISE_K = 6.0e4  # Bq·s/mL: variance = k · mean / duration
PET_NOISE_CORRELATION_FWHM_MM = 3.0
COARSE_VOXEL_MM = 2.0
BRAIN_REACH_MM = 9.0
MIN_WM_DEPTH_MM = 15.0
BIAS_SMOOTHING_MM = 20.0
AIR_POCKET_RADIUS_MM = 4.0
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


def _ball(radius_mm, zooms):
    """Boolean ellipsoidal structuring element of ``radius_mm`` on a grid of voxel size ``zooms``."""
    half = [max(int(radius_mm // z), 0) for z in zooms]
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    return sum((g * z) ** 2 for g, z in zip(grids, zooms)) <= radius_mm**2


def _largest_component(mask):
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == sizes.argmax()


def _fill_holes_everywhere(mask):
    """Fill holes in 3-D and in every slice along each axis (cavities open in 3-D, e.g. the
    nasal airway, are still enclosed in most slices)."""
    filled = ndimage.binary_fill_holes(mask)
    for axis in range(3):
        moved = np.moveaxis(filled, axis, 0)
        for index in range(moved.shape[0]):
            moved[index] = ndimage.binary_fill_holes(moved[index])
    return filled


def _kmeans_1d(values, centres, n_iter=50):
    """Lloyd's k-means on 1-D ``values`` from the given initial ``centres`` (deterministic);
    returns the sorted centres.  A regular subsample of at most 50 000 values is enough."""
    values = values[:: max(1, values.size // 50_000)]
    centres = np.sort(np.asarray(centres, dtype=float))
    for _ in range(n_iter):
        nearest = np.abs(values[:, None] - centres[None, :]).argmin(axis=1)
        updated = np.array([values[nearest == c].mean() if np.any(nearest == c) else centres[c]
                            for c in range(len(centres))])
        if np.allclose(updated, centres):
            break
        centres = updated
    return np.sort(centres)


def _upsample(volume, shape, order):
    """Resample ``volume`` to ``shape`` over the same field of view (voxel edges aligned)."""
    return ndimage.zoom(volume, np.array(shape) / np.array(volume.shape), order=order, mode="nearest", grid_mode=True)


def tissue_classes(t1w, zooms):
    """Rough tissue classification of a T1-weighted head.

    Parameters
    ----------
    t1w : ndarray, shape (X, Y, Z)
        T1-weighted head, any real dtype, any orientation.
    zooms : sequence of 3 float
        Voxel size in mm along each array axis.

    Returns
    -------
    labels : ndarray of int8, shape (X, Y, Z)
        0 air, 1 soft tissue (skin, muscle), 2 fat, 3 bone and sinus air, 4 CSF and eyes,
        5 grey matter, 6 white matter (see the module docstring for the method).
    """
    zooms = np.array([float(z) for z in zooms[:3]])
    image = np.asarray(t1w, dtype=np.float32)
    # Light smoothing makes the thresholds robust to noise on fine grids.
    smooth = ndimage.gaussian_filter(image, 0.5 / zooms)
    # Morphology runs on a grid of at most 2 mm voxels: the structures involved are larger
    # than that, and it keeps a 0.5-1 mm head to a few seconds.
    coarse_zooms = np.maximum(zooms, COARSE_VOXEL_MM)
    coarse = ndimage.zoom(smooth, zooms / coarse_zooms, order=1)
    coarse_zooms = zooms * np.array(image.shape) / np.array(coarse.shape)
    clipped = np.minimum(coarse, np.percentile(coarse, 99.5))

    air_threshold = 0.5 * threshold_otsu(clipped)
    head = _largest_component(clipped > air_threshold)
    head = ndimage.binary_closing(head, _ball(4.0, coarse_zooms), border_value=0)
    head = _fill_holes_everywhere(head)

    # Deep inside the head (beyond the scalp fat) intensities cluster into dark (bone, CSF,
    # air), mid (GM, muscle) and bright (WM).  The white matter is the largest bright
    # structure there; the brain is everything not dark within reach of it (the cortex is a
    # few mm thick, the scalp lies beyond the CSF and skull).
    depth = ndimage.distance_transform_edt(head, sampling=coarse_zooms)
    deep = depth > MIN_WM_DEPTH_MM
    # Surface coils make some heads twice as bright at the back as at the front; finding the
    # white matter needs that flattened first (in-head mean over 30 mm).
    sigma = 30.0 / coarse_zooms
    flat = clipped / (ndimage.gaussian_filter(np.where(head, clipped, 0.0), sigma)
                      / (ndimage.gaussian_filter(head.astype(np.float32), sigma) + 1e-3) + 1e-6)
    flat_levels = _kmeans_1d(flat[deep], np.quantile(flat[deep], [1 / 6, 1 / 2, 5 / 6]))
    bright = deep & (flat > 0.5 * (flat_levels[1] + flat_levels[2]))
    wm_core = _largest_component(ndimage.distance_transform_edt(bright, sampling=coarse_zooms) > 2.0)
    dark_level, mid_level, bright_level = _kmeans_1d(
        clipped[deep], np.quantile(clipped[deep], [1 / 6, 1 / 2, 5 / 6]))
    bright_level = np.median(clipped[wm_core])
    not_dark = head & (clipped > 0.5 * (dark_level + mid_level))
    # Grown through non-dark voxels only, so the dark skull stops it reaching the scalp.
    steps = int(round(BRAIN_REACH_MM / coarse_zooms.mean()))
    brain = ndimage.binary_dilation(wm_core, ndimage.generate_binary_structure(3, 2), iterations=steps, mask=not_dark)
    brain = _fill_holes_everywhere(ndimage.binary_closing(brain, _ball(2.0, coarse_zooms)))

    dark_coarse = head & ~brain & (clipped <= 0.5 * (dark_level + mid_level))
    thick_fluid = ndimage.binary_opening(dark_coarse & (clipped > air_threshold), _ball(5.0, coarse_zooms))
    near_brain = ndimage.distance_transform_edt(~brain, sampling=coarse_zooms) <= 3.0

    # Receive-coil bias: white-matter intensity smoothed by normalised convolution (20 mm),
    # tending to the global WM level far from the brain.
    wm = brain & (clipped > 0.5 * (mid_level + bright_level))
    sigma = BIAS_SMOOTHING_MM / coarse_zooms
    weight = ndimage.gaussian_filter(wm.astype(np.float32), sigma) + 1e-3
    bias = (ndimage.gaussian_filter(np.where(wm, clipped, 0.0), sigma) + 1e-3 * bright_level)
    bias = bias / weight / bright_level

    head, brain, thick_fluid, near_brain = (
        _upsample(mask, image.shape, order=0) for mask in (head, brain, thick_fluid, near_brain))
    corrected = smooth / _upsample(bias.astype(np.float32), image.shape, order=1)
    csf_level, gm_level, wm_level = _kmeans_1d(corrected[brain], (dark_level, mid_level, bright_level))
    # Outside the brain the head's own intensities cluster into dark (bone, air, fluid),
    # soft tissue (skin, muscle) and fat; the brain's CSF centre is no guide there (partial
    # volume lifts it to half the WM level, above a T1w's skin and facial muscle).
    outside_brain = head & ~brain
    bone_level, soft_level, fat_level = _kmeans_1d(
        corrected[outside_brain], np.quantile(corrected[outside_brain], [1 / 6, 1 / 2, 5 / 6]))
    dark = outside_brain & (corrected <= 0.5 * (bone_level + soft_level))

    labels = np.full(image.shape, AIR, dtype=np.int8)
    labels[head] = SOFT_TISSUE
    labels[outside_brain & (corrected > 0.5 * (soft_level + fat_level))] = FAT
    labels[dark] = BONE
    labels[dark & (thick_fluid | near_brain)] = CSF
    # The brain mask holds some dura and partial-volume CSF, which lifts the CSF centre: the
    # CSF/GM cut sits nearer the CSF centre than the midpoint.
    in_brain = corrected[brain]
    brain_classes = np.where(in_brain > 0.5 * (gm_level + wm_level), WM, GM).astype(np.int8)
    brain_classes[in_brain <= csf_level + 0.35 * (gm_level - csf_level)] = CSF
    labels[brain] = brain_classes
    return labels


def _class_image(labels, values_per_class):
    """Image holding ``values_per_class[c]`` wherever ``labels == c``."""
    lookup = np.zeros(len(CLASS_NAMES), dtype=np.float32)
    for tissue, value in values_per_class.items():
        lookup[tissue] = value
    return lookup[labels]


def _smooth_bias_field(shape, rng, amplitude=0.10):
    """Multiplicative receive-bias field, 1 ± ``amplitude``: a random low-order sum of cosines
    (one to two cycles across the field of view along each axis)."""
    axes = np.meshgrid(*[np.linspace(0.0, 1.0, n, dtype=np.float32) for n in shape], indexing="ij", sparse=True)
    field = np.zeros(shape, dtype=np.float32)
    for _ in range(4):
        frequencies = rng.uniform(0.5, 2.0, size=3)
        phases = rng.uniform(0.0, 2.0 * np.pi, size=3)
        cosines = [np.cos(np.pi * f * a + p) for f, a, p in zip(frequencies, axes, phases)]
        field += cosines[0] * cosines[1] * cosines[2]
    return 1.0 + amplitude * field / np.abs(field).max()


def _mr_image(labels, signal_per_class, rng, extra_attenuation=None, noise_fraction=0.03):
    """Label image → partial volume (1-voxel FWHM) → bias → Rician noise → 0..1000 integers."""
    signal = _class_image(labels, signal_per_class)
    signal = ndimage.gaussian_filter(signal, 1.0 / FWHM_PER_SIGMA)
    if extra_attenuation is not None:
        signal *= extra_attenuation
    signal *= _smooth_bias_field(labels.shape, rng)
    sigma = noise_fraction * max(signal_per_class.values())
    real = signal + sigma * rng.standard_normal(labels.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(labels.shape, dtype=np.float32)
    magnitude = np.hypot(real, imaginary)
    return np.round(magnitude * (1000.0 / magnitude.max())).astype(np.float32)


def flair_signal(tr_ms=9000.0, ti_ms=2500.0, te_ms=120.0):
    """FLAIR (inversion-recovery TSE) signal per tissue class, magnitude reconstruction.

    Returns
    -------
    dict
        Class label → relative signal.
    """
    signal = {}
    for tissue, (pd, t1, t2, _) in TISSUE_MR.items():
        longitudinal = 1.0 - 2.0 * np.exp(-ti_ms / t1) + np.exp(-tr_ms / t1)
        signal[tissue] = pd * abs(longitudinal) * np.exp(-te_ms / t2)
    return signal


def t2star_signal(tr_ms=650.0, te_ms=20.0, flip_deg=20.0):
    """Spoiled-GRE (T2*-weighted) signal per tissue class.

    Returns
    -------
    dict
        Class label → relative signal.
    """
    flip = np.deg2rad(flip_deg)
    signal = {}
    for tissue, (pd, t1, _, t2star) in TISSUE_MR.items():
        e1 = np.exp(-tr_ms / t1)
        signal[tissue] = pd * np.sin(flip) * (1.0 - e1) / (1.0 - np.cos(flip) * e1) * np.exp(-te_ms / t2star)
    return signal


def simulate_flair(t1w, zooms, seed, *, labels=None):
    """FLAIR-like image from a T1-weighted head.

    Parameters
    ----------
    t1w : ndarray, shape (X, Y, Z)
        T1-weighted head.
    zooms : sequence of 3 float
        Voxel size (mm).
    seed : int
        Seed of the noise and bias field.
    labels : ndarray of int8, shape (X, Y, Z), optional
        Precomputed :func:`tissue_classes` of ``t1w`` (saves recomputing them).

    Returns
    -------
    ndarray of float32, shape (X, Y, Z)
        Integer values in 0..1000 (int16-ready).
    """
    if labels is None:
        labels = tissue_classes(t1w, zooms)
    return _mr_image(labels, flair_signal(), np.random.default_rng(seed))


def susceptibility_dropout(labels, zooms, b0_axis, field_t=3.0, te_ms=20.0):
    """Intravoxel-dephasing signal fraction (0..1) near air, from a dipole-model field map.

    Parameters
    ----------
    labels : ndarray of int, shape (X, Y, Z)
        Tissue classes from :func:`tissue_classes`.
    zooms : sequence of 3 float
        Voxel size (mm).
    b0_axis : int
        Array axis parallel to B0 (the scanner's z, head–foot).

    Returns
    -------
    ndarray of float32, shape (X, Y, Z)
    """
    zooms = np.array([float(z) for z in zooms[:3]])
    # The field varies on the scale of the air pockets: it is computed on a <= 2 mm grid.
    coarse_zooms = np.maximum(zooms, COARSE_VOXEL_MM)

    def to_coarse(mask):
        return ndimage.zoom(mask.astype(np.float32), zooms / coarse_zooms, order=1) > 0.5

    outside, dark = to_coarse(labels == AIR), to_coarse(labels == BONE)
    coarse_zooms = zooms * np.array(labels.shape) / np.array(dark.shape)
    # Susceptibility relative to air (ppm): tissue is diamagnetic, bone slightly more.  Only
    # thick dark regions inside the head (sinuses, airways, ear canals) are taken as air; thin
    # dark shells are bone.
    air_pocket = ndimage.binary_opening(dark, _ball(AIR_POCKET_RADIUS_MM, coarse_zooms))
    coarse = np.where(outside | air_pocket, 0.0, -9.05).astype(np.float32)
    coarse[dark & ~air_pocket] = -11.4
    # Padding with air all round keeps the edge of the field of view from acting as a boundary.
    pad = [(n // 4, n // 4) for n in coarse.shape]
    padded = np.pad(coarse, pad)
    k = np.meshgrid(*[fft.fftfreq(n, d=z) for n, z in zip(padded.shape, coarse_zooms)], indexing="ij", sparse=True)
    k_squared = sum(component**2 for component in k)
    k_squared[0, 0, 0] = 1.0
    dipole = 1.0 / 3.0 - k[b0_axis] ** 2 / k_squared
    dipole[0, 0, 0] = 0.0
    field_ppm = fft.ifftn(fft.fftn(padded, workers=-1) * dipole, workers=-1).real
    field_ppm = field_ppm[tuple(slice(p[0], p[0] + n) for p, n in zip(pad, coarse.shape))]
    field_ppm = _upsample(field_ppm.astype(np.float32), labels.shape, order=1)
    hz_per_ppm = 42.577478 * field_t  # gamma-bar (MHz/T) × B0 (T) = Hz per ppm
    attenuation = np.ones(labels.shape, dtype=np.float32)
    for axis in range(3):
        hz_across_voxel = np.gradient(field_ppm, axis=axis) * hz_per_ppm
        attenuation *= np.abs(np.sinc(hz_across_voxel * te_ms * 1e-3)).astype(np.float32)
    return attenuation


def simulate_t2star(t1w, zooms, seed, *, b0_axis=2, labels=None):
    """T2*-weighted spoiled-GRE-like image with susceptibility dropout.

    Parameters
    ----------
    t1w : ndarray, shape (X, Y, Z)
        T1-weighted head.
    zooms : sequence of 3 float
        Voxel size (mm).
    seed : int
        Seed of the noise and bias field.
    b0_axis : int
        Array axis along B0 (superior–inferior); 2 for RAS/LAS arrays.
    labels : ndarray of int8, shape (X, Y, Z), optional
        Precomputed :func:`tissue_classes` of ``t1w`` (saves recomputing them).

    Returns
    -------
    ndarray of float32, shape (X, Y, Z)
        Integer values in 0..1000 (int16-ready).
    """
    if labels is None:
        labels = tissue_classes(t1w, zooms)
    dropout = susceptibility_dropout(labels, zooms, b0_axis)
    return _mr_image(labels, t2star_signal(), np.random.default_rng(seed), extra_attenuation=dropout)


def plasma_input(t_min, injected_bq):
    """Arterial plasma activity (Bq/mL) at times ``t_min`` (minutes after a bolus).

    Feng et al. (1993) shape, scaled so that plasma at 60 min equals the injected activity over
    body mass (plasma SUV 1).
    """
    a1, a2, a3 = 851.1225, 21.8798, 20.8113
    l1, l2, l3 = -4.133859, -0.1191, -0.0104

    def feng(t):
        return (a1 * t - a2 - a3) * np.exp(l1 * t) + a2 * np.exp(l2 * t) + a3 * np.exp(l3 * t)

    return np.where(t_min > 0, feng(t_min), 0.0) * (injected_bq / BODY_MASS_G / feng(60.0))


def two_tissue_tac(t_min, plasma, k1, k2, k3, k4, vb):
    """Tissue activity of the two-tissue compartment model on a uniform time grid.

    Parameters
    ----------
    t_min : ndarray, shape (T,)
        Uniform time grid (minutes) starting at 0.
    plasma : ndarray, shape (T,)
        Plasma activity on that grid (also used as whole blood).
    k1, k2, k3, k4, vb : float
        Rate constants (K1 in mL/min/mL, the others /min) and blood volume fraction.

    Returns
    -------
    ndarray, shape (T,)
    """
    if k1 == 0.0:
        return vb * plasma
    root = np.sqrt((k2 + k3 + k4) ** 2 - 4.0 * k2 * k4)
    alpha1, alpha2 = (k2 + k3 + k4 - root) / 2.0, (k2 + k3 + k4 + root) / 2.0
    impulse = k1 / (alpha2 - alpha1) * ((k3 + k4 - alpha1) * np.exp(-alpha1 * t_min)
                                        + (alpha2 - k3 - k4) * np.exp(-alpha2 * t_min))
    step = t_min[1] - t_min[0]
    tissue = np.convolve(impulse, plasma)[: len(t_min)] * step
    return (1.0 - vb) * tissue + vb * plasma


def pet_metadata(tracer, frame_starts_s, frame_durations_s, fwhm_mm):
    """BIDS PET sidecar for a simulated acquisition (every key the BIDS PET spec requires)."""
    tracer_name, molecular_weight, molar_activity_gbq_umol, injected_mbq, _ = PET_TRACERS[tracer]
    specific_mbq_per_ug = molar_activity_gbq_umol * 1000.0 / molecular_weight
    return {
        "Manufacturer": "n/a (simulated by refacebids tests/simulate.py)",
        "ManufacturersModelName": f"simulated, Gaussian PSF {fwhm_mm:g} mm",
        "Units": "Bq/mL",
        "BodyPart": "HEAD",
        "TracerName": tracer_name,
        "TracerRadionuclide": "F18",
        "InjectedRadioactivity": injected_mbq,
        "InjectedRadioactivityUnits": "MBq",
        "InjectedMass": round(injected_mbq / specific_mbq_per_ug, 4),
        "InjectedMassUnits": "ug",
        "SpecificRadioactivity": round(specific_mbq_per_ug, 2),
        "SpecificRadioactivityUnits": "MBq/ug",
        "ModeOfAdministration": "bolus",
        "TimeZero": "10:00:00",
        "InjectionStart": 0,
        "ScanStart": float(frame_starts_s[0]),
        "FrameTimesStart": [float(t) for t in frame_starts_s],
        "FrameDuration": [float(d) for d in frame_durations_s],
        "AcquisitionMode": "list mode",
        "ImageDecayCorrected": True,
        "ImageDecayCorrectionTime": 0,
        "ReconMethodName": "3D-OSEM (simulated: Gaussian PSF and correlated noise)",
        "ReconMethodParameterLabels": ["subsets", "iterations"],
        "ReconMethodParameterUnits": ["none", "none"],
        "ReconMethodParameterValues": [21, 3],
        "ReconFilterType": "Gaussian",
        "ReconFilterSize": fwhm_mm,
        "AttenuationCorrection": "n/a (simulated, no attenuation)",
    }


def simulate_pet(t1w, zooms, seed, *, tracer="fdg", frame_durations_s=None, fwhm_mm=5.0, labels=None):
    """PET-like activity image(s) of a head, face and scalp included.

    Parameters
    ----------
    t1w : ndarray, shape (X, Y, Z)
        T1-weighted head.
    zooms : sequence of 3 float
        Voxel size (mm).
    seed : int
        Seed of the noise.
    tracer : {"fdg", "amyloid", "tau"}
    frame_durations_s : sequence of float, optional
        Durations of contiguous frames starting at injection; ``None`` gives one static frame
        in the tracer's usual window and a 3-D result.
    fwhm_mm : float
        Resolution (Gaussian PSF FWHM, mm); 0 for none.
    labels : ndarray of int8, shape (X, Y, Z), optional
        Precomputed :func:`tissue_classes` of ``t1w`` (saves recomputing them).

    Returns
    -------
    activity : ndarray of float32, shape (X, Y, Z) or (X, Y, Z, n_frames)
        Decay-corrected activity concentration (Bq/mL).
    metadata : dict
        BIDS PET sidecar fields.
    """
    if labels is None:
        labels = tissue_classes(t1w, zooms)
    zooms = np.array([float(z) for z in zooms[:3]])
    if frame_durations_s is None:
        start, duration = PET_TRACERS[tracer][4]
        starts, durations = np.array([start]), np.array([duration])
    else:
        durations = np.asarray(frame_durations_s, dtype=float)
        starts = np.concatenate([[0.0], np.cumsum(durations)[:-1]])

    t_s = np.arange(0.0, starts[-1] + durations[-1] + 1.0, 1.0)
    plasma = plasma_input(t_s / 60.0, PET_TRACERS[tracer][3] * 1e6)
    rng = np.random.default_rng(seed)
    noise_sigma = PET_NOISE_CORRELATION_FWHM_MM / FWHM_PER_SIGMA / zooms
    frames = []
    for start, duration in zip(starts, durations):
        in_frame = (t_s >= start) & (t_s < start + duration)
        frame_mean = {tissue: two_tissue_tac(t_s / 60.0, plasma, *PET_KINETICS[tracer][tissue])[in_frame].mean()
                      for tissue in PET_KINETICS[tracer]}
        activity = _class_image(labels, frame_mean)
        if fwhm_mm > 0:
            activity = ndimage.gaussian_filter(activity, fwhm_mm / FWHM_PER_SIGMA / zooms)
        # Counts fall with frame length and with decay; correcting for decay scales noise up.
        decay_correction = np.exp(np.log(2.0) / F18_HALF_LIFE_S * (start + duration / 2.0))
        variance = PET_NOISE_K * np.maximum(activity, 0.0) * decay_correction / duration
        white = rng.standard_normal(labels.shape, dtype=np.float32)
        correlated = ndimage.gaussian_filter(white, noise_sigma)
        correlated /= correlated.std()
        frames.append(np.maximum(activity + np.sqrt(variance) * correlated, 0.0).astype(np.float32))
    volume = frames[0] if frame_durations_s is None else np.stack(frames, axis=-1)
    return volume, pet_metadata(tracer, starts, durations, fwhm_mm)


# CT numbers (HU) per class: air -1000; soft tissue/muscle 45 and fat -90 (typical head-neck
# values); class 3 is bone (1000, a cortical/cancellous average) except its thick parts,
# which are the sinuses and airways (air, as in the T2* model's air pockets); CSF and the
# eyes 8; grey matter 40, white matter 28.
TISSUE_HU = {AIR: -1000.0, SOFT_TISSUE: 45.0, FAT: -90.0, BONE: 1000.0, CSF: 8.0, GM: 40.0, WM: 28.0}
CT_NOISE_HU = 8.0


def simulate_ct(t1w, zooms, seed, *, labels=None):
    """CT-like head (Hounsfield units) from a T1-weighted head, on the same grid.

    Each tissue class takes its CT number (:data:`TISSUE_HU`); thick dark regions inside
    the head (an opening of class 3 with a 4 mm ball) are air, the thin rest is bone. The
    class image is smoothed with a Gaussian of 1 voxel FWHM (partial volume), and Gaussian
    noise of ``CT_NOISE_HU`` SD (correlated over one voxel, as a reconstruction kernel
    makes it) is added; rounded to integers, as scanners store CT.

    Returns
    -------
    ndarray of float32, shape (X, Y, Z)
    """
    if labels is None:
        labels = tissue_classes(t1w, zooms)
    zooms = np.array([float(z) for z in zooms[:3]])
    hu = _class_image(labels, TISSUE_HU)
    air_pocket = ndimage.binary_opening(labels == BONE, _ball(AIR_POCKET_RADIUS_MM, zooms))
    hu[air_pocket] = TISSUE_HU[AIR]
    hu = ndimage.gaussian_filter(hu, 1.0 / FWHM_PER_SIGMA)
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.standard_normal(labels.shape, dtype=np.float32), 0.5)
    hu += CT_NOISE_HU * noise / noise.std()
    return np.round(hu).astype(np.float32)
