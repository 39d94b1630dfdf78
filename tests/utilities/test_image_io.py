"""``kits_plugins.utilities.image_io``: header-exact writing and reading, views, label checks, errors naming the
file."""

from __future__ import annotations

import numpy as np
import pytest

from kits_plugins.utilities.image_io import Geometry, KitsInputError, read_geometry, read_image, read_label, write_image


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
