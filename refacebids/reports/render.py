"""Offline shaded renders of the head's skin surface (CPU only, no display, no GL).

Rays are cast from an orthographic camera through the image grid in voxel space, so any
storage order, anisotropic voxels and oblique affines need no resampling of the volume.
The surface is the first crossing of an intensity iso-level along each ray of trilinear
samples, refined by regula falsi. Speed comes from skipping empty space:
the volume is summarised in blocks of about 4 mm by their maximum, and a ray crosses
blocks that cannot hold the surface in one jump.

World coordinates are RAS+ (mm). The camera looks at the centre of the field of view
from the direction

    (-sin(azimuth) cos(elevation), cos(azimuth) cos(elevation), sin(elevation)),

so azimuth 0 is the face seen from the front, 90 the left side (camera at -x) and -90
the right side; positive elevation looks from above. Image rows run from the top of the
screen (superior, for elevation 0) down, columns from the viewer's left to right.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from refacebids.core.surface import skin_threshold

__all__ = ["VIEWS", "render_head", "render_views", "skin_threshold"]

VIEWS = {"front": (0.0, 0.0), "left": (90.0, 0.0), "right": (-90.0, 0.0)}
"""Named camera directions as (azimuth_deg, elevation_deg)."""

BLOCK_MM = 4.0  # empty-space block size: large enough to skip fast, small enough to hug the skin
CHUNK_STEPS = 6  # samples taken at once along a ray near the surface
STEP_VOXELS = 1.5  # ray step, in voxels of the finest axis
TETRAHEDRON = np.array([[1.0, 1.0, 1.0], [1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
AMBIENT, DIFFUSE, SPECULAR, SHININESS = 0.12, 0.78, 0.18, 24.0
MAX_SIZE = 1024  # pixels per side when the size follows from a pixel size


def render_head(
    volume: np.ndarray,
    affine: np.ndarray,
    *,
    view: str | None = "front",
    azimuth_deg: float | None = None,
    elevation_deg: float = 0.0,
    iso: float | None = None,
    light: tuple[float, float] = (25.0, 30.0),
    size: int = 256,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Grayscale shaded render of the skin surface seen from one direction.

    Parameters
    ----------
    volume : (I, J, K) or (I, J, K, T) array
        Scaled intensities; a 4D image is rendered from its mean over volumes.
    affine : (4, 4) array
        Voxel to RAS+ world (mm).
    view : {"front", "left", "right"}, optional
        Named camera direction; ignored when ``azimuth_deg`` is given.
    azimuth_deg, elevation_deg : float, optional
        Camera direction in degrees (see module docstring).
    iso : float, optional
        Intensity of the skin surface; by default :func:`skin_threshold` of the volume.
    light : (2,) float
        Light direction (azimuth, elevation) in degrees relative to the camera:
        (0, 0) is a head-lamp, positive azimuth lights from the screen's right,
        positive elevation from above.
    size : int
        Width and height of the image in pixels; the image spans the field of view.
    mask : (I, J, K) bool array, optional
        Only voxels inside are rendered (outside counts as air).

    Returns
    -------
    (size, size) float32 array
        Values in [0, 1]; 0 where no surface was hit (background), at least the
        ambient level on the surface.
    """
    direction = VIEWS[view] if azimuth_deg is None else (azimuth_deg, elevation_deg)
    return render_views(volume, affine, [direction], iso=iso, light=light, size=size, mask=mask)[0]


