"""A training job that continues its own checkpoint (nnU-Net's ``--c``) and never someone else's.

A training killed by a time limit, a preemption or Ctrl-C leaves ``checkpoint_latest.pth`` (or, killed in the final
validation, ``checkpoint_final.pth``) in its fold folder; the rerun continues from it. The fold folder also keeps a
record of the inputs the checkpoint was trained on (the plans file's content and time, the nnUNetv2_train arguments
and the schedule variables): when they differ (the stage was re-derived or re-planned, another trainer schedule),
the old checkpoints are removed and the training starts over, so a rerun never continues a model of other data.
The workflow's own output of the job (``trained/<stage>/fold_<fold>.json``) is written only when nnU-Net has
finished, so Snakemake never deletes a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from kits_plugins.utilities.staging import atomic_write_bytes

INPUTS_FILE = "kits_workflow_inputs.json"
CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")


def file_identity(path: Path) -> dict:
    """Content hash and modification time of a file: a re-planned stage has a new plans file even when its content
    is the same (its preprocessed data may differ)."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"path": str(path.resolve()), "sha256": digest, "mtime_ns": path.stat().st_mtime_ns}


def training_inputs(plans: Path, argv: Sequence[str], env: Mapping[str, str]) -> dict:
    """What a checkpoint depends on: the plans file and the nnUNetv2_train arguments with the schedule variables.
    The executable's path and ``-device`` are left out: a moved environment or another device may continue."""
    args = list(argv[1:])
    if "-device" in args:
        i = args.index("-device")
        del args[i:i + 2]
    return {"plans": file_identity(plans), "args": args, "env": dict(sorted(env.items()))}


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def prepare_fold(fold_dir: Path, inputs: dict) -> bool:
    """True when ``fold_dir`` holds a checkpoint trained on ``inputs`` (continue it with ``--c``). Otherwise removes
    any checkpoint of other inputs, records ``inputs`` there and returns False (start a new training)."""
    found = [fold_dir / c for c in CHECKPOINTS if (fold_dir / c).is_file()]
    if found and _read_json(fold_dir / INPUTS_FILE) == inputs:
        return True
    for f in found:
        print(f"[workflow] {f.name} was trained on other inputs (or of unknown origin): removed, starting over")
        f.unlink()
    fold_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(fold_dir / INPUTS_FILE, json.dumps(inputs, indent=1).encode())
    return False


def display(argv: Sequence[str], env: Mapping[str, str]) -> str:
    """The command as a user would type it: ``KITS_EPOCHS=26 nnUNetv2_train ...``."""
    return " ".join([f"{k}={shlex.quote(v)}" for k, v in sorted(env.items())] + [shlex.join(argv)])


def run_forwarding_signals(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """Run a command; SIGTERM / SIGINT sent to this process (a cluster's time limit, Ctrl-C) go to it too, and its
    exit status is returned once it has ended."""
    proc = subprocess.Popen(list(argv), env={**os.environ, **env})

    def forward(signum: int, _frame: object) -> None:
        proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def train_fold(argv: Sequence[str], env: Mapping[str, str], fold_dir: Path, plans: Path, record: Path) -> int:
    """Run ``nnUNetv2_train`` for one fold, continuing this fold's own checkpoint; write ``record`` on success."""
    inputs = training_inputs(plans, argv, env)
    cont = prepare_fold(fold_dir, inputs)
    command = list(argv) + (["--c"] if cont else [])
    if cont:
        print(f"[workflow] continuing the checkpoint in {fold_dir} (nnU-Net's --c)")
    print(f"$ {display(command, env)}", flush=True)
    t0 = time.perf_counter()
    rc = run_forwarding_signals(command, env)
    if rc != 0:
        return rc
    final = fold_dir / "checkpoint_final.pth"
    if not final.is_file():
        print(f"[workflow] nnUNetv2_train exited 0 but wrote no {final}")
        return 1
    doc = {"command": display(command, env), "continued": cont, "fold_folder": str(fold_dir.resolve()),
           "checkpoint": str(final.resolve()), "wall_s": time.perf_counter() - t0, "inputs": inputs}
    atomic_write_bytes(record, json.dumps(doc, indent=1).encode())
    return 0
