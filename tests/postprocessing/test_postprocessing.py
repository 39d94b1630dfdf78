"""Postprocessing rules, file I/O, CLI and the nnU-Net postprocessing.pkl path, on small generated maps."""

from __future__ import annotations

import json
import logging
import pickle

import numpy as np
import pytest
import SimpleITK as sitk

from kits_plugins.cli import main as kits_main
from kits_plugins.constants import TARGET_SPACING
from kits_plugins.postprocessing import DEFAULT_MIN_VOLUME_MM3, postprocess_segmentation, postprocess_with_report
from kits_plugins.postprocessing.files import postprocess_file
from kits_plugins.postprocessing.nnunet_export import export_postprocessing_pkl
from kits_plugins.postprocessing.remove_components import min_volume_to_voxels
from kits_plugins.utilities.image_io import Geometry, KitsInputError, read_geometry, read_label, write_image

ISO = (1.0, 1.0, 1.0)
# Small thresholds for small arrays: kidney(+masses) 1000, tumor 27, cyst 8 mm3.
SMALL = {1: 1000.0, 2: 27.0, 3: 8.0}
# KiTS-like header: permuted direction (slice axis last in numpy order), anisotropic, non-zero origin.
GEOM_DIRECTION = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0)


def base_map(shape=(40, 40, 40)) -> np.ndarray:
    """One kidney of 12^3 = 1728 voxels at [5:17]^3."""
    seg = np.zeros(shape, np.uint8)
    seg[5:17, 5:17, 5:17] = 1
    return seg


def reasons(report) -> list[str]:
    return [r.reason for r in report.removed]


# ------------------------------------------------------------------ thresholds


def test_defaults_are_seed_voxels_at_target_spacing():
    vv = float(np.prod(TARGET_SPACING))
    assert vv == pytest.approx(0.47973632, rel=1e-6)
    assert DEFAULT_MIN_VOLUME_MM3[1] == pytest.approx(20000 * vv) and DEFAULT_MIN_VOLUME_MM3[1] == pytest.approx(9594.73)
    assert DEFAULT_MIN_VOLUME_MM3[2] == pytest.approx(95.947, abs=1e-3)
    assert DEFAULT_MIN_VOLUME_MM3[3] == pytest.approx(23.987, abs=1e-3)
    assert min_volume_to_voxels(DEFAULT_MIN_VOLUME_MM3, TARGET_SPACING) == {1: 20000, 2: 200, 3: 50}


def test_anisotropic_spacing_changes_voxel_threshold():
    # 30 mm3 at 1 mm^3 voxels = 30 voxels; at 3 x 1 x 0.5 = 1.5 mm3 per voxel = 20 voxels; order is irrelevant.
    assert min_volume_to_voxels({2: 30.0}, ISO) == {2: 30}
    assert min_volume_to_voxels({2: 30.0}, (3.0, 1.0, 0.5)) == {2: 20}
    assert min_volume_to_voxels({2: 30.0}, (0.5, 3.0, 1.0)) == {2: 20}
    assert min_volume_to_voxels({2: 31.0}, (3.0, 1.0, 0.5)) == {2: 21}  # rounds up: 20 voxels are only 30 mm3
    assert min_volume_to_voxels({2: 0.0, 3: None}, ISO) == {2: 0, 3: 0}
    with pytest.raises(ValueError):
        min_volume_to_voxels({4: 1.0}, ISO)
    with pytest.raises(ValueError):
        min_volume_to_voxels({2: 1.0}, (1.0, 0.0, 1.0))

    # The same 20-voxel tumor is removed at 1 mm iso (20 mm3 < 30) and kept at 1.5 mm3 voxels (30 mm3).
    seg = base_map()
    seg[8:10, 8:10, 8:13] = 2  # 20 voxels inside the kidney
    thr = {**SMALL, 2: 30.0}
    iso = postprocess_segmentation(seg, ISO, thr)
    aniso = postprocess_segmentation(seg, (3.0, 1.0, 0.5), thr)
    assert np.count_nonzero(iso == 2) == 0
    assert np.array_equal(aniso, seg)


