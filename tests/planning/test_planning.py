"""`kits plan`: target spacing, third-order image resampling, mask channels, the CT intensity window of the ROI
stages and the coarse configuration."""

from __future__ import annotations

import copy
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from kits_plugins.cli import main
from kits_plugins.errors import KitsInputError
from kits_plugins.planning.planner import (
    IMAGE_RESAMPLING_KWARGS,
    drop_nnunet_cascade,
    nnUNetPlannerKiTS,
    scaled_features,
)
from kits_plugins.planning.planning import (
    check_plans,
    coarse_spacing_for,
    dataset_name,
    plan_and_preprocess,
    preprocessed_spacing,
    refresh_splits,
    transposed,
)
from kits_plugins.testing.tiny_datasets import write_tiny_stage_dataset
from kits_plugins.utilities.image_io import read_geometry
from kits_plugins.utilities.orientation import Reorientation

torch.set_num_threads(1)

# Planning target and coarse spacing of the module's planned tiny datasets.
TARGET, COARSE = (2.0, 1.5, 1.5), (6.0, 4.5, 4.5)


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """Tiny 221, 222 and 223 planned once with ``nnUNetPlannerKiTS`` (not preprocessed): ``{id: plans}``.

    nnUNet_raw / nnUNet_preprocessed stay set for the module. 222 and 223 are written with the same seed, so they
    hold the same CT crops and 223's mask channel equals 222's label (as ``kits derive-stages`` writes them from the
    ground truth). A small GPU memory target makes nnU-Net plan its own 3d_lowres and in-dataset cascade for 221,
    which the planner must replace by the requested coarse spacing and drop.
    """
    root = tmp_path_factory.mktemp("planned")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("nnUNet_raw", str(root / "raw"))
        mp.setenv("nnUNet_preprocessed", str(root / "pre"))
        write_tiny_stage_dataset(root / "raw", 221, num_cases=2, shape=(64, 64, 48), spacing=(2.5, 1.5, 1.5))
        for d in (222, 223):
            write_tiny_stage_dataset(root / "raw", d, num_cases=2)
        out = plan_and_preprocess([221, 222, 223], target_spacing=TARGET, num_processes=1, coarse_spacing=COARSE,
                                  gpu_memory_target_gb=0.05, preprocess=False)
        yield {d: json.loads(p.read_text()) for d, p in out.items()}


def _fingerprint(dataset_id: int) -> dict:
    """nnU-Net's dataset_fingerprint.json of a planned dataset (the module's nnUNet_preprocessed)."""
    path = Path(os.environ["nnUNet_preprocessed"]) / dataset_name(dataset_id) / "dataset_fingerprint.json"
    return json.loads(path.read_text())


def _plans(transpose=(0, 1, 2)) -> dict:
    """Plans shaped like nnU-Net's default planner's for a coarse dataset with a mask channel."""
    nnunet_kwargs = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    cfg = {
        "spacing": [1.0, 0.8, 0.8],
        "resampling_fn_data_kwargs": dict(nnunet_kwargs),
        "normalization_schemes": ["CTNormalization", "ZScoreNormalization"],
        "use_mask_for_norm": [False, True],
    }
    return {
        "plans_name": "kitsPlans",
        "transpose_forward": list(transpose),
        "configurations": {
            "2d": {**copy.deepcopy(cfg), "spacing": [0.8, 0.8]},
            "3d_fullres": copy.deepcopy(cfg),
            "3d_lowres": {**copy.deepcopy(cfg), "spacing": [2.0, 1.6, 1.6], "next_stage": "3d_cascade_fullres"},
            "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"},
        },
    }


