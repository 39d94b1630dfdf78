"""``kits_plugins.workflow.resume``: a training job continues its own checkpoint with ``--c``, starts over when its
inputs changed, writes its record only when nnU-Net has finished, and passes SIGTERM on to the training.
A stand-in for ``nnUNetv2_train`` records its arguments and writes the checkpoints nnU-Net would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kits_plugins.workflow.resume import INPUTS_FILE, display, prepare_fold, train_fold, training_inputs

FAKE_TRAIN = """
import os, signal, sys, time
from pathlib import Path
fold = Path(os.environ["FAKE_FOLD"])
with open(os.environ["FAKE_CALLS"], "a") as f:
    f.write(" ".join(sys.argv[1:]) + " KITS_EPOCHS=" + os.environ.get("KITS_EPOCHS", "-") + "\\n")
mode = os.environ["FAKE_MODE"]
fold.mkdir(parents=True, exist_ok=True)
if mode == "die":  # killed mid-training: only the periodic checkpoint exists
    (fold / "checkpoint_latest.pth").write_text("epoch 50")
    sys.exit(3)
if mode == "wait":
    def stop(*_):
        Path(os.environ["FAKE_CALLS"]).with_suffix(".term").write_text("got SIGTERM")
        sys.exit(143)
    signal.signal(signal.SIGTERM, stop)
    (fold / "started").write_text("")
    time.sleep(60)
(fold / "checkpoint_latest.pth").unlink(missing_ok=True)  # as nnU-Net's on_train_end
(fold / "checkpoint_final.pth").write_text("final")
"""


@pytest.fixture
def setup(tmp_path, monkeypatch):
    script = tmp_path / "nnUNetv2_train"
    script.write_text(FAKE_TRAIN)
    fold = tmp_path / "results" / "fold_0"
    plans = tmp_path / "kitsPlans.json"
    plans.write_text('{"plans": 1}')
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("FAKE_FOLD", str(fold))
    monkeypatch.setenv("FAKE_CALLS", str(calls))
    argv = [sys.executable, str(script), "221", "3d_lowres", "0", "-tr", "T", "-p", "kitsPlans", "-device", "cpu"]
    return argv, fold, plans, calls, tmp_path / "trained" / "221" / "fold_0.json"


def test_killed_training_continues_its_checkpoint(setup, monkeypatch):
    argv, fold, plans, calls, record = setup
    env = {"KITS_EPOCHS": "26"}
    monkeypatch.setenv("FAKE_MODE", "die")
    assert train_fold(argv, env, fold, plans, record) == 3
    assert not record.exists() and (fold / "checkpoint_latest.pth").exists()  # nothing for Snakemake to delete
    monkeypatch.setenv("FAKE_MODE", "finish")
    assert train_fold(argv, env, fold, plans, record) == 0
    lines = calls.read_text().splitlines()
    assert lines[0].endswith("-device cpu KITS_EPOCHS=26") and lines[1].endswith("-device cpu --c KITS_EPOCHS=26")
    doc = json.loads(record.read_text())
    assert doc["continued"] is True and doc["checkpoint"] == str((fold / "checkpoint_final.pth").resolve())
    assert doc["command"].startswith("KITS_EPOCHS=26 ") and doc["command"].endswith(" --c")


def test_a_checkpoint_of_other_inputs_is_removed(setup, monkeypatch):
    argv, fold, plans, calls, record = setup
    monkeypatch.setenv("FAKE_MODE", "die")
    train_fold(argv, {}, fold, plans, record)
    time.sleep(0.01)
    plans.write_text('{"plans": 1}')  # planned again (same content, new file): its preprocessed data may differ
    monkeypatch.setenv("FAKE_MODE", "finish")
    assert train_fold(argv, {}, fold, plans, record) == 0
    assert not calls.read_text().splitlines()[1].count("--c")


def test_prepare_fold(tmp_path):
    plans = tmp_path / "p.json"
    plans.write_text("{}")
    inputs = training_inputs(plans, ["/venv/bin/nnUNetv2_train", "222", "3d_fullres", "1", "-device", "cuda"], {})
    assert inputs["args"] == ["222", "3d_fullres", "1"]  # another device or environment may continue
    fold = tmp_path / "fold_1"
    assert prepare_fold(fold, inputs) is False  # nothing to continue; inputs recorded
    (fold / "checkpoint_final.pth").write_text("x")  # killed in the final validation
    assert prepare_fold(fold, inputs) is True
    (fold / INPUTS_FILE).write_text("not json")  # unknown origin: start over
    assert prepare_fold(fold, inputs) is False and not (fold / "checkpoint_final.pth").exists()
    assert display(["nnUNetv2_train", "a b"], {"KITS_ITERS": "25"}) == "KITS_ITERS=25 nnUNetv2_train 'a b'"


def test_sigterm_reaches_the_training(setup, tmp_path):
    """A cluster's time limit (SIGTERM to the job) reaches nnU-Net; the job fails without a record."""
    argv, fold, plans, calls, record = setup
    env = {**os.environ, "FAKE_MODE": "wait"}
    proc = subprocess.Popen([sys.executable, "-m", "kits_plugins.workflow.jobs", "train", "--fold-dir", str(fold),
                             "--plans", str(plans), "--record", str(record), "--", *argv], env=env)
    deadline = time.time() + 30
    while not (fold / "started").exists():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    assert calls.with_suffix(".term").read_text() == "got SIGTERM" and not record.exists()


def test_missing_final_checkpoint_is_a_failure(tmp_path):
    plans = tmp_path / "p.json"
    plans.write_text("{}")
    rc = train_fold([sys.executable, "-c", "pass"], {}, tmp_path / "fold_0", plans, tmp_path / "r.json")
    assert rc == 1 and not Path(tmp_path / "r.json").exists()
