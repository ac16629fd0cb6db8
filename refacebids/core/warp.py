"""Template labels and coordinates carried into the image through the registration.

The protected region is the template's intracranial mask grown by a safety margin,
carried as a distance map so that the margin is applied in millimetres after warping
and the region is never thinner than the mask itself.
"""

from __future__ import annotations

from functools import lru_cache, partial

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from ..utils.threads import in_parallel
from .geometry import bounding_box, distance_mm, resample_aligned, world_to_voxel
from .transform import map_grid

# Refacing labels (templates/*_desc-reface_dseg.tsv), and the label given to protected
# voxels in the image's label map: the protected region overrides every other label.
FOREHEAD, FACE, EARS, TEETH_JAW, WRAP_AIR, CHEEKS_TEMPLES = 1, 2, 3, 4, 5, 6
PROTECTED = 9
TISSUE_LABELS = (FOREHEAD, FACE, EARS, TEETH_JAW, CHEEKS_TEMPLES)
REPLACEABLE = (*TISSUE_LABELS, WRAP_AIR)
PROTECT_MARGIN_MM = 8.0
MIN_MARGIN_MM = 4.0  # never less, even in air outside the skin
OUTSIDE = -1.0e4  # coordinate value of image voxels beyond the template's grid


def warp_image(
    moving_file, reference, composite: str, interpolator: str, outside: float = 0.0
) -> np.ndarray:
    """Resample a template-space image onto the grid of ANTs image ``reference``.

    Image voxels that map beyond the template's grid get ``outside``.
    """
    import ants

    moving = ants.image_read(str(moving_file))
    return ants.apply_transforms(
        reference, moving, [composite], interpolator=interpolator, defaultvalue=outside
    ).numpy()


