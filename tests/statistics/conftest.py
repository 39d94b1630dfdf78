"""Fixtures of the statistics tests: headers and phantoms drawn in physical (LPS) space."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from kits_plugins.utilities.image_io import Geometry

#: KiTS23's direction matrix (the slice axis is the last numpy axis)
KITS_DIRECTION = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0)
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@pytest.fixture(scope="session")
def rotation():
    """``rotation((ax, ay, az))``: the rotation matrix about x, then y, then z (degrees)."""

    def _rotation(angles_deg) -> np.ndarray:
        ax, ay, az = np.radians(angles_deg)
        rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
        ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
        rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
        return rz @ ry @ rx

    return _rotation


@pytest.fixture(scope="session")
def voxel_centres_lps():
    """``voxel_centres_lps(geometry)``: LPS position (mm) of every voxel centre, shape ``geometry.shape + (3,)``,
    written out here from the NIfTI/ITK convention (checked against SimpleITK on a few voxels)."""

    def _centres(geometry: Geometry) -> np.ndarray:
        d = np.asarray(geometry.direction).reshape(3, 3)
        k, j, i = np.indices(geometry.shape, dtype=np.float64)  # numpy order z, y, x = ITK index (i, j, k) reversed
        index = np.stack([i, j, k], axis=-1) * np.asarray(geometry.spacing)
        points = np.asarray(geometry.origin) + index @ d.T
        image = sitk.Image(list(geometry.size), sitk.sitkUInt8)
        image.SetOrigin(geometry.origin)
        image.SetSpacing(geometry.spacing)
        image.SetDirection(geometry.direction)
        for z, y, x in [(0, 0, 0), tuple(n - 1 for n in geometry.shape), (1, 2, 3)]:
            assert np.allclose(points[z, y, x], image.TransformIndexToPhysicalPoint((x, y, z)))
        return points

    return _centres


@pytest.fixture(scope="session")
def ellipsoid_lps(voxel_centres_lps):
    """``ellipsoid_lps(geometry, centre_mm, radii_mm, axes=identity)``: voxels whose centre lies in the ellipsoid
    with these semi-axes along the columns of ``axes`` (LPS)."""

    def _ellipsoid(geometry, centre_mm, radii_mm, axes=None) -> np.ndarray:
        local = (voxel_centres_lps(geometry) - np.asarray(centre_mm)) @ (np.eye(3) if axes is None else axes)
        return ((local / np.asarray(radii_mm)) ** 2).sum(axis=-1) <= 1.0

    return _ellipsoid


@pytest.fixture(scope="session")
def kits_layout():
    """``kits_layout(array, geometry)``: the same voxels in KiTS23's array layout (identity ``geometry`` in): the
    array transposed and flipped, with the header that puts every voxel at the same LPS position."""

    def _kits(array: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, Geometry]:
        assert geometry.direction == IDENTITY
        nz = array.shape[0]
        out = np.ascontiguousarray(array.transpose(2, 1, 0)[:, :, ::-1])  # out[x, y, nz-1-z] = array[z, y, x]
        sx, sy, sz = geometry.spacing
        origin = (geometry.origin[0], geometry.origin[1], geometry.origin[2] + sz * (nz - 1))
        return out, Geometry(origin, (sz, sy, sx), KITS_DIRECTION, tuple(out.shape[::-1]))

    return _kits
