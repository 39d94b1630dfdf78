"""The cascade predictor with real nnUNetPredictors on tiny fixed-weight models, and the stage-by-stage helpers.

The three stage models are 1x1x1 convolutions with fixed weights ("oracle" thresholds on the CT
intensities of the generated case, and on the mask channel for stage 223), stored as real nnU-Net model
folders (plans.json, dataset.json, fold_0/checkpoint_final.pth) and loaded by ``nnUNetPredictor``
through ``initialize_from_trained_model_folder``; nnU-Net does preprocessing, sliding window, mirroring
and resampling. Since the thresholds reproduce the generated label map, the cascade's output must equal
it exactly inside the ROIs.
"""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pytest
import torch

from kits_plugins.inference import cascade as cascade_module
from kits_plugins.inference import stage_io
from kits_plugins.inference.cascade import KiTSCascadePredictor, timing_line
from kits_plugins.inference.coarse import coarse_label_map, resample_label_map
from kits_plugins.inference.model_discovery import (
    ModelNotFoundError,
    StageModel,
    find_model_folder,
    resolve_folds,
    stage_models,
)
from kits_plugins.testing.plans_builder import minimal_plans
from kits_plugins.utilities import roi
from kits_plugins.utilities.crops import load_crops
from kits_plugins.utilities.image_io import Geometry, KitsInputError, read_geometry, read_image, read_label, write_image
from kits_plugins.utilities.labels import combine_stage_outputs, masses_label_lut
from kits_plugins.utilities.orientation import Reorientation

torch.set_num_threads(1)

KITS_DIRECTION = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0)  # real KiTS23: slice axis is the last numpy axis
HU = {0: -100.0, 1: 200.0, 2: 400.0, 3: 300.0}  # background, kidney, tumor, cyst

NET_MODULE = '''
import torch
from torch import nn


class ThresholdNet(nn.Module):
    """1x1x1 convolution with the fixed weights given in the plans: logits linear in the intensities."""

    def __init__(self, input_channels, num_classes, weights, bias, **kwargs):
        super().__init__()
        self.conv = nn.Conv3d(input_channels, num_classes, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor(weights, dtype=torch.float32).view(num_classes, input_channels, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor(bias, dtype=torch.float32))

    def forward(self, x):
        return self.conv(x)
'''

# stage -> (dataset folder, configuration, spacing (nnU-Net order), channels, labels, regions_class_order, W, b)
# kidney+masses: foreground logit 0.1 * (HU - 100); masses region: HU > 250 and mask; tumor region: HU > 350 and mask.
STAGE_DEFS = {
    "coarse": ("Dataset221_KiTS2023Coarse", "3d_lowres", [3.0, 3.0, 3.0], {"0": "CT"},
               {"background": 0, "kidney": 1}, None, [[0.0], [0.1]], [0.0, -10.0]),
    "fine": ("Dataset222_KiTS2023Kidney", "3d_fullres", [1.5, 1.5, 3.0], {"0": "CT"},
             {"background": 0, "kidney": 1}, None, [[0.0], [0.1]], [0.0, -10.0]),
    "masses": ("Dataset223_KiTS2023Masses", "3d_fullres", [1.5, 1.5, 3.0], {"0": "CT", "1": "mask"},
               {"background": 0, "masses": [1, 2], "tumor": 1}, [2, 1],  # derive-stages' encoding
               [[0.1, 100.0], [0.1, 100.0]], [-125.0, -135.0]),
}


