"""The refacing engine as three file-level steps: register, mask, replace.

Each step reads and writes files so that the Nipype graph can cache and resume them;
the numerical work lives in :mod:`refacebids.core`. Tests and benchmarks call these
functions directly, without Nipype.
"""

from __future__ import annotations

import dataclasses
import json
from concurrent.futures import Future
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from . import modalities
from .core import warp
from .core.geometry import (
    bounding_box, other_grid_index, resample_aligned, voxels_of_subgrid, working_grid, world_grid,
)
from .core.image import header_warnings, scrubbed_header, to_raw, write_like
from .core.intensity import SKIN_PROFILE_MM, distribution_distance
from .core.noise import local_noise_sd
from .core.registration import WORKING_RESOLUTION_MM, register_template
from .core.replace import (
    FOV_CLEARANCE_MM,
    JOIN_REACH_MM,
    MAX_SKIN_OFFSET_MM,
    RAISE_FADE_MM,
    air_level,
    blended_coordinates,
    clearing_skin_offset,
    edge_weight,
    field_of_view_room,
    fit_head_affine,
    sample_at,
    signed_skin_distance,
    seam_weights,
    smooth_skin_distance,
    wrap_signal,
)
from .core.surface import MOVED_MM, face_surface_moved, head_mask, signed_depth, skin_surface, skin_threshold
from .utils.threads import in_parallel

MAX_TRAINING_SAMPLES = 400_000
# The template's blurred skin reaches this deep (mm); above it, under the raised skin,
# the image's own subcutaneous tissue is drawn.
SKIN_DEPTH_MM = 3.0
MIN_FACE_IN_FOV = 0.9
MIN_MOVED_FRACTION = 0.9  # tissue values are taken this far beneath the template's blurred skin


class RegistrationFailed(RuntimeError):
    """The template could not be registered well enough to reface safely."""


def register_image(
    in_file, template, out_dir, *, seed: int = 42, threads: int = 1,
    modality: str = "T1w", frame_durations=None,
) -> dict:
    """Register the template to the image; write and return the registration record.

    ``modality`` (the BIDS suffix) and ``frame_durations`` (PET sidecar) choose what is
    registered: see :mod:`refacebids.modalities`. A 4D image is registered once.
    """
    out_dir = Path(out_dir)
    head = modalities.load(in_file, modality, frame_durations)
    reference, template_head = modalities.registration_inputs(head, template, modality)
    result = register_template(
        reference, head.affine, template_head, str(out_dir / "tpl2img_"),
        seed=seed, threads=threads, overlap=modalities.registration_overlap(modality),
    )
    record = result.as_dict()
    (out_dir / "registration.json").write_text(json.dumps(record, indent=2))
    return record


@dataclass(frozen=True)
class MaskFiles:
    """What the mask step hands the replace step: NumPy files in the work folder, in the
    C order the steps compute in (a NIfTI file is in Fortran order: transposed as it was
    written and again as it was read, 0.1-0.15 s each at 1 mm).

    Attributes
    ----------
    labels : str
        ``.npy``: (I, J, K) uint8 refacing labels on the image grid, protected region
        included (see :mod:`refacebids.core.warp`).
    coords : str
        ``.npz``: ``packed``, (i, j, k, 4) float32 on the 2 mm working grid (template
        coordinates (mm) and the labels), and the grid's (4, 4) ``affine``.
    skin : str
        ``.npy``: (I, J, K) float32 signed depth (mm) of the image's own head mask (its
        skin) on the image grid: negative inside, positive outside, never 0 (see
        ``surface.signed_depth``).
    placement : str
        JSON: ``head_affine``, the (4, 4) image-world to template-world affine that
        places the replacement (:func:`head_placement`), and ``skin_level``, the
        intensity of the image's skin (``modalities.skin_level``).
    """

    labels: str
    coords: str
    skin: str
    placement: str


