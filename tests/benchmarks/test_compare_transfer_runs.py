"""``benchmarks/compare_transfer_runs.py``: two demo_transfer results compared case by case, over their shared
cases; a file that is no such result is a one-line error naming it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "compare_transfer_runs.py"


def _result(path: Path, kidney: dict[str, float]) -> Path:
    path.write_text(json.dumps({"per_case": {c: {"Dice_kidney": v, "Dice_masses": v / 2} for c, v in kidney.items()}}))
    return path


def test_pairs_shared_cases_and_writes_the_differences(tmp_path):
    a = _result(tmp_path / "a.json", {"case_00001": 0.9, "case_00002": 0.7, "case_00003": 0.8, "case_00009": 0.1})
    b = _result(tmp_path / "b.json", {"case_00001": 0.8, "case_00002": 0.6, "case_00003": 0.9})
    run = subprocess.run([sys.executable, str(SCRIPT), str(a), str(b), "--out", str(tmp_path / "o" / "r.json")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    r = json.loads((tmp_path / "o" / "r.json").read_text())["a_minus_b"]
    assert r["Dice_kidney"]["n"] == 3  # case_00009 has no partner
    assert r["Dice_kidney"]["mean_diff"] == pytest.approx((0.1 + 0.1 - 0.1) / 3)
    assert r["Dice_kidney"]["mean_a"] == pytest.approx(0.8) and r["Dice_kidney"]["a_better"] == 2
    assert r["Dice_masses"]["mean_diff"] == pytest.approx(0.1 / 6)
    assert "A-B +0.033" in run.stdout


def test_refuses_what_is_not_a_result(tmp_path):
    bad = tmp_path / "notes.json"
    bad.write_text('{"summary": {}}')
    good = _result(tmp_path / "b.json", {"case_00001": 0.8})
    run = subprocess.run([sys.executable, str(SCRIPT), str(bad), str(good)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode != 0
    assert run.stderr.strip().count("\n") == 0 and "notes.json" in run.stderr and "not a demo_transfer" in run.stderr
    other = _result(tmp_path / "c.json", {"case_00002": 0.8})
    run = subprocess.run([sys.executable, str(SCRIPT), str(other), str(good)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode != 0 and "share no case" in run.stderr
