"""The ``kits`` command: one subcommand per pipeline stage.

Each subcommand lives in its stage's ``commands`` module, which exposes
``add_<name>_arguments(parser)`` and ``run_<name>(args) -> int``; modules are imported only when their
subcommand runs, so ``kits --help`` stays fast and does not import torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from kits_plugins import __version__
from kits_plugins.errors import KitsInputError

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("kits_plugins.synthetic.commands", "make synthetic CT-like KiTS23 cases (procedural or from label maps)"),
    "convert": ("kits_plugins.dataset_conversion.commands", "convert the KiTS23 layout into nnU-Net raw Dataset220"),
    "derive-stages": ("kits_plugins.dataset_conversion.commands", "derive the stage datasets 221/222/223"),
    "plan": ("kits_plugins.planning.commands", "fingerprint, plan (target spacing) and preprocess the stages"),
    "trainer-path": ("kits_plugins.training.commands", "print the folder to export as nnUNet_extTrainer"),
    "predict": ("kits_plugins.inference.commands", "run the cascade: raw CT -> KiTS label map"),
    "crop-rois": ("kits_plugins.inference.commands", "crop kidney ROIs from CT using a kidney mask (stage-by-stage use)"),
    "paste-rois": ("kits_plugins.inference.commands", "paste per-ROI predictions back into full-size label maps"),
    "postprocess": ("kits_plugins.postprocessing.commands", "remove small components and lesions outside the kidneys"),
    "statistics": ("kits_plugins.statistics.commands", "per-kidney and per-lesion measurements of label maps (ml, mm, HU)"),
    "export-model": ("kits_plugins.models.commands", "pack a trained cascade into one archive to share"),
    "install-model": ("kits_plugins.models.commands", "verify and unpack a model archive for kits predict -m"),
    "evaluate": ("kits_plugins.evaluation.commands", "KiTS23 HEC Dice and Surface Dice, as the challenge computes them"),
    "workflow": ("kits_plugins.workflow.commands", "run the whole cascade as a Snakemake workflow (laptop or cluster)"),
    "workflow-path": ("kits_plugins.workflow.commands", "print the workflow's Snakefile (snakemake -s ...)"),
    "demo": ("kits_plugins.demo.commands", "end-to-end demo on synthetic data (CPU, minutes)"),
}


def _funcs(name: str):
    module = importlib.import_module(SUBCOMMANDS[name][0])
    attr = name.replace("-", "_")
    return getattr(module, f"add_{attr}_arguments"), getattr(module, f"run_{attr}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kits", description="Coarse-to-fine nnU-Net v2 cascade for KiTS23 (kidney, tumor, cyst)."
    )
    parser.add_argument("--version", action="version", version=f"kits-cascade {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments, _ = _funcs(name)
        add_arguments(p)
    return parser


#: subcommands whose arguments after ``--`` go to another program unchanged (``args.passthrough``)
PASSTHROUGH = ("workflow",)

#: environment variables read as integers by nnU-Net (at import time) or by this package
INTEGER_ENVIRONMENT = ("nnUNet_def_n_proc", "nnUNet_n_proc_DA")


def check_environment() -> None:
    """Integer environment variables must parse before nnU-Net is imported (it would raise a bare ValueError)."""
    for name in INTEGER_ENVIRONMENT:
        raw = os.environ.get(name)
        if raw is None:
            continue
        try:
            value = int(raw)
        except ValueError:
            value = -1
        if value < (0 if name == "nnUNet_n_proc_DA" else 1):
            raise KitsInputError(f"environment variable {name}={raw!r}: expected a positive integer")


def split_passthrough(argv: list[str]) -> tuple[list[str], list[str]]:
    """``kits workflow ... -- ARGS``: the arguments before the first ``--`` and those after (for another program);
    other commands keep ``--`` for argparse."""
    if argv and argv[0] in PASSTHROUGH and "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    own, passthrough = split_passthrough(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(own)
    if passthrough:
        args.passthrough = passthrough
    if not args.command:
        parser.print_help()
        return 2
    try:
        check_environment()
        _, run = _funcs(args.command)
        return int(run(args) or 0)
    except KitsInputError as e:
        print(f"kits {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # permissions, full disk, missing folders: one line naming the file
        if os.environ.get("KITS_TRACEBACK"):
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"kits {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except NotImplementedError as e:
        print(f"kits {args.command}: not built yet: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"kits {args.command}: interrupted", file=sys.stderr)
        return 130

if __name__ == "__main__":
    sys.exit(main())
