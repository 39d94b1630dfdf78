"""``benchmarks/study_tables.py``: the README's study tables from a study's JSON."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "study_tables.py"
METRICS = ("Dice_kidney", "Dice_masses", "Dice_tumor", "SD_kidney", "SD_masses", "SD_tumor")


def _result() -> dict:
    mean = dict(zip(METRICS, (0.78125, 0.2, 0.0, 0.5, 0.1, 0.0)))
    system = {"voxel_passes": 350355456, "train_wall_s": 838.6, "predict_wall_s": 47.4, "mean": mean}
    comparisons = [{"a": "cascade", "b": "stock", "metric": m, "mean_diff": 0.0 if m.endswith("tumor") else 0.25,
                    "ci95": [-0.0625, 0.5], "p_wilcoxon": None if m.endswith("tumor") else 0.0078125} for m in METRICS]
    return {"settings": {"split": {"test": ["a", "b", "c"]}}, "systems": {"cascade": system, "stock": system},
            "comparisons": comparisons}


def test_tables_rows_and_intervals(tmp_path):
    spec = importlib.util.spec_from_file_location("study_tables", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    lines = module.tables(_result()).splitlines()
    assert lines[2] == "| cascade | 3.504e+08 | 839 / 47 | 0.781 | 0.200 | 0.000 | 0.500 | 0.100 | 0.000 |"
    assert lines[5] == "| difference (3 test cases) | Dice kidney | Dice masses | Dice tumor | SD kidney | SD masses | SD tumor |"
    assert lines[7].startswith("| cascade − stock | +0.250 [-0.062, +0.500] p=0.008 |")
    assert lines[7].count("p=n/a") == 2 and len(lines) == 8


def test_unreadable_json_is_one_line(tmp_path):
    bad = tmp_path / "study.json"
    bad.write_text("{")
    run = subprocess.run([sys.executable, str(SCRIPT), str(bad)], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and run.stderr.startswith(f"study_tables: {bad}:")
    assert run.stderr.strip().count("\n") == 0