def render_views(
    volume: np.ndarray,
    affine: np.ndarray,
    views,
    *,
    iso: float | None = None,
    light: tuple[float, float] = (25.0, 30.0),
    size: int = 256,
    mask: np.ndarray | None = None,
    pixel_mm: float | None = None,
) -> list[np.ndarray]:
    """Several renders of one volume, sharing the preparation of the volume.

    Parameters
    ----------
    views : sequence of str or (azimuth_deg, elevation_deg)
        Names from :data:`VIEWS` or explicit camera directions.
    volume, affine, iso, light, size, mask
        As for :func:`render_head`.
    pixel_mm : float, optional
        Pixel size in mm; when given, each image gets as many pixels as its view of the
        field of view needs (at most :data:`MAX_SIZE`) and ``size`` is ignored, so
        that a face has the same size in pixels whatever the field of view.

    Returns
    -------
    list of (size, size) float32 arrays
    """
    values = np.asarray(volume, dtype=np.float32)
    if values.ndim == 4:
        values = values.mean(axis=3)
    if not np.isfinite(values).all():
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    affine = np.asarray(affine, dtype=float)
    if values.size == 0 or values.min() == values.max():  # no contrast, no skin
        sizes = [_camera(values.shape, affine, *_direction(view), size, pixel_mm)["size"]
                 for view in views]
        return [np.zeros((n, n), np.float32) for n in sizes]
    if iso is None:
        # every other voxel is plenty for a histogram threshold and 8 times cheaper
        iso = skin_threshold(values[::2, ::2, ::2])
    # below the iso-level even if the whole image is above it, so that the edge of the
    # field of view is still a crossing (heads cut by the field of view get a flat cap)
    air = float(min(values.min(), iso - 1.0))
    if mask is not None:
        values = np.where(mask, values, np.float32(air))
    skip_distance, block = _empty_space(values, affine, iso, air)
    images = []
    for view in views:
        camera = _camera(values.shape, affine, *_direction(view), size, pixel_mm)
        images.append(_cast(values, affine, camera, iso, air, skip_distance, block, light))
    return images


