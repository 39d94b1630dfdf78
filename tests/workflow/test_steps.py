"""``kits_plugins.workflow.steps``: with demo.yaml the rules run the demo's commands as before it became a workflow
(same data, plans, schedule and prediction settings), and the real configuration's commands."""

from __future__ import annotations

import sys

from kits_plugins.workflow import steps
from kits_plugins.workflow.config import check_config, load_yaml, shipped_config

KITS = [sys.executable, "-m", "kits_plugins.cli"]


def test_the_demos_commands(tmp_path):
    c = check_config(load_yaml(shipped_config("demo")), tmp_path)
    w = tmp_path / "kits_demo"
    shape = ["--shape", "64", "128", "128", "--spacing", "4.0", "3.0", "3.0", "--kits23-extent"]
    assert steps.synth(c, test=False) == KITS + ["synth", str(w / "kits_train"), "--overwrite", "--cases", "12",
                                                 "--seed", "0", *shape]
    assert steps.synth(c, test=True) == KITS + ["synth", str(w / "kits_test"), "--overwrite", "--cases", "16",
                                                "--seed", "10000", "--first-case", "12", *shape]
    assert steps.convert(c) == KITS + ["convert", str(w / "kits_train"), "--overwrite"]
    assert steps.derive_ground_truth(c) == KITS + ["derive-stages", "--overwrite", "--margin-mm", "15", "--seed", "0"]
    wider = check_config({**load_yaml(shipped_config("demo")), "derive": {"margin_mm": 15, "seed": 0, "jitter_mm": 25}},
                         tmp_path)
    assert steps.derive_ground_truth(wider)[-2:] == ["--jitter-mm", "25"]  # only when set: derive-stages' default
    grown = check_config({**load_yaml(shipped_config("demo")),
                          "derive": {"margin_mm": 15, "seed": 0, "extend_share": 0.5, "extend_max_mm": 40}}, tmp_path)
    assert steps.derive_ground_truth(grown)[-4:] == ["--extend-share", "0.5", "--extend-max-mm", "40"]
    assert steps.derive_from_predictions(grown)[-4:] == ["--extend-share", "0.5", "--extend-max-mm", "40"]
    assert "--extend-share" not in steps.derive_from_predictions(c)
    assert steps.plan(c, ("221", "222", "223")) == KITS + [
        "plan", "-d", "221", "222", "223", "--target-spacing", "4.0", "3.0", "3.0", "--coarse-spacing", "8.0", "8.0",
        "8.0", "--network-width", "0.25"]
    assert steps.train(c, "221", "all")[1:] == ["221", "3d_lowres", "all", "-tr", "nnUNetTrainerKiTSCoarse_demo",
                                               "-p", "kitsPlans", "-device", "cpu"]
    assert steps.train(c, "223", "all")[0].endswith("nnUNetv2_train")
    assert [steps.train_environment(c, s) for s in ("221", "222", "223")] == [
        {"KITS_EPOCHS": "24", "KITS_ITERS": "15"}, {"KITS_EPOCHS": "18", "KITS_ITERS": "15"},
        {"KITS_EPOCHS": "36", "KITS_ITERS": "15"}]
    assert steps.predict(c, "0") == KITS + [
        "predict", "-i", str(w / "kits_test"), "-o", "prediction_parts/part_0_of_1", "-f", "all", "-device", "cpu",
        "-p", "kitsPlans", "--coarse-trainer", "nnUNetTrainerKiTSCoarse_demo", "--fine-trainer",
        "nnUNetTrainerKiTSFine_demo", "--masses-trainer", "nnUNetTrainerKiTSSurface_demo", "-step_size", "0.5",
        "-num_parts", "1", "-part_id", "0", "--disable_tta"]
    assert steps.evaluate(c) == KITS + ["evaluate", "predictions", str(w / "kits_test"), "-o", "evaluation.csv"]


def test_the_chains_commands(tmp_path):
    (tmp_path / "k" / "case_00000").mkdir(parents=True)
    (tmp_path / "t" / "case_00001").mkdir(parents=True)
    for f in (tmp_path / "k" / "case_00000", tmp_path / "t" / "case_00001"):
        (f / "imaging.nii.gz").write_bytes(b"")
    c = check_config({**load_yaml(shipped_config("kits23")), "kits_dir": "k", "test_dir": "t", "workdir": "w"},
                     tmp_path)
    assert steps.derive_ground_truth(c)[-2:] == ["--stages", "221"]  # 222 and 223 come from predictions
    assert steps.derive_from_predictions(c)[3:] == ["derive-stages", "--overwrite", "--from-predictions",
                                                    "crossval/221", "--stages", "222", "--margin-mm", "15"]
    assert steps.derive_masks(c)[3:] == ["derive-stages", "--overwrite", "--masks-from", "crossval/222"]
    assert steps.plan(c, ("222",))[3:] == ["plan", "-d", "222"]  # the package's spacing and nnU-Net's widths
    assert steps.train_environment(c, "222") == {}
    predict = steps.predict(c, "3")
    assert predict[predict.index("-f") + 1:predict.index("-device")] == ["0", "1", "2", "3", "4"]
    assert "--disable_tta" not in predict and predict[-4:] == ["-num_parts", "4", "-part_id", "3"]