def compute_masks(
    in_file, template, composite: str, out_dir, *, modality: str = "T1w", frame_durations=None,
    threads: int = 1, grid_coordinates: str | None = None,
) -> MaskFiles:
    """Carry the refacing labels to the image and find the image's own skin.

    The template coordinates of the 2 mm working grid are the only thing resampled
    through the registration; labels, protected region and the replace step's samples
    are all read off them. ``grid_coordinates`` (the registration record's) holds them
    as the registration's check mapped them; they are mapped here when it is ``None``
    or holds another grid. The image's skin does not depend on the registration: with
    ``threads`` > 1 the two are found at the same time.
    """
    out_dir = Path(out_dir)
    head = modalities.load(in_file, modality, frame_durations)
    shape = head.raw.shape[:3]
    masks = MaskFiles(*(str(out_dir / name) for name in ("labels.npy", "coords.npz", "skin.npy", "placement.json")))

    def image_skin() -> tuple[np.ndarray, float]:
        reference = head.reference()
        level = modalities.skin_level(reference, modality)
        skin = head_mask(reference, head.zooms, level)
        np.save(masks.skin, signed_depth(skin, head.zooms))
        return ~ndi.binary_dilation(skin), level  # outside the head, one voxel clear of the skin's partial volume

    def template_labels() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        coarse_shape, coarse_affine = working_grid(shape, head.affine, WORKING_RESOLUTION_MM)
        coords = _mapped_grid(grid_coordinates, coarse_shape, coarse_affine)
        coords = (warp.template_coordinates(coarse_shape, coarse_affine, template, composite) if coords is None
                  else warp.within_template(coords, template))
        coarse_labels = warp.coarse_labels(coords, template)
        placement = head_placement(coords, coarse_labels, coarse_affine, template_data(template))
        coarse_labels = warp.with_placed_face(
            coarse_labels, warp.placed_labels(coarse_shape, coarse_affine, template, placement))
        packed = np.concatenate([coords, coarse_labels[..., None].astype(np.float32)], axis=-1)
        np.savez(masks.coords, packed=packed, affine=coarse_affine)
        placed = warp.placed_labels(shape, head.affine, template, placement)
        return (*warp.labels_on_grid(coords, coarse_affine, shape, head.affine, template, threads),
                placement, placed)

    (labels, brain_distance, placement, placed), (outside_head, skin_level) = in_parallel(
        threads, template_labels, image_skin)
    Path(masks.placement).write_text(json.dumps({"head_affine": placement.tolist(), "skin_level": skin_level}))
    labels = warp.with_placed_face(warp.protect(labels, brain_distance, outside_head), placed)
    np.save(masks.labels, labels)
    return masks


def _mapped_grid(grid_coordinates: str | None, shape: tuple, affine: np.ndarray) -> np.ndarray | None:
    """(I, J, K, 3) template coordinates of the grid (``shape``, ``affine``) from a
    registration's ``grid_coordinates`` file; ``None`` without one, or when it maps
    another grid (a working image taken as it is, 1.9-2 mm, is not the 2 mm grid)."""
    if grid_coordinates is None:
        return None
    with np.load(grid_coordinates) as mapped:
        coords, mapped_affine = mapped["coords"], mapped["affine"]  # each read of a key reads the file
    return coords if coords.shape[:3] == tuple(shape) and np.array_equal(mapped_affine, affine) else None


