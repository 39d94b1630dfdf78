"""`kits demo`: the whole cascade end to end on synthetic data, sized for a laptop CPU."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from kits_plugins.demo.pipeline import MARKER, Demo, DemoSettings
from kits_plugins.errors import KitsInputError

TARGETS = {"Dice_kidney": 0.85, "Dice_masses": 0.5}


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    d = DemoSettings()
    parser.add_argument("--workdir", type=Path, default=d.workdir, help="working folder (default: %(default)s)")
    parser.add_argument("--train-cases", type=int, default=d.train_cases, help="synthetic training cases")
    parser.add_argument("--test-cases", type=int, default=d.test_cases, help="held-out synthetic test cases")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=d.device)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--iterations", type=int, default=d.iterations, help="training iterations per epoch")
    parser.add_argument("--epochs-scale", type=float, default=1.0,
                        help="multiply every stage's number of epochs (e.g. 4 on a GPU)")
    parser.add_argument("--fresh", action="store_true", help="delete the working folder and start over")


def run_demo(args: argparse.Namespace) -> int:
    s = DemoSettings(workdir=args.workdir, train_cases=args.train_cases, test_cases=args.test_cases,
                     seed=args.seed, device=args.device, iterations=args.iterations)
    s.epochs = {k: max(1, round(v * args.epochs_scale)) for k, v in s.epochs.items()}
    w = Path(s.workdir)
    if args.fresh and w.exists():
        if not (w / MARKER).exists():
            raise KitsInputError(f"{w}: refusing to delete it, it is not a kits demo folder (no {MARKER})")
        shutil.rmtree(w)
    summary = Demo(s).run()
    m = summary.get("metrics", {})
    avg = m.get("average", {})
    print(f"\n[demo] finished; outputs in {Path(s.workdir).resolve()}")
    print("[demo] summary.json, evaluation.csv, figures/*.png")
    for key, target in TARGETS.items():
        if key in avg:
            ok = "meets" if avg[key] >= target else "BELOW"
            print(f"[demo] held-out {key} = {avg[key]:.3f} ({ok} the target {target})")
    print("[demo] per-step wall time / peak RSS:")
    for st in summary["steps"]:
        tag = " (earlier run)" if st["skipped"] else ""
        print(f"    {st['name']:<14} {st['wall_s']:7.1f} s  {st['peak_rss_mb']:7.0f} MB{tag}")
    return 0
