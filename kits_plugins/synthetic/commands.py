"""`kits synth`: synthetic CT-like KiTS23 cases, procedural or from real label maps."""

from __future__ import annotations

import argparse

from kits_plugins.synthetic import DEFAULT_SHAPE, DEFAULT_SPACING


def add_synth_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="output folder (KiTS23 layout: OUT/case_XXXXX/imaging.nii.gz ...)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--cases", type=int, metavar="N", help="number of procedural cases to make")
    src.add_argument(
        "--from-labels", metavar="DIR", help="make a CT for each DIR/case_XXXXX.nii.gz label map (label copied as is)"
    )
    parser.add_argument("--seed", type=int, default=0, help="master seed; same seed, same data (default 0)")
    parser.add_argument(
        "--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), default=list(DEFAULT_SHAPE),
        help="procedural volume size in anatomical order: superior-inferior, anterior-posterior, right-left "
        f"(default {' '.join(map(str, DEFAULT_SHAPE))})",
    )  # fmt: skip
    parser.add_argument(
        "--spacing", type=float, nargs=3, metavar=("Z", "Y", "X"), default=list(DEFAULT_SPACING),
        help=f"procedural voxel spacing in mm, same order (default {' '.join(map(str, DEFAULT_SPACING))})",
    )  # fmt: skip
    parser.add_argument(
        "--label-spacing", type=float, nargs=3, metavar=("Z", "Y", "X"),
        help="with --from-labels: resample each label map to this spacing in mm (anatomical order, as --spacing) with "
        "nnU-Net's segmentation resampling and make the phantom on that grid (written label: the resampled one); "
        "default: the label map's own grid, label copied as is",
    )  # fmt: skip
    parser.add_argument(
        "--kits23-extent", action="store_true",
        help="procedural: draw each scan's superior-inferior extent (213-700 mm) and the kidneys' height in it from "
        "real KiTS23 scans; the number of slices is the extent over the Z spacing (--shape's Z is not used)",
    )  # fmt: skip
    parser.add_argument("--first-case", type=int, default=0, help="number of the first procedural case (default 0)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty OUT (cases of the same id are replaced); refused without it")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_synth(args: argparse.Namespace) -> int:
    from kits_plugins.synthetic.writer import check_output_folder, synthesize_dataset, synthesize_from_labels
    from kits_plugins.utilities.image_io import KitsInputError

    check_output_folder(args.out, args.overwrite)
    if args.kits23_extent and args.from_labels is not None:
        raise KitsInputError("--kits23-extent is for procedural cases (--cases); a label map keeps its own extent")
    if args.label_spacing is not None and (args.from_labels is None or min(args.label_spacing) <= 0):
        raise KitsInputError(f"--label-spacing needs --from-labels and three spacings > 0 mm, got {args.label_spacing}")
    if args.from_labels is not None:
        spacing = None if args.label_spacing is None else tuple(args.label_spacing)
        paths = synthesize_from_labels(args.out, args.from_labels, seed=args.seed, progress=not args.quiet,
                                       label_spacing=spacing)
    else:
        if args.cases < 1:
            raise KitsInputError(f"--cases must be >= 1, got {args.cases}")
        if min(args.shape) < 8 or min(args.spacing) <= 0:
            raise KitsInputError(f"--shape needs >= 8 voxels per axis and --spacing > 0, got {args.shape} {args.spacing}")
        paths = synthesize_dataset(args.out, args.cases, args.seed, tuple(args.shape), tuple(args.spacing),
                                   first_case=args.first_case, progress=not args.quiet,
                                   kits23_extent=args.kits23_extent)  # fmt: skip
    print(f"wrote {len(paths)} case(s) to {args.out}")
    return 0
