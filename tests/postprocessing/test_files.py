"""``kits_plugins.postprocessing.files``: postprocessing a label file keeps its header exactly; bad labels name the
file; a real KiTS23 label map (optional) keeps its organ."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from kits_plugins.postprocessing import postprocess_segmentation
from kits_plugins.postprocessing.files import postprocess_file
from kits_plugins.utilities.image_io import KitsInputError, read_geometry, read_label, write_image

# Small thresholds for small arrays: kidney(+masses) 1000, tumor 27, cyst 8 mm3.
SMALL = {1: 1000.0, 2: 27.0, 3: 8.0}


def test_postprocess_file_keeps_header_exactly(tmp_path, demo_case, kits_geometry, reasons):
    seg = demo_case()
    geom = kits_geometry(seg.shape)
    write_image(seg.astype(np.int16), geom, tmp_path / "in.nii.gz")
    report = postprocess_file(tmp_path / "in.nii.gz", tmp_path / "out.nii.gz", {**SMALL, 2: 26.0})
    out, out_geom = read_label(tmp_path / "out.nii.gz")
    assert read_geometry(tmp_path / "out.nii.gz") == read_geometry(tmp_path / "in.nii.gz") == out_geom
    assert sitk.ReadImage(str(tmp_path / "out.nii.gz")).GetPixelID() == sitk.sitkUInt8
    expected = postprocess_segmentation(seg, geom.spacing_np, {**SMALL, 2: 26.0})
    assert np.array_equal(out, expected)
    # voxel volume 1.4 mm3: the 18-voxel tumor (25.2 mm3) is below 26 mm3
    assert sorted(reasons(report)) == ["outside_kidney", "small_kidney", "small_tumor"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_postprocess_file_bad_labels_names_file(tmp_path, demo_case, kits_geometry):
    seg = demo_case()
    seg[0, 0, 0] = 7
    write_image(seg, kits_geometry(seg.shape), tmp_path / "bad.nii.gz")
    with pytest.raises(KitsInputError, match="bad.nii.gz"):
        postprocess_file(tmp_path / "bad.nii.gz", tmp_path / "out.nii.gz")
    assert not (tmp_path / "out.nii.gz").exists()


@pytest.mark.shared
def test_real_label_map_keeps_header_and_organ(shared_label_files, tmp_path):
    # the thickest-slice case is the smallest file; its ground truth loses nothing but specks
    src = min(shared_label_files, key=lambda p: p.stat().st_size)
    report = postprocess_file(src, tmp_path / src.name)
    gt, geom = read_label(src)
    out, out_geom = read_label(tmp_path / src.name)
    assert out_geom == geom == read_geometry(src)
    lost = np.count_nonzero((gt > 0) & (out == 0))
    assert lost == sum(r.voxels for r in report.removed if r.new_label == 0)
    assert lost <= 1e-3 * np.count_nonzero(gt)
    assert all(r.reason != "small_tumor" for r in report.removed)
