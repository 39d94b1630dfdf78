"""``kits_plugins.inference.cascade``: the cascade predictor with real nnUNetPredictors on the tiny fixed-weight models
of conftest.py (labels and header reproduced exactly, ROI boxes, oracle masks, fallbacks, ``kits predict``), and
``kits predict``'s input checks, made before any model is loaded."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from kits_plugins.cli import main
from kits_plugins.errors import KitsInputError
from kits_plugins.inference import cascade as cascade_module
from kits_plugins.inference.cascade import KiTSCascadePredictor, prediction_jobs, timing_line
from kits_plugins.utilities import roi
from kits_plugins.utilities.crops import load_crops
from kits_plugins.utilities.image_io import Geometry, read_label, write_image

torch.set_num_threads(1)


def test_cascade_reproduces_labels_and_header_with_permuted_direction(cascade, tmp_path, monkeypatch, make_case, write_case):
    from nnunetv2.imageio.nibabel_reader_writer import NibabelIOWithReorient

    ct, lab, g = make_case()
    write_case(tmp_path / "in", "case_00007", ct, lab, g)
    ct_file = tmp_path / "in" / "case_00007_0000.nii.gz"

    # the coarse stage must get exactly what nnU-Net's own reader gives for this file (array and spacing)
    seen = []
    original = cascade_module.coarse_lowres

    def spy(predictor, image, spacing):
        seen.append((image.copy(), list(spacing)))
        return original(predictor, image, spacing)

    monkeypatch.setattr(cascade_module, "coarse_lowres", spy)
    infos = cascade.predict(tmp_path / "in", tmp_path / "out", progress=False)
    ref_img, ref_props = NibabelIOWithReorient().read_images([str(ct_file)])
    assert np.allclose(seen[0][0], ref_img) and np.allclose(seen[0][1], ref_props["spacing"])

    out, og = read_label(tmp_path / "out" / "case_00007.nii.gz")
    assert og == g  # origin, spacing, direction and shape exactly as the input
    assert set(np.unique(out)) <= {0, 1, 2, 3}
    assert np.array_equal(out, lab)  # thresholds reproduce the label map exactly
    info = infos[0]
    assert info["case"] == "case_00007" and info["n_rois"] == 2 and info["fallback"] is None
    assert set(info) >= {"read", "coarse", "fine", "masses", "postprocess", "write", "total", "roi_fraction"}
    assert all(info[k] >= 0 for k in ("read", "coarse", "fine", "masses", "write")) and 0 < info["roi_fraction"] < 1
    # boxes from the low-resolution map contain those derive-stages' function finds on the full-size coarse mask
    # and exceed them by at most one coarse voxel (3 mm) per side; the margin absorbs it: the output above is exact
    full = roi.roi_boxes(cascade.coarse_mask(ct, g), g.spacing_np, 4.5, 50.0)
    assert len(info["boxes"]) == len(full)
    for got, ref in zip(info["boxes"], full):
        for (a, b), (c, d), s, n in zip(got, ref, g.spacing_np, g.shape):
            one = int(np.ceil(3.0 / s))
            assert c - one <= a <= c and d <= b <= d + one and 0 <= a < b <= n
    assert len(info["boxes"]) == len(roi.roi_boxes(lab > 0, g.spacing_np, 4.5, 50.0))
    assert "case_00007: read" in timing_line(info) and "2 ROI(s)" in timing_line(info)


def test_kidney_at_border_and_oracle_mask_and_probabilities(results, tmp_path, make_case, write_case):
    ct, lab, g = make_case(border=True)
    write_case(tmp_path / "kits", "case_00003", ct, lab, g, kits_layout=True)
    write_image((lab > 0).astype(np.uint8), g, tmp_path / "masks" / "case_00003.nii.gz")
    pred = KiTSCascadePredictor.from_results(results=results, load_coarse=False, margin_mm=4.5,
                                             min_roi_volume_mm3=50.0, postprocess=False, save_probabilities=True)
    assert pred.coarse is None
    infos = pred.predict(tmp_path / "kits", tmp_path / "out", coarse_masks=tmp_path / "masks", progress=False)
    out, og = read_label(tmp_path / "out" / "case_00003.nii.gz")
    assert og == g and np.array_equal(out, lab)
    assert infos[0]["boxes"][0][0][0] == 0  # the box is clamped at the border
    crops, cases = load_crops(tmp_path / "out" / "crops.json")
    assert sorted(crops) == ["case_00003_roi0", "case_00003_roi1"] and cases["case_00003"] == g
    npz = np.load(tmp_path / "out" / "case_00003_roi0.npz")
    box = npz["box"].tolist()
    assert box == crops["case_00003_roi0"].box
    assert npz["fine"].dtype == np.float16 and npz["fine"].shape == (2, *roi.box_shape(box))
    assert npz["masses"].shape == (2, *roi.box_shape(box))  # regions masses, tumor
    assert np.array_equal(npz["masses"][1] > 0.5, roi.crop(lab, box) == 2)


def test_coarse_mask_with_another_geometry_is_refused(cascade, tmp_path, make_case, write_case):
    ct, lab, g = make_case()
    write_case(tmp_path / "ct", "case_00001", ct, lab, g)
    moved = Geometry((g.origin[0], g.origin[1] + 3.0, g.origin[2]), g.spacing, g.direction, g.size)  # same size
    write_image((lab > 0).astype(np.uint8), moved, tmp_path / "masks" / "case_00001.nii.gz")
    with pytest.raises(KitsInputError, match=r"case_00001.nii.gz: geometry differs from CT .*origin"):
        cascade.predict(tmp_path / "ct", tmp_path / "out", coarse_masks=tmp_path / "masks", progress=False)
    assert not (tmp_path / "out" / "case_00001.nii.gz").exists()


def test_empty_coarse_mask_fallbacks(cascade, tmp_path, make_case, hu):
    ct, lab, g = make_case(shape=(20, 18, 8))
    ct[:] = hu[0]  # no kidney anywhere
    with pytest.warns(RuntimeWarning, match="empty coarse mask: all-zero"):
        res = cascade.predict_array(ct, g)
    assert res.segmentation.shape == ct.shape and not res.segmentation.any() and res.boxes == []
    assert res.info("x")["fallback"].startswith("empty coarse mask")

    whole = KiTSCascadePredictor(cascade.coarse, cascade.fine, cascade.masses, postprocess=False,
                                 on_empty_mask="whole")
    ct2, lab2, g2 = make_case(shape=(20, 18, 8))
    lab2[:] = 0
    lab2[8:12, 8:12, 2:6] = 1  # a kidney too small for the coarse model to be trusted: given mask is empty
    ct2 = np.vectorize(hu.get, otypes=[np.float32])(lab2)
    with pytest.warns(RuntimeWarning, match="whole image"):
        res2 = whole.predict_array(ct2, g2, coarse_mask=np.zeros(ct2.shape, np.uint8))
    assert res2.boxes == [[[0, 20], [0, 18], [0, 8]]] and np.array_equal(res2.segmentation, lab2)


def test_postprocessing_is_applied_when_available(cascade, make_case):
    pytest.importorskip("kits_plugins.postprocessing.remove_components")
    ct, lab, g = make_case()
    pp = KiTSCascadePredictor(None, cascade.fine, cascade.masses, margin_mm=4.5, min_roi_volume_mm3=50.0,
                              postprocess=True, min_volume_mm3={1: 0.0, 2: 0.0, 3: 0.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = pp.predict_array(ct, g, coarse_mask=lab)
    assert np.array_equal(res.segmentation, lab) and res.timings["postprocess"] >= 0


def test_int16_ct_gives_the_same_labels_as_float32(cascade, make_case):
    ct, lab, g = make_case()
    ct16 = np.round(ct).astype(np.int16)
    a = cascade.predict_array(ct16, g).segmentation
    b = cascade.predict_array(ct16.astype(np.float32), g).segmentation
    assert np.array_equal(a, b) and np.array_equal(a, lab)


def test_cli_predict_on_kits_layout(results, tmp_path, capsys, make_case, write_case):
    from kits_plugins.cli import main

    ct, lab, g = make_case()
    write_case(tmp_path / "kits", "case_00011", ct, lab, g, kits_layout=True)
    assert main(["predict", "-i", str(tmp_path / "kits"), "-o", str(tmp_path / "out"), "--results", str(results),
                 "-f", "0", "--disable-tta", "--margin-mm", "4.5", "--min-roi-volume-mm3", "50",
                 "--no-postprocess"]) == 0
    out, og = read_label(tmp_path / "out" / "case_00011.nii.gz")
    assert og == g and np.array_equal(out, lab)
    captured = capsys.readouterr()
    assert "case_00011: read" in captured.out + captured.err  # the per-case timing line
    assert main(["predict", "-i", str(tmp_path / "kits"), "-o", str(tmp_path / "o2"), "--results", str(results),
                 "--fine-trainer", "nnUNetTrainerNope"]) == 2
    assert "nnUNetTrainerNope__kitsPlans__3d_fullres: model folder missing" in capsys.readouterr().err


def test_cli_predict_refuses_a_truncated_ct(results, tmp_path, capsys, make_case):
    from kits_plugins.cli import main

    _, _, g = make_case()
    noisy = np.random.default_rng(1).integers(-1000, 1000, (80, 80, 40)).astype(np.int16)  # ~0.5 MB compressed:
    big = Geometry(g.origin, g.spacing, g.direction, noisy.shape[::-1])  # large enough for ITK to read past a cut
    write_image(noisy, big, tmp_path / "in" / "case_00012_0000.nii.gz")
    data = (tmp_path / "in" / "case_00012_0000.nii.gz").read_bytes()
    (tmp_path / "in" / "case_00012_0000.nii.gz").write_bytes(data[: len(data) // 2])
    assert main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--results", str(results),
                 "--disable-tta"]) == 2
    err = capsys.readouterr().err
    assert "case_00012_0000.nii.gz: truncated or corrupt gzip stream" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "case_00012.nii.gz").exists()


GEOMETRY = Geometry((0.0, 0.0, 0.0), (1.0, 1.0, 2.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), (8, 8, 4))


def _ct(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(np.zeros(GEOMETRY.shape, np.int16), GEOMETRY, path)
    return path


def test_predict_into_its_input_folder_is_refused_before_loading_models(tmp_path, capsys):
    ct = _ct(tmp_path / "d" / "case_00001.nii.gz")  # a folder of *.nii.gz: the output would be the CT itself
    original = ct.read_bytes()
    rc = main(["predict", "-i", str(tmp_path / "d"), "-o", str(tmp_path / "d"), "--results", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert rc == 2 and "would write over its input" in err and "case_00001.nii.gz" in err
    assert "nnUNet_results" not in err and "model" not in err  # refused before any model lookup
    assert ct.read_bytes() == original


def test_predict_refuses_output_over_a_coarse_mask(tmp_path):
    _ct(tmp_path / "in" / "case_00001_0000.nii.gz")
    mask = _ct(tmp_path / "masks" / "case_00001.nii.gz")
    with pytest.raises(KitsInputError, match="would write over its input"):
        prediction_jobs(tmp_path / "in", tmp_path / "masks", coarse_masks=tmp_path / "masks")
    assert mask.exists()


def test_bare_imaging_file_in_the_case_folder_gets_the_folders_case_id(tmp_path, monkeypatch):
    _ct(tmp_path / "case_00042" / "imaging.nii.gz")
    monkeypatch.chdir(tmp_path / "case_00042")
    (job,) = prediction_jobs("imaging.nii.gz", tmp_path / "out")
    assert job.case == "case_00042" and job.output == tmp_path / "out" / "case_00042.nii.gz"


def test_case_ids_that_are_not_plain_names_are_refused(tmp_path):
    _ct(tmp_path / "in" / "-rf_0000.nii.gz")
    with pytest.raises(KitsInputError, match="-rf_0000.nii.gz: case id '-rf' is not a plain name"):
        prediction_jobs(tmp_path / "in", tmp_path / "out")


def test_missing_coarse_mask_is_reported_before_any_work(tmp_path):
    _ct(tmp_path / "in" / "case_00001_0000.nii.gz")
    (tmp_path / "masks").mkdir()
    with pytest.raises(KitsInputError, match="mask for case_00001 not found"):
        prediction_jobs(tmp_path / "in", tmp_path / "out", coarse_masks=tmp_path / "masks")


def test_a_box_that_cuts_the_kidney_is_grown_and_stage_222_rerun(results, make_case):
    ct, lab, g = make_case()  # kidney 1 spans rows 4..13 of axis 0 (3 mm), the margin 4.5 mm is 2 rows
    cut = [[2, 13], [2, 14], [1, 12]]  # stops one row short of the kidney's end: an inner face cuts it
    pred = KiTSCascadePredictor.from_results(results=results, load_coarse=False, margin_mm=4.5, postprocess=False,
                                             save_probabilities=True)
    res = pred.predict_array(ct, g, boxes=[cut])
    assert res.boxes == [[[2, 15], [2, 14], [1, 12]]]
    assert res.regrown == [{"roi": 0, "from": cut, "to": [[2, 15], [2, 14], [1, 12]], "faces": [[(0, 1)]]}]
    box = res.boxes[0]
    assert np.array_equal(roi.crop(res.segmentation, box), roi.crop(lab, box))  # the whole kidney, not cut
    assert res.probabilities[0]["box"] == box and res.probabilities[0]["fine"].shape[1:] == roi.box_shape(box)
    assert "ROI 0 cut the kidney" in timing_line(res.info("c"))
    # at most max_regrow rounds: one round is not enough for a box cut 4 rows short
    once = KiTSCascadePredictor.from_results(results=results, load_coarse=False, margin_mm=4.5, postprocess=False,
                                             max_regrow=1).predict_array(ct, g, boxes=[[[2, 10], [2, 14], [1, 12]]])
    assert once.boxes == [[[2, 12], [2, 14], [1, 12]]] and [r["faces"] for r in once.regrown] == [[[(0, 1)]]]
    assert np.array_equal(once.segmentation[12:], np.zeros_like(once.segmentation[12:]))
    # a kidney ending at the image border is not a cut; max_regrow=0 switches the rule off
    off = KiTSCascadePredictor.from_results(results=results, load_coarse=False, margin_mm=4.5, postprocess=False,
                                            max_regrow=0).predict_array(ct, g, boxes=[cut])
    assert off.boxes == [cut] and off.regrown == []


def test_empty_fine_mask_with_probabilities(results, make_case):
    ct, lab, g = make_case()
    pred = KiTSCascadePredictor.from_results(results=results, load_coarse=False, postprocess=False,
                                             save_probabilities=True)
    res = pred.predict_array(ct, g, boxes=[[[30, 36], [0, 6], [0, 4]]])  # background only
    assert not res.segmentation.any() and res.probabilities[0]["masses"] is None
    assert res.probabilities[0]["fine"].shape[1:] == (6, 6, 4)


def test_predict_in_parts_writes_every_case_exactly_once(results, tmp_path, capsys, make_case, write_case, monkeypatch):
    from kits_plugins.cli import main
    from kits_plugins.inference import cascade as cascade_module

    ct, lab, g = make_case(shape=(20, 18, 8))
    cases = [f"case_{i:05d}" for i in (3, 1, 9, 4, 0, 12, 7)]
    for c in cases:
        write_case(tmp_path / "in", c, ct, lab, g)
    written: list[str] = []
    original = cascade_module.KiTSCascadePredictor.predict_case

    def spy(self, ct_path, out_path, coarse_mask_path=None, case=None, outputs=None):
        written.append(case)
        return original(self, ct_path, out_path, coarse_mask_path, case, outputs)

    monkeypatch.setattr(cascade_module.KiTSCascadePredictor, "predict_case", spy)
    parts = []
    for k in range(3):
        before = len(written)
        assert main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--results", str(results),
                     "--disable_tta", "-num_parts", "3", "-part_id", str(k), "--no-postprocess"]) == 0
        parts.append(written[before:])
    assert parts == [sorted(cases)[k::3] for k in range(3)]  # nnU-Net's convention: sorted cases, every Nth
    assert sorted(written) == sorted(cases) and len(written) == len(set(written)) == 7
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{c}.nii.gz" for c in sorted(cases)]
    capsys.readouterr()
    assert main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "o2"), "--results", str(results),
                 "-num_parts", "3", "-part_id", "3"]) == 2
    assert "-part_id 3 is not in 0..2" in capsys.readouterr().err and not (tmp_path / "o2").exists()
