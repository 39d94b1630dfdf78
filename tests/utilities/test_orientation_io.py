"""Orientation mapping against nnU-Net's own NibabelIOWithReorient, and header-exact I/O."""

from __future__ import annotations

import numpy as np
import pytest
from nnunetv2.imageio.nibabel_reader_writer import NibabelIOWithReorient

from kits_plugins.utilities.image_io import Geometry, KitsInputError, read_geometry, read_image, read_label, write_image
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


def test_write_read_roundtrip_and_subvolume_origin(tmp_path):
    d = np.array([[0, 0, 1], [0, 1, 0], [-1, 0, 0]], dtype=float)  # KiTS23's permuted direction
    geom = Geometry((0.0, 0.0, 0.0), (2.5, 0.8203125, 0.8203125), tuple(d.ravel()), (7, 9, 11))
    arr = np.arange(np.prod(geom.shape), dtype=np.int16).reshape(geom.shape)
    write_image(arr, geom, tmp_path / "a.nii.gz")
    back, g2 = read_image(tmp_path / "a.nii.gz")
    assert np.array_equal(back, arr) and g2 == geom
    sub = geom.with_size((3, 4, 5), (2, 1, 3))
    # first voxel of the sub-volume is at the physical point of index (x=3, y=1, z=2) of the parent
    import SimpleITK as sitk

    parent = sitk.Image(list(geom.size), sitk.sitkUInt8)
    parent.SetOrigin(geom.origin), parent.SetSpacing(geom.spacing), parent.SetDirection(geom.direction)
    assert np.allclose(sub.origin, parent.TransformIndexToPhysicalPoint((3, 1, 2)))
    assert not list(tmp_path.glob(".*partial*"))


def test_bad_inputs_name_the_file(tmp_path):
    import SimpleITK as sitk

    f2d = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.Image([8, 8], sitk.sitkUInt8), str(f2d))
    with pytest.raises(KitsInputError, match="flat.nii.gz.*3D"):
        read_image(f2d)
    with pytest.raises(KitsInputError, match="flat.nii.gz"):
        read_geometry(f2d)
    geom = Geometry((0.0,) * 3, (1.0,) * 3, (1, 0, 0, 0, 1, 0, 0, 0, 1), (3, 3, 3))
    write_image(np.full((3, 3, 3), 5, np.uint8), geom, tmp_path / "lab.nii.gz")
    with pytest.raises(KitsInputError, match=r"lab.nii.gz: labels outside 0-3: \[5\]"):
        read_label(tmp_path / "lab.nii.gz")
    with pytest.raises(KitsInputError, match="missing.nii.gz"):
        read_image(tmp_path / "missing.nii.gz")


def test_real_headers_roundtrip(shared_label_files, tmp_path):
    for f in shared_label_files:
        g = read_geometry(f)
        assert g.shape[:2] == (512, 512)
        sub = g.with_size((g.shape[0], g.shape[1], 2), (0, 0, 1))
        write_image(np.zeros(sub.shape, np.uint8), sub, tmp_path / "c.nii.gz")
        assert read_geometry(tmp_path / "c.nii.gz") == sub, f.name


def test_view_read_keeps_the_buffer_alive_and_dtype_conversion(tmp_path):
    import gc

    geom = Geometry((0.0,) * 3, (1.0, 2.0, 3.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (4, 5, 6))
    arr = np.arange(120, dtype=np.int16).reshape(geom.shape)
    write_image(arr, geom, tmp_path / "v.nii.gz")
    view, g = read_image(tmp_path / "v.nii.gz", view=True)
    sub = view[1:3]
    del view
    gc.collect()
    assert np.array_equal(sub, arr[1:3]) and g == geom  # the SimpleITK image lives as long as a view of it
    f32, _ = read_image(tmp_path / "v.nii.gz", np.float32)
    assert f32.dtype == np.float32 and np.array_equal(f32, arr)
    lab, _ = read_label(tmp_path / "v.nii.gz", max_label=119, view=True)
    assert lab.dtype == np.uint8 and np.array_equal(lab, arr)


def test_atomic_write_bytes_permissions_and_failure(tmp_path):
    import os

    from kits_plugins.utilities.staging import atomic_path, atomic_write_bytes

    atomic_write_bytes(tmp_path / "a.json", b"{}")
    assert (tmp_path / "a.json").read_bytes() == b"{}"
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "b.json") as tmp:
        open(tmp, "w").write("half")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
