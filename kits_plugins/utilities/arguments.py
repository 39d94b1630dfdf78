"""argparse types shared by the ``kits`` subcommands: bad values fail at parse time with argparse's
one-line usage error (exit code 2), before any model or image is loaded."""

from __future__ import annotations

import argparse
import math


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (margins in mm, volumes in mm3)."""
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative (must be >= 0)")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (spacings in mm)."""
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def share(text: str) -> float:
    """A share (of crops, of samples): a finite number in [0, 1]."""
    value = non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"{text!r} is above 1 (a share lies in [0, 1])")
    return value


def step_fraction(text: str) -> float:
    """A sliding-window step as a fraction of the patch: in (0, 1], as nnU-Net's ``-step_size``."""
    value = _number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not in (0, 1]")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (process counts, case counts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (retry counts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative (must be >= 0)")
    return value


def fold(text: str) -> int | str:
    """An nnU-Net fold: a non-negative integer or ``all``."""
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fold (a number >= 0 or 'all')")
    return value


def dataset_id(text: str) -> int:
    """An nnU-Net dataset id: an integer in 1..999 (it names the folder ``DatasetXXX_Name``)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 999:
        raise argparse.ArgumentTypeError(f"{text!r} is not a dataset id (an integer 1-999)")
    return value
