"""ROI crops and paste-back: exact arrays and headers, coverage, border, solitary and merged kidneys.

Synthetic maps always; all real KiTS23 label maps in ../shared/kits23/labels when present (labels only).
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from kits_plugins.dataset_conversion.derive_stages import case_rng, case_rois, uncovered_voxels
from kits_plugins.utilities import roi
from kits_plugins.utilities.crops import (
    CropRecord,
    crop_geometry,
    crops_json_dict,
    load_crops_json,
    paste_back,
    save_crops_json,
)
from kits_plugins.utilities.ct_io import compact_ct
from kits_plugins.utilities.image_io import Geometry, KitsInputError, read_image, to_sitk, write_image
from kits_plugins.utilities.labels import decode_masses, encode_masses, kidney_mask
from kits_plugins.utilities.orientation import Reorientation

KITS_DIRECTION = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0)


def _ellipsoid(shape, center, radii):
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii)) <= 1.0


def _label(shape, centers, radii=(6, 7, 4)) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    for c in centers:
        lab[_ellipsoid(shape, c, radii)] = 1
        lab[_ellipsoid(shape, c, (2, 2, 1.5))] = 2
    return lab


def _random_geometry(rng, shape) -> Geometry:
    perm, sign = rng.permutation(3), rng.choice([-1.0, 1.0], 3)
    d = np.zeros((3, 3))
    d[np.arange(3), perm] = sign
    f32 = lambda v: tuple(float(np.float32(x)) for x in v)  # noqa: E731  (headers read from NIfTI are float32)
    return Geometry(f32((-17.3, 102.9, 55.1)), f32((0.8, 1.1, 2.5)), tuple(d.ravel()), tuple(shape[::-1]))


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
def test_synthetic_crop_paste_back_is_exact(tmp_path, seed):
    rng = np.random.default_rng(seed)
    shape = (40, 44, 30)
    geometry = _random_geometry(rng, shape)
    label = _label(shape, [(10, 20, 12), (31, 22, 18)])
    label[_ellipsoid(shape, (31, 26, 18), (2, 2, 2))] = 3
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


def test_union_of_rois_covers_every_foreground_voxel_and_reports_specks():
    shape = (48, 40, 30)
    label = _label(shape, [(12, 20, 15), (36, 20, 15)])
    spacing = (1.0, 0.8, 0.8)
    boxes = [b for b, _ in case_rois(label > 0, spacing, 3.0, 100.0, 2.0, case_rng(0, "a"))]
    assert len(boxes) == 2 and roi.covers(boxes, label) and uncovered_voxels(label > 0, boxes) == 0
    label[0, 0, 0] = 1  # a speck far from both kidneys, below the minimum volume: no ROI of its own
    boxes = [b for b, _ in case_rois(label > 0, spacing, 5.0, 100.0)]
    assert len(boxes) == 2 and uncovered_voxels(label > 0, boxes) == 1


def test_kidney_touching_the_border_is_clamped():
    shape = (30, 40, 24)
    label = _label(shape, [(0, 20, 23)])  # cut by two faces of the volume
    (box, base), = case_rois(label > 0, (1.0, 1.0, 1.0), 10.0, 10.0, 5.0, case_rng(0, "b"))
    assert box[0][0] == 0 and box[2][1] == 24 and roi.covers([box], label)
    assert all(0 <= a < b <= n for (a, b), n in zip(box, shape))
    geometry = Geometry((1.0, 2.0, 3.0), (1.0, 1.0, 1.0), KITS_DIRECTION, shape[::-1])
    rec = CropRecord("b_roi0", "b", "x", box, geometry, 10.0)
    assert np.array_equal(paste_back(roi.crop(label, box), rec), label)


def test_solitary_kidney_and_two_kidneys_whose_boxes_merge():
    shape = (60, 40, 24)
    solitary = _label(shape, [(30, 20, 12)])
    assert len(case_rois(solitary > 0, (1.0, 1.0, 1.0), 15.0, 100.0)) == 1
    apart = _label(shape, [(10, 20, 12), (50, 20, 12)])
    assert len(case_rois(apart > 0, (1.0, 1.0, 1.0), 5.0, 100.0)) == 2
    (box, base), = case_rois(apart > 0, (1.0, 1.0, 1.0), 15.0, 100.0)  # margins overlap: one merged box
    assert box == base and roi.covers([box], apart)
    # jittered boxes that come to overlap are merged again: ROIs never overlap
    close = _label(shape, [(16, 20, 12), (44, 20, 12)])
    for seed in range(10):
        boxes = [b for b, _ in case_rois(close > 0, (1.0, 1.0, 1.0), 7.0, 100.0, 8.0, case_rng(seed, "x"))]
        assert all(not roi.boxes_overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
        assert roi.covers(boxes, close)


def test_jitter_is_seeded_per_case_and_bounded():
    shape = (60, 40, 24)
    label = _label(shape, [(30, 20, 12)])
    spacing = (2.0, 1.0, 0.5)
    a = case_rois(label > 0, spacing, 4.0, 10.0, 6.0, case_rng(3, "case_00007"))
    b = case_rois(label > 0, spacing, 4.0, 10.0, 6.0, case_rng(3, "case_00007"))
    assert a == b
    extras = []
    for seed in range(30):
        (box, base), = case_rois(label > 0, spacing, 4.0, 10.0, 6.0, case_rng(seed, "case_00007"))
        for (j0, j1), (b0, b1), s in zip(box, base, spacing):
            assert 0 <= b0 - j0 <= np.ceil(6.0 / s) and 0 <= j1 - b1 <= np.ceil(6.0 / s)
            extras.append((b0 - j0) * s)
    assert len(set(extras)) > 3  # varies


def test_label_encodings_and_ct_dtype():
    kits = np.array([0, 1, 2, 3], np.uint8)
    assert encode_masses(kits).tolist() == [0, 0, 1, 2]
    assert decode_masses(encode_masses(kits)).tolist() == [0, 0, 2, 3]
    with pytest.raises(ValueError):
        decode_masses(np.array([3], np.uint8))
    assert kidney_mask(kits).tolist() == [0, 1, 1, 1] and kidney_mask(kits).dtype == np.uint8
    ct16 = np.zeros((2, 2, 2), np.int16)
    assert compact_ct(ct16) is ct16
    assert compact_ct(np.full((2, 2, 2), -1024.0, np.float32)).dtype == np.int16
    assert compact_ct(np.full((2, 2, 2), 0.5, np.float64)).dtype == np.float32
    assert compact_ct(np.full((2, 2, 2), 70000, np.int32)).dtype == np.float32


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


@pytest.mark.parametrize("seed", range(3))
def test_box_to_nnunet_selects_the_same_voxels(seed):
    rng = np.random.default_rng(seed)
    shape = (5, 6, 7)
    g = _random_geometry(rng, shape)
    arr = rng.integers(0, 1000, shape)
    box = [[1, 4], [0, 3], [2, 7]]
    r = Reorientation.from_geometry(g)
    nn_box = r.box_to_nnunet(box, shape)
    assert np.array_equal(r.to_nnunet(roi.crop(arr, box)), roi.crop(r.to_nnunet(arr), nn_box))


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


@pytest.mark.parametrize("seed", range(8))
def test_roi_boxes_equal_brute_force(seed):
    """roi.roi_boxes (components inside the projected outer box) equals a full-volume scipy reference,
    also at the image border."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    shape = (50, 44, 30)
    centers = [tuple(int(rng.integers(0, n)) for n in shape) for _ in range(int(rng.integers(1, 4)))]
    mask = _label(shape, centers, radii=(5, 6, 3)) > 0
    spacing = tuple(float(v) for v in rng.uniform(0.5, 3.0, 3))
    margin = float(rng.uniform(0, 20))
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    sizes = ndimage.sum(mask, labels, range(1, n + 1))
    keep = [i for i in range(n) if sizes[i] * np.prod(spacing) >= 30.0] or [int(np.argmax(sizes))]
    objs = ndimage.find_objects(labels)
    pad = roi.mm_to_voxels(margin, spacing)
    ref = [[[max(0, sl.start - p), min(s, sl.stop + p)] for sl, p, s in zip(objs[i], pad, shape)] for i in keep]
    assert roi.roi_boxes(mask, spacing, margin, 30.0) == roi.merge_overlapping(ref)
    where = np.nonzero(mask)
    assert roi.outer_box(mask) == [[int(w.min()), int(w.max()) + 1] for w in where]
    assert roi.outer_box(np.zeros(shape, bool)) is None and roi.roi_boxes(np.zeros(shape, bool), spacing, 5, 0) == []
