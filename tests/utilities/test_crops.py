"""``kits_plugins.utilities.crops``: crop records, crops.json and paste-back: exact arrays and headers.

Synthetic maps always; all real KiTS23 label maps in ../shared/kits23/labels when present (labels only).
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from kits_plugins.dataset_conversion.derive_stages import case_rng, case_rois
from kits_plugins.utilities import roi
from kits_plugins.utilities.crops import (
    CropRecord,
    crop_geometry,
    crops_json_dict,
    load_crops_json,
    paste_back,
    save_crops_json,
)
from kits_plugins.utilities.image_io import Geometry, KitsInputError, read_image, to_sitk, write_image
from kits_plugins.utilities.labels import kidney_mask

KITS_DIRECTION = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0)


def _records(label: np.ndarray, geometry: Geometry, margin: float, min_vol: float, jitter: float = 0.0, case="c"):
    rois = case_rois(kidney_mask(label), geometry.spacing_np, margin, min_vol, jitter, case_rng(1, case))
    return [
        CropRecord(f"{case}_roi{i}", case, "x.nii.gz", box, geometry, margin, {"box_before_jitter": base})
        for i, (box, base) in enumerate(rois)
    ]


def _roundtrip(label: np.ndarray, geometry: Geometry, records, tmp_path=None) -> tuple[np.ndarray, sitk.Image]:
    """Crop (written to disk when tmp_path is given), read back, paste: the reassembled full map and header."""
    full = np.zeros(geometry.shape, label.dtype)
    for r in records:
        crop = roi.crop(label, r.box)
        if tmp_path is not None:
            f = tmp_path / f"{r.crop_id}.nii.gz"
            write_image(np.ascontiguousarray(crop), crop_geometry(r), f)
            crop, g = read_image(f)
            assert np.array_equal(np.float32(g.origin), np.float32(crop_geometry(r).origin))
            assert (g.spacing, g.direction) == (geometry.spacing, geometry.direction)
        paste_back(crop, r, out=full)
    return full, to_sitk(full, records[0].source_geometry if records else geometry)


@pytest.mark.parametrize("seed", range(4))
def test_synthetic_crop_paste_back_is_exact(tmp_path, seed, kidneys_with_tumors, ellipsoid_mask, random_nifti_geometry):
    rng = np.random.default_rng(seed)
    shape = (40, 44, 30)
    geometry = random_nifti_geometry(rng, shape)
    label = kidneys_with_tumors(shape, [(10, 20, 12), (31, 22, 18)])
    label[ellipsoid_mask(shape, (31, 26, 18), (2, 2, 2))] = 3
    records = _records(label, geometry, margin=3.0, min_vol=10.0, jitter=4.0)
    assert len(records) == 2
    # crops.json round trip keeps every record (boxes, full source header) exactly
    save_crops_json(tmp_path / "crops.json", records, margin_mm=3.0)
    loaded = load_crops_json(tmp_path)
    assert list(loaded.values()) == records
    full, image = _roundtrip(label, geometry, list(loaded.values()), tmp_path)
    assert int(np.count_nonzero(full != label)) == 0
    assert Geometry.from_image(image) == geometry
    # the origin of each crop is the physical point of its first voxel
    ref = to_sitk(label, geometry)
    for r in records:
        assert np.allclose(crop_geometry(r).origin, ref.TransformIndexToPhysicalPoint(list(r.start[::-1])))


def test_paste_back_checks_shapes_and_crops_json_errors(tmp_path):
    g = Geometry((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), KITS_DIRECTION, (10, 10, 10))
    rec = CropRecord("c_roi0", "c", "x", [[1, 4], [2, 5], [0, 10]], g, 15.0)
    with pytest.raises(ValueError, match="does not match"):
        paste_back(np.zeros((3, 3, 9)), rec)
    two_channel = paste_back(np.ones((2, 3, 3, 10), np.float32), rec)
    assert two_channel.shape == (2, 10, 10, 10) and two_channel.sum() == 180
    doc = crops_json_dict([rec])
    doc["crops"]["c_roi0"]["box"] = [[1, 40], [2, 5], [0, 10]]
    (tmp_path / "crops.json").write_text(__import__("json").dumps(doc))
    with pytest.raises(KitsInputError, match="does not lie inside"):
        load_crops_json(tmp_path / "crops.json")
    with pytest.raises(KitsInputError, match="not found"):
        load_crops_json(tmp_path / "nothing.json")


@pytest.mark.shared
def test_all_shared_labels_crop_and_paste_back_exactly(shared_label_files, tmp_path):
    """Every real label map: ROIs cover all foreground, crops (written as files) paste back to 0 differing voxels
    with the source header; case_00151 (solitary kidney, 1059 slices) gives exactly one ROI."""
    for path in shared_label_files:
        image = sitk.ReadImage(str(path))
        label = sitk.GetArrayViewFromImage(image)
        geometry = Geometry.from_image(image)
        records = _records(label, geometry, 15.0, 2000.0, 10.0, case=path.name[:10])
        assert records, path.name
        if path.name.startswith("case_00151"):
            assert len(records) == 1
        full = np.zeros(label.shape, np.uint8)
        for r in records:
            crop = np.ascontiguousarray(roi.crop(label, r.box))
            f = tmp_path / "crop.nii"  # uncompressed: the check is about values and headers, not gzip
            write_image(crop, crop_geometry(r), f, compress=False)
            back, g = read_image(f)
            assert (g.spacing, g.direction, g.size) == (geometry.spacing, geometry.direction, crop.shape[::-1])
            assert np.allclose(g.origin, image.TransformIndexToPhysicalPoint(list(r.start[::-1])), atol=1e-4)
            paste_back(back, r, out=full)
        assert int(np.count_nonzero(full != label)) == 0, path.name
        pasted = to_sitk(full, Geometry.from_dict(records[0].to_dict()["source_geometry"]))
        assert Geometry.from_image(pasted) == geometry, path.name
