"""Worker pools whose workers end with their parent: a SIGKILLed parent must not leave its workers running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kits_plugins.utilities.processes import worker_pool

# The parent: a pool of 2 workers (kind from argv[1]), each blocking in a task after writing its pid to argv[2].
PARENT_SCRIPT = textwrap.dedent("""
    import os, sys, time
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context
    from pathlib import Path

    from kits_plugins.utilities import processes


    def block(folder):
        Path(folder, str(os.getpid())).touch()
        time.sleep(120)


    if __name__ == "__main__":
        kind, folder = sys.argv[1], sys.argv[2]
        spawn = get_context("spawn")
        pool = {
            "worker_pool": lambda: processes.worker_pool(2),
            "plain": lambda: ProcessPoolExecutor(2, mp_context=spawn),
            "prctl_only": lambda: ProcessPoolExecutor(2, mp_context=spawn,
                                                      initializer=processes.set_parent_death_signal),
            "poll_only": lambda: ProcessPoolExecutor(2, mp_context=spawn, initializer=processes.watch_parent,
                                                     initargs=(os.getpid(),)),
        }[kind]()
        for _ in range(2):
            pool.submit(block, folder)
        time.sleep(300)
""")


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for a reaper counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return not stat.parent.parent.is_dir()  # no /proc (not Linux): os.kill is all we know


def _wait_for(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def _kill_parent_and_collect_workers(kind: str, folder: Path) -> list[int]:
    """Start the parent, wait until both workers block in their task, SIGKILL the parent; the worker pids."""
    repo = Path(__file__).resolve().parents[2]
    script = folder / "parent.py"
    script.write_text(PARENT_SCRIPT)
    pids_dir = folder / "pids"
    pids_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen([sys.executable, str(script), kind, str(pids_dir)], env=env)
    try:
        assert _wait_for(lambda: len(list(pids_dir.iterdir())) == 2, 60), "workers did not start"
    finally:
        parent.kill()
        parent.wait()
    return [int(p.name) for p in pids_dir.iterdir()]


def _cleanup(pids: list[int]) -> None:
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("kind", [
    "worker_pool",
    pytest.param("prctl_only", marks=pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux prctl")),
    "poll_only",
])
def test_workers_exit_when_parent_is_killed(tmp_path, kind):
    """worker_pool, and each of its two mechanisms alone, ends the blocked workers within a few seconds."""
    workers = _kill_parent_and_collect_workers(kind, tmp_path)
    try:
        assert _wait_for(lambda: not any(_alive(p) for p in workers), 5), f"workers still running: {workers}"
    finally:
        _cleanup(workers)


def test_plain_pool_workers_outlive_a_killed_parent(tmp_path):
    """The control: a plain spawned ProcessPoolExecutor leaves its blocked workers running (what worker_pool fixes)."""
    workers = _kill_parent_and_collect_workers("plain", tmp_path)
    try:
        time.sleep(2)
        assert all(_alive(p) for p in workers)
    finally:
        _cleanup(workers)


def test_worker_pool_results_in_order_from_spawned_workers():
    with worker_pool(2) as pool:
        assert list(pool.map(abs, range(-5, 5))) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
        assert pool.submit(os.getppid).result() == os.getpid()  # spawned by this process, not a forkserver
