"""`kits` subcommands of this stage (see kits_plugins.cli): predict, crop-rois, paste-rois.

Heavy imports (torch, nnU-Net) happen inside ``run_*`` so ``kits --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import os

from kits_plugins.constants import DEFAULT_MARGIN_MM, DEFAULT_MIN_ROI_VOLUME_MM3, PLANS_NAME
from kits_plugins.errors import KitsInputError
from kits_plugins.utilities.arguments import fold, non_negative_float, non_negative_int, positive_int, step_fraction


def _add_roi_arguments(parser: argparse.ArgumentParser, model_defaults: bool = False) -> None:
    """``model_defaults``: default None (kits predict: the -m model's setting, else the package default)."""
    by_model = "the -m model's, else " if model_defaults else ""
    parser.add_argument("--margin-mm", type=non_negative_float, default=None if model_defaults else DEFAULT_MARGIN_MM,
                        help=f"ROI margin around each kidney in mm (default {by_model}{DEFAULT_MARGIN_MM})")
    parser.add_argument("--min-roi-volume-mm3", type=non_negative_float,
                        default=None if model_defaults else DEFAULT_MIN_ROI_VOLUME_MM3,
                        help="mask components smaller than this get no ROI of their own (the largest always does; "
                             f"default {by_model}{DEFAULT_MIN_ROI_VOLUME_MM3})")


# ------------------------------------------------------------------------------------------------ model choice
#: stage-model flags that name models in nnUNet_results; refused together with -m (the manifest names them)
RESULTS_FLAGS = {"results": "--results", "plans": "-p", "checkpoint": "-chk"} | {
    f"{stage}_{key}": f"--{stage}-{key}" for stage in ("coarse", "fine", "masses") for key in ("trainer", "config")
}
STAGE_DEFAULTS = (
    ("coarse", "nnUNetTrainerKiTSCoarse", "3d_lowres"),
    ("fine", "nnUNetTrainerKiTSFine", "3d_fullres"),
    ("masses", "nnUNetTrainerKiTSSurface", "3d_fullres"),
)


def add_model_choice_arguments(parser: argparse.ArgumentParser, with_model: bool = False) -> None:
    """The flags that choose the three stage models, shared by ``kits predict`` and ``kits export-model``
    (nnUNetv2_predict's spellings -f, -p, -chk). Defaults are None so that ``-m`` (``with_model``) can tell what
    was given; :func:`stage_models_from_args` fills in the package defaults."""
    group = parser.add_argument_group("model choice")
    if with_model:
        group.add_argument("-m", "--model", default=None,
                           help="an exported cascade: an installed model's name (see kits install-model), a model "
                                "folder holding kits_model.json or a model .zip (checked and unpacked into a temporary "
                                "folder for this run); its manifest gives the stage models, folds, checkpoint and ROI "
                                "settings (ROI flags given here win); excludes --results, -p, -chk and the "
                                "--*-trainer/--*-config flags")
    group.add_argument("-f", "--folds", dest="folds", nargs="+", type=fold, default=None,
                       help="folds to ensemble for every stage (default: every fold_N present, else 'all'; with -m: "
                            "a subset of the model's folds, default all of them)")
    group.add_argument("--results", default=None, help="nnU-Net results folder (default $nnUNet_results)")
    group.add_argument("-p", dest="plans", default=None, help=f"plans identifier (default {PLANS_NAME})")
    group.add_argument("-chk", "--checkpoint", dest="checkpoint", default=None,
                       help="checkpoint file name (default checkpoint_final.pth)")
    for stage, trainer, config in STAGE_DEFAULTS:
        group.add_argument(f"--{stage}-trainer", default=None, help=f"default {trainer}")
        group.add_argument(f"--{stage}-config", default=None, help=f"default {config}")


def stage_models_from_args(args: argparse.Namespace) -> dict:
    """``{stage: StageModel}`` in nnUNet_results from :func:`add_model_choice_arguments`' flags (defaults filled)."""
    from kits_plugins.inference.model_discovery import stage_models

    return stage_models(
        folds=args.folds, plans=args.plans, checkpoint=args.checkpoint,
        coarse_trainer=args.coarse_trainer, fine_trainer=args.fine_trainer, masses_trainer=args.masses_trainer,
        coarse_config=args.coarse_config, fine_config=args.fine_config, masses_config=args.masses_config,
    )


def model_choice(args: argparse.Namespace, stack: contextlib.ExitStack) -> tuple[dict, str | os.PathLike | None, dict]:
    """``kits predict``'s stage models, results folder and cascade keywords (ROI and postprocessing settings).

    With ``-m MODEL`` they come from the model's manifest (a zip is unpacked into a temporary folder that
    ``stack`` removes); ROI flags given explicitly override it. Without ``-m``: the nnUNet_results flags and
    the package defaults.
    """
    from kits_plugins.inference.cascade import DEFAULT_MAX_REGROW

    settings: dict = {"margin_mm": DEFAULT_MARGIN_MM, "min_roi_volume_mm3": DEFAULT_MIN_ROI_VOLUME_MM3,
                      "max_regrow": DEFAULT_MAX_REGROW}
    if args.model is None:
        models, results = stage_models_from_args(args), args.results
    else:
        given = [flag for dest, flag in RESULTS_FLAGS.items() if getattr(args, dest) is not None]
        if given:
            raise KitsInputError(f"-m {args.model}: {', '.join(given)} cannot be combined with -m (the model's "
                                 "manifest names its stage models, plans, configurations and checkpoint)")
        from kits_plugins.models import archive
        from kits_plugins.models.manifest import stage_models as manifest_stage_models

        scratch = stack.enter_context(archive.scratch_dir()) if os.path.isfile(args.model) else None
        folder, manifest = archive.resolve_model(args.model, scratch=scratch)
        models, results = manifest_stage_models(manifest, args.folds, args.model), archive.model_results(folder)
        settings = {"margin_mm": manifest.margin_mm, "min_roi_volume_mm3": manifest.min_roi_volume_mm3,
                    "max_regrow": manifest.max_regrow, "min_volume_mm3": manifest.min_volume_mm3}
    for key in ("margin_mm", "min_roi_volume_mm3", "max_regrow"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    return models, results, settings


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", dest="input", required=True,
                        help="CT file, folder of CT NIfTIs (case_XXXXX_0000.nii.gz or *.nii.gz), KiTS layout "
                             "(case_XXXXX/imaging.nii.gz), DICOM series folder or folder of series folders")
    parser.add_argument("-o", dest="output", required=True, help="output folder (case_XXXXX.nii.gz)")
    # nnUNetv2_predict's spellings first (-device, --disable_tta, -step_size, --save_probabilities, -chk, -f),
    # the dashed forms kept as aliases
    parser.add_argument("-device", "--device", dest="device", default="cpu", choices=["cpu", "cuda"], help="default cpu")
    parser.add_argument("--disable_tta", "--disable-tta", dest="disable_tta", action="store_true",
                        help="no mirroring test-time augmentation")
    parser.add_argument("-step_size", "--step-size", dest="step_size", type=step_fraction, default=0.5,
                        help="sliding-window step as a fraction of the patch, in (0, 1] (default 0.5)")
    parser.add_argument("--save_probabilities", "--save-probabilities", dest="save_probabilities", action="store_true",
                        help="also write <case>_roiK.npz with the ROI-sized probabilities of stages 222 and 223 "
                             "(float16, file order) and crops.json with the ROI boxes")
    add_model_choice_arguments(parser, with_model=True)
    parser.add_argument("--trust-checkpoints", action="store_true",
                        help="load checkpoints with full unpickling (may run code stored in them); only for files "
                             "from a trusted source that the default safe loader refuses")
    parser.add_argument("--coarse-masks", default=None,
                        help="folder of kidney masks case_XXXXX.nii.gz used instead of stage 221 (oracle mode)")
    _add_roi_arguments(parser, model_defaults=True)
    parser.add_argument("--on-empty-mask", choices=["zeros", "whole"], default="zeros",
                        help="empty coarse mask: write an all-zero map (default) or run the fine stages on the "
                             "whole image; both warn")
    parser.add_argument("-num_parts", "--num-parts", dest="num_parts", type=positive_int, default=1,
                        help="split the cases into this many parts (as nnUNetv2_predict: for several GPUs or jobs)")
    parser.add_argument("-part_id", "--part-id", dest="part_id", type=non_negative_int, default=0,
                        help="which part this run predicts, 0..num_parts-1: the cases [part_id::num_parts] in sorted order")
    parser.add_argument("--max-regrow", type=non_negative_int, default=None,
                        help="when stage 222's mask touches an inner face of its ROI (the coarse box cut the kidney), "
                             "grow the box by the margin on that side and rerun 222, at most this often (default the "
                             "-m model's, else 2; 0 disables)")
    parser.add_argument("--no-postprocess", action="store_true", help="skip kits_plugins.postprocessing")
    extra = parser.add_argument_group("outputs (besides <case>.nii.gz)")
    extra.add_argument("--output-type", choices=("nifti", "dicom_seg", "both"), default="nifti",
                       help="nifti: <case>.nii.gz (default); dicom_seg: <case>_seg.dcm, a DICOM Segmentation referencing "
                            "the input series (DICOM input only); both")
    extra.add_argument("--statistics", action="store_true",
                       help="per kidney and lesion: volume (ml), maximum diameter (mm), HU, side, centroid: "
                            "statistics/<case>.json and statistics/statistics.csv (as kits statistics)")
    extra.add_argument("--preview", action="store_true",
                       help="<case>.png: the axial slice through each kidney with the labels overlaid")


def run_predict(args: argparse.Namespace) -> int:
    from kits_plugins.inference.cascade import KiTSCascadePredictor, prediction_jobs
    from kits_plugins.inference.outputs import CaseOutputs
    from kits_plugins.utilities.memory import return_freed_memory_to_os

    outputs = CaseOutputs.from_options(args.output_type, args.statistics, args.preview)
    jobs = prediction_jobs(args.input, args.output, args.coarse_masks, args.save_probabilities, args.num_parts,
                           args.part_id, outputs)  # input errors before any model loads
    if not jobs:
        print(f"kits predict: part {args.part_id} of {args.num_parts} has no case")
        return 0
    with contextlib.ExitStack() as stack:  # -m file.zip: its temporary folder lives for this run only
        models, results, settings = model_choice(args, stack)
        return_freed_memory_to_os()  # whole scans: freed temporaries must not stay in the heap
        predictor = KiTSCascadePredictor.from_results(
            models, results=results, device=args.device, step_size=args.step_size,
            use_mirroring=not args.disable_tta, load_coarse=args.coarse_masks is None,
            postprocess=not args.no_postprocess, on_empty_mask=args.on_empty_mask,
            save_probabilities=args.save_probabilities, trust_checkpoints=args.trust_checkpoints, **settings,
        )
        infos = predictor.predict(args.input, args.output, coarse_masks=args.coarse_masks,
                                  num_parts=args.num_parts, part_id=args.part_id, outputs=outputs)
    print(f"kits predict: {len(infos)} case(s) written to {args.output}")
    return 0


def add_crop_rois_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", dest="input", required=True, help="CT file, folder or KiTS layout")
    parser.add_argument("-o", dest="output", required=True,
                        help="output folder: <case>_roiK_0000.nii.gz [+ _0001], crops.json")
    boxes = parser.add_mutually_exclusive_group(required=True)
    boxes.add_argument("--mask", default=None,
                       help="folder of full-size masks case_XXXXX.nii.gz (e.g. the stage 221 output); boxes from "
                            "their foreground (label > 0)")
    boxes.add_argument("--crops", default=None, help="reuse the boxes of this crops.json (e.g. from the 222 crops)")
    parser.add_argument("--roi-mask", default=None,
                        help="folder of ROI-sized masks <case>_roiK.nii.gz (e.g. the stage 222 output) for the "
                             "mask channel")
    parser.add_argument("--with-mask-channel", action="store_true",
                        help="also write the binary mask as channel _0001 (stage 223 input)")
    _add_roi_arguments(parser)


def run_crop_rois(args: argparse.Namespace) -> int:
    from kits_plugins.inference.stage_io import crop_rois

    crops = crop_rois(
        args.input, args.output, mask_dir=args.mask, crops_json=args.crops, roi_mask_dir=args.roi_mask,
        with_mask_channel=args.with_mask_channel, margin_mm=args.margin_mm, min_roi_volume_mm3=args.min_roi_volume_mm3,
    )
    print(f"kits crop-rois: {len(crops)} ROI crop(s) and crops.json written to {args.output}")
    return 0


def add_paste_rois_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", dest="input", required=True, help="folder of per-ROI predictions <case>_roiK.nii.gz")
    parser.add_argument("--crops", required=True, help="crops.json written by crop-rois (or derive-stages)")
    parser.add_argument("-o", dest="output", required=True, help="output folder of full-size case_XXXXX.nii.gz")
    parser.add_argument("--ref", default=None, help="CT file/folder whose headers must match (checked)")
    parser.add_argument("--fine", default=None,
                        help="folder of stage 222 ROI predictions: combine with -i (stage 223) like kits predict")


def run_paste_rois(args: argparse.Namespace) -> int:
    from kits_plugins.inference.stage_io import paste_rois

    written = paste_rois(args.input, args.crops, args.output, ref=args.ref, fine_dir=args.fine)
    print(f"kits paste-rois: {len(written)} label map(s) written to {args.output}")
    return 0
