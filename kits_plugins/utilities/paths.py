"""Names that become paths, and outputs that must not land on inputs.

Case ids and crop ids come from file names and from ``crops.json``, a file users exchange with their
predictions; every one of them is checked here against one pattern before it becomes part of a path, and
every output path is checked to resolve inside its output folder (symbolic links followed). Commands also
check, before any work, that no output would replace one of their inputs (same path, same file through a
hardlink or a link).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from kits_plugins.errors import KitsInputError

#: A case or crop id: a plain file name stem, no separators, no leading dot (so never ``.`` or ``..``).
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def check_id(value: object, source: str | os.PathLike, kind: str = "case id") -> str:
    """``value`` if it is a plain identifier (:data:`ID_PATTERN`), else a KitsInputError naming ``source``."""
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise KitsInputError(
            f"{source}: {kind} {value!r} is not a plain name (letters, digits, '.', '_', '-', starting with a "
            "letter or digit; no path separators)"
        )
    return value


def child_path(folder: str | os.PathLike, name: str, source: str | os.PathLike) -> Path:
    """``folder/name``, refused (naming ``source``, the file that carried the name) unless it resolves inside
    ``folder``: ``..``, absolute names, separators and links pointing elsewhere are all caught."""
    folder = Path(folder)
    if not name or "\x00" in name or os.sep in name or (os.altsep and os.altsep in name) or name in (".", ".."):
        raise KitsInputError(f"{source}: {name!r} is not a plain file name")
    path = folder / name
    root = folder.resolve()
    if not path.resolve().is_relative_to(root):
        raise KitsInputError(f"{source}: {path} would resolve outside {root} ({path.resolve()})")
    return path


def _identity(path: Path) -> tuple[str, tuple[int, int] | None]:
    """Resolved path and (device, inode) of ``path`` (None when it does not exist)."""
    try:
        st = os.stat(path)
        inode = (st.st_dev, st.st_ino)
    except OSError:
        inode = None
    return str(path.resolve()), inode


def refuse_overwriting_inputs(
    outputs: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike], command: str
) -> None:
    """KitsInputError if any output is one of the inputs: the same path (links followed) or the same file
    through a hardlink. Called before any work, so a refused run writes nothing."""
    by_path: dict[str, Path] = {}
    by_inode: dict[tuple[int, int], Path] = {}
    for p in inputs:
        p = Path(p)
        resolved, inode = _identity(p)
        by_path.setdefault(resolved, p)
        if inode is not None:
            by_inode.setdefault(inode, p)
    for out in outputs:
        out = Path(out)
        resolved, inode = _identity(out)
        hit = by_path.get(resolved) or (by_inode.get(inode) if inode is not None else None)
        if hit is not None:
            raise KitsInputError(f"{out}: {command} would write over its input {hit}; choose another output")
