"""`kits export-model` and `kits install-model`: a trained cascade as one verified archive
(see :mod:`kits_plugins.models.archive` and, for ``kits_model.json``, :mod:`kits_plugins.models.manifest`).

Heavy imports happen inside ``run_*`` so ``kits --help`` stays fast.
"""

from __future__ import annotations

import argparse

from kits_plugins.constants import DEFAULT_MARGIN_MM, DEFAULT_MIN_ROI_VOLUME_MM3
from kits_plugins.inference.commands import add_model_choice_arguments, stage_models_from_args
from kits_plugins.utilities.arguments import non_negative_float, non_negative_int


def add_export_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", metavar="OUT.zip", help="archive to write (replaced if it exists)")
    parser.add_argument("--name", default=None,
                        help="model name, the installed folder's name (default: OUT without .zip); letters, digits, "
                             "'.', '_', '-'")
    add_model_choice_arguments(parser)
    settings = parser.add_argument_group("settings stored in the model (kits predict -m uses them)")
    settings.add_argument("--margin-mm", type=non_negative_float, default=DEFAULT_MARGIN_MM,
                          help=f"ROI margin around each kidney in mm (default {DEFAULT_MARGIN_MM})")
    settings.add_argument("--min-roi-volume-mm3", type=non_negative_float, default=DEFAULT_MIN_ROI_VOLUME_MM3,
                          help=f"smallest mask component with a ROI of its own (default {DEFAULT_MIN_ROI_VOLUME_MM3})")
    settings.add_argument("--max-regrow", type=non_negative_int, default=None,
                          help="times a ROI that cuts the kidney is grown and stage 222 rerun (default: kits "
                               "predict's, 2)")


def run_export_model(args: argparse.Namespace) -> int:
    from kits_plugins.models.archive import export_model

    export_model(args.output, stage_models_from_args(args), results=args.results, name=args.name,
                 margin_mm=args.margin_mm, min_roi_volume_mm3=args.min_roi_volume_mm3, max_regrow=args.max_regrow)
    return 0


def add_install_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("zip", metavar="ZIP", help="model archive written by kits export-model")
    parser.add_argument("--dest", default=None,
                        help="models folder; the model goes to DEST/<name> (default $KITS_MODELS, else the user data "
                             "folder's kits-cascade/models)")
    parser.add_argument("--force", action="store_true", help="replace an installed model of the same name")


def run_install_model(args: argparse.Namespace) -> int:
    from kits_plugins.models.archive import install_model

    folder, manifest = install_model(args.zip, args.dest, force=args.force)
    print(f"kits install-model: {manifest.name} (kits-cascade {manifest.kits_cascade_version}, "
          f"{len(manifest.files)} files, {manifest.total_size / 1e6:.1f} MB, checksums verified) installed in {folder}; "
          f"run it with: kits predict -m {manifest.name} -i CT -o OUT")
    return 0