def test_check_plans_flags_each_rule():
    plans = _plans()
    target = (1.0, 0.8, 0.8)
    assert len(check_plans(plans, target)) == 3  # nnU-Net's default resampling in 2d, 3d_fullres, 3d_lowres
    for cfg in plans["configurations"].values():
        if "resampling_fn_data_kwargs" in cfg:
            cfg["resampling_fn_data_kwargs"] = dict(IMAGE_RESAMPLING_KWARGS)
    assert check_plans(plans, target) == []
    assert len(check_plans(plans, (0.786, 0.78125, 0.78125))) == 2  # 3d_fullres and 2d spacing
    masked = check_plans(plans, target, mask_channels=(1,))
    assert len(masked) == 3 and all("mask channel 1 is normalized" in p and "noNorm" in p for p in masked)
    assert check_plans(plans, target, require_coarse=True) == [
        "the coarse stage has nnU-Net's in-dataset cascade (3d_cascade_fullres / next_stage)"]
    assert drop_nnunet_cascade(plans["configurations"]) == ["3d_cascade_fullres", "3d_lowres.next_stage"]
    assert check_plans(plans, target, require_coarse=True) == []
    del plans["configurations"]["3d_lowres"]
    assert check_plans(plans, target, require_coarse=True) == ["no 3d_lowres configuration for the coarse stage"]


def test_check_plans_flags_other_intensity_properties():
    ct = {"max": 238.0, "mean": 158.37, "median": 166.0, "min": -29.0, "percentile_00_5": -10.0,
          "percentile_99_5": 214.0, "std": 39.92}
    plans = {"transpose_forward": [0, 1, 2], "configurations": {},
             "foreground_intensity_properties_per_channel": {"0": dict(ct), "1": {"mean": 1.0}}}
    assert check_plans(plans, (1, 1, 1), intensity_properties={0: ct}) == []
    assert check_plans(plans, (1, 1, 1), intensity_properties={0: {**ct, "mean": np.float64(158.37)}}) == []
    masses_only = {**ct, "percentile_99_5": 142.0}  # the window of 223's tumor and cyst voxels clips the cortex
    assert check_plans(plans, (1, 1, 1), intensity_properties={0: masses_only}) == [
        f"channel 0 intensity properties {ct} != {masses_only}"]
    assert check_plans(plans, (1, 1, 1), intensity_properties={2: ct}) == [f"channel 2 intensity properties None != {ct}"]


def test_check_plans_respects_transpose():
    plans = _plans(transpose=(2, 0, 1))
    plans["configurations"] = {"3d_fullres": {"spacing": [3.0, 0.7, 0.8]}, "2d": {"spacing": [0.7, 0.8]}}
    assert check_plans(plans, (0.7, 0.8, 3.0)) == []
    assert transposed((0.7, 0.8, 3.0), (2, 0, 1)) == [3.0, 0.7, 0.8]


def test_scaled_features():
    assert scaled_features([32, 64, 320], 1.0) == [32, 64, 320]
    assert scaled_features([32, 64, 320], 0.25) == [8, 16, 80]
    assert scaled_features([32, 64, 320], 0.1) == [4, 6, 32]  # at least 4
    with pytest.raises(KitsInputError, match="network width"):
        scaled_features([32], 0.0)


def test_coarse_spacing_and_preprocessed_spacing():
    assert coarse_spacing_for((0.786, 0.78125, 0.78125), None) == (1.572, 1.5625, 1.5625)
    assert coarse_spacing_for((1, 1, 1), (3, 2.5, 2.5)) == (3.0, 2.5, 2.5)
    with pytest.raises(KitsInputError, match="coarse spacing"):
        coarse_spacing_for((1, 1, 1), (3, -1, 2))
    props = {"spacing": [2.5, 1.5, 1.5], "shape_after_cropping_and_before_resampling": (16, 24, 24)}
    assert np.allclose(preprocessed_spacing((1, 20, 24, 24), props, (0, 1, 2)), [2.0, 1.5, 1.5])


def test_missing_dataset_env_and_bad_spacing_are_input_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    with pytest.raises(KitsInputError, match="nnUNet_raw"):
        plan_and_preprocess([221])
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    (tmp_path / "raw").mkdir()
    with pytest.raises(KitsInputError, match="no dataset with id 221"):
        plan_and_preprocess([221])
    assert main(["plan", "-d", "221"]) == 2
    write_tiny_stage_dataset(tmp_path / "raw", 221, num_cases=2)
    with pytest.raises(KitsInputError, match="target spacing"):
        plan_and_preprocess([221], target_spacing=(1.0, 0.0, 1.0), preprocess=False)


