"""``kits export-model`` / ``install-model`` arguments: help stays light, and the model-choice flags are the ones
``kits predict`` has (one function adds them to both)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kits_plugins import cli

HELP_PROBE = """
import sys
from kits_plugins.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("HEAVY:" + ",".join(m for m in ("torch", "nnunetv2", "SimpleITK", "platformdirs") if m in sys.modules))
"""


@pytest.mark.parametrize("command", ["export-model", "install-model"])
def test_help_imports_nothing_heavy(command):
    out = subprocess.run([sys.executable, "-c", HELP_PROBE, command, "--help"], capture_output=True, text=True,
                         check=True)
    assert "usage: kits " + command in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "HEAVY:", out.stdout


def test_export_takes_predicts_model_choice_flags():
    parser = cli.build_parser()
    flags = ["--results", "r", "-p", "P", "-chk", "c.pth", "-f", "0", "all", "--coarse-trainer", "T1",
             "--fine-config", "C2", "--masses-trainer", "T3"]
    export = vars(parser.parse_args(["export-model", "out.zip", *flags]))
    predict = vars(parser.parse_args(["predict", "-i", "x", "-o", "y", *flags]))
    keys = ("results", "plans", "checkpoint", "folds", "coarse_trainer", "coarse_config", "fine_trainer",
            "fine_config", "masses_trainer", "masses_config")
    assert {k: export[k] for k in keys} == {k: predict[k] for k in keys}
    assert export["folds"] == [0, "all"] and export["plans"] == "P" and export["coarse_config"] is None
    assert predict["model"] is None and "model" not in export
