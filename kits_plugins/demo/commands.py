"""`kits` subcommands of this stage (see kits_plugins.cli)."""

from __future__ import annotations

import argparse


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run_demo(args: argparse.Namespace) -> int:
    raise NotImplementedError("`kits demo` is not implemented yet")