def replace_face(
    in_file, template, masks: MaskFiles, out_dir, *, seed: int = 42, modality: str = "T1w",
    frame_durations=None, threads: int = 1, values_file=None,
) -> tuple[str, str, dict]:
    """Replace face, ears, teeth and wrapped face parts; never touch the protected region.

    With ``threads`` > 1 the independent parts (where the new face comes from, what the
    image's contrast is, the seam; writing and measuring the result) run at the same time.
    With ``values_file``, the refaced image's stored values are also saved there (``.npy``
    in C order; its header is the input's), for a step that reads them whole without
    decompressing ``out_file``.

    Returns
    -------
    out_file : str
        The refaced image (input header, dtype and scaling).
    mask_file : str
        uint8 mask of the replaced voxels.
    metrics : dict
        Quality numbers (see docs/architecture.md).
    """
    out_dir = Path(out_dir)
    template = modalities.replacement_template(template, modality, out_dir)

    def image():
        head = modalities.load(in_file, modality, frame_durations)
        values = head.scaled()
        return head, values, values if values.ndim == 3 else head.reference()

    def working_grid_coordinates():
        with np.load(masks.coords) as grid:  # each read of a key reads the file
            return grid["packed"], grid["affine"]

    (head, values, reference), labels, (packed, coarse_affine), skin_depth = in_parallel(
        threads, image, partial(np.load, masks.labels), working_grid_coordinates, partial(np.load, masks.skin),
    )
    zooms = head.zooms
    coords, coarse_labels = packed[..., :3], np.rint(packed[..., 3]).astype(np.uint8)
    tpl = template_data(template)
    tpl_head_level = tpl.head_level
    placement = json.loads(Path(masks.placement).read_text())
    threshold = placement["skin_level"]
    tissue_labels = warp.is_label(labels, warp.TISSUE_LABELS)
    if not tissue_labels.any():
        raise ValueError("the face lies outside the image's field of view")
    head_affine = np.array(placement["head_affine"])
    rng = np.random.default_rng(seed)
    # Found first, and waited for by what needs it: the rest starts beside it.
    region = Future()

    def replaced_voxels():
        try:
            replaced = tissue_labels | wrap_signal(reference, labels == warp.WRAP_AIR, 0.5 * threshold, zooms)
            replaced |= modalities.extra_replaced(reference, labels, head.affine, zooms, modality)
        except BaseException as exc:
            region.set_exception(exc)
            raise
        region.set_result(replaced)
        return replaced

    def correspondence():
        """Where template and image tissue correspond (outside the face, brain and wrap
        band), and where the image's air is."""
        # The registered template on the image grid decides which voxels are which
        # tissue; its values where the contrast is learned are sampled exactly.
        tpl_coarse = sample_at(tpl.t1w, tpl.affine, coords.reshape(-1, 3), -1.0).reshape(coords.shape[:3])
        tpl_registered = resample_aligned(tpl_coarse, coarse_affine, labels.shape, head.affine)
        kept = (labels == 0) & (tpl_registered >= 0)
        training = kept & ((tpl_registered > 0.3 * tpl_head_level) | (reference > 0.5 * threshold))
        training |= kept & (rng.random(labels.shape) < 0.02)  # some air, for the dark end
        training = _subsample(training, MAX_TRAINING_SAMPLES, rng)
        points = _template_points(np.nonzero(training), head.affine, coords, coarse_affine)
        air = warp.is_label(labels, (0, warp.WRAP_AIR)) & (tpl_registered < 0.1 * tpl_head_level)
        air &= reference < threshold
        return tpl_registered, training, sample_at(tpl.t1w, tpl.affine, points, tpl.air), air

    # The face's own roughness (noise and fine texture), a statistic of the region, not a shape.
    face_tissue = tissue_labels & (reference > threshold)
    volumes = values[..., None] if values.ndim == 3 else values
    learn_contrast = modalities.contrast_function(modality, threads)

    def contrasts():
        """Each volume's contrast, learned where template and image correspond and on the
        image's own skin (how it looks outside the face); and what else needs both."""
        tpl_registered, training, template_at_training, air = correspondence()
        skin_distance = smooth_skin_distance(skin_depth)
        low, high = SKIN_PROFILE_MM
        scalp = (labels == 0) & (skin_distance >= low) & (skin_distance < high)
        learned = [learn_contrast(volumes[..., t], training, template_at_training, scalp, skin_distance[scalp],
                                  air, face_tissue, threshold) for t in range(volumes.shape[3])]
        return learned, tpl_registered, skin_distance

    def replacement():
        replaced = region.result()
        face_skin = _face_skin(skin_depth < 0, labels, replaced)
        return _replacement_samples(
            replaced, face_skin, head.affine, zooms, coords, coarse_labels, coarse_affine, head_affine, tpl,
            threads,
        )

    # In this order no thread waits long: the contrast is learned while the region is
    # found and the new face sampled.
    replaced, (learned, tpl_registered, skin_distance), \
        (template_at_voxels, new_skin_distance, template_skin_distance, skin_offset), seam = in_parallel(
            threads,
            replaced_voxels,
            contrasts,
            replacement,
            lambda: seam_weights(region.result(), zooms),
        )
    # Where the image's own skin was: in front of it (air before) the new face is
    # subcutaneous tissue, never template anatomy that a head-affine placement may put
    # there (a template brow in front of a flat forehead).
    padding = (template_skin_distance > -SKIN_DEPTH_MM) | (skin_distance[replaced] > 0)

    raw_out = head.raw.copy(order="K")  # each volume stays C-ordered
    raw_volumes = raw_out[..., None] if raw_out.ndim == 3 else raw_out
    noise_models = []
    reface = modalities.reface_function(modality, zooms, tpl.air, tpl.subcutaneous, threads)
    for t in range(volumes.shape[3]):
        new_values, noise = reface(
            learned[t], volumes[..., t], template_at_voxels, new_skin_distance, padding, replaced, face_tissue,
            seam, threshold, rng,
        )
        raw_volumes[..., t][replaced] = to_raw(new_values, head)
        noise_models.append(noise.as_dict())

    out_file, mask_file = out_dir / "refaced.nii.gz", out_dir / "replaced_mask.nii.gz"
    mask_img = nib.Nifti1Image(
        replaced.astype(np.uint8), head.affine, scrubbed_header(head.img.header)
    )
    mask_img.set_data_dtype(np.uint8)
    mask_img.header.set_slope_inter(None, None)
    # The template's face tissue, brought to image millimetres by the head's affine.
    expected_face_mm3 = tpl.face_mm3 / abs(np.linalg.det(head_affine[:3, :3]))
    # Measured on the stored values written out (the header's scaling, as a reader sees them).
    refaced = dataclasses.replace(head, raw=raw_out)
    writes = [lambda: write_like(raw_out, head, out_file), lambda: mask_img.to_filename(mask_file)]
    if values_file is not None:
        writes.append(lambda: np.save(values_file, raw_out))
    quality, changes, *_ = in_parallel(
        threads,
        lambda: _quality(head, reference, refaced, labels, replaced, tpl_registered, tpl_head_level,
                         threshold, expected_face_mm3),
        lambda: _changes(head, refaced, labels, replaced),
        *writes,
    )
    metrics = {**changes, **quality, "noise": noise_models}
    metrics["warnings"] = quality_warnings(metrics) + header_warnings(head)
    metrics["head_affine_determinant"] = float(np.linalg.det(head_affine[:3, :3]))
    metrics["skin_offset_mm"] = skin_offset
    return str(out_file), str(mask_file), metrics