# ------------------------------------------------------------------ rule 1: kidneys (kidney + masses)


def test_small_kidney_dropped_with_its_lesions_large_kept():
    seg = base_map()
    seg[25:34, 25:34, 25:37] = 1  # 972 voxels < 1000: removed
    seg[28:31, 28:31, 28:31] = 2  # its 27-voxel tumor goes with it
    out, rep = postprocess_with_report(seg, ISO, SMALL)
    assert np.array_equal(out[:20, :20, :20], seg[:20, :20, :20])  # 1728-voxel kidney kept
    assert not out[20:].any()
    assert reasons(rep) == ["small_kidney"]
    r = rep.removed[0]
    assert (r.label, r.voxels, r.volume_mm3, r.new_label, r.mass_voxels) == (1, 972, 972.0, 0, 27)

    seg[25:34, 25:34, 25:38] = 1  # 1053 voxels: kept
    seg[28:31, 28:31, 28:31] = 2
    out, rep = postprocess_with_report(seg, ISO, SMALL)
    assert np.array_equal(out, seg) and rep.removed == []


def test_kidney_size_counts_kidney_plus_masses():
    seg = np.zeros((30, 30, 30), np.uint8)
    seg[5:15, 5:15, 5:11] = 1  # 600 kidney voxels
    seg[5:15, 5:15, 11:16] = 2  # 500 tumor voxels touching it: organ of 1100 >= 1000
    out = postprocess_segmentation(seg, ISO, SMALL)
    assert np.array_equal(out, seg)
    out = postprocess_segmentation(seg, ISO, {**SMALL, 1: 1101.0})
    assert not out.any()


def test_components_touching_the_array_border():
    seg = np.zeros((20, 20, 20), np.uint8)
    seg[:12, :12, 8:] = 1  # touches three faces
    seg[0, 0, 19] = 2
    out = postprocess_segmentation(seg, ISO, {**SMALL, 2: 1.0})
    assert np.array_equal(out, seg)


# ------------------------------------------------------------------ rule 2: masses outside the kidneys


def test_tumor_outside_kidney_removed_touching_kept():
    seg = base_map()
    seg[17, 17, 17] = 2  # touches the kidney's corner only: 26-connected, kept
    seg[30:35, 30:35, 30:35] = 2  # 125 voxels, far from any kidney: removed
    seg[20:23, 5:8, 5:8] = 3  # cyst separated by 3 empty slices: removed
    out, rep = postprocess_with_report(seg, ISO, {**SMALL, 2: 1.0})
    assert out[17, 17, 17] == 2
    assert not out[30:35, 30:35, 30:35].any() and not out[20:23].any()
    assert sorted((r.reason, r.label, r.voxels) for r in rep.removed) == [
        ("outside_kidney", 2, 125), ("outside_kidney", 3, 27)
    ]

    kept = postprocess_segmentation(seg, ISO, {**SMALL, 2: 1.0}, remove_outside_kidney=False)
    assert np.array_equal(kept, seg)


def test_tumor_touching_kidney_through_a_cyst_is_kept():
    seg = base_map()
    seg[17:20, 8:12, 8:12] = 3  # cyst touching the kidney
    seg[20:24, 8:12, 8:12] = 2  # tumor touching only the cyst
    out = postprocess_segmentation(seg, ISO, SMALL)
    assert np.array_equal(out, seg)


def test_tumor_of_a_removed_kidney_counts_as_outside_after_removal():
    seg = base_map()
    seg[30:34, 30:34, 30:34] = 1  # tiny kidney fragment (64 voxels): removed with its tumor
    seg[34:38, 30:34, 30:34] = 2
    out, rep = postprocess_with_report(seg, ISO, SMALL)
    assert not out[25:].any()
    assert reasons(rep) == ["small_kidney"] and rep.removed[0].mass_voxels == 64


# ------------------------------------------------------------------ rule 3: small tumors and cysts


