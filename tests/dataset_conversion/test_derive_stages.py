"""``kits_plugins.dataset_conversion.derive_stages``: ``kits derive-stages`` on tiny generated data (datasets 221-223,
crops that paste back exactly, splits, predictions as the box source, 223's mask channel from stage-222 predictions)
and its ROI boxes on synthetic label maps (coverage, border, solitary and merged kidneys, seeded jitter, truncated
and false-positive training crops)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from nnunetv2.experiment_planning.verify_dataset_integrity import verify_labels
from nnunetv2.imageio.nibabel_reader_writer import NibabelIOWithReorient
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from kits_plugins.dataset_conversion.convert_kits23 import convert_kits23
from kits_plugins.dataset_conversion.derive_stages import (
    DEFAULT_TRUNCATE_SHARE,
    EXTENSION_STREAM,
    TRUNCATION_STREAM,
    case_rng,
    case_rois,
    derive_stages,
    extension_depth,
    resolve_settings,
    sample_rois,
    uncovered_voxels,
)
from kits_plugins.utilities import roi
from kits_plugins.utilities.crops import CropRecord, crop_geometry, load_crops_json, paste_back
from kits_plugins.utilities.image_io import Geometry, KitsInputError, read_geometry, read_image, write_image
from kits_plugins.utilities.labels import decode_masses, encode_masses
from kits_plugins.utilities.orientation import Reorientation

MARGIN = 4.0
MIN_VOL = 50.0
KITS_DIRECTION = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0)


def assert_file_header(read: Geometry, expected: Geometry) -> None:
    """NIfTI stores the origin as float32: the file holds the expected origin to that precision, the rest exactly."""
    assert (read.size, read.spacing, read.direction) == (expected.size, expected.spacing, expected.direction)
    assert np.array_equal(np.float32(read.origin), np.float32(expected.origin))


@pytest.fixture(scope="module")
def derived(raw_with_220):
    """Datasets 221-223 derived from the Dataset220 of ``raw_with_220`` (no truncation: every ROI whole)."""
    kits, raw, _ = raw_with_220
    written = derive_stages(raw=raw, margin_mm=MARGIN, jitter_mm=3.0, seed=7, min_volume_mm3=MIN_VOL,
                            truncate_share=0.0)
    return kits, raw, written


def test_dataset221_full_ct_hardlink_and_binary_label(derived):
    kits, raw, written = derived
    d221, d220 = written[221], raw / "Dataset220_KiTS2023"
    dj = json.loads((d221 / "dataset.json").read_text())
    assert dj["labels"] == {"background": 0, "kidney": 1} and dj["channel_names"] == {"0": "CT"}
    assert dj["overwrite_image_reader_writer"] == "NibabelIOWithReorient" and dj["numTraining"] == 4
    for case in sorted(kits.glob("case_*")):
        img = d221 / "imagesTr" / f"{case.name}_0000.nii.gz"
        assert os.stat(img).st_ino == os.stat(d220 / "imagesTr" / img.name).st_ino
        lab, g = read_image(d221 / "labelsTr" / f"{case.name}.nii.gz")
        src, gs = read_image(case / "segmentation.nii.gz")
        assert lab.dtype == np.uint8 and g == gs
        assert np.array_equal(lab, (src > 0).astype(np.uint8))


def test_crops_paste_back_exactly_and_sit_in_place(derived):
    kits, raw, written = derived
    records = load_crops_json(written[222])
    assert load_crops_json(written[223] / "crops.json") == records
    by_case: dict[str, list] = {}
    for r in records.values():
        by_case.setdefault(r.case, []).append(r)
    assert {c: len(v) for c, v in by_case.items()} == {
        "case_00000": 2, "case_00001": 1, "case_00002": 2, "case_00003": 1  # two, solitary, border, close(merged)
    }
    for case_dir in sorted(kits.glob("case_*")):
        gt, gt_geom = read_image(case_dir / "segmentation.nii.gz")
        ct, ct_geom = read_image(case_dir / "imaging.nii.gz")
        full = sitk.ReadImage(str(case_dir / "imaging.nii.gz"))
        pasted_bin = np.zeros_like(gt)
        pasted_masses = np.zeros_like(gt)
        for r in by_case[case_dir.name]:
            assert (written[222] / r.image).resolve() == (raw / "Dataset220_KiTS2023/imagesTr" /
                                                           f"{r.case}_0000.nii.gz").resolve()
            assert r.source_geometry == ct_geom and r.margin_mm == MARGIN
            assert all(a <= b0 and b1 <= b for (a, b), (b0, b1) in zip(r.box, r.extra["box_before_jitter"]))
            img, g = read_image(written[222] / "imagesTr" / f"{r.crop_id}_0000.nii.gz")
            assert_file_header(g, crop_geometry(r))
            # origin of the crop = physical point of its first voxel in the full CT (index order reversed)
            assert np.allclose(g.origin, full.TransformIndexToPhysicalPoint([int(a) for a in r.start[::-1]]), atol=1e-6)
            assert np.array_equal(img, ct[tuple(slice(a, b) for a, b in r.box)])
            lab222, _ = read_image(written[222] / "labelsTr" / f"{r.crop_id}.nii.gz")
            paste_back(lab222, r, out=pasted_bin)
            # Dataset223: same CT crop (hardlink), binary uint8 mask channel, encoded masses labels
            i223 = written[223] / "imagesTr" / f"{r.crop_id}_0000.nii.gz"
            assert os.stat(i223).st_ino == os.stat(written[222] / "imagesTr" / i223.name).st_ino
            mask, gm = read_image(written[223] / "imagesTr" / f"{r.crop_id}_0001.nii.gz")
            assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1} and gm == g
            assert read_geometry(written[223] / "labelsTr" / f"{r.crop_id}.nii.gz") == g
            assert np.array_equal(mask, lab222)  # from ground truth: the kidney+masses mask
            lab223, _ = read_image(written[223] / "labelsTr" / f"{r.crop_id}.nii.gz")
            assert set(np.unique(lab223)) <= {0, 1, 2}
            paste_back(decode_masses(lab223), r, out=pasted_masses)
        assert np.array_equal(pasted_bin, (gt > 0).astype(np.uint8))  # union of ROIs covers all foreground
        assert np.array_equal(pasted_masses, np.where(gt >= 2, gt, 0))
        back = sitk.GetImageFromArray(pasted_bin)
        back.SetOrigin(r.source_geometry.origin), back.SetSpacing(r.source_geometry.spacing)
        back.SetDirection(r.source_geometry.direction)
        assert Geometry.from_image(back) == read_geometry(case_dir / "imaging.nii.gz")


def test_dataset223_json_is_valid_for_nnunet_regions(derived):
    _, _, written = derived
    dj = json.loads((written[223] / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "CT", "1": "noNorm"}
    assert dj["labels"] == {"background": 0, "masses": [1, 2], "tumor": 1}
    assert dj["regions_class_order"] == [2, 1]
    lm = LabelManager(dj["labels"], dj["regions_class_order"])
    assert lm.has_regions and lm.all_labels == [0, 1, 2]  # consecutive, as verify_dataset_integrity demands
    from nnunetv2.preprocessing.normalization.map_channel_name_to_normalization import get_normalization_scheme

    assert get_normalization_scheme("noNorm").__name__ == "NoNormalization"
    label_files = sorted((written[223] / "labelsTr").glob("*.nii.gz"))
    assert all(verify_labels(str(f), NibabelIOWithReorient, lm.all_labels) for f in label_files)
    # nnU-Net turns region probabilities into a label map with regions_class_order: decode gives KiTS values
    lab, _ = NibabelIOWithReorient().read_seg(str(label_files[0]))
    regions = np.stack([np.isin(lab[0], r) for r in lm.foreground_regions]).astype(np.float32)
    seg = lm.convert_probabilities_to_segmentation(regions)
    assert np.array_equal(seg, lab[0])
    assert set(np.unique(decode_masses(seg.astype(np.uint8)))) <= {0, 2, 3}


def test_splits_keep_a_patients_rois_together(derived):
    _, _, written = derived
    splits = json.loads((written[222] / "splits_final.json").read_text()) if (
        written[222] / "splits_final.json").exists() else None
    assert splits is None  # 4 cases < 5 folds: nnU-Net decides
    from kits_plugins.dataset_conversion.derive_stages import stage_splits

    crops = {f"case_{i:05d}_roi{j}": f"case_{i:05d}" for i in range(7) for j in range(2)}
    s = stage_splits([f"case_{i:05d}" for i in range(7)], crops)
    assert len(s) == 5
    for fold in s:
        assert not {c[:10] for c in fold["train"]} & {c[:10] for c in fold["val"]}
        assert len(fold["train"]) + len(fold["val"]) == 14


def test_nnunet_reader_sees_crops_consistent_with_full_image(derived):
    kits, raw, written = derived
    rw = NibabelIOWithReorient()
    for r in list(load_crops_json(written[222]).values())[:3]:
        full, pf = rw.read_images([str(written[222] / r.image)])
        crop, pc = rw.read_images([str(written[222] / "imagesTr" / f"{r.crop_id}_0000.nii.gz")])
        box = Reorientation.from_geometry(r.source_geometry).box_to_nnunet(r.box, r.source_shape)
        assert np.array_equal(crop[0], full[0][tuple(slice(a, b) for a, b in box)])
        assert np.allclose(pc["spacing"], pf["spacing"])
        ct_crop, _ = read_image(written[222] / "imagesTr" / f"{r.crop_id}_0000.nii.gz")
        assert np.array_equal(Reorientation.from_geometry(r.source_geometry).to_nnunet(ct_crop), crop[0])


def test_derive_refuses_existing_and_jitter_is_seeded(derived, tmp_path):
    kits, raw, written = derived
    before = sorted(p.name for p in (written[222] / "labelsTr").iterdir())
    with pytest.raises(KitsInputError, match="already exists"):
        derive_stages(raw=raw, margin_mm=MARGIN, min_volume_mm3=MIN_VOL)
    assert sorted(p.name for p in (written[222] / "labelsTr").iterdir()) == before
    # same seed -> same boxes (into another raw folder holding a hardlinked copy of 220)
    raw2 = tmp_path / "raw2"
    (raw2 / "Dataset220_KiTS2023").mkdir(parents=True)
    for sub in ("imagesTr", "labelsTr"):
        (raw2 / "Dataset220_KiTS2023" / sub).mkdir()
        for f in (raw / "Dataset220_KiTS2023" / sub).iterdir():
            os.link(f, raw2 / "Dataset220_KiTS2023" / sub / f.name)
    w2 = derive_stages(raw=raw2, margin_mm=MARGIN, jitter_mm=3.0, seed=7, min_volume_mm3=MIN_VOL, stages=[222],
                       num_processes=1, truncate_share=0.0)
    a, b = load_crops_json(written[222]), load_crops_json(w2[222])
    assert {k: v.box for k, v in a.items()} == {k: v.box for k, v in b.items()}
    w3 = derive_stages(raw=raw2, margin_mm=MARGIN, jitter_mm=0.0, min_volume_mm3=MIN_VOL, stages=[222],
                       overwrite=True, truncate_share=0.0)
    c = load_crops_json(w3[222])
    assert all(v.box == v.extra["box_before_jitter"] for v in c.values())
    assert sorted(p.name for p in raw2.iterdir()) == ["Dataset220_KiTS2023", "Dataset222_KiTS2023Kidney"]


def test_from_predictions_gives_boxes_and_mask_channel(derived, tmp_path):
    kits, raw, written = derived
    preds = tmp_path / "preds"
    for case_dir in sorted(kits.glob("case_*")):
        gt, g = read_image(case_dir / "segmentation.nii.gz")
        pred = np.zeros_like(gt)
        pred[:, 1:, :] = (gt[:, :-1, :] > 0)  # coarse model one voxel off
        write_image(pred, g, preds / f"{case_dir.name}.nii.gz")
    raw3 = tmp_path / "raw3"
    raw3.mkdir()
    os.symlink(raw / "Dataset220_KiTS2023", raw3 / "Dataset220_KiTS2023", target_is_directory=True)
    w = derive_stages(raw=raw3, margin_mm=MARGIN, min_volume_mm3=MIN_VOL, from_predictions=preds)
    assert sorted(w) == [222, 223]  # 221 does not depend on predictions
    for r in load_crops_json(w[223]).values():
        assert r.box == r.extra["box_before_jitter"]  # no jitter by default with predictions
        pred, _ = read_image(preds / f"{r.case}.nii.gz")
        mask, _ = read_image(w[223] / "imagesTr" / f"{r.crop_id}_0001.nii.gz")
        assert np.array_equal(mask, pred[tuple(slice(a, b) for a, b in r.box)])
        gt, _ = read_image(kits / r.case / "segmentation.nii.gz")
        lab, _ = read_image(w[222] / "labelsTr" / f"{r.crop_id}.nii.gz")
        assert np.array_equal(lab, (gt[tuple(slice(a, b) for a, b in r.box)] > 0))  # labels from ground truth
    (preds / "case_00002.nii.gz").unlink()
    with pytest.raises(KitsInputError, match="case_00002"):
        derive_stages(raw=raw3, from_predictions=preds, overwrite=True)


def test_nan_in_a_float_ct_is_refused_by_convert_and_derive(tmp_path, make_kits_dir, make_label, make_ct, case_geometry):
    kits = make_kits_dir(tmp_path, kinds=("two", "solitary"))
    ct = make_ct(make_label("two")).astype(np.float32)
    ct[30, 17, 4] = np.nan
    g = case_geometry(origin=(-120.0, 35.5, 410.0))
    write_image(ct, g, kits / "case_00000" / "imaging.nii.gz")  # ITK would read the NaN as 0
    with pytest.raises(KitsInputError, match=r"case_00000.*imaging.nii.gz: CT contains NaN or infinite values "
                                             r"\(first in slice 30\)"):
        convert_kits23(kits, raw=tmp_path / "raw")
    # a NaN CT that reached Dataset220 some other way is refused where derive-stages crops it
    write_image(make_ct(make_label("two")), g, kits / "case_00000" / "imaging.nii.gz")
    _, _ = convert_kits23(kits, raw=tmp_path / "raw")
    write_image(ct, g, tmp_path / "raw" / "Dataset220_KiTS2023" / "imagesTr" / "case_00000_0000.nii.gz")
    with pytest.raises(KitsInputError, match="case_00000_0000.nii.gz: CT contains NaN"):
        derive_stages(raw=tmp_path / "raw", margin_mm=MARGIN, min_volume_mm3=MIN_VOL)
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["Dataset220_KiTS2023"]


def test_union_of_rois_covers_every_foreground_voxel_and_reports_specks(kidneys_with_tumors):
    shape = (48, 40, 30)
    label = kidneys_with_tumors(shape, [(12, 20, 15), (36, 20, 15)])
    spacing = (1.0, 0.8, 0.8)
    boxes = [b for b, _ in case_rois(label > 0, spacing, 3.0, 100.0, 2.0, case_rng(0, "a"))]
    assert len(boxes) == 2 and roi.covers(boxes, label) and uncovered_voxels(label > 0, boxes) == 0
    label[0, 0, 0] = 1  # a speck far from both kidneys, below the minimum volume: no ROI of its own
    boxes = [b for b, _ in case_rois(label > 0, spacing, 5.0, 100.0)]
    assert len(boxes) == 2 and uncovered_voxels(label > 0, boxes) == 1


def test_kidney_touching_the_border_is_clamped(kidneys_with_tumors):
    shape = (30, 40, 24)
    label = kidneys_with_tumors(shape, [(0, 20, 23)])  # cut by two faces of the volume
    (box, base), = case_rois(label > 0, (1.0, 1.0, 1.0), 10.0, 10.0, 5.0, case_rng(0, "b"))
    assert box[0][0] == 0 and box[2][1] == 24 and roi.covers([box], label)
    assert all(0 <= a < b <= n for (a, b), n in zip(box, shape))
    geometry = Geometry((1.0, 2.0, 3.0), (1.0, 1.0, 1.0), KITS_DIRECTION, shape[::-1])
    rec = CropRecord("b_roi0", "b", "x", box, geometry, 10.0)
    assert np.array_equal(paste_back(roi.crop(label, box), rec), label)


def test_solitary_kidney_and_two_kidneys_whose_boxes_merge(kidneys_with_tumors):
    shape = (60, 40, 24)
    solitary = kidneys_with_tumors(shape, [(30, 20, 12)])
    assert len(case_rois(solitary > 0, (1.0, 1.0, 1.0), 15.0, 100.0)) == 1
    apart = kidneys_with_tumors(shape, [(10, 20, 12), (50, 20, 12)])
    assert len(case_rois(apart > 0, (1.0, 1.0, 1.0), 5.0, 100.0)) == 2
    (box, base), = case_rois(apart > 0, (1.0, 1.0, 1.0), 15.0, 100.0)  # margins overlap: one merged box
    assert box == base and roi.covers([box], apart)
    # jittered boxes that come to overlap are merged again: ROIs never overlap
    close = kidneys_with_tumors(shape, [(16, 20, 12), (44, 20, 12)])
    for seed in range(10):
        boxes = [b for b, _ in case_rois(close > 0, (1.0, 1.0, 1.0), 7.0, 100.0, 8.0, case_rng(seed, "x"))]
        assert all(not roi.boxes_overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
        assert roi.covers(boxes, close)


def test_jitter_is_seeded_per_case_and_bounded(kidneys_with_tumors):
    shape = (60, 40, 24)
    label = kidneys_with_tumors(shape, [(30, 20, 12)])
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


# ---------------------------------------------------------------- 223's mask channel from stage-222 predictions (--masks-from)


def _write_222_predictions(records, folder: Path, kits: Path) -> dict[str, np.ndarray]:
    """Per crop a stage-222 prediction unlike the ground truth: the kidney one voxel off along the first axis and a
    block of label 2 in a corner (binarised, 2 must become 1 as 1 does)."""
    preds = {}
    for r in records.values():
        gt, _ = read_image(kits / r.case / "segmentation.nii.gz")
        part = (gt[tuple(slice(a, b) for a, b in r.box)] > 0).astype(np.uint8)
        pred = np.zeros_like(part)
        pred[1:] = part[:-1]
        pred[:2, :2, :2] = 2
        write_image(pred, crop_geometry(r), folder / f"{r.crop_id}.nii.gz")
        preds[r.crop_id] = pred
    return preds


def test_masks_from_writes_the_binarised_stage222_prediction_on_222s_crops(derived, tmp_path, link_raw):
    kits, raw, written = derived
    raw4 = link_raw(tmp_path / "raw4", raw, "Dataset220_KiTS2023", "Dataset222_KiTS2023Kidney")
    records = load_crops_json(written[222])
    preds = _write_222_predictions(records, tmp_path / "p222", kits)
    w = derive_stages(raw=raw4, masks_from=tmp_path / "p222")
    assert sorted(w) == [223] and sorted(p.name for p in raw4.iterdir()) == [
        "Dataset220_KiTS2023", "Dataset222_KiTS2023Kidney", "Dataset223_KiTS2023Masses"]
    assert load_crops_json(w[223]) == records  # 222's very crops: ids, boxes, sampling
    assert sorted(p.name for p in (w[223] / "imagesTr").iterdir()) == sorted(
        f"{cid}_{ch:04d}.nii.gz" for cid in records for ch in (0, 1))
    for r in records.values():
        mask, g = read_image(w[223] / "imagesTr" / f"{r.crop_id}_0001.nii.gz")
        assert mask.dtype == np.uint8 and np.array_equal(mask, (preds[r.crop_id] > 0).astype(np.uint8))
        gt_mask, _ = read_image(written[223] / "imagesTr" / f"{r.crop_id}_0001.nii.gz")
        assert not np.array_equal(mask, gt_mask)  # the prediction, not the ground truth
        assert_file_header(g, crop_geometry(r))
        ct = w[223] / "imagesTr" / f"{r.crop_id}_0000.nii.gz"
        assert os.stat(ct).st_ino == os.stat(written[222] / "imagesTr" / ct.name).st_ino  # 222's CT crop
        label, _ = read_image(w[223] / "labelsTr" / f"{r.crop_id}.nii.gz")
        gt, _ = read_image(kits / r.case / "segmentation.nii.gz")
        assert np.array_equal(label, encode_masses(gt[tuple(slice(a, b) for a, b in r.box)]))
    doc, doc222 = (json.loads((d / "crops.json").read_text()) for d in (w[223], written[222]))
    assert doc["mask_channel"]["source"] == "stage_222_predictions"
    assert Path(doc["mask_channel"]["folder"]) == (tmp_path / "p222").resolve()
    assert Path(doc["mask_channel"]["crops_from"]) == (written[222] / "crops.json").resolve()
    assert {k: v for k, v in doc.items() if k != "mask_channel"} == doc222  # 222's records, cases and metadata
    assert json.loads((written[223] / "crops.json").read_text())["mask_channel"]["source"] == "ground_truth"
    assert (w[223] / "dataset.json").read_text() == (written[223] / "dataset.json").read_text()


def test_masks_from_refuses_missing_or_foreign_predictions_before_writing(derived, tmp_path, link_raw):
    kits, raw, written = derived
    raw5 = link_raw(tmp_path / "raw5", raw, "Dataset220_KiTS2023", "Dataset222_KiTS2023Kidney")
    records = load_crops_json(written[222])
    preds = tmp_path / "p222"
    _write_222_predictions(records, preds, kits)
    gone = sorted(records)[::2]
    for cid in gone:
        (preds / f"{cid}.nii.gz").unlink()
    with pytest.raises(KitsInputError) as e:
        derive_stages(raw=raw5, masks_from=preds)
    message = str(e.value)
    assert f"for {len(gone)} of {len(records)} crop(s)" in message and message.endswith(", ".join(gone))
    assert not [cid for cid in records if cid not in gone and cid in message]
    assert sorted(p.name for p in raw5.iterdir()) == ["Dataset220_KiTS2023", "Dataset222_KiTS2023Kidney"]
    # predictions made on other boxes (222 re-derived since, say): every crop whose header is not its own is named
    _write_222_predictions(records, preds, kits)
    moved, resized = records[gone[0]], records[gone[1]]
    g = crop_geometry(moved)
    write_image(np.zeros(moved.shape, np.uint8), Geometry(tuple(o + 0.8 for o in g.origin), g.spacing, g.direction,
                                                          g.size), preds / f"{moved.crop_id}.nii.gz")
    write_image(np.zeros(resized.shape, np.uint8)[1:], crop_geometry(resized).with_size(
        (resized.shape[0] - 1, *resized.shape[1:])), preds / f"{resized.crop_id}.nii.gz")
    with pytest.raises(KitsInputError, match=rf"2 stage-222 prediction.*{moved.crop_id} \(origin .*; "
                                             rf"{resized.crop_id} \(size"):
        derive_stages(raw=raw5, masks_from=preds)
    assert sorted(p.name for p in raw5.iterdir()) == ["Dataset220_KiTS2023", "Dataset222_KiTS2023Kidney"]
    # the boxes are 222's: options that would shape other boxes are refused, not ignored
    with pytest.raises(KitsInputError, match="drop --seed, --from-predictions, --truncate-share"):
        derive_stages(raw=raw5, masks_from=preds, seed=3, from_predictions=preds, truncate_share=0.1)
    with pytest.raises(KitsInputError, match="stage 223 only"):
        derive_stages(raw=raw5, masks_from=preds, stages=[222, 223])


# ---------------------------------------------------------------- truncated and false-positive training crops


def test_settings_default_to_truncation_for_ground_truth_rois_only():
    assert resolve_settings(False).truncate_share == DEFAULT_TRUNCATE_SHARE == 0.15
    assert resolve_settings(False).truncate_max_mm == 15.0
    assert resolve_settings(True).truncate_share == 0.0 and resolve_settings(True, truncate_share=0.3).truncate_share == 0.3
    with pytest.raises(KitsInputError, match="must lie in"):
        resolve_settings(False, truncate_share=1.5)
    with pytest.raises(KitsInputError, match="must not be negative"):
        resolve_settings(False, truncate_max_mm=-1.0)
    with pytest.raises(KitsInputError, match="needs --from-predictions"):
        resolve_settings(False, drop_false_positives=True)
    assert (resolve_settings(False).extend_share, resolve_settings(False).extend_max_mm) == (0.0, 60.0)
    assert resolve_settings(True, extend_share=0.4, extend_max_mm=30).extend_share == 0.4
    with pytest.raises(KitsInputError, match="--extend-share must lie in"):
        resolve_settings(False, extend_share=-0.1)
    with pytest.raises(KitsInputError, match="must not be negative"):
        resolve_settings(False, extend_max_mm=-1.0)


def test_truncated_rois_cut_one_face_into_the_kidney_at_the_requested_share(kidneys_with_tumors):
    shape = (60, 40, 24)
    spacing = (2.0, 1.0, 0.5)
    mask = kidneys_with_tumors(shape, [(16, 20, 12), (46, 20, 12)], radii=(6, 7, 8)) > 0
    rois = case_rois(mask, spacing, 4.0, 10.0)
    assert len(rois) == 2
    n = truncated = 0
    faces, depths = set(), set()
    for i in range(200):
        sampled = sample_rois(rois, mask, spacing, 0.2, 6.0, case_rng(5, f"case_{i:05d}", TRUNCATION_STREAM), False)
        for (box, base), s in zip(rois, sampled):
            n += 1
            assert s.full_box == box and s.box_before_jitter == base
            if s.fields["sampling"] == "full":
                assert s.box == box and s.fields == {"sampling": "full"}
                continue
            truncated += 1
            assert s.fields["sampling"] == "truncated" and s.fields["box_before_truncation"] == box
            changed = [(ax, side) for ax in range(3) for side in range(2) if s.box[ax][side] != box[ax][side]]
            assert len(changed) == 1  # exactly one face, moved inward, still inside the image
            (axis, side), = changed
            assert s.fields["truncated_side"] == [axis, ("start", "stop")[side]]
            assert all(0 <= a < b <= m for (a, b), m in zip(s.box, shape))
            extent = [[a + o, b + o] for (a, b), (o, _) in zip(roi.outer_box(roi.crop(mask, box)), box)]
            k = s.box[axis][0] - extent[axis][0] if side == 0 else extent[axis][1] - s.box[axis][1]
            assert 1 <= k and k * spacing[axis] <= 6.0 and s.fields["truncated_mm"] == k * spacing[axis]
            lost = int(np.count_nonzero(roi.crop(mask, box)) - np.count_nonzero(roi.crop(mask, s.box)))
            assert s.fields["truncated_voxels"] == lost > 0
            faces.add((axis, side))
            depths.add(s.fields["truncated_mm"])
    assert n == 400 and abs(truncated / n - 0.2) < 0.05
    assert len(faces) == 6 and len(depths) > 5
    again = sample_rois(rois, mask, spacing, 0.2, 6.0, case_rng(5, "case_00003", TRUNCATION_STREAM), False)
    assert again == sample_rois(rois, mask, spacing, 0.2, 6.0, case_rng(5, "case_00003", TRUNCATION_STREAM), False)
    whole = sample_rois(rois, mask, spacing, 0.0, 6.0, case_rng(5, "case_00003", TRUNCATION_STREAM), False)
    assert [s.box for s in whole] == [b for b, _ in rois] and {s.fields["sampling"] for s in whole} == {"full"}


def test_extended_rois_reach_past_the_margin_on_one_face_and_keep_the_other_draws(kidneys_with_tumors):
    shape = (60, 40, 24)
    spacing = (2.0, 1.0, 0.5)
    mask = kidneys_with_tumors(shape, [(16, 20, 12), (46, 20, 12)], radii=(6, 7, 8)) > 0
    rois = case_rois(mask, spacing, 4.0, 10.0)
    n = extended = 0
    faces, depths = set(), set()
    for i in range(200):
        case = f"case_{i:05d}"
        plain = sample_rois(rois, mask, spacing, 0.2, 6.0, case_rng(5, case, TRUNCATION_STREAM), False)
        sampled = sample_rois(rois, mask, spacing, 0.2, 6.0, case_rng(5, case, TRUNCATION_STREAM), False,
                              extend_share=0.5, extend_max_mm=10.0, extend_rng=case_rng(5, case, EXTENSION_STREAM))
        for (box, base), p, s in zip(rois, plain, sampled):
            n += 1
            assert s.full_box == box and s.box_before_jitter == base
            if p.fields["sampling"] == "truncated":  # truncation draws as without extension; never both
                assert s == p
                continue
            if s.fields["sampling"] == "full":
                assert s == p
                continue
            extended += 1
            assert s.fields["sampling"] == "extended" and s.fields["box_before_extension"] == box
            changed = [(ax, side) for ax in range(3) for side in range(2) if s.box[ax][side] != box[ax][side]]
            assert len(changed) == 1
            (axis, side), = changed
            k = box[axis][0] - s.box[axis][0] if side == 0 else s.box[axis][1] - box[axis][1]
            assert k >= 1 and s.fields["extended_side"] == [axis, ("start", "stop")[side]]
            assert s.fields["extended_mm"] == k * spacing[axis] and k <= math.ceil(10.0 / spacing[axis])
            assert all(0 <= a < b <= m for (a, b), m in zip(s.box, shape))  # clamped to the image
            assert np.count_nonzero(roi.crop(mask, s.box)) >= np.count_nonzero(roi.crop(mask, box))
            faces.add((axis, side))
            depths.add(s.fields["extended_mm"])
    # whole ROIs (about 80%) extended with probability 0.5, less the faces already on the image border
    assert n == 400 and 0.25 < extended / n < 0.42
    assert len(faces) >= 4 and len(depths) > 5
    with pytest.raises(ValueError, match="own random generator"):
        sample_rois(rois, mask, spacing, 0.0, 6.0, case_rng(5, "c", TRUNCATION_STREAM), False, extend_share=0.5)


def test_extension_depth_is_clamped_to_the_image():
    box = [[2, 10], [0, 5], [3, 4]]
    shape = (12, 5, 40)
    assert extension_depth(box, (0, 0), 0.999, (1.0, 1.0, 1.0), 30.0, shape) == 2  # only 2 voxels before the box
    assert extension_depth(box, (1, 0), 0.5, (1.0, 1.0, 1.0), 30.0, shape) is None  # on the image border
    assert extension_depth(box, (2, 1), 0.0, (1.0, 1.0, 2.0), 30.0, shape) == 1
    assert extension_depth(box, (2, 1), 0.999, (1.0, 1.0, 2.0), 30.0, shape) == 15  # 30 mm of 2 mm columns
    assert extension_depth(box, (2, 1), 0.5, (1.0, 1.0, 2.0), 0.0, shape) is None


def test_false_positive_rois_of_a_prediction_are_kept_whole(kidneys_with_tumors):
    shape = (60, 40, 24)
    gt = kidneys_with_tumors(shape, [(16, 20, 12)]) > 0
    prediction = gt.copy()
    prediction[50:56, 15:25, 8:16] = True  # a coarse false positive far from the kidney
    rois = case_rois(prediction, (1.0, 1.0, 1.0), 3.0, 10.0)
    sampled = sample_rois(rois, gt, (1.0, 1.0, 1.0), 1.0, 5.0, case_rng(0, "c", TRUNCATION_STREAM), True)
    assert [s.fields["sampling"] for s in sampled] == ["truncated", "false_positive"]
    assert sampled[1].box == rois[1][0] and not roi.crop(gt, sampled[1].box).any()


def test_from_predictions_keeps_false_positives_with_empty_labels(derived, tmp_path, link_raw, capsys):
    kits, raw, written = derived
    preds = tmp_path / "preds"
    for case_dir in sorted(kits.glob("case_*")):
        gt, g = read_image(case_dir / "segmentation.nii.gz")
        pred = (gt > 0).astype(np.uint8)
        if case_dir.name == "case_00001":  # solitary kidney in the middle: a false positive at the far end
            pred[50:55, 5:12, 2:8] = 1
        write_image(pred, g, preds / f"{case_dir.name}.nii.gz")
    raw6 = link_raw(tmp_path / "raw6", raw, "Dataset220_KiTS2023")
    capsys.readouterr()
    w = derive_stages(raw=raw6, margin_mm=MARGIN, min_volume_mm3=MIN_VOL, from_predictions=preds, truncate_share=1.0,
                      truncate_max_mm=3.0, seed=7)
    records = load_crops_json(w[222])
    assert load_crops_json(w[223]) == records
    fp = [r for r in records.values() if r.extra["sampling"] == "false_positive"]
    assert [r.case for r in fp] == ["case_00001"] and len(records) == 7
    for r in fp:
        for label_file in (w[222] / "labelsTr" / f"{r.crop_id}.nii.gz", w[223] / "labelsTr" / f"{r.crop_id}.nii.gz"):
            assert not read_image(label_file)[0].any()
        assert read_image(w[223] / "imagesTr" / f"{r.crop_id}_0001.nii.gz")[0].any()  # the coarse mask it came from
    cut = [r for r in records.values() if r.extra["sampling"] == "truncated"]
    assert len(cut) == 6 and all(0 < r.extra["truncated_mm"] <= 3.0 for r in cut)
    doc = json.loads((w[223] / "crops.json").read_text())
    assert (doc["truncate_share"], doc["truncate_max_mm"], doc["false_positive_rois"]) == (1.0, 3.0, "kept, all-zero labels")
    assert doc["sampling_counts"] == {"false_positive": 1, "truncated": 6}
    assert doc["mask_channel"] == {"source": "coarse_predictions", "folder": str(preds.resolve()),
                                   "binarisation": doc["mask_channel"]["binarisation"]}
    assert doc["uncovered_foreground_voxels"] == {}  # truncation is reported apart, not as missed kidney
    assert sum(doc["truncated_foreground_voxels"].values()) == sum(r.extra["truncated_voxels"] for r in cut) > 0
    out = capsys.readouterr().out
    assert "warning" not in out and "6 of 7 ROIs truncated on purpose" in out and "1 of 7 ROIs are coarse false" in out
    w2 = derive_stages(raw=raw6, margin_mm=MARGIN, min_volume_mm3=MIN_VOL, from_predictions=preds, stages=[222],
                       drop_false_positives=True, overwrite=True)
    doc2 = json.loads((w2[222] / "crops.json").read_text())
    assert doc2["false_positive_rois"] == "dropped" and doc2["sampling_counts"] == {"full": 6}


def test_predictions_with_no_kidney_anywhere_stop_before_writing(derived, tmp_path, link_raw):
    """An untrained coarse model can mark nothing: 222 would be an empty dataset, which nnU-Net's planner fails on
    with a bare StopIteration. One line instead, and the old Dataset222 stays."""
    kits, raw, written = derived
    preds = tmp_path / "empty_preds"
    for case_dir in sorted(kits.glob("case_*")):
        gt, g = read_image(case_dir / "segmentation.nii.gz")
        write_image(np.zeros_like(gt), g, preds / f"{case_dir.name}.nii.gz")
    raw7 = link_raw(tmp_path / "raw7", raw, "Dataset220_KiTS2023")
    first = derive_stages(raw=raw7, margin_mm=MARGIN, min_volume_mm3=MIN_VOL, stages=[222])
    before = sorted(p.name for p in (first[222] / "labelsTr").iterdir())
    with pytest.raises(KitsInputError) as e:
        derive_stages(raw=raw7, from_predictions=preds, stages=[222], overwrite=True)
    text = str(e.value)
    assert "\n" not in text and "no kidney ROI in any of its 4 case(s)" in text and str(preds) in text
    assert sorted(p.name for p in (first[222] / "labelsTr").iterdir()) == before and before


def test_truncation_is_seeded_per_case_and_leaves_the_jitter_alone(derived, tmp_path, link_raw, capsys):
    kits, raw, written = derived
    options = dict(margin_mm=MARGIN, jitter_mm=3.0, seed=7, min_volume_mm3=MIN_VOL, truncate_share=0.5, stages=[222])
    a = load_crops_json(derive_stages(raw=link_raw(tmp_path / "a", raw, "Dataset220_KiTS2023"), **options)[222])
    assert sorted({r.extra["sampling"] for r in a.values()}) == ["full", "truncated"]
    # a case's crops depend on nothing but the seed and the case: the same from a Dataset220 of two of the cases
    part = tmp_path / "b" / "Dataset220_KiTS2023"
    for sub in ("imagesTr", "labelsTr"):
        (part / sub).mkdir(parents=True)
        for f in (raw / "Dataset220_KiTS2023" / sub).glob("case_0000[23]*"):
            os.link(f, part / sub / f.name)
    b = load_crops_json(derive_stages(raw=part.parent, **options)[222])
    assert b == {cid: r for cid, r in a.items() if r.case in ("case_00002", "case_00003")} and len(b) == 3
    whole = load_crops_json(written[222])  # same seed and jitter, no truncation
    assert {cid: r.extra.get("box_before_truncation", r.box) for cid, r in a.items()} == {
        cid: r.box for cid, r in whole.items()}
    assert "warning" not in capsys.readouterr().out


def test_extended_crops_are_written_with_their_box_and_counted(derived, tmp_path, link_raw, capsys):
    kits, raw, written = derived
    raw8 = link_raw(tmp_path / "raw8", raw, "Dataset220_KiTS2023")
    capsys.readouterr()
    w = derive_stages(raw=raw8, margin_mm=MARGIN, jitter_mm=3.0, seed=7, min_volume_mm3=MIN_VOL, truncate_share=0.0,
                      extend_share=1.0, extend_max_mm=6.0, stages=[222, 223])
    records = load_crops_json(w[222])
    whole = load_crops_json(written[222])  # same seed and jitter, nothing extended
    grown = [cid for cid, r in records.items() if r.extra["sampling"] == "extended"]
    assert grown and set(records) == set(whole)
    for cid, r in records.items():
        before = r.extra.get("box_before_extension", r.box)
        assert before == whole[cid].box and r.extra["box_before_jitter"] == whole[cid].extra["box_before_jitter"]
        image = read_image(w[222] / "imagesTr" / f"{cid}_0000.nii.gz")[0]
        assert image.shape == roi.box_shape(r.box)
        ct = read_image(raw / "Dataset220_KiTS2023" / "imagesTr" / f"{r.case}_0000.nii.gz")[0]
        assert np.array_equal(image, roi.crop(ct, r.box))  # the crop is the CT inside the recorded box
    doc = json.loads((w[223] / "crops.json").read_text())
    assert (doc["extend_share"], doc["extend_max_mm"]) == (1.0, 6.0)
    assert doc["sampling_counts"].get("extended") == len(grown)
    assert f"{len(grown)} of {len(records)} ROIs extended on purpose" in capsys.readouterr().out
    with pytest.raises(KitsInputError, match="--extend-share"):
        derive_stages(raw=raw8, masks_from=tmp_path, extend_share=0.5)
