"""`kits demo`: the whole cascade end to end on synthetic data, sized for a laptop CPU (the workflow with demo.yaml)."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from kits_plugins.errors import KitsInputError

TARGETS = {"Dice_kidney": 0.85, "Dice_masses": 0.5}


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    from kits_plugins.demo.pipeline import demo_defaults

    d = demo_defaults()
    parser.add_argument("--workdir", type=Path, default=Path(d["workdir"]), help="working folder (default: %(default)s)")
    parser.add_argument("--train-cases", type=int, default=d["synthetic"]["train_cases"],
                        help="synthetic training cases (default: %(default)s)")
    parser.add_argument("--test-cases", type=int, default=d["synthetic"]["test_cases"],
                        help="held-out synthetic test cases (default: %(default)s)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=d["device"])
    parser.add_argument("--seed", type=int, default=d["synthetic"]["seed"], help="data and ROI seed (default: %(default)s)")
    parser.add_argument("--iterations", type=int, default=d["iterations"],
                        help="training iterations per epoch (default: %(default)s)")
    parser.add_argument("--epochs-scale", type=float, default=1.0,
                        help="multiply every stage's number of epochs (e.g. 4 on a GPU)")
    parser.add_argument("--cores", type=int, default=None, help="cores for the jobs (default: all)")
    parser.add_argument("--fresh", action="store_true", help="delete the working folder and start over")


def print_outcome(summary: dict, since: float, wall_s: float) -> None:
    """The held-out metrics against the demo's targets, the steps, and Snakemake's own share of the wall time."""
    from kits_plugins.workflow.report import busy_seconds

    avg = summary.get("metrics", {}).get("average", {})
    for key, target in TARGETS.items():
        if key in avg:
            ok = "meets" if avg[key] >= target else "BELOW"
            print(f"[demo] held-out {key} = {avg[key]:.3f} ({ok} the target {target})")
    steps = summary.get("steps", [])
    print("[demo] per-step wall time / peak RSS (Snakemake's benchmarks):")
    for st in steps:
        tag = "" if st["started"] >= since else " (earlier run)"
        rss = "n/a" if st["peak_rss_mb"] is None else f"{st['peak_rss_mb']:.0f}"
        print(f"    {st['name']:<18} {st['wall_s']:7.1f} s  {rss:>7} MB{tag}")
    busy = busy_seconds(steps, since)
    print(f"[demo] this run: {wall_s:.1f} s, of which {busy:.1f} s with a step running; "
          f"Snakemake's own time {wall_s - busy:.1f} s")


def run_demo(args: argparse.Namespace) -> int:
    from kits_plugins.demo.pipeline import (
        MARKER,
        DemoOptions,
        default_cores,
        demo_config,
        demo_defaults,
        read_summary,
        run_demo_workflow,
    )

    options = DemoOptions(workdir=args.workdir, train_cases=args.train_cases, test_cases=args.test_cases,
                          device=args.device, seed=args.seed, iterations=args.iterations,
                          epochs_scale=args.epochs_scale)
    w = Path(args.workdir)
    if args.fresh and w.exists():
        if not (w / MARKER).exists():
            raise KitsInputError(f"{w}: refusing to delete it, it is not a kits demo folder (no {MARKER})")
        shutil.rmtree(w)
    since = time.time()
    rc, wall_s = run_demo_workflow(demo_config(demo_defaults(), options), args.cores or default_cores())
    if rc != 0:
        print(f"kits demo: the workflow stopped (Snakemake exit {rc}); logs in {w.resolve() / 'logs'}; "
              f"run kits demo again to continue")
        return 1
    summary = read_summary(w.resolve())
    print(f"\n[demo] finished; outputs in {w.resolve()}")
    print("[demo] summary.json, evaluation.csv, report.txt, figures/*.png")
    print_outcome(summary, since, wall_s)
    return 0