def test_kits_plan_coarse_stage_gets_lowres_at_requested_spacing(tmp_path, monkeypatch, capsys):
    """Plan and preprocess a tiny 221 through the CLI; read the plans and the preprocessed cases back."""
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")  # also checks the planner workaround for 0
    folder = write_tiny_stage_dataset(raw, 221, num_cases=3, shape=(24, 24, 16), spacing=(2.5, 1.5, 1.5))
    target, coarse = (2.0, 1.5, 1.5), (4.0, 3.0, 3.0)
    # tiny images: nnU-Net's planner drops 3d_lowres (patch covers the whole image); the package adds it back
    rc = main(["plan", "-d", "221", "--target-spacing", *map(str, target), "--coarse-spacing", *map(str, coarse),
               "-np", "1", "--demo-network"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "3d_lowres at (4.0, 3.0, 3.0) mm (requested)" in out

    dataset = pre / folder.name
    plans = json.loads((dataset / "kitsPlans.json").read_text())
    cfgs = plans["configurations"]
    assert plans["transpose_forward"] == [0, 1, 2]
    assert cfgs["3d_fullres"]["spacing"] == list(target)
    assert cfgs["3d_lowres"]["spacing"] == list(coarse)
    assert "inherits_from" not in cfgs["3d_lowres"] and "3d_cascade_fullres" not in cfgs
    assert cfgs["3d_lowres"]["data_identifier"] == "kitsPlans_3d_lowres"
    assert cfgs["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"][0] == 8  # quarter width
    assert all(c["resampling_fn_data_kwargs"]["order"] == 3 and c["resampling_fn_data_kwargs"]["order_z"] == 3
               for c in cfgs.values() if "resampling_fn_data_kwargs" in c)
    assert plans["image_reader_writer"] == "NibabelIOWithReorient"
    # only the coarse configuration was preprocessed (the stage default)
    assert (dataset / "kitsPlans_3d_lowres").is_dir() and not (dataset / "kitsPlans_3d_fullres").exists()

    # properties stored next to each preprocessed case: original spacing in reader order (S-I, A-P, R-L) and a
    # resampled shape that corresponds to the coarse spacing
    geom = read_geometry(folder / "imagesTr" / "case_00000_0000.nii.gz")
    reader_spacing = Reorientation.from_geometry(geom).spacing_to_nnunet(geom.spacing_np)
    assert np.allclose(reader_spacing, (2.5, 1.5, 1.5))
    pkls = sorted((dataset / "kitsPlans_3d_lowres").glob("*.pkl"))
    assert len(pkls) == 3
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    ds_folder = str(dataset / "kitsPlans_3d_lowres")
    ds = infer_dataset_class(ds_folder)(ds_folder, None)
    for p in pkls:
        with open(p, "rb") as f:
            props = pickle.load(f)
        assert np.allclose(props["spacing"], reader_spacing)
        data, seg, _, _ = ds.load_case(p.stem)
        # 16 slices x 2.5 mm = 40 mm -> 10 voxels of 4 mm; 24 x 1.5 mm = 36 mm -> 12 voxels of 3 mm
        assert data.shape[1:] == (10, 12, 12)
        assert np.allclose(preprocessed_spacing(data.shape, props, plans["transpose_forward"]), coarse)
        assert set(np.unique(seg[:])) <= {0, 1}


def test_planner_plans_follow_the_package_rules(planned):
    """The planned tiny 221, 222 and 223 (``nnUNetPlannerKiTS`` through nnU-Net's ``plan_experiment_dataset``)."""
    plans, target, coarse = planned, TARGET, COARSE
    assert check_plans(plans[221], target, require_coarse=True) == []
    assert check_plans(plans[222], target) == []
    assert check_plans(plans[223], target, mask_channels=(1,)) == []
    for p in plans.values():
        assert p["experiment_planner_used"] == "nnUNetPlannerKiTS"
        cfgs = p["configurations"]
        assert cfgs["3d_fullres"]["spacing"] == list(target) and cfgs["2d"]["spacing"] == list(target[1:])
        for cfg in cfgs.values():
            assert cfg["resampling_fn_data_kwargs"] == IMAGE_RESAMPLING_KWARGS
            assert cfg["resampling_fn_seg_kwargs"] == {"is_seg": True, "order": 1, "order_z": 0,
                                                       "force_separate_z": None}  # nnU-Net's default
    coarse_cfgs = plans[221]["configurations"]
    assert sorted(coarse_cfgs) == ["2d", "3d_fullres", "3d_lowres"]  # nnU-Net's 3d_cascade_fullres dropped
    lowres = coarse_cfgs["3d_lowres"]
    assert lowres["spacing"] == list(coarse) and "next_stage" not in lowres and lowres["batch_dice"] is False
    assert lowres["data_identifier"] == "kitsPlans_3d_lowres"
    assert coarse_cfgs["3d_fullres"]["batch_dice"] is True  # nnU-Net's choice when it planned a lowres stage
    for cfg in plans[223]["configurations"].values():  # dataset.json names channel 1 noNorm
        assert cfg["normalization_schemes"] == ["CTNormalization", "NoNormalization"]
        assert cfg["use_mask_for_norm"] == [False, False]

    # the width scales features only: patch, batch and topology are those of the full-width network
    fullres = coarse_cfgs["3d_fullres"]
    args = (np.array(fullres["spacing"]), np.array(fullres["median_image_size_in_voxels"]), "x", 1e6, {})
    full, narrow = (nnUNetPlannerKiTS(221, 0.05, network_width=w).get_plans_for_configuration(*args)
                    for w in (1.0, 0.25))
    assert [int(v) for v in full["patch_size"]] == fullres["patch_size"]
    for key in ("patch_size", "batch_size"):
        assert narrow[key] == full[key]
    full_arch, narrow_arch = full["architecture"]["arch_kwargs"], narrow["architecture"]["arch_kwargs"]
    assert narrow_arch["strides"] == full_arch["strides"]
    assert list(narrow_arch["features_per_stage"]) == [f // 4 for f in full_arch["features_per_stage"]]


def test_roi_stages_share_the_kidney_and_masses_ct_window(planned):
    """222 and 223 normalize the same crops' CT with the same statistics: nnU-Net's over 222's kidney+masses label.

    223's come from ``mask_foreground_intensity_properties`` (the mirror of nnU-Net's fingerprint code over its
    mask channel), so equality with nnU-Net's fingerprint of 222 also tests the mirror. nnU-Net's own fingerprint
    of 223 (kept as nnU-Net wrote it) covers only tumor and cyst; its plans must not.
    """
    kidney_window = _fingerprint(222)["foreground_intensity_properties_per_channel"]["0"]
    nnunet_223 = _fingerprint(223)["foreground_intensity_properties_per_channel"]
    plans_222 = planned[222]["foreground_intensity_properties_per_channel"]
    plans_223 = planned[223]["foreground_intensity_properties_per_channel"]
    assert plans_222 == {"0": kidney_window}
    assert plans_223 == {"0": kidney_window, "1": nnunet_223["1"]}  # the mask channel keeps nnU-Net's (unused)
    assert list(plans_223["0"]) == list(kidney_window)  # same key order as nnU-Net's fingerprint
    assert nnunet_223["0"]["percentile_99_5"] < kidney_window["percentile_99_5"]  # masses only: cortex clipped
    assert check_plans(planned[223], TARGET, intensity_properties={0: kidney_window}) == []
    assert check_plans(planned[223], TARGET, intensity_properties={0: nnunet_223["0"]}) != []
    with pytest.raises(KitsInputError, match="no input channel 2"):
        nnUNetPlannerKiTS(223, intensity_properties={2: kidney_window})


def test_refresh_splits_replaces_a_stale_preprocessed_split(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    write_tiny_stage_dataset(tmp_path / "raw", 222, num_cases=2)
    raw = next((tmp_path / "raw").glob("Dataset222_*"))
    assert not refresh_splits(222)  # no split in the raw dataset: nnU-Net makes its own
    new = [{"train": ["case_00000_roi0"], "val": ["case_00001_roi0"]}]
    (raw / "splits_final.json").write_text(json.dumps(new))
    assert not refresh_splits(222)  # nothing preprocessed yet: nnU-Net's planner copies it
    pre = tmp_path / "pre" / raw.name
    pre.mkdir(parents=True)
    (pre / "splits_final.json").write_text(json.dumps([{"train": ["old_roi0"], "val": ["old_roi1"]}]))
    assert refresh_splits(222)  # derived again with other crop ids: nnU-Net would assert, kits plan replaces it
    assert json.loads((pre / "splits_final.json").read_text()) == new
    assert not refresh_splits(222)