def labels_on_grid(
    coords: np.ndarray, coarse_affine: np.ndarray, shape: tuple, affine: np.ndarray, template, threads: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Refacing labels on an image grid, and the distance to the template's brain there.

    The template's labels are looked up at each voxel's template position, found by
    trilinear interpolation of the registration's template coordinates on the working
    grid. That is the transform itself, not an approximation of it: its displacement
    field lives on that grid and is linear between its nodes, like the affine part.

    Parameters
    ----------
    coords : (i, j, k, 3) ndarray
        Template coordinates (mm) of the working grid's voxels (``template_coordinates``).
    coarse_affine : (4, 4) ndarray
        The working grid's voxel-to-world affine.
    shape : (I, J, K) tuple
        The image grid, sharing origin and axes with the working grid (``geometry.working_grid``).
    affine : (4, 4) ndarray
        The image grid's voxel-to-world affine.
    template : refacebids.templates.Template
    threads : int
        The four interpolations run on as many threads at once.

    Returns
    -------
    labels : (I, J, K) uint8 ndarray
        0 untouched, 1-6 refacing labels (the protected region is ``protect``'s).
    brain_distance : (I, J, K) float32 ndarray
        Distance (template mm) to the template's brain.
    """
    dseg, dseg_affine = _template_labels(str(template.dseg))
    index = world_to_voxel(coords, dseg_affine)
    *index_on_grid, brain_distance = in_parallel(
        threads,
        *(partial(resample_aligned, index[..., axis], coarse_affine, shape, affine) for axis in range(3)),
        lambda: resample_aligned(brain_distance_at(coords, template), coarse_affine, shape, affine),
    )
    return nearest_labels(index_on_grid, dseg), brain_distance


def coarse_labels(coords: np.ndarray, template) -> np.ndarray:
    """(i, j, k) uint8 refacing labels of the working grid whose template coordinates are ``coords``."""
    dseg, dseg_affine = _template_labels(str(template.dseg))
    index = world_to_voxel(coords, dseg_affine)
    labels = nearest_labels([index[..., axis] for axis in range(3)], dseg)
    return protect(labels, brain_distance_at(coords, template))


def protect(labels: np.ndarray, brain_distance: np.ndarray, outside_head: np.ndarray | None = None) -> np.ndarray:
    """``labels`` (I, J, K) with the protected region: the brain plus ``PROTECT_MARGIN_MM``.

    ``brain_distance`` (I, J, K) is the distance to the template's brain. Air beyond the
    image's own skin (``outside_head``, (I, J, K) bool) is protected only within
    ``MIN_MARGIN_MM``: where the forehead is thinner than the margin, protected air in
    front of the skin would keep a dark cleft between the old skin and the new face,
    through which the old one shows. The protected region overrides every other label.
    """
    protected = brain_distance <= PROTECT_MARGIN_MM
    if outside_head is not None:
        protected &= ~(outside_head & (brain_distance > MIN_MARGIN_MM))
    labels[protected] = PROTECTED
    return labels


def nearest_labels(index: list, dseg: np.ndarray) -> np.ndarray:
    """Labels of ``dseg`` (X, Y, Z) at the nearest voxel of continuous voxel indices.

    ``index`` holds three arrays of one shape, the indices along each axis; beyond the
    grid the label is 0. Returns a uint8 array of that shape.
    """
    flat = np.zeros(index[0].shape, np.int32)
    inside = np.ones(index[0].shape, bool)
    for axis, along in enumerate(index):
        nearest = np.rint(along)
        inside &= (nearest >= 0) & (nearest <= dseg.shape[axis] - 1)
        flat *= dseg.shape[axis]
        flat += np.clip(nearest, 0, dseg.shape[axis] - 1).astype(np.int32)
    return np.where(inside, dseg.ravel()[flat], 0).astype(np.uint8)


def template_brain_distance(template) -> np.ndarray:
    """(X, Y, Z) float32 distance (mm) to the template's brain on its own grid (the
    T1w's), computed once per process."""
    return _template_brain_distances(str(template.brain_mask), inside=False)[0]


def brain_distance_at(coords: np.ndarray, template) -> np.ndarray:
    """(...) float32 distance (mm) to the template's brain at template coordinates ``coords`` (..., 3).

    Beyond the template's grid the distance is taken as infinite (1e6 mm).
    """
    return _linear_at(*_template_brain_distances(str(template.brain_mask), inside=False), coords, outside=1e6)


def _linear_at(volume: np.ndarray, affine: np.ndarray, coords: np.ndarray, outside: float) -> np.ndarray:
    """(...) float32 linear interpolation of a template-space (X, Y, Z) ``volume`` at template
    coordinates ``coords`` (..., 3); ``outside`` beyond its grid."""
    index = world_to_voxel(coords.reshape(-1, 3), affine).T
    values = ndi.map_coordinates(volume, index, order=1, mode="constant", cval=outside)
    return values.reshape(coords.shape[:-1]).astype(np.float32)


def with_placed_face(labels: np.ndarray, placed: np.ndarray) -> np.ndarray:
    """``labels`` (I, J, K) (from ``labels_on_grid``) with the face labels of ``placed``
    (I, J, K), those the head affine alone places (``placed_labels``).

    They are added where the registration put none: on real heads SyN sometimes leaves
    the mouth and chin out (a dental signal void taken for the template's oral cavity, a
    field of view that ends at the chin), and what is left out stays the subject's.
    Protected voxels stay protected.
    """
    missed = is_label(labels, (0, WRAP_AIR)) & is_label(placed, TISSUE_LABELS)
    return np.where(missed, placed, labels)


def placed_labels(shape: tuple, affine: np.ndarray, template, head_affine: np.ndarray) -> np.ndarray:
    """(I, J, K) uint8 tissue labels (``TISSUE_LABELS``) on the image grid through ``head_affine`` alone.

    ``affine`` is the image's voxel-to-world affine; ``head_affine`` maps image world to
    template world as the head outside the face places it (see
    ``refacebids.core.replace.fit_head_affine``). Only the box of the image that the
    template's tissue labels reach is resampled; everything else is 0.
    """
    dseg, dseg_affine = _template_labels(str(template.dseg))
    voxel_to_dseg = np.linalg.inv(dseg_affine) @ head_affine @ affine
    tissue = np.where(is_label(dseg, TISSUE_LABELS), dseg, 0).astype(np.uint8)
    box = _box_reached(tissue > 0, np.linalg.inv(voxel_to_dseg), shape)
    placed = np.zeros(tuple(shape), np.uint8)
    start = np.array([s.start for s in box], float)
    placed[box] = ndi.affine_transform(
        tissue, voxel_to_dseg[:3, :3], voxel_to_dseg[:3, :3] @ start + voxel_to_dseg[:3, 3],
        output_shape=placed[box].shape, output=np.uint8, order=0, mode="constant", cval=0,
    )
    return placed


def _box_reached(mask: np.ndarray, mask_to_grid: np.ndarray, shape: tuple) -> tuple[slice, ...]:
    """Slices of a grid of ``shape`` holding ``mask``'s box mapped by the voxel affine ``mask_to_grid``."""
    box = bounding_box(mask)
    edges = [(s.start - 0.5, s.stop - 0.5) for s in box]
    corners = np.array([[edges[axis][pick] for axis, pick in enumerate(picks)] for picks in np.ndindex(2, 2, 2)])
    mapped = corners @ mask_to_grid[:3, :3].T + mask_to_grid[:3, 3]
    low = np.clip(np.floor(mapped.min(axis=0)) - 1, 0, shape).astype(int)
    high = np.clip(np.ceil(mapped.max(axis=0)) + 2, 0, shape).astype(int)
    return tuple(slice(int(a), int(max(a, b))) for a, b in zip(low, high))


def is_label(labels: np.ndarray, which) -> np.ndarray:
    """``np.isin(labels, which)`` for uint8 label maps, by a lookup table (a tenth of the time)."""
    table = np.zeros(256, bool)
    table[list(which)] = True
    return table[labels]


def preload(template) -> None:
    """Load the template's images and derive its brain distances in this process, once.

    The command calls it before the graph's workers are forked from it, so that no step
    loads them again; a step run in a process of its own (a batch job) loads them itself.
    """
    for image_file in (template.t1w, template.brain_mask, template.dseg):
        _template_image(str(image_file))
    _template_labels(str(template.dseg))
    for inside in (False, True):
        _template_brain_distances(str(template.brain_mask), inside=inside)  # as the steps call it: one cache key
    template_mask_centre(template.brain_mask)


@lru_cache(maxsize=4)
def _template_brain_distances(brain_mask_file: str, inside: bool) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y, Z) float32 distance (mm) to the template's brain from outside it (``inside``
    False) or from its inside to its surface (True), and its affine."""
    brain_img = nib.load(brain_mask_file)
    brain = np.asanyarray(brain_img.dataobj) > 0
    distance = distance_mm(brain if inside else ~brain, brain_img.header.get_zooms()[:3])
    distance.flags.writeable = False  # shared by every call in the process
    return distance, brain_img.affine


def template_image_at(image_file, coords: np.ndarray, *, order: int = 1, outside: float = 0.0) -> np.ndarray:
    """(...) float32 values of a template-space image at template coordinates ``coords`` (..., 3).

    Interpolated as ITK resamples (``order`` 1 linear, 0 nearest): within half a voxel
    beyond the image's outer voxel centres the edge holds, further out the value is
    ``outside``.
    """
    values, affine = _template_image(str(image_file))
    index = world_to_voxel(coords.reshape(-1, 3), affine)
    size = np.asarray(values.shape, np.float32)
    beyond = np.any((index < -0.5) | (index > size - 0.5), axis=-1)
    sampled = ndi.map_coordinates(values, index.T, order=order, mode="nearest").astype(np.float32)
    sampled[beyond] = outside
    return sampled.reshape(coords.shape[:-1])


def brain_depth_at(coords: np.ndarray, brain_mask_file) -> np.ndarray:
    """(...) float32 depth (mm) inside the template's brain at template coordinates ``coords``
    (..., 3), linearly interpolated; 0 outside the brain and beyond the template's grid."""
    return _linear_at(*_template_brain_distances(str(brain_mask_file), inside=True), coords, outside=0.0)


