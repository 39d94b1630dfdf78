"""Fixtures of the workflow tests: tiny KiTS-layout folders and a helper that runs ``kits`` in a subprocess (the
workflow runs Snakemake in its own process, and a test must see the exit code and stderr a user sees)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def run_kits(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "nnUNet_def_n_proc": "2", "nnUNet_n_proc_DA": "2", "nnUNet_compile": "false"}
    return subprocess.run([sys.executable, "-m", "kits_plugins.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="session")
def kits():
    """``kits(args, cwd)``: run ``kits ARGS`` in a subprocess; returns the CompletedProcess (text output)."""
    return run_kits


@pytest.fixture(scope="session")
def kits_folders(tmp_path_factory) -> Path:
    """A folder with ``train/`` (10 synthetic cases, 16 x 24 x 24 voxels) and ``test/`` (3 other cases)."""
    root = tmp_path_factory.mktemp("kits_layout")
    for args in (["train", "--cases", "10"], ["test", "--cases", "3", "--first-case", "10", "--seed", "7"]):
        out = run_kits(["synth", *args, "--shape", "16", "24", "24", "--quiet"], root)
        assert out.returncode == 0, out.stderr
    return root


@pytest.fixture(scope="session")
def kits23_dry_run(kits_folders) -> str:
    """``kits workflow kits23.yaml -n`` on the 10 cases (3 prediction shards): Snakemake's dry-run output."""
    out = run_kits(["workflow", "kits23.yaml", "-n", "--", "--config", "kits_dir=train", "test_dir=test",
                    "workdir=work", "num_parts=3"], kits_folders)
    assert out.returncode == 0, out.stderr
    return out.stdout + out.stderr
