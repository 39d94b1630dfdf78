"""`kits` subcommands of this stage (see kits_plugins.cli)."""

from __future__ import annotations

import argparse
from pathlib import Path

from kits_plugins.utilities.arguments import positive_int


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pred", type=Path, help="folder of predictions case_XXXXX.nii.gz")
    parser.add_argument(
        "ref",
        type=Path,
        help="folder of references: case_XXXXX.nii.gz, or the KiTS layout case_XXXXX/segmentation.nii.gz",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="CSV to write (default: PRED/evaluation.csv); a JSON with the same name (.json) is written next to it",
    )
    parser.add_argument("-np", "--num-processes", type=positive_int, default=2, help="cases evaluated in parallel (default 2)")
    parser.add_argument(
        "--only-predicted",
        action="store_true",
        help="evaluate only the reference cases that have a prediction (default: every reference case needs one)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no table")


def run_evaluate(args: argparse.Namespace) -> int:
    from kits_plugins.evaluation.evaluate import evaluate_folders, format_table, json_path_for

    out_csv = args.output if args.output is not None else args.pred / "evaluation.csv"
    result = evaluate_folders(
        args.pred,
        args.ref,
        out_csv=out_csv,
        num_processes=args.num_processes,
        progress=not args.quiet,
        only_predicted=args.only_predicted,
    )
    if not args.quiet:
        print(format_table(result))
        print(f"wrote {out_csv} and {json_path_for(out_csv)}")
    return 0
