"""`kits` subcommands of this stage (see kits_plugins.cli)."""

from __future__ import annotations

import argparse


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run_convert(args: argparse.Namespace) -> int:
    raise NotImplementedError("`kits convert` is not implemented yet")


def add_derive_stages_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run_derive_stages(args: argparse.Namespace) -> int:
    raise NotImplementedError("`kits derive-stages` is not implemented yet")
