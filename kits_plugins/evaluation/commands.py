"""`kits` subcommands of this stage (see kits_plugins.cli)."""

from __future__ import annotations

import argparse


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run_evaluate(args: argparse.Namespace) -> int:
    raise NotImplementedError("`kits evaluate` is not implemented yet")
