"""Process pools whose workers end with their parent.

A ``ProcessPoolExecutor`` worker is not told when its parent is SIGKILLed (or OOM-killed): it finishes, or blocks
in, its task and then waits on a queue nobody writes to, so a killed ``kits evaluate`` / ``kits convert`` leaves
its workers running. :func:`worker_pool` gives spawned workers an initializer that ends them with the parent:

- Linux: ``prctl(PR_SET_PDEATHSIG, SIGTERM)``, the kernel signals the worker as soon as the parent dies;
- everywhere: a daemon thread that polls ``os.getppid()`` every ``PARENT_POLL_S`` seconds and calls ``os._exit``
  once the worker has been re-parented.

Nothing else changes: spawn start method, same results in the same order. The death signal follows the *thread*
that started the worker; the pools here are created and used by one thread, inside a ``with`` block.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

PARENT_POLL_S = 0.5
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
ORPHAN_EXIT_CODE = 1


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent dies; False where prctl is unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def watch_parent(parent_pid: int, interval_s: float = PARENT_POLL_S) -> threading.Thread:
    """Start a daemon thread that ends this process (``os._exit``) once its parent is no longer ``parent_pid``."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        os._exit(ORPHAN_EXIT_CODE)

    thread = threading.Thread(target=watch, name="kits-parent-watch", daemon=True)
    thread.start()
    return thread


def exit_with_parent(parent_pid: int) -> None:
    """Worker initializer: end this worker when ``parent_pid`` (the pool's process) dies, by either mechanism."""
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(ORPHAN_EXIT_CODE)
    watch_parent(parent_pid)


def worker_pool(max_workers: int) -> ProcessPoolExecutor:
    """A ``ProcessPoolExecutor`` of ``max_workers`` spawned workers that exit when this process dies."""
    return ProcessPoolExecutor(max_workers=max_workers, mp_context=get_context("spawn"),
                               initializer=exit_with_parent, initargs=(os.getpid(),))