def reface(in_file, template, out_dir, *, seed: int = 42, threads: int = 1, modality: str = "T1w",
           frame_durations=None) -> dict:
    """The three steps in one process, as the graph runs them (for tests, benchmarks, figures).

    Returns the registration record, the :class:`MaskFiles`, and the replace step's
    ``out_file``, ``mask_file`` and ``metrics``.
    """
    by_modality = dict(modality=modality, frame_durations=frame_durations)
    registration = register_image(in_file, template, out_dir, seed=seed, threads=threads, **by_modality)
    masks = compute_masks(in_file, template, registration["composite"], out_dir, threads=threads,
                          grid_coordinates=registration["grid_coordinates"], **by_modality)
    out_file, mask_file, metrics = replace_face(in_file, template, masks, out_dir, seed=seed,
                                                threads=threads, **by_modality)
    return {"registration": registration, "masks": masks, "out_file": out_file,
            "mask_file": mask_file, "metrics": metrics}


def _template_points(voxels, image_affine, coords, coarse_affine) -> np.ndarray:
    """(N, 3) template coordinates at image voxels, interpolated on the working grid's
    ``coords`` (i, j, k, 3) as :func:`warp.labels_on_grid` does.

    ``voxels`` holds three (N,) index arrays (``np.nonzero`` of a mask on the image grid
    with ``image_affine``).
    """
    coarse_ijk = other_grid_index(voxels, np.linalg.inv(coarse_affine) @ image_affine)
    return np.stack(_on_working_grid(coarse_ijk, *np.moveaxis(coords, -1, 0)), axis=1)


