"""Gathering files of several jobs into one folder: a stage's cross-validation predictions (every fold's
``validation/``) and the prediction shards. Each is checked complete before the folder appears (staged, renamed),
and files are hardlinked where the file system allows (copied otherwise)."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

from kits_plugins.constants import FILE_ENDING
from kits_plugins.errors import KitsInputError
from kits_plugins.utilities.staging import make_temp_dir

FOLD_NAME = re.compile(r"^fold_(\d+)$")


def link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def publish(files: Iterable[Path], out: Path) -> int:
    """Put ``files`` (unique names) into a new folder ``out``, replacing an old one; returns how many."""
    staging = make_temp_dir(out)
    try:
        n = 0
        for f in files:
            link_or_copy(f, staging / f.name)
            n += 1
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return n


def crossval_files(fold_dirs: Sequence[Path], splits_file: Path) -> list[Path]:
    """Every fold's ``validation/<case>.nii.gz``, checked against the folds nnU-Net trained with: each fold must hold
    a prediction of each of its validation cases (one error naming the first missing), and together they cover
    every case once."""
    try:
        splits = json.loads(splits_file.read_text())
    except FileNotFoundError:
        raise KitsInputError(f"{splits_file}: splits not found (was the stage planned?)") from None
    files: dict[str, Path] = {}
    for fold_dir in fold_dirs:
        m = FOLD_NAME.match(fold_dir.name)
        if m is None or int(m.group(1)) >= len(splits):
            raise KitsInputError(f"{fold_dir}: not a cross-validation fold of {splits_file} ({len(splits)} folds)")
        validation = fold_dir / "validation"
        cases = splits[int(m.group(1))]["val"]
        missing = [c for c in cases if not (validation / f"{c}{FILE_ENDING}").is_file()]
        if missing:
            raise KitsInputError(f"{validation}: no prediction of {len(missing)} validation case(s), first "
                                 f"{missing[0]}{FILE_ENDING} (did the final validation run?)")
        for c in cases:
            if c in files:
                raise KitsInputError(f"{splits_file}: case {c} is in the validation set of two folds")
            files[c] = validation / f"{c}{FILE_ENDING}"
    return [files[c] for c in sorted(files)]


def gather_crossval(fold_dirs: Sequence[Path], splits_file: Path, out: Path) -> int:
    """The cross-validation predictions of one stage in one folder, as ``derive-stages --from-predictions`` and
    ``--masks-from`` read them."""
    return publish(crossval_files(fold_dirs, splits_file), out)


def part_files(parts: Sequence[Path], expected: Sequence[str]) -> list[Path]:
    """The case files of every prediction shard: each expected case exactly once (one error otherwise)."""
    files: dict[str, Path] = {}
    for part in parts:
        for f in sorted(part.glob(f"case_*{FILE_ENDING}")):
            case = f.name[: -len(FILE_ENDING)]
            if case in files:
                raise KitsInputError(f"{f}: case {case} was predicted by two shards ({files[case].parent.name})")
            files[case] = f
    missing = [c for c in expected if c not in files]
    if missing:
        raise KitsInputError(f"{len(missing)} test case(s) have no prediction in {len(parts)} shard(s), first {missing[0]}")
    return [files[c] for c in sorted(files)]


def merge_parts(parts: Sequence[Path], expected: Sequence[str], out: Path) -> int:
    """The shards' predictions in one folder for ``kits evaluate``."""
    return publish(part_files(parts, expected), out)
