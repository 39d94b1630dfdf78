"""``python -m kits_plugins.workflow.jobs``: the helper steps' command line; bad input is one line, exit code 2."""

from __future__ import annotations

import subprocess
import sys

from kits_plugins.workflow.jobs import main


def test_bad_input_is_one_line(tmp_path, capsys):
    (tmp_path / "part_0").mkdir()
    (tmp_path / "test" / "case_00001").mkdir(parents=True)
    (tmp_path / "test" / "case_00001" / "imaging.nii.gz").write_bytes(b"")
    rc = main(["merge", "--test-dir", str(tmp_path / "test"), "--out", str(tmp_path / "p"), str(tmp_path / "part_0")])
    assert rc == 2
    assert capsys.readouterr().err == "merge: error: 1 test case(s) have no prediction in 1 shard(s), first case_00001\n"


def test_runs_as_a_module(tmp_path):
    out = subprocess.run([sys.executable, "-m", "kits_plugins.workflow.jobs", "gather", "--splits",
                          str(tmp_path / "none.json"), "--out", str(tmp_path / "o"), str(tmp_path / "fold_0")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip().endswith("none.json: splits not found (was the stage planned?)")
