"""ITK transforms evaluated with NumPy agree with ANTs' own resampling through them."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from refacebids.core.anat import compose_through
from refacebids.core.geometry import itk_affine, to_ants, world_grid
from refacebids.core.transform import map_points, read_transforms


def _positions_by_ants(reference, transforms) -> np.ndarray:
    """(I, J, K, 3) where ANTs sends each voxel of ``reference``: it resamples images whose
    values are their own RAS coordinates, over a grid that holds every mapped point."""
    import ants

    affine = nib.affines.from_matvec(np.eye(3) * 2.0, [-120.0, -120.0, -120.0])
    shape = (121, 121, 121)
    coordinates = world_grid(affine, shape)
    return np.stack([
        ants.apply_transforms(reference, to_ants(coordinates[..., axis], affine),
                              transforms if isinstance(transforms, list) else [transforms],
                              interpolator="linear", defaultvalue=-1e4).numpy()
        for axis in range(3)
    ], axis=-1)


def _head(shape, affine, stretch) -> np.ndarray:
    """A smooth ellipsoidal head with an off-centre bright blob (something to register)."""
    xyz = world_grid(affine, shape)
    radius = np.sqrt(((xyz / np.array(stretch)) ** 2).sum(axis=-1))
    blob = np.exp(-(((xyz - np.array([15.0, 10.0, -5.0])) / 8.0) ** 2).sum(axis=-1))
    return (np.clip(60.0 - radius, 0, 8) * 100 + 400 * blob).astype(np.float32)


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A SyN registration of two synthetic heads, its composite, and a rigid transform."""
    import ants

    folder = tmp_path_factory.mktemp("transforms")
    oblique = nib.eulerangles.euler2mat(0.3, -0.1, 0.2) @ np.diag([2.0, 2.0, 2.5])
    fixed_affine = nib.affines.from_matvec(oblique, [-50.0, -45.0, -60.0])
    fixed = to_ants(_head((50, 46, 40), fixed_affine, (50, 60, 45)), fixed_affine)
    moving_affine = nib.affines.from_matvec(np.eye(3) * 2.0, [-60.0, -60.0, -60.0])
    moving = to_ants(_head((60, 60, 60), moving_affine, (45, 55, 50)), moving_affine)
    syn = ants.registration(fixed, moving, "SyN", reg_iterations=(20, 10, 0), write_composite_transform=True,
                            outprefix=str(folder / "syn_"))
    rigid = ants.create_ants_transform(transform_type="Euler3DTransform", dimension=3)
    rigid.set_parameters(np.array([0.08, -0.05, 0.12, 3.0, -4.0, 5.0]))
    rigid.set_fixed_parameters(np.array([10.0, -5.0, 2.0]))
    rigid_file = str(folder / "rigid.mat")
    ants.write_transform(rigid, rigid_file)
    through = compose_through(rigid_file, syn["fwdtransforms"], str(folder / "through.h5"))
    return {"reference": fixed, "reference_affine": itk_affine(fixed_affine), "composite": syn["fwdtransforms"],
            "rigid": rigid_file, "through": through, "list": [syn["fwdtransforms"], rigid_file]}


@pytest.mark.parametrize("which", ["composite", "rigid", "through", "list"])
def test_points_map_where_ants_resampling_takes_them(registered, which):
    reference, grid = registered["reference"], world_grid(registered["reference_affine"], registered["reference"].shape)
    expected = _positions_by_ants(reference, registered[which])
    mapped = map_points(read_transforms(registered[which]), grid)
    assert mapped.dtype == np.float32 and mapped.shape == expected.shape
    moved = np.linalg.norm(mapped - grid, axis=-1)
    assert np.median(moved) > 1.0  # the transforms really move the points
    assert expected.min() > -1e3  # every point landed on the coordinate grid
    # Float32 arithmetic on both sides; within a hundredth of a millimetre.
    np.testing.assert_allclose(mapped, expected, atol=0.01)


def test_displacement_is_zero_beyond_its_field_and_clamped_within_half_a_voxel():
    """As ITK's DisplacementFieldTransform: within half a voxel of the outer voxel centres
    the edge value holds, further out there is no displacement (SyN fields are 0 at
    their edges anyway, so real composites do not show it)."""
    from refacebids.core.transform import DisplacementPart, _displacement_at

    field = np.zeros((4, 5, 6, 3), np.float32)
    field[..., 0] = np.arange(4)[:, None, None] + 1.0
    part = DisplacementPart(field, np.eye(4))
    points = np.array([[1.5, 2, 2], [3.0, 2, 2], [3.4, 2, 2], [3.6, 2, 2], [-0.4, 2, 2], [-0.6, 2, 2]], np.float32)
    np.testing.assert_allclose(_displacement_at(part, points)[:, 0], [2.5, 4.0, 4.0, 0.0, 1.0, 0.0], atol=1e-6)


def test_an_unsupported_transform_type_is_named(tmp_path):
    import h5py

    path = tmp_path / "bspline.h5"
    with h5py.File(path, "w") as h5:
        group = h5.create_group("TransformGroup").create_group("0")
        group.create_dataset("TransformType", data=["BSplineTransform_double_3_3"], dtype=h5py.string_dtype("ascii"))
        group.create_dataset("TransformParameters", data=np.zeros(3))
        group.create_dataset("TransformFixedParameters", data=np.zeros(3))
    with pytest.raises(ValueError, match="BSplineTransform"):
        read_transforms(path)
