"""`kits convert` and `kits derive-stages` on tiny generated KiTS-layout folders (KiTS23's permuted direction)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from nnunetv2.experiment_planning.verify_dataset_integrity import verify_labels
from nnunetv2.imageio.nibabel_reader_writer import NibabelIOWithReorient
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from kits_plugins.cli import main
from kits_plugins.dataset_conversion.convert_kits23 import convert_kits23
from kits_plugins.dataset_conversion.derive_stages import derive_stages
from kits_plugins.utilities.crops import crop_geometry, load_crops_json, paste_back
from kits_plugins.utilities.image_io import Geometry, KitsInputError, read_geometry, read_image, write_image
from kits_plugins.utilities.labels import decode_masses
from kits_plugins.utilities.orientation import Reorientation

KITS_DIRECTION = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0)
SHAPE = (56, 36, 16)  # numpy (file) order; the last axis is the slice axis as in KiTS23
SPACING = (2.5, 0.8, 0.8)  # SimpleITK index order: slice spacing first
MIN_VOL = 50.0
MARGIN = 4.0


def _geometry(origin=(-120.0, 35.5, 410.0)) -> Geometry:
    return Geometry(origin, SPACING, KITS_DIRECTION, SHAPE[::-1])


def _ball(shape, center, radii_vox):
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii_vox)) <= 1.0


def make_label(kind: str = "two") -> np.ndarray:
    """Kidneys with tumor (2) and cyst (3). kind: two | solitary | border | close (boxes merge)."""
    lab = np.zeros(SHAPE, np.uint8)
    centers = {
        "two": [(10, 18, 8), (46, 18, 8)],
        "solitary": [(28, 18, 8)],
        "border": [(2, 18, 14), (46, 18, 8)],
        "close": [(20, 18, 8), (30, 18, 8)],
    }[kind]
    for c in centers:
        lab[_ball(SHAPE, c, (4, 5, 2.5))] = 1
    c = centers[0]
    lab[_ball(SHAPE, c, (1.5, 2, 1.2))] = 2
    lab[_ball(SHAPE, (c[0], c[1] + 3, c[2]), (1, 1, 1))] = 3
    return lab


def make_ct(label: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ct = np.array([-900, 40, 90, 10], np.int16)[label] + rng.integers(-20, 20, label.shape).astype(np.int16)
    return ct


def make_kits_dir(root: Path, kinds=("two", "solitary", "border", "close")) -> Path:
    kits = root / "kits23" / "dataset"
    for i, kind in enumerate(kinds):
        case = kits / f"case_{i:05d}"
        lab = make_label(kind)
        g = _geometry(origin=(-120.0 + i, 35.5, 410.0 - 2 * i))
        write_image(make_ct(lab, i), g, case / "imaging.nii.gz")
        write_image(lab, g, case / "segmentation.nii.gz")
    return kits


def assert_file_header(read: Geometry, expected: Geometry) -> None:
    """NIfTI stores the origin as float32: the file holds the expected origin to that precision, the rest exactly."""
    assert (read.size, read.spacing, read.direction) == (expected.size, expected.spacing, expected.direction)
    assert np.array_equal(np.float32(read.origin), np.float32(expected.origin))


@pytest.fixture(scope="module")
def raw_with_220(tmp_path_factory):
    root = tmp_path_factory.mktemp("conv")
    kits = make_kits_dir(root)
    raw = root / "raw"
    target, skipped = convert_kits23(kits.parent, raw=raw)
    assert not skipped
    return kits, raw, target


@pytest.fixture(scope="module")
def derived(raw_with_220):
    kits, raw, _ = raw_with_220
    written = derive_stages(raw=raw, margin_mm=MARGIN, jitter_mm=3.0, seed=7, min_volume_mm3=MIN_VOL)
    return kits, raw, written


# ------------------------------------------------------------------------------------------- convert


def test_convert_dataset_json_and_hardlinks(raw_with_220):
    kits, raw, target = raw_with_220
    assert target == raw / "Dataset220_KiTS2023"
    dj = json.loads((target / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "CT"}
    assert dj["labels"] == {"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2}
    assert dj["regions_class_order"] == [1, 3, 2]
    assert dj["file_ending"] == ".nii.gz" and dj["numTraining"] == 4
    assert dj["overwrite_image_reader_writer"] == "NibabelIOWithReorient"
    for case in sorted(kits.glob("case_*")):
        for src, dst in (
            (case / "imaging.nii.gz", target / "imagesTr" / f"{case.name}_0000.nii.gz"),
            (case / "segmentation.nii.gz", target / "labelsTr" / f"{case.name}.nii.gz"),
        ):
            assert src.read_bytes() == dst.read_bytes()
            assert os.stat(src).st_ino == os.stat(dst).st_ino  # hardlinked: no recompression
    assert not [p for p in raw.iterdir() if p.name.startswith(".")]


def _bad_layout(tmp_path: Path) -> Path:
    kits = make_kits_dir(tmp_path, kinds=("two", "two", "two", "two"))
    (kits / "case_00000" / "imaging.nii.gz").unlink()
    lab = make_label()
    lab[0, 0, 0] = 4
    write_image(lab, _geometry(origin=(-119.0, 35.5, 408.0)), kits / "case_00001" / "segmentation.nii.gz")
    write_image(make_label(), _geometry(origin=(0.0, 0.0, 0.0)), kits / "case_00002" / "segmentation.nii.gz")
    return kits


def test_convert_bad_inputs_name_the_case(tmp_path):
    kits = _bad_layout(tmp_path)
    raw = tmp_path / "raw"
    with pytest.raises(KitsInputError, match="case_00000.*missing imaging"):
        convert_kits23(kits, raw=raw)
    assert not raw.exists() or not any(raw.iterdir())  # nothing half-written
    target, skipped = convert_kits23(kits, raw=raw, skip_invalid=True)
    errors = {c.case: c.error for c in skipped}
    assert set(errors) == {"case_00000", "case_00001", "case_00002"}
    assert "labels outside 0-3: [4]" in errors["case_00001"]
    assert "geometry differ" in errors["case_00002"] and "origin" in errors["case_00002"]
    assert sorted(p.name for p in (target / "labelsTr").iterdir()) == ["case_00003.nii.gz"]
    assert json.loads((target / "dataset.json").read_text())["numTraining"] == 1


def test_convert_refuses_existing_dataset_and_cli_errors(tmp_path, monkeypatch, capsys):
    kits = make_kits_dir(tmp_path, kinds=("two",))
    raw = tmp_path / "raw"
    monkeypatch.delenv("nnUNet_raw", raising=False)
    assert main(["convert", str(kits), "-np", "1"]) == 2
    assert "nnUNet_raw is not set" in capsys.readouterr().err
    monkeypatch.setenv("nnUNet_raw", str(raw))
    assert main(["convert", str(kits), "-np", "1"]) == 0
    marker = raw / "Dataset220_KiTS2023" / "marker"
    marker.write_text("x")
    assert main(["convert", str(kits), "-np", "1"]) == 2
    assert "already exists" in capsys.readouterr().err and marker.exists()
    assert main(["convert", str(kits), "--overwrite", "-np", "1"]) == 0
    assert not marker.exists() and (raw / "Dataset220_KiTS2023" / "dataset.json").exists()
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset220_KiTS2023"]  # no staging left over
    assert main(["convert", str(tmp_path / "nowhere"), "-np", "1"]) == 2


# ------------------------------------------------------------------------------------------- derive


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
                       num_processes=1)
    a, b = load_crops_json(written[222]), load_crops_json(w2[222])
    assert {k: v.box for k, v in a.items()} == {k: v.box for k, v in b.items()}
    w3 = derive_stages(raw=raw2, margin_mm=MARGIN, jitter_mm=0.0, min_volume_mm3=MIN_VOL, stages=[222],
                       overwrite=True)
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


def test_nan_in_a_float_ct_is_refused_by_convert_and_derive(tmp_path):
    kits = make_kits_dir(tmp_path, kinds=("two", "solitary"))
    ct = make_ct(make_label("two")).astype(np.float32)
    ct[30, 17, 4] = np.nan
    g = _geometry(origin=(-120.0, 35.5, 410.0))
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
