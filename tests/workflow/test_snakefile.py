"""The Snakefile run for real on a tiny configuration (2 phantoms of 16 x 24 x 24 voxels, up to ``convert``):
killed outright in the middle of a job (SIGKILL to Snakemake and every process under it, as a node failure would),
the rerun releases the lock the killed run left, redoes only that job, leaves no partial output, and a third run has
nothing to do."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import psutil
import yaml

from kits_plugins.workflow.config import load_yaml, shipped_config


def tiny_config(tmp_path):
    c = load_yaml(shipped_config("demo.yaml"))
    w = tmp_path / "w"
    c.update(workdir=str(w), kits_dir=str(w / "kits_train"), test_dir=str(w / "kits_test"))
    c["synthetic"].update(train_cases=2, test_cases=1, shape=[16, 24, 24])
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(c))
    return path, w


def kill_tree(pid: int) -> None:
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)


def test_killed_mid_job_then_rerun(tmp_path):
    config, w = tiny_config(tmp_path)
    argv = [sys.executable, "-m", "kits_plugins.cli", "workflow", str(config), "--cores", "2", "--until", "convert"]
    env = {**os.environ, "nnUNet_compile": "false"}
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    convert_log, dataset = w / "logs" / "convert.log", w / "nnUNet_raw" / "Dataset220_KiTS2023" / "dataset.json"
    deadline = time.time() + 240
    while not convert_log.exists():  # convert has started (after both synth jobs finished)
        assert proc.poll() is None and time.time() < deadline, "the workflow ended before convert started"
        time.sleep(0.02)
    kill_tree(proc.pid)
    assert not dataset.exists()  # killed before convert finished
    synth = {p: p.stat().st_mtime_ns for p in (w / "benchmarks").glob("synth_*.tsv")}
    assert list(synth) == [w / "benchmarks" / "synth_train.tsv"]  # the one job convert needs

    rerun = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stderr
    assert "kits workflow: releasing the lock of a killed run" in rerun.stderr  # Snakemake's lock would stop it
    assert "rule convert:" in rerun.stdout + rerun.stderr
    assert "rule synth_train:" not in rerun.stdout + rerun.stderr  # finished jobs are not redone
    assert {p: p.stat().st_mtime_ns for p in synth} == synth
    assert json.loads(dataset.read_text())["numTraining"] == 2
    assert not [p for p in (w / "nnUNet_raw").iterdir() if p.name.startswith(".")]  # no staging folder left
    third = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert third.returncode == 0 and re.search(r"^total\s+0$", third.stdout + third.stderr, re.M)  # no job
