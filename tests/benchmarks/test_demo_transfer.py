"""``benchmarks/demo_transfer.py`` refuses a folder that holds no finished demo, in one line naming it (the run itself
needs a demo's trained models: its measurement is a benchmark, not a test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "demo_transfer.py"


def test_refuses_a_folder_without_a_demo(tmp_path):
    run = subprocess.run([sys.executable, str(SCRIPT), "--labels", str(tmp_path), "--demo", str(tmp_path / "nodemo"),
                          "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "out.json")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert run.stderr.strip().count("\n") == 0 and "nodemo" in run.stderr and "kits demo" in run.stderr
    assert not (tmp_path / "w").exists() and not (tmp_path / "out.json").exists()


def test_never_empties_a_folder_it_did_not_make(tmp_path):
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "demo_config.yaml").write_text("workdir: x\n")
    work = tmp_path / "precious"
    work.mkdir()
    (work / "keep.txt").write_text("mine")
    run = subprocess.run([sys.executable, str(SCRIPT), "--labels", str(tmp_path), "--demo", str(demo),
                          "--workdir", str(work), "--out", str(tmp_path / "out.json")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert run.stderr.strip().count("\n") == 0 and "precious" in run.stderr and "not empty" in run.stderr
    assert (work / "keep.txt").read_text() == "mine"


def test_oracle_masks_are_the_phantoms_labels_under_predicts_names(tmp_path):
    """``--oracle-rois`` gives ``kits predict --coarse-masks`` each phantom's own ground truth, named by its case, and
    the same predict command with only its output folder changed."""
    sys.path.insert(0, str(SCRIPT.parent))
    import demo_transfer

    for case in ("case_00003", "case_00010"):
        (tmp_path / "ph" / case).mkdir(parents=True)
        (tmp_path / "ph" / case / "segmentation.nii.gz").write_bytes(case.encode())
        (tmp_path / "ph" / case / "imaging.nii.gz").write_bytes(b"ct")
    masks = demo_transfer.label_masks(tmp_path / "ph", tmp_path / "masks")
    assert sorted(p.name for p in masks.iterdir()) == ["case_00003.nii.gz", "case_00010.nii.gz"]
    assert (masks / "case_00010.nii.gz").read_bytes() == b"case_00010"
    argv = ["py", "-m", "kits_plugins.cli", "predict", "-i", "in", "-o", "parts/p0", "-f", "all"]
    assert demo_transfer._with_output(argv, tmp_path / "o") == [*argv[:7], str(tmp_path / "o"), "-f", "all"]


def test_fine_variant_arms_rederive_and_retrain_only_222_with_the_demos_own_settings(tmp_path):
    """``--fine-variant``: each arm re-derives 222 with the demo's derive options (then the variant's), plans and
    retrains 222 with the demo's plan and schedule, and predicts with the demo's predict step into the arm's folder."""
    sys.path.insert(0, str(SCRIPT.parent))
    import demo_transfer

    from kits_plugins.demo.pipeline import DemoOptions, demo_config, demo_defaults
    from kits_plugins.workflow import steps
    from kits_plugins.workflow.config import check_config

    config = check_config(demo_config(demo_defaults(), DemoOptions(workdir=tmp_path / "arm", train_cases=12,
                                                                   test_cases=4, device="cpu", seed=0, iterations=15)))
    out, phantoms = tmp_path / "pred", tmp_path / "phantoms"
    control = demo_transfer.fine_variant_commands(config, [], phantoms, out, 2)
    variant = demo_transfer.fine_variant_commands(config, ["--extend-share", "0.5"], phantoms, out, 2)
    (derive, _), (plan, _), (train, train_env), (predict, _) = variant
    assert derive == [*steps.derive_ground_truth(config), "--stages", "222", "--extend-share", "0.5", "-np", "2"]
    assert control[0][0] == [*steps.derive_ground_truth(config), "--stages", "222", "-np", "2"]
    assert control[1:] == variant[1:]  # the arms differ only in their crops
    assert plan == [*steps.plan(config, ("222",)), "-np", "2"]
    assert train == steps.train(config, "222", "all") and train_env == {"KITS_EPOCHS": "18", "KITS_ITERS": "15"}
    assert predict[predict.index("-o") + 1] == str(out) and predict[predict.index("-i") + 1] == str(phantoms)
    with pytest.raises(SystemExit, match="ground-truth ROIs"):
        demo_transfer.fine_variant_commands({**config, "train_as_you_infer": True}, [], phantoms, out, 2)
