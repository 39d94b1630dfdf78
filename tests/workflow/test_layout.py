"""``kits_plugins.workflow.layout``: the step names the report reads are exactly the benchmarks of Snakemake's jobs,
and the jobs' environment."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from kits_plugins.training.commands import trainer_path
from kits_plugins.workflow.config import check_config, load_yaml, shipped_config
from kits_plugins.workflow.layout import fold_folder, job_environment, step_names


def benchmarks_of(dry_run: str) -> set[str]:
    return set(re.findall(r"^    benchmark: benchmarks/(\S+)\.tsv$", dry_run, re.M))


def test_step_names_are_the_benchmarks_of_the_chain(kits23_dry_run, kits_folders):
    config = check_config({**load_yaml(shipped_config("kits23")), "kits_dir": "train", "test_dir": "test",
                           "workdir": "work", "num_parts": 3}, kits_folders)
    names = step_names(config)
    assert len(names) == len(set(names)) and set(names) == benchmarks_of(kits23_dry_run)
    assert names.index("gather_cv_221") < names.index("train_222_0") < names.index("gather_cv_222")


def test_step_names_are_the_benchmarks_of_the_demo(kits, tmp_path):
    out = kits(["workflow", "demo.yaml", "-n"], tmp_path)
    assert out.returncode == 0, out.stderr
    names = step_names(check_config(load_yaml(shipped_config("demo")), tmp_path))
    assert set(names) == benchmarks_of(out.stdout)
    assert names == ["synth_train", "synth_test", "convert", "derive_stages", "plan", "train_221_all", "train_222_all",
                     "train_223_all", "predict_0_of_1", "merge_predictions", "evaluate"]


def test_job_environment(tmp_path):
    config = check_config(load_yaml(shipped_config("demo")), tmp_path)
    bin_dir = str(Path(sys.executable).parent)
    env = job_environment(config, {"PATH": "/usr/bin", "nnUNet_extTrainer": "/mine", "nnUNet_n_proc_DA": "8"})
    assert env["nnUNet_results"] == str(tmp_path / "kits_demo" / "nnUNet_results")
    assert env["nnUNet_extTrainer"] == os.pathsep.join([str(trainer_path()), "/mine"])
    assert env["PATH"] == os.pathsep.join([bin_dir, "/usr/bin"]) and env["PYTHONUNBUFFERED"] == "1"
    assert env["nnUNet_compile"] == "false" and env["nnUNet_def_n_proc"] == "2"
    assert "nnUNet_n_proc_DA" not in env  # set where the workflow starts: kept
    assert job_environment(config, {"PATH": env["PATH"]})["PATH"] == env["PATH"]  # not prepended twice
    assert fold_folder(config, "223", "all") == (
        "nnUNet_results/Dataset223_KiTS2023Masses/nnUNetTrainerKiTSSurface_demo__kitsPlans__3d_fullres/fold_all")