def _empty_space(values: np.ndarray, affine: np.ndarray, iso: float, air: float):
    """Chessboard distance, in blocks, from each block to the nearest one that may hold skin.

    Block ``b`` along an axis covers voxel indices ``[b * B - 1, (b + 1) * B - 1)``
    (one voxel of air is padded before the first voxel, since the surface can lie half
    a voxel outside the grid). A trilinear sample inside a block mixes voxels up to one
    voxel beyond it, so a block may hold the surface only if the block grown by one
    voxel holds a value above ``iso``.

    Returns
    -------
    distance : (Bi, Bj, Bk) int32 array
        0 for blocks that may hold the surface.
    block : (3,) int array
        Block size in voxels per axis.
    """
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    block = np.maximum(1, np.round(BLOCK_MM / zooms)).astype(int)
    counts = -(-(np.array(values.shape) + 2) // block)
    padded = np.full(counts * block, air, dtype=np.float32)
    padded[1 : values.shape[0] + 1, 1 : values.shape[1] + 1, 1 : values.shape[2] + 1] = values
    grown_max = padded
    for axis in range(3):
        grown_max = _grown_block_max(grown_max, axis, block[axis])
    candidate = grown_max > iso
    if not candidate.any():
        return np.full(candidate.shape, np.iinfo(np.int32).max // 4, np.int32), block
    distance = ndi.distance_transform_cdt(~candidate, metric="chessboard").astype(np.int32)
    return distance, block


def _grown_block_max(values: np.ndarray, axis: int, block: int) -> np.ndarray:
    """Maximum over blocks of ``block`` samples along one axis, each grown by one sample.

    The maximum over a box is separable, so applying this along each axis in turn gives
    the maximum over 3D blocks grown by one voxel in every direction.
    """
    moved = np.moveaxis(values, axis, 0)
    blocks = moved.reshape(moved.shape[0] // block, block, *moved.shape[1:])
    grown = blocks.max(axis=1)
    grown[1:] = np.maximum(grown[1:], blocks[:-1, -1])
    grown[:-1] = np.maximum(grown[:-1], blocks[1:, 0])
    return np.moveaxis(grown, 0, axis)


def _direction(view) -> tuple[float, float]:
    """(azimuth_deg, elevation_deg) of a named view or an explicit direction."""
    return VIEWS[view] if isinstance(view, str) else tuple(view)


def _camera(shape, affine: np.ndarray, azimuth: float, elevation: float, size: int,
            pixel_mm: float | None = None) -> dict:
    """Ray origins and direction in voxel coordinates for an orthographic camera.

    The image spans the projection of the whole field of view, so renders of images
    on the same grid (before and after refacing) are framed identically.
    """
    az, el = np.deg2rad(azimuth), np.deg2rad(elevation)
    towards_camera = np.array([-np.sin(az) * np.cos(el), np.cos(az) * np.cos(el), np.sin(el)])
    world_up = np.array([0.0, 0.0, 1.0]) if abs(np.sin(el)) < 0.999 else np.array([0.0, np.sign(-np.sin(el)), 0.0])
    up = world_up - world_up @ towards_camera * towards_camera
    up /= np.linalg.norm(up)
    right = np.cross(up, towards_camera)

    corners = np.array(np.meshgrid(*[[-0.5, n - 0.5] for n in shape[:3]], indexing="ij")).reshape(3, -1)
    corners_world = affine[:3, :3] @ corners + affine[:3, 3:4]
    centre = corners_world.mean(axis=1)
    offsets = corners_world - centre[:, None]
    half_width = max(np.abs(right @ offsets).max(), np.abs(up @ offsets).max())
    half_depth = np.abs(towards_camera @ offsets).max() + 1.0

    if pixel_mm is not None:
        size = int(min(MAX_SIZE, np.ceil(2 * half_width / pixel_mm)))
    pixel = 2 * half_width / size
    screen = (np.arange(size) + 0.5) * pixel - half_width
    to_voxel = np.linalg.inv(affine[:3, :3])
    start = centre + half_depth * towards_camera - affine[:3, 3]
    # origin of the ray through pixel (row, col) = start + screen[col] * right - screen[row] * up
    origins = (
        start[None, None, :]
        + screen[None, :, None] * right[None, None, :]
        - screen[:, None, None] * up[None, None, :]
    ).reshape(-1, 3) @ to_voxel.T
    direction = to_voxel @ -towards_camera
    # round-off along axes the ray does not travel would make empty-space jumps vanish
    direction[np.abs(direction) < 1e-9 * np.abs(direction).max()] = 0.0
    return {
        "origins": origins,
        "direction": direction,
        "length": 2 * half_depth,
        "size": size,
        "towards_camera": towards_camera,
        "right": right,
        "up": up,
        "to_voxel": to_voxel,
        "centre": centre,
        "half_width": half_width,
        "half_depth": half_depth,
        "pixel": pixel,
    }


def _box_entry_exit(origins: np.ndarray, direction: np.ndarray, shape, length: float):
    """Ray parameters (mm) where each ray enters and leaves the grid padded by one voxel."""
    low = np.full(3, -1.0)
    high = np.array(shape[:3], float)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_low = (low - origins) / direction
        t_high = (high - origins) / direction
    parallel = direction == 0
    inside = (origins >= low) & (origins <= high)
    t_near = np.where(parallel, np.where(inside, -np.inf, np.inf), np.minimum(t_low, t_high))
    t_far = np.where(parallel, np.where(inside, np.inf, -np.inf), np.maximum(t_low, t_high))
    return np.maximum(t_near.max(axis=1), 0.0), np.minimum(t_far.min(axis=1), length)


def _cast(values, affine, camera, iso, air, skip_distance, block, light) -> np.ndarray:
    """March every pixel's ray to its first iso-crossing and shade the hit."""
    origins, direction = camera["origins"], camera["direction"]
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    # the crossing is refined afterwards, so the step only limits how thin a structure
    # can be and still be seen; 1.5 voxels keeps ear rims and nostrils
    step_mm = float(np.clip(STEP_VOXELS * zooms.min(), 0.75, 2.0))

    t_start, t_end = _box_entry_exit(origins, direction, values.shape, camera["length"])
    t_start = np.maximum(t_start, _first_candidate_block(camera, affine, skip_distance, block))
    n_rays = origins.shape[0]
    t = t_start.copy()
    previous_value = np.full(n_rays, np.nan)  # NaN: the last position was reached by a jump
    crossing = np.full((n_rays, 4), np.nan)  # (t below, value below, t above, value above)
    active = np.flatnonzero(t_start < t_end)
    chunk = np.arange(CHUNK_STEPS) * step_mm
    blocks_shape = np.array(skip_distance.shape)

    while active.size:
        position = origins[active] + t[active, None] * direction
        cell = np.clip(np.floor((position + 1) / block).astype(int), 0, blocks_shape - 1)
        distance = skip_distance[cell[:, 0], cell[:, 1], cell[:, 2]]

        empty = distance > 0
        rays = active[empty]
        t[rays] += _exit_box(position[empty], cell[empty], distance[empty] - 1, direction, block)
        previous_value[rays] = np.nan

        rays = active[~empty]
        if rays.size:
            ts = t[rays, None] + chunk[None, :]
            samples = _sample(values, origins[rays], direction, ts, air)
            above = samples > iso
            hit = above.any(axis=1)
            first = np.argmax(above, axis=1)[hit]
            rows = np.flatnonzero(hit)
            value_below = np.where(first > 0, samples[rows, first - 1], previous_value[rays[hit]])
            crossing[rays[hit]] = np.stack(
                [ts[rows, first] - step_mm, value_below, ts[rows, first], samples[rows, first]], axis=1
            )
            t[rays] = np.where(hit, np.inf, ts[:, -1] + step_mm)
            previous_value[rays] = samples[:, -1]

        active = active[t[active] < t_end[active]]

    t_hit = _refine_crossings(values, origins, direction, crossing, iso, air)
    return _shade(values, camera, origins, t_hit, air, light)


def _first_candidate_block(camera, affine, skip_distance, block) -> np.ndarray:
    """Lower bound of each ray's parameter at its first block that may hold the surface.

    Each candidate block is splatted onto a coarse screen grid whose cells are at least
    as large as the block's projected radius, so a 3 x 3 minimum over cells covers
    every pixel the block can project to. Rays that meet no candidate block get inf:
    the background costs nothing.

    Returns
    -------
    (size * size,) array
    """
    size, pixel = camera["size"], camera["pixel"]
    linear = affine[:3, :3]
    signs = np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1])).reshape(3, -1)
    radius = np.linalg.norm(linear @ (signs * block[:, None] / 2), axis=0).max()
    cell = max(1, int(np.ceil(radius / pixel)))
    n_cells = -(-size // cell)

    centres_voxel = np.argwhere(skip_distance == 0) * block + block / 2 - 1
    offsets = centres_voxel @ linear.T + affine[:3, 3] - camera["centre"]
    columns = ((offsets @ camera["right"] + camera["half_width"]) / pixel) // cell
    rows = ((camera["half_width"] - offsets @ camera["up"]) / pixel) // cell
    depth = camera["half_depth"] - offsets @ camera["towards_camera"] - radius
    inside = (columns >= -1) & (columns <= n_cells) & (rows >= -1) & (rows <= n_cells)
    # one cell of margin each side so that blocks just off screen still cover its edge
    nearest = np.full((n_cells + 2, n_cells + 2), np.inf)
    np.minimum.at(nearest, (rows[inside].astype(int) + 1, columns[inside].astype(int) + 1), depth[inside])
    nearest = ndi.minimum_filter(nearest, size=3, mode="constant", cval=np.inf)[1:-1, 1:-1]
    per_pixel = np.repeat(np.repeat(nearest, cell, axis=0), cell, axis=1)[:size, :size]
    return per_pixel.ravel()


def _sample(values, origins, direction, ts, air) -> np.ndarray:
    """Trilinear samples at ``origins + ts * direction``; ``ts`` is (N,) or (N, K)."""
    points = origins.T.reshape(3, -1, *([1] * (ts.ndim - 1))) + direction.reshape(3, *([1] * ts.ndim)) * ts
    return ndi.map_coordinates(
        values, points.reshape(3, -1), order=1, mode="constant", cval=air, prefilter=False
    ).reshape(ts.shape)


def _refine_crossings(values, origins, direction, crossing, iso, air, iterations=2) -> np.ndarray:
    """Ray parameter of the iso-crossing inside each bracketing step (regula falsi).

    Parameters
    ----------
    crossing : (N, 4) array
        Per ray: t and value below the iso-level, t and value above it; NaN rows for
        rays that hit nothing, NaN value below where the step before was a jump over
        empty space (the crossing is then at the first sample).

    Returns
    -------
    (N,) array
        NaN for rays that hit nothing.
    """
    def interpolate(t_low, v_low, t_high, v_high):
        fraction = np.clip((iso - v_low) / np.maximum(v_high - v_low, 1e-12), 0.0, 1.0)
        return t_low + fraction * (t_high - t_low)

    t_hit = crossing[:, 2].copy()
    rays = np.flatnonzero(np.isfinite(crossing[:, 1]))
    t_low, v_low, t_high, v_high = crossing[rays].T
    for _ in range(iterations):
        t_mid = interpolate(t_low, v_low, t_high, v_high)
        v_mid = _sample(values, origins[rays], direction, t_mid, air)
        below = v_mid <= iso
        t_low, v_low = np.where(below, t_mid, t_low), np.where(below, v_mid, v_low)
        t_high, v_high = np.where(below, t_high, t_mid), np.where(below, v_high, v_mid)
    t_hit[rays] = interpolate(t_low, v_low, t_high, v_high)
    return t_hit


def _exit_box(position, cell, radius, direction, block) -> np.ndarray:
    """Distance (mm) along the ray to leave the cube of blocks within ``radius`` of ``cell``.

    No block in that cube can hold the surface, so the ray may jump straight past it.
    A small overshoot makes sure the next lookup lands in the following block.
    """
    low = (cell - radius[:, None]) * block - 1
    high = (cell + radius[:, None] + 1) * block - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        to_wall = np.where(direction > 0, high - position, low - position) / direction
    to_wall = np.where(direction == 0, np.inf, to_wall)
    return np.maximum(to_wall.min(axis=1), 0.0) + 1e-3


def _shade(values, camera, origins, t_hit, air, light) -> np.ndarray:
    """Lambert, ambient and Blinn-Phong specular shading of the hit points.

    Normals come from the gradient fitted to samples at the four corners of a
    tetrahedron one voxel from the hit along each voxel axis (four samples instead of
    central differences' six), following anisotropic voxels at their own spacing.
    The samples are quadratic B-spline approximations (no prefilter): a light smoothing
    whose gradient, unlike the trilinear one, is continuous, so the voxel layers do
    not show as terraces in the shading (cubic looks the same and costs more).
    """
    size = camera["size"]
    image = np.zeros(size * size, np.float32)
    hit = np.flatnonzero(np.isfinite(t_hit))
    if hit.size == 0:
        return image.reshape(size, size)
    points = origins[hit] + t_hit[hit, None] * camera["direction"]
    corners = points[None, :, :] + TETRAHEDRON[:, None, :]
    samples = ndi.map_coordinates(
        values, corners.reshape(-1, 3).T, order=2, mode="constant", cval=air, prefilter=False
    ).reshape(len(TETRAHEDRON), hit.size)
    # the corners' outer products sum to 4 I, so this is the least-squares gradient
    gradient_voxel = samples.T @ TETRAHEDRON / 4
    # d/dx f(A^-1 x) = A^-T grad_voxel; the skin's outward normal points down the gradient
    normal = -gradient_voxel @ camera["to_voxel"]
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    towards_camera = camera["towards_camera"]
    normal *= np.where(normal @ towards_camera < 0, -1.0, 1.0)[:, None]

    light_az, light_el = np.deg2rad(light)
    to_light = (
        np.cos(light_el) * np.cos(light_az) * towards_camera
        + np.cos(light_el) * np.sin(light_az) * camera["right"]
        + np.sin(light_el) * camera["up"]
    )
    halfway = to_light + towards_camera
    halfway /= np.linalg.norm(halfway)
    diffuse = np.clip(normal @ to_light, 0.0, 1.0)
    specular = np.clip(normal @ halfway, 0.0, 1.0) ** SHININESS
    image[hit] = np.clip(AMBIENT + DIFFUSE * diffuse + SPECULAR * specular, 0.0, 1.0)
    return image.reshape(size, size)
