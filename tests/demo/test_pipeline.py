"""``kits_plugins.demo.pipeline``: the demo's step runner (markers, resume, failures) and the environment of its
steps."""

from __future__ import annotations

import sys

import pytest

from kits_plugins.demo.pipeline import Demo, DemoSettings


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
