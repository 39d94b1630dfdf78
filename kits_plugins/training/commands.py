"""`kits` subcommands of this stage (see kits_plugins.cli)."""

from __future__ import annotations

import argparse


def add_trainer_path_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run_trainer_path(args: argparse.Namespace) -> int:
    raise NotImplementedError("`kits trainer-path` is not implemented yet")