@lru_cache(maxsize=4)
def template_mask_centre(mask_file) -> np.ndarray:
    """(3,) RAS mm centre (mean position) of a template-space mask's voxels above 0.5."""
    values, affine = _template_image(str(mask_file))
    centre = affine @ np.r_[np.argwhere(values > 0.5).mean(axis=0), 1.0]
    centre.flags.writeable = False  # shared by every call in the process
    return centre[:3]


@lru_cache(maxsize=8)
def _template_image(image_file: str, dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    """(X, Y, Z) values of a template-space image as ``dtype`` (labels: uint8), and its affine."""
    img = nib.load(image_file)
    values = np.asanyarray(img.dataobj).astype(dtype)
    values.flags.writeable = False  # shared by every call in the process
    return values, img.affine


def _template_labels(dseg_file: str) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y, Z) uint8 refacing labels of a template, and their affine."""
    return _template_image(dseg_file, "uint8")


def template_coordinates(shape: tuple, affine: np.ndarray, template, composite: str) -> np.ndarray:
    """(I, J, K, 3) float32 template world coordinates (mm) of every voxel of a grid.

    ``shape`` and ``affine`` (4, 4) give the grid (the working grid); ``composite`` maps
    its points to the template's. Voxels that map beyond the template's padded label
    grid get ``OUTSIDE``.
    """
    return within_template(map_grid(composite, shape, affine), template)


def within_template(coords: np.ndarray, template) -> np.ndarray:
    """Template coordinates ``coords`` (..., 3), ``OUTSIDE`` where they lie beyond the
    template's padded label grid (changed in place)."""
    dseg, dseg_affine = _template_labels(str(template.dseg))
    index = world_to_voxel(coords, dseg_affine)
    size = np.asarray(dseg.shape[:3], np.float32)
    beyond = np.any((index < -0.5) | (index > size - 0.5), axis=-1)
    coords[beyond] = OUTSIDE
    return coords