def _plans(name: str, config: str, spacing, n_channels: int, weights, bias) -> dict:
    arch = {"network_class_name": "kits_test_threshold_nets.ThresholdNet",
            "arch_kwargs": {"weights": weights, "bias": bias}, "_kw_requires_import": []}
    props = {"max": 1000.0, "mean": 0.0, "median": 0.0, "min": -1000.0, "percentile_00_5": -1000.0,
             "percentile_99_5": 1000.0, "std": 100.0}
    return minimal_plans(config, spacing, ["NoNormalization"] * n_channels, arch, patch_size=(16, 16, 16),
                         data_order=1, intensity_properties=props, median_shape=(16, 32, 32), dataset_name=name)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A tmp nnUNet_results with the three stage model folders (default trainer names, fold_0)."""
    from kits_plugins.inference.model_discovery import DEFAULT_STAGE_MODELS

    root = tmp_path_factory.mktemp("nnUNet_results")
    netdir = tmp_path_factory.mktemp("nets")
    (netdir / "kits_test_threshold_nets.py").write_text(NET_MODULE)
    sys.path.insert(0, str(netdir))
    import kits_test_threshold_nets

    for stage, (name, config, spacing, channels, labels, rco, w, b) in STAGE_DEFS.items():
        folder = root / name / DEFAULT_STAGE_MODELS[stage].identifier
        (folder / "fold_0").mkdir(parents=True)
        ds = {"channel_names": channels, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz",
              "overwrite_image_reader_writer": "NibabelIOWithReorient"}
        if rco is not None:
            ds["regions_class_order"] = rco
        (folder / "dataset.json").write_text(json.dumps(ds))
        (folder / "plans.json").write_text(json.dumps(_plans(name, config, spacing, len(channels), w, b)))
        net = kits_test_threshold_nets.ThresholdNet(len(channels), len(w), w, b)
        torch.save({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer",
                    "init_args": {"configuration": config}, "inference_allowed_mirroring_axes": (0, 1, 2)},
                   folder / "fold_0" / "checkpoint_final.pth")
    yield root
    sys.path.remove(str(netdir))


@pytest.fixture(scope="module")
def cascade(results):
    return KiTSCascadePredictor.from_results(results=results, margin_mm=4.5, min_roi_volume_mm3=50.0,
                                             postprocess=False)


def make_case(shape=(36, 30, 14), border=False) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """Two kidneys (one with a tumor, one with a cyst) in a KiTS-like permuted-direction image.

    File numpy order; slice axis last (3 mm), in-plane 1.5 mm. ``border=True`` puts one kidney against
    the image border."""
    lab = np.zeros(shape, np.uint8)
    z0 = 0 if border else 4
    lab[z0:z0 + 10, 4:12, 3:10] = 1
    lab[z0 + 3:z0 + 6, 6:9, 5:8] = 2
    lab[22:32, 16:26, 4:11] = 1
    lab[25:28, 19:22, 6:9] = 3
    ct = np.vectorize(HU.get, otypes=[np.float32])(lab)
    ct += np.random.default_rng(0).normal(0, 5, shape).astype(np.float32)
    g = Geometry((-20.0, 35.5, 110.25), (1.5, 1.5, 3.0), KITS_DIRECTION, tuple(shape[::-1]))
    return ct, lab, g


def _write_case(folder, case, ct, lab, g, kits_layout=False):
    if kits_layout:
        write_image(ct, g, folder / case / "imaging.nii.gz")
        write_image(lab, g, folder / case / "segmentation.nii.gz")
    else:
        write_image(ct, g, folder / f"{case}_0000.nii.gz")


def test_combine_stage_outputs_restricts_masses_to_fine_mask():
    assert masses_label_lut({"background": 0, "masses": [1, 2], "tumor": 1}).tolist() == [0, 2, 3]
    assert masses_label_lut({"background": 0, "masses": [2, 3], "tumor": 2}).tolist() == [0, 0, 2, 3]
    fine = np.array([0, 1, 1, 1, 0], bool)
    masses = np.array([2, 0, 2, 3, 3], np.uint8)
    assert combine_stage_outputs(fine, masses).tolist() == [0, 1, 2, 3, 0]
    assert combine_stage_outputs(fine, np.array([0, 1, 1, 0, 0], np.uint8)).tolist() == [0, 1, 1, 1, 0]


def test_model_discovery_errors_list_what_was_looked_for(results, tmp_path):
    models = stage_models(fine_trainer="nnUNetTrainerMissing", folds=["0"])
    assert models["fine"].trainer == "nnUNetTrainerMissing" and models["masses"].folds == ("0",)
    with pytest.raises(ModelNotFoundError, match=r"nnUNetTrainerMissing__kitsPlans__3d_fullres.*present in "
                                                 r"Dataset222_KiTS2023Kidney: \['nnUNetTrainerKiTSFine"):
        find_model_folder(models["fine"], results)
    with pytest.raises(ModelNotFoundError, match=r"dataset 224 .*datasets present: \['Dataset221"):
        find_model_folder(StageModel(224, "nnUNetTrainer", "3d_fullres"), results)
    coarse = stage_models()["coarse"]
    folder = find_model_folder(coarse, results)
    assert resolve_folds(folder, coarse) == [0]
    with pytest.raises(ModelNotFoundError, match=r"fold\(s\) \[3\]"):
        resolve_folds(folder, StageModel(221, "x", "3d_lowres", folds=(3,)))
    with pytest.raises(KitsInputError, match="does not exist"):
        find_model_folder(coarse, tmp_path / "nowhere")


def test_cascade_reproduces_labels_and_header_with_permuted_direction(cascade, tmp_path, monkeypatch):
    from nnunetv2.imageio.nibabel_reader_writer import NibabelIOWithReorient

    ct, lab, g = make_case()
    _write_case(tmp_path / "in", "case_00007", ct, lab, g)
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


def test_kidney_at_border_and_oracle_mask_and_probabilities(results, tmp_path):
    ct, lab, g = make_case(border=True)
    _write_case(tmp_path / "kits", "case_00003", ct, lab, g, kits_layout=True)
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


def test_coarse_mask_with_another_geometry_is_refused(cascade, tmp_path):
    ct, lab, g = make_case()
    _write_case(tmp_path / "ct", "case_00001", ct, lab, g)
    moved = Geometry((g.origin[0], g.origin[1] + 3.0, g.origin[2]), g.spacing, g.direction, g.size)  # same size
    write_image((lab > 0).astype(np.uint8), moved, tmp_path / "masks" / "case_00001.nii.gz")
    with pytest.raises(KitsInputError, match=r"case_00001.nii.gz: geometry differs from CT .*origin"):
        cascade.predict(tmp_path / "ct", tmp_path / "out", coarse_masks=tmp_path / "masks", progress=False)
    assert not (tmp_path / "out" / "case_00001.nii.gz").exists()


def test_empty_coarse_mask_fallbacks(cascade, tmp_path):
    ct, lab, g = make_case(shape=(20, 18, 8))
    ct[:] = HU[0]  # no kidney anywhere
    with pytest.warns(RuntimeWarning, match="empty coarse mask: all-zero"):
        res = cascade.predict_array(ct, g)
    assert res.segmentation.shape == ct.shape and not res.segmentation.any() and res.boxes == []
    assert res.info("x")["fallback"].startswith("empty coarse mask")

    whole = KiTSCascadePredictor(cascade.coarse, cascade.fine, cascade.masses, postprocess=False,
                                 on_empty_mask="whole")
    ct2, lab2, g2 = make_case(shape=(20, 18, 8))
    lab2[:] = 0
    lab2[8:12, 8:12, 2:6] = 1  # a kidney too small for the coarse model to be trusted: given mask is empty
    ct2 = np.vectorize(HU.get, otypes=[np.float32])(lab2)
    with pytest.warns(RuntimeWarning, match="whole image"):
        res2 = whole.predict_array(ct2, g2, coarse_mask=np.zeros(ct2.shape, np.uint8))
    assert res2.boxes == [[[0, 20], [0, 18], [0, 8]]] and np.array_equal(res2.segmentation, lab2)


def test_postprocessing_is_applied_when_available(cascade):
    pytest.importorskip("kits_plugins.postprocessing.remove_components")
    ct, lab, g = make_case()
    pp = KiTSCascadePredictor(None, cascade.fine, cascade.masses, margin_mm=4.5, min_roi_volume_mm3=50.0,
                              postprocess=True, min_volume_mm3={1: 0.0, 2: 0.0, 3: 0.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = pp.predict_array(ct, g, coarse_mask=lab)
    assert np.array_equal(res.segmentation, lab) and res.timings["postprocess"] >= 0


def test_int16_ct_gives_the_same_labels_as_float32(cascade):
    ct, lab, g = make_case()
    ct16 = np.round(ct).astype(np.int16)
    a = cascade.predict_array(ct16, g).segmentation
    b = cascade.predict_array(ct16.astype(np.float32), g).segmentation
    assert np.array_equal(a, b) and np.array_equal(a, lab)


def test_return_freed_memory_to_os():
    import platform

    from kits_plugins.utilities.memory import return_freed_memory_to_os

    result = return_freed_memory_to_os()
    assert isinstance(result, bool)
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert result


def test_input_discovery(tmp_path):
    ct, lab, g = make_case(shape=(6, 5, 4))
    write_image(ct, g, tmp_path / "nn" / "case_00002_0000.nii.gz")
    write_image(ct, g, tmp_path / "nn" / "case_00001_0000.nii.gz")
    write_image(ct, g, tmp_path / "nn" / "case_00001_0001.nii.gz")  # another channel: ignored
    assert [c for c, _ in stage_io.find_ct_inputs(tmp_path / "nn")] == ["case_00001", "case_00002"]
    write_image(ct, g, tmp_path / "plain" / "case_00009.nii.gz")
    assert stage_io.find_ct_inputs(tmp_path / "plain")[0][0] == "case_00009"
    _write_case(tmp_path / "kits", "case_00004", ct, lab, g, kits_layout=True)
    [(case, f)] = stage_io.find_ct_inputs(tmp_path / "kits")
    assert case == "case_00004" and f.name == "imaging.nii.gz"
    assert stage_io.find_ct_inputs(f) == [("case_00004", f)]
    (tmp_path / "empty").mkdir()
    with pytest.raises(KitsInputError, match="empty: no CT found"):
        stage_io.find_ct_inputs(tmp_path / "empty")


def test_crop_paste_round_trip_is_exact(tmp_path):
    from nnunetv2.imageio.nibabel_reader_writer import NibabelIOWithReorient

    from kits_plugins.cli import main

    ct, lab, g = make_case(border=True)
    write_image(ct, g, tmp_path / "ct" / "case_00005_0000.nii.gz")
    write_image(lab, g, tmp_path / "gt" / "case_00005.nii.gz")
    write_image(np.zeros_like(ct), g, tmp_path / "ct" / "case_00006_0000.nii.gz")
    write_image(np.zeros_like(lab), g, tmp_path / "gt" / "case_00006.nii.gz")

    # stage 222 input: CT crops with boxes from the (here: ground-truth) kidney mask
    assert main(["crop-rois", "-i", str(tmp_path / "ct"), "--mask", str(tmp_path / "gt"), "-o", str(tmp_path / "r222"),
                 "--margin-mm", "4.5", "--min-roi-volume-mm3", "50"]) == 0
    crops, cases = load_crops(tmp_path / "r222" / "crops.json")
    assert sorted(crops) == ["case_00005_roi0", "case_00005_roi1"] and cases["case_00006"] == g
    for cid, c in crops.items():
        crop, cg = read_image(tmp_path / "r222" / f"{cid}_0000.nii.gz")
        assert np.array_equal(crop, roi.crop(ct, c.box))
        assert cg == g.with_size(roi.box_shape(c.box), [a for a, _ in c.box])
        # simulate nnUNetv2_predict -d 222 (written by nnU-Net's own writer, float32 affine) and -d 223
        # (derive-stages encoding: 1 tumor, 2 cyst)
        lab_crop = roi.crop(lab, c.box)
        io = NibabelIOWithReorient()
        _, props = io.read_images([str(tmp_path / "r222" / f"{cid}_0000.nii.gz")])
        (tmp_path / "p222").mkdir(exist_ok=True)
        nn_order = Reorientation.from_geometry(cg).to_nnunet((lab_crop > 0).astype(np.uint8))
        io.write_seg(nn_order, str(tmp_path / "p222" / f"{cid}.nii.gz"), props)
        write_image(np.array([0, 0, 1, 2], np.uint8)[lab_crop], cg, tmp_path / "p223" / f"{cid}.nii.gz")

    # stage 223 input: same boxes, mask channel from the ROI-sized 222 predictions
    assert main(["crop-rois", "-i", str(tmp_path / "ct"), "--crops", str(tmp_path / "r222" / "crops.json"),
                 "--roi-mask", str(tmp_path / "p222"), "--with-mask-channel", "-o", str(tmp_path / "r223")]) == 0
    for cid, c in crops.items():
        ch1, _ = read_image(tmp_path / "r223" / f"{cid}_0001.nii.gz")
        assert np.array_equal(ch1, roi.crop(lab, c.box) > 0)
    assert load_crops(tmp_path / "r223" / "crops.json")[0].keys() == crops.keys()

    assert main(["paste-rois", "-i", str(tmp_path / "p223"), "--fine", str(tmp_path / "p222"), "--crops",
                 str(tmp_path / "r222" / "crops.json"), "-o", str(tmp_path / "final"), "--ref", str(tmp_path / "ct")]) == 0
    out, og = read_label(tmp_path / "final" / "case_00005.nii.gz")
    assert og == g and np.array_equal(out, lab)  # 0 voxels differ, header exact
    empty, eg = read_label(tmp_path / "final" / "case_00006.nii.gz")
    assert eg == g and not empty.any()
    assert read_geometry(tmp_path / "final" / "case_00005.nii.gz") == read_geometry(tmp_path / "ct" / "case_00005_0000.nii.gz")


def test_stage_helpers_reject_bad_input(tmp_path, capsys):
    from kits_plugins.cli import main

    ct, lab, g = make_case(shape=(10, 8, 6))
    write_image(ct, g, tmp_path / "ct" / "case_00001_0000.nii.gz")
    assert main(["crop-rois", "-i", str(tmp_path / "ct"), "--mask", str(tmp_path / "nomask"), "-o",
                 str(tmp_path / "o")]) == 2
    assert "nomask/case_00001.nii.gz: mask for case_00001 not found" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text(json.dumps({"crops": {"c_roi0": {"case": "c", "box": [[0, 99], [0, 1], [0, 1]],
                                                                       "source_geometry": g.to_dict()}}}))
    with pytest.raises(KitsInputError, match="bad.json"):
        load_crops(tmp_path / "bad.json")
    assert main(["predict", "-i", str(tmp_path / "ct"), "-o", str(tmp_path / "o"), "--results",
                 str(tmp_path / "none")]) == 2
    assert "nnUNet_results folder does not exist" in capsys.readouterr().err


def test_cli_predict_on_kits_layout(results, tmp_path, capsys):
    from kits_plugins.cli import main

    ct, lab, g = make_case()
    _write_case(tmp_path / "kits", "case_00011", ct, lab, g, kits_layout=True)
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


def test_cli_predict_refuses_a_truncated_ct(results, tmp_path, capsys):
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


@pytest.mark.parametrize("order_z", [0, 1])
def test_chunked_label_resampling_equals_nnunet_single_call(order_z):
    """Separate-z (2.5-5 mm slices) and 3-D cases: the slab-wise two-step resampling is nnU-Net's result."""
    from types import SimpleNamespace

    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape
    from scipy import ndimage

    rng = np.random.default_rng(1)
    low = (ndimage.gaussian_filter(rng.random((13, 21, 19)), 2) > 0.5).astype(np.uint8)
    low[low > 0] += (rng.random(int(low.sum())) > 0.5).astype(np.uint8)  # labels 0, 1, 2
    kwargs = {"is_seg": True, "order": 1, "order_z": order_z, "force_separate_z": None}
    cm = SimpleNamespace(configuration={"resampling_fn_seg": "resample_data_or_seg_to_shape",
                                        "resampling_fn_seg_kwargs": kwargs})
    cases = [((3.0, 1.5, 1.5), (5.0, 0.7, 0.7), (8, 45, 41)),  # slice axis 0
             ((1.5, 3.0, 1.5), (0.7, 5.0, 0.7), (28, 8, 41)),  # slice axis 1
             ((1.5, 1.5, 1.5), (0.9, 0.7, 0.8), (22, 45, 36))]  # isotropic: one 3-D resize
    for current, new, shape in cases:
        ref = resample_data_or_seg_to_shape(low[None], shape, current, new, **kwargs)[0]
        for chunk in (50, 700, 2**20):
            got = resample_label_map(low, shape, current, new, cm, chunk_voxels=chunk)
            assert got.dtype == np.uint8 and got.shape == shape and np.array_equal(got, ref)


