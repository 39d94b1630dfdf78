"""Temporaries carry their owner; the next write into a folder removes those that killed runs left behind,
never a live writer's and never a file that is not ours."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from kits_plugins.utilities import staging
from kits_plugins.utilities.image_io import Geometry, write_image
from kits_plugins.utilities.staging import atomic_path

GEOMETRY = Geometry((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (4, 4, 4))

KILLED_WRITER = """
import sys, time
from kits_plugins.utilities.staging import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    open(tmp, "w").write("half")
    print(tmp, flush=True)
    time.sleep(60)
"""


def _killed_writer_temp(target) -> str:
    """The temporary a writer left when SIGKILLed in the middle of writing ``target``."""
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    tmp = proc.stdout.readline().strip()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert os.path.exists(tmp)
    return tmp


def test_temporary_of_a_killed_writer_is_removed_by_the_next_write_into_the_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(staging, "_cleaned", set())
    out = tmp_path / "out"
    left = _killed_writer_temp(out / "case_00001.nii.gz")
    assert staging.owner_tag().split("-")[0] in os.path.basename(left)  # the owner is in the name
    write_image(np.zeros(GEOMETRY.shape, np.uint8), GEOMETRY, out / "case_00002.nii.gz")
    assert not os.path.exists(left)
    assert sorted(p.name for p in out.iterdir()) == ["case_00002.nii.gz"]


def test_live_writers_old_ones_and_foreign_files(tmp_path):
    with atomic_path(tmp_path / "a.nii.gz") as mine:  # this process is alive: not stale
        open(mine, "w").write("x")
        assert staging.remove_stale(tmp_path) == []
    foreign = [tmp_path / ".bashrc.old", tmp_path / ".config.partial", tmp_path / ".x.host-1.abcdefgh.partial~"]
    legacy = tmp_path / ".case_00001.nii.gz.k2j4h5l6.partial.nii.gz"  # an older version's name, no owner
    other_host = tmp_path / ".case_00002.nii.gz.elsewhere-123.abcdefgh.partial"
    for p in [*foreign, legacy, other_host]:
        p.write_text("x")
    assert staging.remove_stale(tmp_path) == []  # young: could belong to a run still going somewhere
    day_ago = time.time() - staging.STALE_AFTER_S - 10
    for p in [*foreign, legacy, other_host]:
        os.utime(p, (day_ago, day_ago))
    assert sorted(staging.remove_stale(tmp_path)) == sorted([legacy, other_host])
    assert all(p.exists() for p in foreign)  # not our names: never touched


def test_staging_folder_of_a_killed_convert_is_removed_by_the_next_one(tmp_path, monkeypatch):
    monkeypatch.setattr(staging, "_cleaned", set())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    left = tmp_path / f".Dataset220_KiTS2023.{staging.owner_tag().rsplit('-', 1)[0]}-{pid}.abcdefgh.partial"
    (left / "imagesTr").mkdir(parents=True)
    made = staging.make_temp_dir(tmp_path / "Dataset220_KiTS2023")
    assert not left.exists() and made.exists() and made.stat().st_mode & 0o777 == staging.ordinary_mode(True)


def test_atomic_write_bytes_permissions_and_failure(tmp_path):
    import os

    from kits_plugins.utilities.staging import atomic_path, atomic_write_bytes

    atomic_write_bytes(tmp_path / "a.json", b"{}")
    assert (tmp_path / "a.json").read_bytes() == b"{}"
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "b.json") as tmp:
        open(tmp, "w").write("half")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