def test_small_tumor_inside_kidney_becomes_kidney_large_kept():
    seg = base_map()
    seg[6:9, 6:9, 6:9] = 2  # 27 voxels == 27 mm3: kept
    seg[12:15, 12:15, 12:14] = 2  # 18 voxels: relabelled kidney
    out, rep = postprocess_with_report(seg, ISO, SMALL)
    assert np.all(out[6:9, 6:9, 6:9] == 2)
    assert np.all(out[12:15, 12:15, 12:14] == 1)
    assert [(r.reason, r.voxels, r.new_label) for r in rep.removed] == [("small_tumor", 18, 1)]
    # kidney_and_mass region is unchanged by rule 3
    assert np.array_equal(out > 0, seg > 0)


def test_small_cyst_relabelled_kidney_large_kept():
    seg = base_map()
    seg[6:8, 6:8, 6:8] = 3  # 8 voxels: kept
    seg[12:14, 12:14, 12] = 3  # 4 voxels: relabelled kidney
    out, rep = postprocess_with_report(seg, ISO, SMALL)
    assert np.all(out[6:8, 6:8, 6:8] == 3) and np.all(out[12:14, 12:14, 12] == 1)
    assert [(r.reason, r.label, r.voxels) for r in rep.removed] == [("small_cyst", 3, 4)]


def test_small_mass_outside_kidney_becomes_background_with_keep_outside():
    seg = base_map()
    seg[30:32, 30:32, 30:32] = 2  # 8 voxels outside: with --keep-outside only the size rule removes it
    seg[22:26, 22:26, 22:26] = 2  # 64 voxels outside: kept with --keep-outside
    out, rep = postprocess_with_report(seg, ISO, SMALL, remove_outside_kidney=False)
    assert not out[30:32, 30:32, 30:32].any()
    assert np.all(out[22:26, 22:26, 22:26] == 2)
    assert [(r.reason, r.new_label) for r in rep.removed] == [("small_tumor", 0)]


def test_zero_threshold_disables_rule():
    seg = base_map()
    seg[6, 6, 6] = 2
    seg[30, 30, 30] = 1
    out = postprocess_segmentation(seg, ISO, {1: 0.0, 2: 0.0, 3: 0.0})
    assert np.array_equal(out, seg)


def test_warns_when_removed_lesion_has_seed_voxel_count(caplog):
    # At 0.2 mm3 voxels the default cyst minimum (24 mm3) is 120 voxels; a 64-voxel cyst is removed but has
    # more than the seed's 50 voxels, so a warning names it.
    seg = np.zeros((60, 60, 60), np.uint8)
    seg[2:58, 2:58, 2:58] = 1
    seg[10:14, 10:14, 10:14] = 3
    spacing = (0.8, 0.5, 0.5)
    with caplog.at_level(logging.WARNING, logger="kits_plugins.postprocessing.remove_components"):
        out, rep = postprocess_with_report(seg, spacing, {1: 1.0})
    assert rep.min_voxels[3] == 120
    assert rep.removed[0].exceeds_seed_voxels and "cyst component of 64 voxels" in caplog.text
    assert np.all(out[10:14, 10:14, 10:14] == 1)


# ------------------------------------------------------------------ array contract


def test_output_labels_dtype_shape_and_input_untouched():
    rng = np.random.default_rng(0)
    seg = base_map((30, 31, 32)).astype(np.int16)
    noise = rng.integers(0, 4, size=seg.shape).astype(np.int16) * (rng.random(seg.shape) < 0.02)
    seg = np.maximum(seg, noise)
    before = seg.copy()
    out = postprocess_segmentation(seg, ISO, SMALL)
    assert out.dtype == np.uint8 and out.shape == seg.shape
    assert set(np.unique(out)) <= {0, 1, 2, 3}
    assert np.array_equal(seg, before)  # not in place
    assert not out[20:].any()  # isolated noise specks are gone


