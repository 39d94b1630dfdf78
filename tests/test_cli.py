"""The ``kits`` entry point: bad arguments, environment and file-system problems end in one line, exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kits_plugins import cli
from kits_plugins.cli import main


def _run(argv, capsys) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["predict", "-i", "x", "-o", "y", "-f", "bogus"], "argument -f/--folds: 'bogus' is not a fold"),
        (["predict", "-i", "x", "-o", "y", "--step-size", "0"], "argument -step_size/--step-size: '0' is not in (0, 1]"),
        (["predict", "-i", "x", "-o", "y", "--step-size", "1.5"], "is not in (0, 1]"),
        (["predict", "-i", "x", "-o", "y", "--margin-mm", "-5"], "argument --margin-mm: '-5' is negative"),
        (["crop-rois", "-i", "x", "-o", "y", "--mask", "m", "--margin-mm", "nan"], "is not a finite number"),
        (["derive-stages", "--jitter-mm", "-1"], "is negative"),
        (["convert", "k", "-np", "0"], "must be >= 1"),
        (["convert", "k", "-d", "1000"], "is not a dataset id"),
        (["evaluate", "p", "r", "-np", "x"], "is not an integer"),
        (["postprocess", "a", "b", "--min-cyst-mm3", "-1"], "is negative"),
    ],
)
def test_bad_arguments_fail_at_parse_time(argv, message, capsys):
    rc, err = _run(argv, capsys)
    assert rc == 2 and message in err


def test_bad_integer_environment_is_one_line_naming_the_variable(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("nnUNet_def_n_proc", "abc")
    rc, err = _run(["evaluate", str(tmp_path), str(tmp_path)], capsys)
    assert rc == 2
    assert err.strip() == "kits evaluate: error: environment variable nnUNet_def_n_proc='abc': expected a positive integer"


def test_version_and_help_do_not_read_the_environment():
    env = {"nnUNet_def_n_proc": "abc", "PATH": "/usr/bin:/bin"}
    for argv in (["--version"], ["convert", "--help"], ["derive-stages", "--help"]):
        out = subprocess.run([sys.executable, "-m", "kits_plugins.cli", *argv], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr


def test_os_errors_become_one_line(monkeypatch, capsys):
    def refuse(args):
        raise PermissionError(13, "Permission denied", "/data/out/case_00001.nii.gz")

    original = cli._funcs
    monkeypatch.setattr(cli, "_funcs", lambda name: (original(name)[0], refuse))
    rc, err = _run(["evaluate", "p", "r"], capsys)
    assert rc == 2
    assert err.strip() == "kits evaluate: error: /data/out/case_00001.nii.gz: Permission denied"


HEAVY = ("torch", "nnunetv2", "SimpleITK", "snakemake")
HELP_PROBE = """
import sys
from kits_plugins.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("HEAVY:" + ",".join(m for m in {heavy!r} if m in sys.modules))
"""


@pytest.mark.parametrize("argv", [["--help"], ["predict", "--help"], ["postprocess", "--help"], ["demo", "--help"],
                                  ["workflow", "--help"]])
def test_help_imports_neither_torch_nor_nnunet_nor_simpleitk_nor_snakemake(argv):
    out = subprocess.run([sys.executable, "-c", HELP_PROBE.format(heavy=HEAVY), *argv], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "HEAVY:", out.stdout  # every subcommand's parser is built


def test_predict_accepts_nnunet_spellings_and_dashed_aliases():
    parser = cli.build_parser()
    nnunet = parser.parse_args(["predict", "-i", "x", "-o", "y", "-f", "0", "1", "-device", "cuda", "--disable_tta",
                                "-step_size", "0.7", "--save_probabilities", "-chk", "checkpoint_best.pth"])
    dashed = parser.parse_args(["predict", "-i", "x", "-o", "y", "--folds", "0", "1", "--device", "cuda",
                                "--disable-tta", "--step-size", "0.7", "--save-probabilities", "--checkpoint",
                                "checkpoint_best.pth"])
    assert vars(nnunet) == vars(dashed)
    assert (nnunet.folds, nnunet.device, nnunet.disable_tta, nnunet.step_size, nnunet.save_probabilities,
            nnunet.checkpoint) == ([0, 1], "cuda", True, 0.7, True, "checkpoint_best.pth")


def test_workflow_arguments_after_double_dash_go_to_snakemake():
    assert cli.split_passthrough(["workflow", "c.yaml", "-n", "--", "--config", "a=1", "--", "x"]) == (
        ["workflow", "c.yaml", "-n"], ["--config", "a=1", "--", "x"])
    assert cli.split_passthrough(["evaluate", "--", "-p", "r"]) == (["evaluate", "--", "-p", "r"], [])  # argparse's
    args = cli.build_parser().parse_args(["workflow", "c.yaml", "--cores", "4"])
    assert args.passthrough == [] and args.cores == "4" and not args.dry_run