@pytest.mark.parametrize("spacing", [(1.5, 1.5, 3.0), (0.9, 0.9, 3.0)])
def test_coarse_label_map_matches_predict_single_npy_array(cascade, spacing):
    """The low-resolution argmax + label-map resampling against nnU-Net's logits path, with nnU-Net's
    crop to the nonzero region active (a zero border) and, at 0.9 mm in-plane, its separate-z resampling."""
    ct, lab, g = make_case(shape=(40, 34, 14))
    ct = np.pad(ct[2:-2, 2:-2, 1:-1], ((2, 2), (2, 2), (1, 1)))  # zero frame: nnU-Net crops it away
    g = Geometry(g.origin, spacing, g.direction, g.size)
    r = Reorientation.from_geometry(g)
    image, spacing_nn = r.to_nnunet(ct)[None], r.spacing_to_nnunet(g.spacing_np)
    old = cascade.coarse.predict_single_npy_array(image, {"spacing": list(spacing_nn)}, None, None, False)
    new = coarse_label_map(cascade.coarse, image, spacing_nn)
    assert new.dtype == np.uint8 and new.shape == old.shape == image.shape[1:]
    differ = new != old
    # label-map vs logits resampling: only voxels at the label boundary may differ (<= 1 voxel away)
    boundary = ndimage_boundary(old > 0)
    assert not (differ & ~boundary).any()
    assert differ.sum() <= 0.25 * boundary.sum(), (int(differ.sum()), int(boundary.sum()))
    assert old.any() and new.any()  # (volumes may differ by tens of %: these blobs are ~3 coarse voxels wide)
    # the box of the mask (what the ROIs are grown from) moves by at most one voxel per side
    box_old, box_new = (np.array([[ax.min(), ax.max()] for ax in np.nonzero(m > 0)]) for m in (old, new))
    assert np.abs(box_old - box_new).max() <= 1


def ndimage_boundary(mask: np.ndarray) -> np.ndarray:
    """Voxels within one voxel (26-neighbourhood) of the mask's boundary, on either side."""
    from scipy import ndimage

    st = np.ones((3, 3, 3), bool)
    return ndimage.binary_dilation(mask, st) & ~ndimage.binary_erosion(mask, st)