def test_in_place_and_errors():
    seg = base_map()
    seg[30, 30, 30] = 1
    out = postprocess_segmentation(seg, ISO, SMALL, in_place=True)
    assert out is seg and seg[30, 30, 30] == 0
    empty = np.zeros((4, 4, 4), np.uint8)
    assert not postprocess_segmentation(empty, ISO).any()
    bad = base_map()
    bad[0, 0, 0] = 4
    with pytest.raises(ValueError, match="0-3"):
        postprocess_segmentation(bad, ISO)
    with pytest.raises(ValueError, match="3D"):
        postprocess_segmentation(np.zeros((4, 4), np.uint8), ISO)


# ------------------------------------------------------------------ files and CLI


def kits_geometry(shape_np) -> Geometry:
    return Geometry(
        origin=(-12.5, 30.25, 101.0), spacing=(2.5, 0.8, 0.7), direction=GEOM_DIRECTION, size=tuple(shape_np[::-1])
    )


def demo_case() -> np.ndarray:
    seg = base_map()
    seg[6:9, 6:9, 6:8] = 2  # 18 voxels * 1.4 mm3 = 25.2 mm3
    seg[30:33, 30:33, 30:33] = 3  # outside
    seg[20, 20, 20] = 1  # speck
    return seg


def test_postprocess_file_keeps_header_exactly(tmp_path):
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


def test_postprocess_file_bad_labels_names_file(tmp_path):
    seg = demo_case()
    seg[0, 0, 0] = 7
    write_image(seg, kits_geometry(seg.shape), tmp_path / "bad.nii.gz")
    with pytest.raises(KitsInputError, match="bad.nii.gz"):
        postprocess_file(tmp_path / "bad.nii.gz", tmp_path / "out.nii.gz")
    assert not (tmp_path / "out.nii.gz").exists()


def test_cli_folder_and_options(tmp_path, capsys):
    src, dst = tmp_path / "in", tmp_path / "out"
    seg = demo_case()
    geom = kits_geometry(seg.shape)
    for name in ("a.nii.gz", "b.nii.gz"):
        write_image(seg, geom, src / name)
    args = ["postprocess", str(src), str(dst), "--min-kidney-mm3", "1000", "--min-tumor-mm3", "26",
            "--min-cyst-mm3", "8", "--report", str(tmp_path / "report.json")]
    assert kits_main(args) == 0
    assert sorted(p.name for p in dst.iterdir()) == ["a.nii.gz", "b.nii.gz"]
    out, out_geom = read_label(dst / "a.nii.gz")
    assert out_geom == read_geometry(src / "a.nii.gz")  # exact (NIfTI stores float32 spacing)
    assert np.array_equal(out, postprocess_segmentation(seg, geom.spacing_np, {1: 1000.0, 2: 26.0, 3: 8.0}))
    report = json.loads((tmp_path / "report.json").read_text())
    assert {r["reason"] for r in report["a.nii.gz"]["removed"]} == {"outside_kidney", "small_kidney", "small_tumor"}

    # --keep-outside keeps the 27-voxel cyst outside the kidney; a single file into an existing folder
    assert kits_main(["postprocess", str(src / "a.nii.gz"), str(dst), "--keep-outside", "--min-kidney-mm3", "1000"]) == 0
    out, _ = read_label(dst / "a.nii.gz")
    assert np.all(out[30:33, 30:33, 30:33] == 3)

    assert kits_main(["postprocess", str(tmp_path / "missing"), str(dst)]) == 2
    assert "missing: no such file" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert kits_main(["postprocess", str(tmp_path / "empty"), str(dst)]) == 2


# ------------------------------------------------------------------ nnU-Net postprocessing.pkl


def test_export_pkl_format(tmp_path):
    path = export_postprocessing_pkl(tmp_path / "pp" / "postprocessing.pkl", TARGET_SPACING)
    with open(path, "rb") as f:
        fns, kwargs = pickle.load(f)
    assert [f.__name__ for f in fns] == ["nnunet_postprocessing_fn"]
    assert kwargs == [{"min_voxels": {1: 20000, 2: 200, 3: 50}, "remove_outside_kidney": True}]
    info = json.loads(path.with_suffix(".json").read_text())
    assert info["min_volume_mm3"]["tumor"] == pytest.approx(95.947, abs=1e-3)
    seg = demo_case()
    assert np.array_equal(fns[0](seg, **kwargs[0]), postprocess_segmentation(seg, TARGET_SPACING))


