"""`kits` subcommands of this stage (see kits_plugins.cli)."""

from __future__ import annotations

import argparse
import os

from kits_plugins.constants import DEFAULT_MARGIN_MM, DEFAULT_MIN_ROI_VOLUME_MM3, RAW_DATASET_ID
from kits_plugins.utilities.arguments import dataset_id, non_negative_float, positive_int, share


def _processes(value: int | None) -> int:
    """``-np`` or ``$nnUNet_def_n_proc`` (checked by ``kits`` before any command runs) or 1; read at run time so
    that building the parser (``kits --help``, ``--version``) never reads the environment."""
    return value if value is not None else int(os.environ.get("nnUNet_def_n_proc", "1"))


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--raw", default=None, metavar="DIR", help="nnU-Net raw folder (default: $nnUNet_raw)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing datasets")
    parser.add_argument(
        "-np", "--num-processes", dest="num_processes", type=positive_int, default=None,
        help="worker processes (default: $nnUNet_def_n_proc or 1)",
    )


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kits_dir", metavar="KITS_DIR", help="kits23 layout: case_XXXXX/imaging.nii.gz + segmentation.nii.gz")
    parser.add_argument("-d", "--dataset-id", type=dataset_id, default=RAW_DATASET_ID, help="nnU-Net dataset id (default 220)")
    parser.add_argument("--skip-invalid", action="store_true", help="convert the valid cases and list the others")
    _add_common(parser)


def run_convert(args: argparse.Namespace) -> int:
    from kits_plugins.dataset_conversion.convert_kits23 import convert_kits23

    target, skipped = convert_kits23(
        args.kits_dir, args.dataset_id, args.raw, args.overwrite, args.skip_invalid, _processes(args.num_processes)
    )
    for c in skipped:
        print(f"skipped {c.error}")
    print(f"wrote {target}" + (f" ({len(skipped)} case(s) skipped)" if skipped else ""))
    return 0


def add_derive_stages_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-d", "--dataset-id", type=dataset_id, default=RAW_DATASET_ID, help="source dataset id (default 220)")
    parser.add_argument("--margin-mm", type=non_negative_float, default=None,
                        help=f"ROI margin around each kidney (mm, default {DEFAULT_MARGIN_MM:g})")
    parser.add_argument(
        "--jitter-mm", type=non_negative_float, default=None,
        help="extra margin per side, uniform in [0, J] mm, for training crops (default 10 from ground truth, "
        "0 with --from-predictions)",
    )
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the jitter, truncation and extension (per case, order-independent; default 12345)")
    parser.add_argument(
        "--min-volume-mm3", type=non_negative_float, default=None,
        help=f"kidney components below this volume get no ROI of their own (the largest always does; default "
        f"{DEFAULT_MIN_ROI_VOLUME_MM3:g})",
    )
    parser.add_argument(
        "--truncate-share", type=share, default=None, metavar="P",
        help="share of the ROIs cut on one face into the kidney, as a coarse under-segmentation would (default 0.15 "
        "from ground truth, 0 with --from-predictions; 0 keeps every ROI whole)",
    )
    parser.add_argument(
        "--truncate-max-mm", type=non_negative_float, default=None, metavar="MM",
        help="how far a truncated ROI cuts into the kidney at most (uniform in whole voxels, default 15)",
    )
    parser.add_argument(
        "--extend-share", type=share, default=None, metavar="P",
        help="share of the whole ROIs grown on one face past the margin, as when a coarse model merges a neighbouring "
        "organ into the kidney's component (default 0)",
    )
    parser.add_argument(
        "--extend-max-mm", type=non_negative_float, default=None, metavar="MM",
        help="how far an extended ROI reaches past its margin at most (uniform in whole voxels, default 60)",
    )
    parser.add_argument(
        "--from-predictions", default=None, metavar="DIR",
        help="coarse predictions case_XXXXX.nii.gz (binary or KiTS labels, e.g. 5-fold cross-validation) giving "
        "the ROIs and 223's mask channel; labels still come from the ground truth; ROIs with no ground-truth "
        "kidney (coarse false positives) are kept with empty labels",
    )
    parser.add_argument(
        "--drop-false-positives", action="store_true",
        help="with --from-predictions: leave out ROIs with no ground-truth kidney (inference crops them too)",
    )
    parser.add_argument(
        "--masks-from", default=None, metavar="DIR",
        help="rebuild only Dataset223, on the crops of Dataset222's crops.json, with the mask channel from stage-222 "
        "predictions <crop id>.nii.gz of those crops (e.g. its cross-validation outputs), binarised as kits predict "
        "does; box options are refused",
    )
    parser.add_argument(
        "--stages", type=int, nargs="+", default=None, choices=(221, 222, 223),
        help="datasets to build (default 221 222 223; 222 223 with --from-predictions; 223 with --masks-from)",
    )
    _add_common(parser)


def run_derive_stages(args: argparse.Namespace) -> int:
    from kits_plugins.dataset_conversion.derive_stages import derive_stages

    written = derive_stages(
        dataset_id=args.dataset_id,
        raw=args.raw,
        margin_mm=args.margin_mm,
        jitter_mm=args.jitter_mm,
        seed=args.seed,
        min_volume_mm3=args.min_volume_mm3,
        overwrite=args.overwrite,
        from_predictions=args.from_predictions,
        stages=args.stages,
        num_processes=_processes(args.num_processes),
        truncate_share=args.truncate_share,
        truncate_max_mm=args.truncate_max_mm,
        drop_false_positives=args.drop_false_positives,
        masks_from=args.masks_from,
        extend_share=args.extend_share,
        extend_max_mm=args.extend_max_mm,
    )
    for path in written.values():
        print(f"wrote {path}")
    return 0
