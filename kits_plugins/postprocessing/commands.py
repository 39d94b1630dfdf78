"""`kits` subcommands of this stage (see kits_plugins.cli)."""

from __future__ import annotations

import argparse


def add_postprocess_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run_postprocess(args: argparse.Namespace) -> int:
    raise NotImplementedError("`kits postprocess` is not implemented yet")
