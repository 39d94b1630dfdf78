"""The demo's step runner (markers, resume, failures), --fresh safety and the PNG overlays."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from kits_plugins.cli import main
from kits_plugins.demo.figures import kidney_slices, save_case_png
from kits_plugins.demo.pipeline import Demo, DemoSettings
from kits_plugins.utilities.image_io import Geometry


def test_step_runs_once_then_resumes(tmp_path):
    demo = Demo(DemoSettings(workdir=tmp_path))
    tmp_path.mkdir(exist_ok=True)
    out = tmp_path / "count.txt"
    cmd = [sys.executable, "-c", f"open({str(out)!r}, 'a').write('x')"]
    first = demo.run_step("touch", cmd)
    assert not first.skipped and first.wall_s > 0 and first.peak_rss_mb > 1
    second = demo.run_step("touch", cmd)
    assert second.skipped and out.read_text() == "x"  # not run again


def test_env_puts_the_shim_first_and_keeps_the_users_trainer_folders(tmp_path, monkeypatch):
    import os

    from kits_plugins.training.commands import trainer_path

    shim = str(trainer_path())
    monkeypatch.setenv("nnUNet_extTrainer", os.pathsep.join(["/opt/my_trainers", shim]))
    env = Demo(DemoSettings(workdir=tmp_path)).env()
    assert env["nnUNet_extTrainer"].split(os.pathsep) == [shim, "/opt/my_trainers"]
    assert env["nnUNet_results"] == str(tmp_path.resolve() / "nnUNet_results") and env["nnUNet_compile"] == "false"
    monkeypatch.delenv("nnUNet_extTrainer")
    assert Demo(DemoSettings(workdir=tmp_path)).env()["nnUNet_extTrainer"] == shim
    # the predictor's loader uses the same rule on its own process
    from kits_plugins.inference.model_discovery import ensure_ext_trainer_path

    monkeypatch.setenv("nnUNet_extTrainer", "/opt/my_trainers")
    ensure_ext_trainer_path()
    assert os.environ["nnUNet_extTrainer"].split(os.pathsep) == [shim, "/opt/my_trainers"]


def test_failed_step_raises_and_leaves_no_marker(tmp_path):
    demo = Demo(DemoSettings(workdir=tmp_path))
    with pytest.raises(RuntimeError, match="demo step 'boom' failed \\(exit 3\\)"):
        demo.run_step("boom", [sys.executable, "-c", "raise SystemExit(3)"])
    assert not (tmp_path / ".steps" / "boom.json").exists()


def test_fresh_refuses_a_folder_that_is_not_a_demo(tmp_path, capsys):
    (tmp_path / "precious.txt").write_text("keep me")
    assert main(["demo", "--workdir", str(tmp_path), "--fresh"]) == 2
    assert "it is not a kits demo folder" in capsys.readouterr().err
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_kidney_slices_and_png(tmp_path):
    label = np.zeros((20, 30, 40), np.uint8)
    label[4:9, 5:10, 5:10] = 1
    label[12:17, 5:10, 25:35] = 1
    label[14, 6, 26] = 2
    assert kidney_slices(label) == [6, 14]
    assert kidney_slices(np.zeros((6, 4, 4), np.uint8)) == [3]
    # a KiTS-like permuted direction: the PNG goes through nnU-Net's orientation first
    d = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0)
    file_label = np.ascontiguousarray(label.transpose(2, 1, 0)[::-1, ::-1, ::-1])
    geom = Geometry((0.0, 0.0, 0.0), (4.0, 3.0, 3.0), d, file_label.shape[::-1])
    ct = np.where(file_label > 0, 150, -100).astype(np.int16)
    png = save_case_png(ct, file_label, file_label, geom, tmp_path / "c.png", title="t")
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
