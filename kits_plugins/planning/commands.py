"""`kits` subcommands of this stage (see kits_plugins.cli)."""

from __future__ import annotations

import argparse

from kits_plugins.constants import COARSE_DATASET_ID, FINE_DATASET_ID, MASSES_DATASET_ID, PLANS_NAME, TARGET_SPACING

# Feature-count factor of the CPU demo's network (nnU-Net's 32..320 features -> 8..80).
DEMO_NETWORK_WIDTH = 0.25


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-d", "--datasets", type=int, nargs="+",
                        default=[COARSE_DATASET_ID, FINE_DATASET_ID, MASSES_DATASET_ID],
                        help="dataset ids (default: 221 222 223)")
    parser.add_argument("--target-spacing", type=float, nargs=3, default=list(TARGET_SPACING),
                        metavar=("SI", "AP", "RL"),
                        help="full-resolution spacing in mm in nnU-Net's axis order after NibabelIOWithReorient: "
                             "superior-inferior, anterior-posterior, right-left (default: %(default)s)")
    parser.add_argument("--coarse-spacing", type=float, nargs=3, default=None, metavar=("SI", "AP", "RL"),
                        help="spacing of 221's 3d_lowres (default: nnU-Net's lowres plan, or 2 x target when nnU-Net "
                             "plans none)")
    parser.add_argument("-np", "--num-processes", type=int, default=2,
                        help="worker processes for fingerprinting and preprocessing (default: %(default)s)")
    parser.add_argument("-c", "--configurations", nargs="+", default=None,
                        help="configurations to preprocess (default: 3d_lowres for 221, 3d_fullres otherwise)")
    parser.add_argument("--gpu-memory-target", type=float, default=None, metavar="GB",
                        help="GPU memory nnU-Net's planner sizes patches and batches for (nnU-Net default: 8)")
    parser.add_argument("--network-width", type=float, default=1.0, metavar="F",
                        help="multiply the U-Net's feature counts by F (default 1; CPU runs: 0.25)")
    parser.add_argument("--demo-network", dest="network_width", action="store_const", const=DEMO_NETWORK_WIDTH,
                        help=f"the CPU demo's network: --network-width {DEMO_NETWORK_WIDTH}")
    parser.add_argument("--no-preprocess", action="store_true", help="only fingerprint and plan")
    parser.add_argument("-v", "--verbose", action="store_true")


def run_plan(args: argparse.Namespace) -> int:
    from kits_plugins.planning.planning import plan_and_preprocess
    from kits_plugins.utilities.image_io import KitsInputError

    if args.num_processes < 1:
        raise KitsInputError(f"-np must be at least 1, got {args.num_processes}")
    out = plan_and_preprocess(
        args.datasets,
        target_spacing=args.target_spacing,
        num_processes=args.num_processes,
        configurations=args.configurations,
        coarse_spacing=args.coarse_spacing,
        gpu_memory_target_gb=args.gpu_memory_target,
        preprocess=not args.no_preprocess,
        verbose=args.verbose,
        network_width=args.network_width,
    )
    for d, path in out.items():
        print(f"{d}: {path} (train with -p {PLANS_NAME})")
    return 0