def test_nnunet_apply_postprocessing_to_folder_matches_ours(tmp_path, monkeypatch):
    """Run nnU-Net's own apply_postprocessing_to_folder (what nnUNetv2_apply_postprocessing calls)."""
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(var, str(tmp_path / var))
    from batchgenerators.utilities.file_and_folder_operations import load_pickle, save_json
    from nnunetv2.postprocessing.remove_connected_components import apply_postprocessing_to_folder

    src, dst = tmp_path / "pred", tmp_path / "pp"
    seg = demo_case()
    geom = kits_geometry(seg.shape)
    other = seg.copy()
    other[6:9, 6:9, 6:9] = 2  # 27 voxels * 1.4 mm3 = 37.8 mm3: kept
    write_image(seg, geom, src / "case_a.nii.gz")
    write_image(other, geom, src / "case_b.nii.gz")
    save_json({"image_reader_writer": "NibabelIOWithReorient"}, str(src / "plans.json"))
    save_json({"file_ending": ".nii.gz", "labels": {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}},
              str(src / "dataset.json"))
    thresholds = {1: 1000.0, 2: 26.0, 3: 8.0}
    pkl = export_postprocessing_pkl(tmp_path / "postprocessing.pkl", geom.spacing_np, thresholds)

    fns, kwargs = load_pickle(str(pkl))  # exactly what the entry point does
    apply_postprocessing_to_folder(str(src), str(dst), fns, kwargs, num_processes=1)

    for name, array in (("case_a.nii.gz", seg), ("case_b.nii.gz", other)):
        out, out_geom = read_label(dst / name)
        assert out_geom.matches(geom, atol=1e-5)
        expected = postprocess_segmentation(array, geom.spacing_np, thresholds)
        assert np.array_equal(out, expected)
        assert not np.array_equal(expected, array)


# ------------------------------------------------------------------ real label maps (optional)


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


def test_cli_refuses_outputs_over_inputs(tmp_path, capsys):
    seg = demo_case()
    write_image(seg, kits_geometry(seg.shape), tmp_path / "in" / "a.nii.gz")
    src = tmp_path / "in" / "a.nii.gz"
    original = src.read_bytes()
    cases = [
        ["postprocess", str(src), str(src)],  # in place
        ["postprocess", str(tmp_path / "in"), str(tmp_path / "in")],  # folder onto itself
        ["postprocess", str(src), str(tmp_path / "out.nii.gz"), "--report", str(src)],
        ["postprocess", str(src), str(tmp_path / "out.nii.gz"), "--report", str(tmp_path / "out.nii.gz")],
        ["postprocess", str(src), str(tmp_path / "out.nii.gz"), "--export-pkl", str(src)],
    ]
    for argv in cases:
        assert kits_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "would write over its input" in err and len(err.strip().splitlines()) == 1
        assert src.read_bytes() == original
    assert not (tmp_path / "out.nii.gz").exists()


def test_removing_every_kidney_is_reported_and_warned(caplog):
    seg = base_map()
    with caplog.at_level(logging.WARNING, logger="kits_plugins.postprocessing.remove_components"):
        out, report = postprocess_with_report(seg, (1.0, 1.0, 1.0), {1: 1e9})
    assert not out.any() and report.emptied and report.to_dict()["emptied"] is True
    assert any("removed every kidney component" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kits_plugins.postprocessing.remove_components"):
        out, report = postprocess_with_report(seg, (2.0, 2.0, 2.0))  # 1728 voxels of 8 mm3: kept
    assert out.any() and not report.emptied and not caplog.records
    assert not postprocess_with_report(np.zeros_like(seg), (1.0, 1.0, 1.0))[1].emptied  # empty in, not "emptied"
