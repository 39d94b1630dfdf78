"""`kits` subcommands of this stage (see kits_plugins.cli)."""

from __future__ import annotations

import argparse


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run_plan(args: argparse.Namespace) -> int:
    raise NotImplementedError("`kits plan` is not implemented yet")
