"""`kits` subcommands of this stage (see kits_plugins.cli)."""

from __future__ import annotations

import argparse


def add_synth_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run_synth(args: argparse.Namespace) -> int:
    raise NotImplementedError("`kits synth` is not implemented yet")
