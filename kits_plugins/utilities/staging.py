"""Names of temporary files and folders that become outputs by rename, and the cleanup of ones left behind.

Every output is first written under a hidden name in its destination folder and renamed into place when
complete (``image_io.atomic_path``, staged datasets, synthetic cases), so an interrupted run never leaves a
half-written output. A run killed outright (SIGKILL, out of memory, a cluster's time limit) still leaves its
hidden temporary behind. Temporary names therefore carry their owner (host and process id), and the next
run that writes into the same folder removes those whose owner is gone: a process on this host that no
longer exists, or any temporary older than :data:`STALE_AFTER_S` (another host's, or an older version's
without an owner). A live concurrent writer's temporaries are never touched.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STALE_AFTER_S = 24 * 3600
_RANDOM = r"[a-z0-9_]{8}"  # tempfile's random part
#: ``.<name>.<host>-<pid>.<random>.partial[.ext]`` / ``...old``; host has no dots (see :func:`owner_tag`)
_OWNED = re.compile(rf"^\..+\.(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)\.{_RANDOM}\.(?:partial|old)(?:\..*)?$")
#: names of earlier versions, without an owner: ``.<name>.<random>.partial[.ext]``, ``.<name>.partial-<random>``
_LEGACY = re.compile(rf"^\..+\.(?:{_RANDOM}\.partial(?:\..*)?|(?:partial|old)-{_RANDOM})$")
_cleaned: set[str] = set()
logger = logging.getLogger(__name__)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0]) or "host"


def owner_tag() -> str:
    """``<host>-<pid>`` of this process, as it appears in temporary names."""
    return f"{_host()}-{os.getpid()}"


def current_umask() -> int:
    """The process umask, read without changing it where Linux reports it (``os.umask`` sets it, briefly)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def ordinary_mode(directory: bool) -> int:
    """Permissions ``open`` / ``mkdir`` give under the umask (``mkstemp`` / ``mkdtemp`` give 0600 / 0700)."""
    return (0o777 if directory else 0o666) & ~current_umask()


def make_temp_dir(target: str | os.PathLike, suffix: str = ".partial") -> Path:
    """A hidden folder next to ``target`` that will be renamed to it (or, with ``.old``, holds the replaced one),
    with ``mkdir``'s permissions; special bits inherited from the parent (setgid of a group-shared folder) kept.
    Stale temporaries in that parent are removed first (:func:`remove_stale_once`)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_once(target.parent)
    folder = Path(tempfile.mkdtemp(prefix=temp_prefix(target.name), suffix=suffix, dir=target.parent))
    special = stat.S_IMODE(folder.stat().st_mode) & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX)
    os.chmod(folder, special | ordinary_mode(directory=True))
    return folder


def temp_prefix(name: str) -> str:
    """Prefix for ``tempfile.mkstemp`` / ``mkdtemp`` of a temporary that will become ``name``; use it with the
    suffix ``.partial`` (or ``.old`` for a replaced output awaiting deletion)."""
    return f".{name}.{owner_tag()}."


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` exists on this host (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def is_stale(path: Path, now: float | None = None) -> bool:
    """A temporary of ours left by a process that is gone (same host), or older than :data:`STALE_AFTER_S`."""
    owned = _OWNED.match(path.name)
    if owned is None and not _LEGACY.match(path.name):
        return False
    try:
        age = (time.time() if now is None else now) - path.lstat().st_mtime
    except FileNotFoundError:
        return False
    if age > STALE_AFTER_S:
        return True
    return owned is not None and owned["host"] == _host() and not pid_alive(int(owned["pid"]))


def remove_stale(folder: str | os.PathLike) -> list[Path]:
    """Remove the stale temporaries directly inside ``folder`` (files and folders); returns what was removed."""
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = [folder / e.name for e in os.scandir(folder) if e.name.startswith(".")]
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for path in entries:
        if not is_stale(path):
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            continue  # another run cleaned it first
        removed.append(path)
    if removed:
        logger.warning("removed %d temporary file(s) left by an interrupted run in %s (%s%s)", len(removed), folder,
                       removed[0].name, ", ..." if len(removed) > 1 else "")
    return removed


def remove_stale_once(folder: str | os.PathLike) -> None:
    """:func:`remove_stale` the first time this process writes into ``folder`` (one scan per folder)."""
    key = os.path.abspath(folder)
    if key not in _cleaned:
        _cleaned.add(key)
        remove_stale(folder)


@contextmanager
def atomic_path(path: str | os.PathLike, keep_suffix: bool = False) -> Iterator[str]:
    """Yield a temporary file name next to ``path``; on success give it ordinary permissions
    (0666 & ~umask; mkstemp makes 0600) and rename it to ``path``, on failure remove it. Readers never see a
    partial file. ``keep_suffix`` keeps ``path``'s extensions (writers that choose the format by extension).
    The temporary's name carries its owner, and the first write into a folder removes the temporaries that
    killed runs left there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_once(path.parent)
    suffix = ".partial" + ("".join(path.suffixes) if keep_suffix else "")
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, ordinary_mode(directory=False))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary name (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
