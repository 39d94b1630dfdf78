"""``kits_plugins.utilities.orientation``: file order <-> nnU-Net order, against nnU-Net's own NibabelIOWithReorient,
and boxes mapped between the two orders."""

from __future__ import annotations

import numpy as np
import pytest
from nnunetv2.imageio.nibabel_reader_writer import NibabelIOWithReorient

from kits_plugins.utilities import roi
from kits_plugins.utilities.image_io import Geometry, write_image
from kits_plugins.utilities.orientation import Reorientation


def _random_geometry(rng, shape):
    perm = rng.permutation(3)
    sign = rng.choice([-1.0, 1.0], 3)
    d = np.zeros((3, 3))
    d[np.arange(3), perm] = sign
    return Geometry((12.5, -3.0, 40.25), (0.7, 0.9, 2.5), tuple(d.ravel()), tuple(shape[::-1]))


@pytest.mark.parametrize("seed", range(6))
def test_reorientation_matches_nnunet_reader(tmp_path, seed):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 4, (4, 5, 6)).astype(np.uint8)
    geom = _random_geometry(rng, arr.shape)
    f = tmp_path / "x.nii.gz"
    write_image(arr, geom, f)
    ref, props = NibabelIOWithReorient().read_seg(str(f))
    r = Reorientation.from_geometry(geom)
    assert np.array_equal(r.to_nnunet(arr), ref[0])
    assert np.allclose(r.spacing_to_nnunet(geom.spacing_np), props["spacing"])
    assert np.array_equal(r.from_nnunet(r.to_nnunet(arr)), arr)
    for file_axis, (nn_axis, _flip) in enumerate(r.axis_map):
        assert arr.shape[file_axis] == ref.shape[1 + nn_axis]


@pytest.mark.parametrize("seed", range(8))
def test_box_from_nnunet_is_the_same_voxels(seed):
    """A box found in nnU-Net order maps to the box of the same voxels in file order (flips included)."""
    from kits_plugins.utilities.roi import outer_box

    rng = np.random.default_rng(seed)
    mask = np.zeros((9, 11, 13), bool)
    lo = rng.integers(0, 4, 3)
    hi = lo + rng.integers(1, 5, 3)
    mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    r = Reorientation.from_geometry(_random_geometry(rng, mask.shape))
    mask_nn = r.to_nnunet(mask)
    assert r.box_from_nnunet(outer_box(mask_nn), mask_nn.shape) == outer_box(mask)


@pytest.mark.parametrize("seed", range(3))
def test_box_to_nnunet_selects_the_same_voxels(seed, random_nifti_geometry):
    rng = np.random.default_rng(seed)
    shape = (5, 6, 7)
    g = random_nifti_geometry(rng, shape)
    arr = rng.integers(0, 1000, shape)
    box = [[1, 4], [0, 3], [2, 7]]
    r = Reorientation.from_geometry(g)
    nn_box = r.box_to_nnunet(box, shape)
    assert np.array_equal(r.to_nnunet(roi.crop(arr, box)), roi.crop(r.to_nnunet(arr), nn_box))
