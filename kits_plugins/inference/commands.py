"""`kits` subcommands of this stage (see kits_plugins.cli)."""

from __future__ import annotations

import argparse


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run_predict(args: argparse.Namespace) -> int:
    raise NotImplementedError("`kits predict` is not implemented yet")


def add_crop_rois_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run_crop_rois(args: argparse.Namespace) -> int:
    raise NotImplementedError("`kits crop-rois` is not implemented yet")


def add_paste_rois_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run_paste_rois(args: argparse.Namespace) -> int:
    raise NotImplementedError("`kits paste-rois` is not implemented yet")
