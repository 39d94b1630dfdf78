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


def test_refuses_a_negative_procedural_count(tmp_path):
    run = subprocess.run([sys.executable, str(SCRIPT), "--labels", str(tmp_path), "--demo", str(tmp_path),
                          "--workdir", str(tmp_path / "w"), "--procedural", "-1", "--out", str(tmp_path / "o.json")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert run.stderr.strip().count("\n") == 0 and "--procedural -1" in run.stderr
    assert not (tmp_path / "w").exists() and not (tmp_path / "o.json").exists()


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


def test_procedural_cases_are_the_demos_test_draw_from_a_stream_it_never_used(tmp_path):
    """``--procedural N``: the demo's own test-case synthesis (shape, spacing, extent) with seed + 20000 and case
    numbers after the demo's training and test cases, so no case repeats one the demo trained or tested on."""
    sys.path.insert(0, str(SCRIPT.parent))
    import demo_transfer
    import SimpleITK as sitk

    from kits_plugins.demo.pipeline import DemoOptions, demo_config, demo_defaults
    from kits_plugins.workflow import steps
    from kits_plugins.workflow.config import check_config

    config = check_config(demo_config(demo_defaults(), DemoOptions(workdir=tmp_path / "demo", train_cases=3,
                                                                   test_cases=2, device="cpu", seed=7, iterations=15)))
    config["synthetic"] = {**config["synthetic"], "shape": [24, 48, 48]}
    argv = demo_transfer.procedural_synth(config, tmp_path / "proc", 2)
    demo_test = steps.synth({**config, "synthetic": {**config["synthetic"], "test_cases": 2}}, test=True)
    assert len(argv) == len(demo_test)
    assert [(b, a) for a, b in zip(argv, demo_test) if a != b] == [  # (the demo's, ours)
        (config["test_dir"], str(tmp_path / "proc")), ("10007", "20007"), ("3", "5")]
    assert argv[argv.index("--seed") + 1] == "20007" and argv[argv.index("--first-case") + 1] == "5"
    assert subprocess.run(argv, capture_output=True, timeout=300).returncode == 0
    assert sorted(p.name for p in (tmp_path / "proc").iterdir()) == ["case_00005", "case_00006"]
    assert subprocess.run(_with_test_dir(demo_test, tmp_path / "own"), capture_output=True, timeout=300).returncode == 0
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "proc" / "case_00005" / "imaging.nii.gz")))
    theirs = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "own" / "case_00003" / "imaging.nii.gz")))
    # KiTS23 extents: each case draws its own scan length (the last array axis in KiTS23's file order)
    assert ours.shape[:2] == theirs.shape[:2] == (48, 48)
    assert ours.shape != theirs.shape or not (ours == theirs).all()
    with pytest.raises(SystemExit, match="procedural"):
        demo_transfer.procedural_synth({**config, "synthetic": None}, tmp_path / "x", 2)


def _with_test_dir(argv: list[str], out: Path) -> list[str]:
    i = argv.index("synth")
    return [*argv[: i + 1], str(out), *argv[i + 2 :]]
