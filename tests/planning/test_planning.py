"""`kits plan`: target spacing, third-order image resampling, mask channels and the coarse configuration."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch

from kits_plugins.cli import main
from kits_plugins.planning.planning import (
    IMAGE_RESAMPLING_KWARGS,
    check_plans,
    coarse_spacing_for,
    enforce_plans,
    plan_and_preprocess,
    preprocessed_spacing,
    scale_network_width,
    transposed,
)
from kits_plugins.testing.tiny_datasets import write_tiny_stage_dataset
from kits_plugins.utilities.image_io import KitsInputError, read_geometry
from kits_plugins.utilities.orientation import Reorientation

torch.set_num_threads(1)


def _plans(transpose=(0, 1, 2)) -> dict:
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


def test_enforce_plans_sets_spacing_spline_order_and_mask_channels():
    plans = _plans()
    target = (0.786, 0.78125, 0.78125)
    assert len(check_plans(plans, target)) == 5  # 2 spacings + 3 resamplings
    changes = enforce_plans(plans, target, mask_channels=(1,), drop_nnunet_cascade=True)
    c = plans["configurations"]
    assert c["3d_fullres"]["spacing"] == list(target)
    assert c["2d"]["spacing"] == list(target[1:])
    assert c["3d_lowres"]["spacing"] == [2.0, 1.6, 1.6]  # coarse stays coarse
    for name in ("2d", "3d_fullres", "3d_lowres"):
        assert c[name]["resampling_fn_data_kwargs"] == IMAGE_RESAMPLING_KWARGS
        assert c[name]["normalization_schemes"] == ["CTNormalization", "NoNormalization"]
        assert c[name]["use_mask_for_norm"] == [False, False]
    assert "3d_cascade_fullres" not in c and "next_stage" not in c["3d_lowres"]
    assert check_plans(plans, target, require_coarse=True) == []
    assert changes and enforce_plans(plans, target, mask_channels=(1,)) == []  # idempotent


def test_enforce_plans_respects_transpose():
    plans = _plans(transpose=(2, 0, 1))
    enforce_plans(plans, (0.7, 0.8, 3.0))
    assert plans["configurations"]["3d_fullres"]["spacing"] == [3.0, 0.7, 0.8]
    assert transposed((0.7, 0.8, 3.0), (2, 0, 1)) == [3.0, 0.7, 0.8]


def test_check_plans_reports_missing_coarse_configuration():
    plans = _plans()
    del plans["configurations"]["3d_lowres"]
    enforce_plans(plans, (1.0, 0.8, 0.8))
    assert check_plans(plans, (1.0, 0.8, 0.8), require_coarse=True) == ["no 3d_lowres configuration for the coarse stage"]


def test_scale_network_width():
    plans = {"configurations": {"3d_fullres": {"architecture": {"arch_kwargs": {"features_per_stage": [32, 64, 320]}}},
                                "3d_cascade_fullres": {"inherits_from": "3d_fullres"}}}
    assert scale_network_width(plans, 1.0) == []
    assert len(scale_network_width(plans, 0.1)) == 1
    assert plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"] == [4, 6, 32]
    with pytest.raises(KitsInputError, match="network width"):
        scale_network_width(plans, 0.0)


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

    import json

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