def _on_working_grid(coarse_ijk: np.ndarray, *grids: np.ndarray, threads: int = 1) -> tuple[np.ndarray, ...]:
    """Each (i, j, k) working-grid array of ``grids`` interpolated at the (3, N) continuous
    indices ``coarse_ijk``, ``threads`` arrays at once."""
    return in_parallel(threads, *(
        partial(ndi.map_coordinates, grid, coarse_ijk, order=1, mode="nearest") for grid in grids
    ))


def _replacement_samples(
    replaced, face_skin, image_affine, zooms, coords, coarse_labels, coarse_affine, head_affine,
    tpl: "TemplateData", threads: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Where in the template each replaced voxel is drawn from, and what it finds there.

    The head affine places the template inside the replaced region, the registration
    at its edges. ``replaced`` (I, J, K) bool marks the N replaced voxels of the image
    grid with ``image_affine``, ``face_skin`` (N,) bool those on the subject's face skin;
    ``coords`` (i, j, k, 3) and ``coarse_labels`` (i, j, k) are the registration's
    template coordinates and labels on the working grid. The interpolations at the N
    voxels run on ``threads`` at once.

    Returns
    -------
    template_at_voxels : (N,) float32
        Template intensity at each replaced voxel.
    new_skin_distance : (N,) float64
        Signed distance (image mm, negative inside) to the raised new skin.
    template_skin_distance : (N,) float32
        Signed distance (template mm) to the template's own skin.
    skin_offset : float
        Raise of the new skin in the face (template mm), see ``clearing_skin_offset``.
    """
    registered_skin_distance = sample_at(
        tpl.signed_distance, tpl.signed_distance_affine, coords.reshape(-1, 3), 1e3
    ).reshape(coords.shape[:3])
    replaceable = warp.is_label(coarse_labels, warp.REPLACEABLE)
    joins = (coarse_labels == 0) & (np.abs(registered_skin_distance) <= JOIN_REACH_MM)
    weight = edge_weight(replaceable, joins, coarse_affine)
    # A raised ear is a blob, and a raised cheek against it a wall in front of the ear.
    ears = coarse_labels == warp.EARS
    unraised = edge_weight(replaceable & ~ears, joins | ears, coarse_affine, RAISE_FADE_MM)
    blended = blended_coordinates(coords, weight, head_affine, coarse_affine)
    voxels = np.nonzero(replaced)
    coarse_ijk = other_grid_index(voxels, np.linalg.inv(coarse_affine) @ image_affine)
    coarse_zooms = np.linalg.norm(coarse_affine[:3, :3], axis=0)
    # The raise moves the skin along its normal: the outward gradient of the skin distance.
    at_voxels = _on_working_grid(
        coarse_ijk, *np.moveaxis(blended, -1, 0), unraised,
        *np.gradient(registered_skin_distance, *coarse_zooms), threads=threads,
    )
    sample_points, unraised_at, outward = np.stack(at_voxels[:3], axis=1), at_voxels[3], at_voxels[4:]
    scale = np.cbrt(abs(np.linalg.det(head_affine[:3, :3])))  # template mm per image mm
    raise_weight = 1.0 - unraised_at
    # Raised within the field of view only: a face pushed through its edge would be cut
    # flat there, where the subject's own nose or chin was cut, and give the cut back.
    # The room that counts is the room along the normal: a brow under an edge that cuts
    # the forehead is raised parallel to it. The template's anatomy stays where the
    # placement puts it; only its skin is raised.
    room, template_skin_distance, template_at_voxels = in_parallel(
        threads,
        lambda: field_of_view_room(voxels, replaced.shape, zooms, np.stack(outward, axis=1)),
        lambda: sample_at(tpl.signed_distance, tpl.signed_distance_affine, sample_points, 1e3),
        lambda: sample_at(tpl.t1w, tpl.affine, sample_points, tpl.air),
    )
    raise_cap = (room - FOV_CLEARANCE_MM) * scale
    skin_offset = clearing_skin_offset(
        template_skin_distance[face_skin], raise_weight[face_skin], raise_cap[face_skin], MOVED_MM * scale
    )
    offset = np.minimum(skin_offset * raise_weight, raise_cap)
    new_skin_distance = (template_skin_distance - offset) / scale
    return template_at_voxels, new_skin_distance, template_skin_distance, skin_offset


def _face_skin(head, labels, replaced) -> np.ndarray:
    """(N,) bool: which of the N ``replaced`` voxels lie on the skin of the (I, J, K) ``head``
    mask in the face label."""
    face = labels == warp.FACE
    box = bounding_box(face, margin=1)
    on_skin = np.zeros(face.shape, bool)
    on_skin[box] = skin_surface(head[box]) & face[box]
    return on_skin[replaced]


def head_placement(coords, coarse_labels, coarse_affine, tpl: "TemplateData") -> np.ndarray:
    """Image world to template world as the head outside the face places the template.

    ``coords`` (I, J, K, 3) and ``coarse_labels`` (I, J, K) are the registration's
    template coordinates and labels on the working grid with ``coarse_affine``.
    """
    tpl_coarse = sample_at(tpl.t1w, tpl.affine, coords.reshape(-1, 3), tpl.air).reshape(coords.shape[:3])
    cranium = np.isin(coarse_labels, (0, warp.PROTECTED)) & (tpl_coarse > tpl.head_level)
    return fit_head_affine(coords, cranium, coarse_affine)


def preload_template(template) -> None:
    """Everything the steps load or derive from ``template``, computed in this process.

    Workers forked from it afterwards (Nipype's MultiProc) inherit the results: per run,
    not per step of every image.
    """
    warp.preload(template)
    template_data(template)


def quality_warnings(metrics: dict) -> list[str]:
    """What a reviewer should look at, one sentence each."""
    warnings = []
    if metrics["face_in_fov_fraction"] < MIN_FACE_IN_FOV:
        warnings.append(
            f"face partly outside the field of view ({metrics['face_in_fov_fraction']:.0%} inside)"
        )
    if not metrics["face_surface_moved_fraction"] >= MIN_MOVED_FRACTION:
        warnings.append(
            f"face surface moved on {metrics['face_surface_moved_fraction']:.0%} of its area "
            f"(target {MIN_MOVED_FRACTION:.0%})"
        )
    return warnings


def _changes(head, refaced, labels, replaced) -> dict:
    """Voxels whose stored values changed where nothing may change."""
    changed = _stored_differently(head.raw, refaced.raw)
    if changed.ndim == 4:
        changed = changed.any(axis=3)
    return {
        "protected_voxels_changed": int(np.count_nonzero(changed & (labels == warp.PROTECTED))),
        "changed_voxels_outside_replaced": int(np.count_nonzero(changed & ~replaced)),
    }


def _quality(
    head, original, refaced, labels, replaced, tpl_registered, tpl_head_level, threshold, expected_face_mm3
) -> dict:
    """How far the face moved, how much of it was in view, and how natural the new one is."""
    new = refaced.reference()
    face = labels == warp.FACE
    moved, n_surface = face_surface_moved(original, new, face, head.zooms, threshold=threshold)
    face_tissue_mm3 = np.count_nonzero(face & (tpl_registered > tpl_head_level)) * np.prod(head.zooms)
    inside_before = replaced & (original > threshold)
    inside_after = replaced & (new > threshold)
    noise_region = inside_before & inside_after
    noise_before = local_noise_sd(original, noise_region)
    noise_after = local_noise_sd(new, noise_region)
    return {
        "replaced_voxels": int(np.count_nonzero(replaced)),
        "face_surface_moved_fraction": moved,
        "face_surface_voxels": n_surface,
        "face_in_fov_fraction": float(min(1.0, face_tissue_mm3 / expected_face_mm3)),
        "noise_sd_ratio": float(noise_after / noise_before) if noise_before > 0 else float("nan"),
        "intensity_distance": (
            distribution_distance(original[inside_before], new[inside_after])
            if inside_before.any() and inside_after.any()
            else float("nan")
        ),
    }


@dataclass(frozen=True)
class TemplateData:
    """Arrays derived from a template once per process."""

    t1w: np.ndarray
    affine: np.ndarray
    head_level: float
    air: float
    signed_distance: np.ndarray  # on the template's grid padded on every side
    signed_distance_affine: np.ndarray
    face_mm3: float
    subcutaneous: float


@lru_cache(maxsize=4)
def template_data(template) -> TemplateData:
    """The arrays every step derives from ``template``, computed once per process."""
    img = nib.load(str(template.t1w))
    t1w = np.asanyarray(img.dataobj).astype(np.float32)
    zooms = img.header.get_zooms()[:3]
    head_level = skin_threshold(t1w)
    head = head_mask(t1w, zooms, head_level)
    dseg_img = nib.load(str(template.dseg))
    dseg = np.asanyarray(dseg_img.dataobj).astype(np.float32)
    dseg_on_t1w = voxels_of_subgrid(dseg, dseg_img.affine, t1w.shape, img.affine)
    if dseg_on_t1w is None:
        dseg_on_t1w = sample_at(
            dseg, dseg_img.affine, world_grid(img.affine, t1w.shape).reshape(-1, 3), order=0
        ).reshape(t1w.shape)
    outside_protected = warp.template_brain_distance(template) > warp.PROTECT_MARGIN_MM
    facial = dseg_on_t1w == warp.FACE
    face = facial & (t1w > head_level) & outside_protected
    # The raised skin and the air profile in front of it reach beyond the template's grid
    # (its nose tip lies 5 mm from the front of the grid, its sides 0.5-3 mm from the
    # lateral faces), where a distance taken on the grid alone cut the new nose flat. Edge
    # values carry the air on as air and the neck, cut by the grid, on as neck.
    pad = int(np.ceil((MAX_SKIN_OFFSET_MM + SKIN_PROFILE_MM[1]) / min(zooms)))
    signed_padded = signed_skin_distance(np.pad(head, pad, mode="edge"), zooms)
    signed_affine = img.affine.copy()
    signed_affine[:3, 3] -= img.affine[:3, :3] @ np.full(3, pad)
    signed = signed_padded[pad:-pad, pad:-pad, pad:-pad]
    # What PET and CT draw under a raised skin: the template's tissue just beneath its own.
    subcutaneous = facial & (signed > -SKIN_DEPTH_MM - 2.0) & (signed <= -SKIN_DEPTH_MM)
    return TemplateData(
        t1w=t1w,
        affine=img.affine,
        head_level=head_level,
        air=air_level(t1w),
        signed_distance=signed_padded,
        signed_distance_affine=signed_affine,
        face_mm3=float(face.sum() * np.prod(zooms)),
        subcutaneous=float(np.median(t1w[subcutaneous])),
    )



def _stored_differently(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Voxels whose stored bytes differ (a NaN kept as NaN is unchanged, unlike ``!=``)."""
    if before.dtype.kind == "f":
        native = before.dtype.newbyteorder("=")
        as_int = np.dtype(f"u{native.itemsize}")
        return (np.ascontiguousarray(before, native).view(as_int)
                != np.ascontiguousarray(after, native).view(as_int))
    return before != after


def _subsample(mask: np.ndarray, limit: int, rng) -> np.ndarray:
    count = int(mask.sum())
    if count <= limit:
        return mask
    idx = np.flatnonzero(mask)
    keep = rng.choice(idx, size=limit, replace=False)
    out = np.zeros(mask.size, bool)
    out[keep] = True
    return out.reshape(mask.shape)
