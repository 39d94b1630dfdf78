"""The end-to-end demo: the workflow (kits_plugins/workflow) with the shipped ``demo.yaml``, on local cores.

``kits demo`` writes the demo's configuration (``demo.yaml`` with the command line's changes) to
``WORKDIR/demo_config.yaml`` and runs Snakemake in ``WORKDIR``: synthetic cases -> convert -> stages -> plan ->
train -> predict -> evaluate -> report, each job the ``kits`` / ``nnUNetv2_train`` command a user would type.
Snakemake skips finished jobs on a rerun (and redoes the ones whose settings changed); ``--fresh`` starts over.
Per-step wall time and peak RSS come from Snakemake's benchmark files (``summary.json``).
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from kits_plugins.utilities.staging import atomic_write_bytes

MARKER = ".kits-demo"
CONFIG_NAME = "demo_config.yaml"


def demo_defaults() -> dict:
    """The shipped ``demo.yaml``: the demo's data, schedule and resources."""
    from kits_plugins.workflow.config import load_yaml, shipped_config

    return load_yaml(shipped_config("demo.yaml"))


@dataclass
class DemoOptions:
    """What ``kits demo``'s command line changes in ``demo.yaml``."""

    workdir: Path
    train_cases: int
    test_cases: int
    device: str
    seed: int
    iterations: int
    epochs_scale: float = 1.0


def demo_config(defaults: dict, o: DemoOptions) -> dict:
    """``demo.yaml`` with the options applied; every path absolute, inside the working folder."""
    c = copy.deepcopy(defaults)
    w = Path(o.workdir).resolve()
    c.update(workdir=str(w), kits_dir=str(w / "kits_train"), test_dir=str(w / "kits_test"), device=o.device,
             iterations=o.iterations)
    c["synthetic"].update(train_cases=o.train_cases, test_cases=o.test_cases, seed=o.seed)
    c["derive"]["seed"] = o.seed
    c["epochs"] = {k: max(1, round(v * o.epochs_scale)) for k, v in c["epochs"].items()}
    return c


def write_demo_config(config: dict, workdir: Path) -> Path:
    """The demo's configuration as ``WORKDIR/demo_config.yaml`` (rewritten each run: Snakemake reads it)."""
    import yaml

    path = workdir / CONFIG_NAME
    atomic_write_bytes(path, yaml.safe_dump(config, sort_keys=False).encode())
    return path


def run_demo_workflow(config: dict, cores: int) -> tuple[int, float]:
    """Run the workflow for ``config`` in its working folder; returns Snakemake's exit status and wall time."""
    from kits_plugins.workflow.commands import prepare_run, run_snakemake, snakemake_argv
    from kits_plugins.workflow.config import check_config

    check_config(config)  # one-line errors before Snakemake starts
    w = Path(config["workdir"])
    w.mkdir(parents=True, exist_ok=True)
    (w / MARKER).write_text("kits demo working directory\n")
    extra = ["--resources", "gpu=1"] if config["device"] == "cuda" else []  # one GPU: one GPU job at a time
    config_file = write_demo_config(config, w)
    prepare_run(w, config_file, [], cwd=w)
    argv = snakemake_argv(config_file, cores=str(cores), extra=extra)
    t0 = time.perf_counter()
    rc = run_snakemake(argv, cwd=w, env={"nnUNet_compile": "false"})
    return rc, time.perf_counter() - t0


def read_summary(workdir: Path) -> dict:
    path = workdir / "summary.json"
    return json.loads(path.read_text()) if path.exists() else {}


def default_cores() -> int:
    return os.cpu_count() or 1
