"""ITK transforms, as antspyx writes them, evaluated at world points with NumPy.

The mask step needs the template position of every voxel of the 2 mm working grid.
``ants.apply_transforms`` finds them by resampling three coordinate images, each pass
evaluating the whole transform at every voxel again; evaluated here once, the same
positions cost a tenth of the time. ITK works in LPS world coordinates, nibabel (and
the rest of refacebids) in RAS; points are converted on the way in and out.

Supported: what antsRegistration and ``core/anat.py`` write, an ITK HDF5 composite of
affine (``AffineTransform``, ``MatrixOffsetTransformBase``, rigid ``Euler3DTransform``)
and ``DisplacementFieldTransform`` parts, or a single linear transform in a ``.mat``
(MATLAB v4, as ITK writes it) or ``.h5`` file; several files as ``ants.apply_transforms``
takes them (a point goes through the first listed first).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ..utils.threads import in_parallel
from .geometry import RAS_TO_LPS, apply_affine_float32, world_grid


@dataclass(frozen=True)
class LinearPart:
    """``y = matrix (x - center) + center + translation`` (LPS mm)."""

    matrix: np.ndarray  # (3, 3)
    translation: np.ndarray  # (3,)
    center: np.ndarray  # (3,)

    def as_affine(self) -> np.ndarray:
        """(4, 4) homogeneous LPS affine."""
        affine = np.eye(4)
        affine[:3, :3] = self.matrix
        affine[:3, 3] = self.translation + self.center - self.matrix @ self.center
        return affine


@dataclass(frozen=True)
class DisplacementPart:
    """``y = x + u(x)`` (LPS mm) with ``u`` linearly interpolated on a grid; 0 beyond it.

    ``field`` is (I, J, K, 3) float32; ``index_of_world`` the (4, 4) LPS world to
    continuous voxel index affine of its grid.
    """

    field: np.ndarray
    index_of_world: np.ndarray


def read_transforms(path) -> list:
    """The parts of a transform file, or of a list of them, in the order they apply to
    a point (first first).

    ITK applies a composite's parts from the last stored to the first; a point goes
    through a list of files (as ``ants.apply_transforms`` takes it) from the first.

    Raises
    ------
    ValueError
        For a transform type this module does not evaluate.
    """
    if isinstance(path, (list, tuple)):
        return [part for one in path for part in read_transforms(one)]
    path = str(path)
    if Path(path).suffix == ".mat":
        from scipy.io import loadmat

        variables = {name: value.ravel() for name, value in loadmat(path).items() if not name.startswith("__")}
        fixed = variables.pop("fixed")
        (kind, parameters), = variables.items()
        return [_linear(kind, parameters, fixed)]
    import h5py

    with h5py.File(path, "r") as h5:
        groups = [h5["TransformGroup"][name] for name in sorted(h5["TransformGroup"], key=int)]
        parts = []
        for group in groups:
            kind = group["TransformType"][0]
            kind = kind.decode() if isinstance(kind, bytes) else str(kind)
            if kind.startswith("CompositeTransform"):
                continue
            parameters = np.asarray(group["TransformParameters"], np.float64)
            fixed = np.asarray(group["TransformFixedParameters"], np.float64)
            if kind.startswith("DisplacementFieldTransform"):
                parts.append(_displacement(parameters, fixed))
            else:
                parts.append(_linear(kind, parameters, fixed))
    return parts[::-1]


def map_points(parts: list, points: np.ndarray, threads: int = 1) -> np.ndarray:
    """(..., 3) float32 RAS world points mapped through ``parts`` (``read_transforms``).

    Parameters
    ----------
    parts : list of LinearPart or DisplacementPart
        In the order they apply.
    points : (..., 3) array
        RAS world coordinates (mm).
    threads : int
        A displacement's three components are interpolated on as many threads at once.

    Returns
    -------
    (..., 3) float32 ndarray
        The mapped points, RAS mm.
    """
    mapped = apply_affine_float32(RAS_TO_LPS, points)
    for part in parts:
        if isinstance(part, LinearPart):
            mapped = apply_affine_float32(part.as_affine(), mapped)
        else:
            mapped = mapped + _displacement_at(part, mapped, threads)
    return apply_affine_float32(RAS_TO_LPS, mapped)


def map_grid(transforms, shape: tuple, affine: np.ndarray, threads: int = 1) -> np.ndarray:
    """(I, J, K, 3) float32 RAS points to which ``transforms`` (a file, or files in
    ``ants.apply_transforms`` order) map every voxel centre of the grid (``shape``, its
    (4, 4) ``affine``), on ``threads`` (see ``map_points``)."""
    return map_points(read_transforms(transforms), world_grid(affine, tuple(shape[:3])), threads)


def _displacement_at(part: DisplacementPart, points: np.ndarray, threads: int = 1) -> np.ndarray:
    """(..., 3) float32 displacement at LPS ``points`` (..., 3), as ITK evaluates it.

    Within half a voxel beyond the grid's outer voxel centres the nearest values hold
    (ITK's linear interpolator clamps its neighbours); further out the displacement is 0.
    """
    index = apply_affine_float32(part.index_of_world, points)
    size = np.asarray(part.field.shape[:3], np.float32)
    inside = np.all((index >= -0.5) & (index <= size - 0.5), axis=-1)
    flat_index = index.reshape(-1, 3).T
    displacement = np.stack(in_parallel(threads, *(
        partial(ndi.map_coordinates, part.field[..., axis], flat_index, order=1, mode="nearest")
        for axis in range(3)
    )), axis=-1).reshape(points.shape)
    displacement[~inside] = 0.0
    return displacement


def _linear(kind: str, parameters: np.ndarray, fixed: np.ndarray) -> LinearPart:
    parameters = np.asarray(parameters, np.float64)
    center = np.asarray(fixed, np.float64)[:3]
    if kind.startswith(("AffineTransform", "MatrixOffsetTransformBase")):
        return LinearPart(parameters[:9].reshape(3, 3), parameters[9:12], center)
    if kind.startswith("Euler3DTransform"):
        return LinearPart(_euler_matrix(*parameters[:3]), parameters[3:6], center)
    raise ValueError(f"transform type {kind} is not supported")


def _euler_matrix(angle_x: float, angle_y: float, angle_z: float) -> np.ndarray:
    """ITK's Euler3DTransform rotation (ZXY order: rotate about Z, then X, then Y)."""
    cx, sx, cy, sy, cz, sz = np.cos(angle_x), np.sin(angle_x), np.cos(angle_y), np.sin(angle_y), \
        np.cos(angle_z), np.sin(angle_z)
    rotate_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rotate_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rotate_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rotate_z @ rotate_x @ rotate_y


def _displacement(parameters: np.ndarray, fixed: np.ndarray) -> DisplacementPart:
    size = fixed[:3].astype(int)
    origin, spacing, direction = fixed[3:6], fixed[6:9], fixed[9:18].reshape(3, 3)
    # ITK stores the field with the first index fastest, three components per voxel.
    field = parameters.astype(np.float32).reshape(size[2], size[1], size[0], 3).transpose(2, 1, 0, 3)
    world_of_index = np.eye(4)
    world_of_index[:3, :3] = direction * spacing
    world_of_index[:3, 3] = origin
    return DisplacementPart(np.ascontiguousarray(field), np.linalg.inv(world_of_index))
