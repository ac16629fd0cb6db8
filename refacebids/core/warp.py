"""Template labels and coordinates carried into the image through the registration.

The protected region is the template's intracranial mask grown by a safety margin,
carried as a distance map so that the margin is applied in millimetres after warping
and the region is never thinner than the mask itself.
"""

from __future__ import annotations

from functools import lru_cache

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from .geometry import ants_affine, ants_geometry, distance_mm, to_ants, world_grid

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


def image_labels(
    shape: tuple, affine: np.ndarray, template, composite: str, outside_head: np.ndarray | None = None
) -> np.ndarray:
    """Refacing labels on the image grid, protected region included.

    Parameters
    ----------
    shape : (I, J, K) tuple
        Image grid.
    affine : (4, 4) ndarray
        Image voxel-to-world affine.
    template : refacebids.templates.Template
    composite : str
        Template -> image transform.
    outside_head : (I, J, K) bool ndarray, optional
        Air beyond the image's own skin. The outer part of the margin (beyond
        ``MIN_MARGIN_MM`` from the brain) does not protect it: where the forehead is
        thinner than the margin, protected air in front of the skin would keep a dark
        cleft between the old skin and the new face, through which the old one shows.

    Returns
    -------
    (I, J, K) uint8 ndarray
        0 untouched, 1-6 refacing labels, ``PROTECTED`` brain plus margin.
    """
    reference = to_ants(np.zeros(shape, np.float32), affine)
    labels = warp_image(template.dseg, reference, composite, "nearestNeighbor").astype(np.uint8)
    distance = brain_distance(reference, template, composite)
    protected = distance <= PROTECT_MARGIN_MM
    if outside_head is not None:
        protected &= ~(outside_head & (distance > MIN_MARGIN_MM))
    labels[protected] = PROTECTED
    return labels


def with_placed_face(labels: np.ndarray, affine: np.ndarray, template, head_affine: np.ndarray) -> np.ndarray:
    """``labels`` (from ``image_labels``) with the face labels ``head_affine`` places.

    ``head_affine`` maps image world to template world as the head outside the face
    places it (see ``refacebids.core.replace.fit_head_affine``). Its face labels are
    added where the registration put none: on real heads SyN sometimes leaves the mouth
    and chin out (a dental signal void taken for the template's oral cavity, a field of
    view that ends at the chin), and what is left out stays the subject's. Protected
    voxels stay protected.
    """
    placed = placed_labels(labels.shape, affine, template, head_affine)
    missed = np.isin(labels, (0, WRAP_AIR)) & np.isin(placed, TISSUE_LABELS)
    return np.where(missed, placed, labels)


def placed_labels(shape: tuple, affine: np.ndarray, template, head_affine: np.ndarray) -> np.ndarray:
    """(I, J, K) uint8 refacing labels on the image grid through ``head_affine`` alone.

    ``affine`` is the image's voxel-to-world affine; ``head_affine`` maps image world to
    template world.
    """
    dseg_img = nib.load(str(template.dseg))
    voxel_to_dseg = np.linalg.inv(dseg_img.affine) @ head_affine @ affine
    return ndi.affine_transform(
        np.asanyarray(dseg_img.dataobj).astype(np.uint8), voxel_to_dseg[:3, :3], voxel_to_dseg[:3, 3],
        output_shape=tuple(shape), output=np.uint8, order=0, mode="constant", cval=0,
    )


def brain_distance(reference, template, composite: str) -> np.ndarray:
    """Distance (mm) to the template's brain on the grid of ANTs image ``reference``."""
    import ants

    distance, affine = _template_brain_distance(str(template.brain_mask))
    return ants.apply_transforms(
        reference, to_ants(distance, affine), [composite], interpolator="linear", defaultvalue=1e6
    ).numpy()


@lru_cache(maxsize=4)
def _template_brain_distance(brain_mask_file: str) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y, Z) float32 distance (mm) outside the template's brain, and its affine."""
    brain_img = nib.load(brain_mask_file)
    brain = np.asanyarray(brain_img.dataobj) > 0
    distance = distance_mm(~brain, brain_img.header.get_zooms()[:3])
    distance.flags.writeable = False  # shared by every call in the process
    return distance, brain_img.affine


def template_coordinates(reference, template, composite: str) -> np.ndarray:
    """(I, J, K, 3) template world coordinates (mm) of every voxel of ``reference``.

    Computed by warping images whose values are the template's own coordinates over
    the padded label grid; voxels that map beyond that grid get ``OUTSIDE``.
    """
    import ants

    grid_img = nib.load(str(template.dseg))
    coords = world_grid(grid_img.affine, grid_img.shape[:3])
    out = []
    for axis in range(3):
        moving = to_ants(coords[..., axis], grid_img.affine)
        out.append(
            ants.apply_transforms(
                reference, moving, [composite], interpolator="linear", defaultvalue=OUTSIDE
            ).numpy()
        )
    return np.stack(out, axis=-1)


def working_reference(shape: tuple, affine: np.ndarray, resolution: float):
    """An empty ANTs image covering the image's field of view at ``resolution`` mm.

    The grid ``ants.resample_image`` would give (same origin and direction, its size
    rule rounding half up), built without resampling a full-resolution image.
    """
    import ants

    origin, spacing, direction = ants_geometry(affine)
    coarse_spacing = tuple(float(max(s, resolution)) for s in spacing)
    coarse_shape = tuple(
        int(np.floor(n * s / c + 0.5)) for n, s, c in zip(shape[:3], spacing, coarse_spacing)
    )
    coarse = ants.from_numpy(
        np.zeros(coarse_shape, np.float32), origin=origin, spacing=coarse_spacing, direction=direction
    )
    return coarse, ants_affine(coarse)
