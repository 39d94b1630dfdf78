"""The workflow's own steps, run by its rules as ``python -m kits_plugins.workflow.jobs STEP ...``:

- ``train``: ``nnUNetv2_train`` for one fold, continuing that fold's own checkpoint (:mod:`.resume`);
- ``gather``: a stage's cross-validation predictions into one folder (:func:`.collect.gather_crossval`);
- ``merge``: the prediction shards into one folder (:func:`.collect.merge_parts`);
- ``report``: figures, ``summary.json`` and ``report.txt`` (:func:`.report.write_report`).

Bad input is one line on stderr and exit code 2, as for ``kits``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kits_plugins.errors import KitsInputError


def _env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return name, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kits_plugins.workflow.jobs", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    t = sub.add_parser("train", help="nnUNetv2_train for one fold, continuing its own checkpoint")
    t.add_argument("--fold-dir", type=Path, required=True, help="nnU-Net's fold folder of this training")
    t.add_argument("--plans", type=Path, required=True, help="the plans file the training reads")
    t.add_argument("--record", type=Path, required=True, help="JSON written when the training has finished")
    t.add_argument("--env", type=_env_pair, action="append", default=[], help="NAME=VALUE for the training")
    t.add_argument("command", nargs="+", help="nnUNetv2_train and its arguments (after --)")
    g = sub.add_parser("gather", help="a stage's cross-validation predictions into one folder")
    g.add_argument("--splits", type=Path, required=True, help="the stage's splits_final.json")
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("fold_dirs", type=Path, nargs="+")
    m = sub.add_parser("merge", help="prediction shards into one folder")
    m.add_argument("--test-dir", type=Path, required=True, help="KiTS-layout folder: every case needs a prediction")
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("parts", type=Path, nargs="+")
    r = sub.add_parser("report", help="figures, summary.json and report.txt of the run in the current folder")
    r.add_argument("--config-json", required=True, help="the checked configuration, as JSON text")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.step == "train":
        from kits_plugins.workflow.resume import train_fold

        return train_fold(args.command, dict(args.env), args.fold_dir, args.plans, args.record)
    if args.step == "gather":
        from kits_plugins.workflow.collect import gather_crossval

        n = gather_crossval(args.fold_dirs, args.splits, args.out)
        print(f"[workflow] {n} cross-validation prediction(s) of {len(args.fold_dirs)} folds in {args.out}")
        return 0
    if args.step == "merge":
        from kits_plugins.workflow.collect import merge_parts
        from kits_plugins.workflow.config import case_ids

        n = merge_parts(args.parts, case_ids(args.test_dir), args.out)
        print(f"[workflow] {n} prediction(s) of {len(args.parts)} shard(s) in {args.out}")
        return 0
    from kits_plugins.workflow.report import write_report

    summary = write_report(json.loads(args.config_json), Path.cwd())
    print(f"[workflow] summary.json, report.txt and {len(summary['figures'])} figure(s) written")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except KitsInputError as e:
        print(f"{args.step}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
