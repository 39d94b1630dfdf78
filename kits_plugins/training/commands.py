"""`kits` subcommands of this stage (see kits_plugins.cli)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

EXT_TRAINER_DIR = Path(__file__).resolve().parent / "ext_trainers"


def trainer_path() -> Path:
    """Absolute path of the folder to export as ``nnUNet_extTrainer`` (it holds only the trainer shim)."""
    return EXT_TRAINER_DIR


def ext_trainer_paths(current: str | None) -> str:
    """The ``nnUNet_extTrainer`` value with the shim first, then the other folders of ``current`` (an existing
    value, ``os.pathsep``-separated, may be None): the package's trainers win a name clash, the user's stay found."""
    shim = str(trainer_path())
    rest = [p for p in (current or "").split(os.pathsep) if p and p != shim]
    return os.pathsep.join([shim, *rest])


def add_trainer_path_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "usage: export nnUNet_extTrainer=$(kits trainer-path)"


def run_trainer_path(args: argparse.Namespace) -> int:
    print(trainer_path())
    return 0
