"""`kits` subcommands of this stage (see kits_plugins.cli)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kits_plugins.constants import CYST, DEFAULT_MIN_VOLUME_MM3, KIDNEY, TARGET_SPACING, TUMOR
from kits_plugins.errors import KitsInputError
from kits_plugins.utilities.arguments import non_negative_float, positive_float


def add_postprocess_arguments(parser: argparse.ArgumentParser) -> None:
    D = DEFAULT_MIN_VOLUME_MM3
    parser.description = (
        "Remove connected components smaller than a per-class volume (kidney = kidney+masses as one organ) and "
        "tumor/cyst components that touch no kept kidney. Thresholds are in mm3 and converted with each "
        "file's own voxel size; headers are kept exactly; writes are atomic."
    )
    parser.add_argument("input", nargs="?", help="label map file or folder of .nii.gz/.nii files")
    parser.add_argument("output", nargs="?",
                        help="output file, or folder (created) when INPUT is a folder; never one of the inputs")
    parser.add_argument("--min-kidney-mm3", type=non_negative_float, default=D[KIDNEY],
                        help=f"smallest kidney(+masses) component kept (default {D[KIDNEY]:.1f}; 0 disables)")
    parser.add_argument("--min-tumor-mm3", type=non_negative_float, default=D[TUMOR],
                        help=f"smallest tumor component kept (default {D[TUMOR]:.2f}; 0 disables)")
    parser.add_argument("--min-cyst-mm3", type=non_negative_float, default=D[CYST],
                        help=f"smallest cyst component kept (default {D[CYST]:.2f}; 0 disables)")
    parser.add_argument("--keep-outside", action="store_true",
                        help="keep tumor/cyst components that touch no kidney (removed by default)")
    parser.add_argument("--report", metavar="JSON", help="write every removed component per file to this JSON")
    parser.add_argument("--export-pkl", metavar="PKL",
                        help="also write these settings as an nnU-Net postprocessing.pkl (for "
                        "nnUNetv2_apply_postprocessing); thresholds become voxel counts at --pkl-spacing")
    parser.add_argument("--pkl-spacing", type=positive_float, nargs=3, metavar=("S0", "S1", "S2"), default=list(TARGET_SPACING),
                        help="voxel size (mm) the pkl's voxel thresholds are computed for (default: target spacing)")


def _pairs(inp: Path, out: Path) -> list[tuple[Path, Path]]:
    from kits_plugins.postprocessing.files import is_nifti, list_label_files

    if not inp.exists():
        raise KitsInputError(f"{inp}: no such file or folder")
    if inp.is_dir():
        if out.exists() and not out.is_dir():
            raise KitsInputError(f"{out}: INPUT is a folder, so OUTPUT must be a folder, not a file")
        files = list_label_files(inp)
        if not files:
            raise KitsInputError(f"{inp}: no .nii.gz/.nii files in this folder")
        return [(f, out / f.name) for f in files]
    if not is_nifti(inp):
        raise KitsInputError(f"{inp}: expected a .nii.gz or .nii file")
    if out.is_dir() or not is_nifti(out):
        out = out / inp.name
    return [(inp, out)]


def run_postprocess(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from kits_plugins.postprocessing.files import postprocess_file
    from kits_plugins.utilities.paths import refuse_overwriting_inputs
    from kits_plugins.utilities.staging import atomic_write_bytes

    thresholds = {KIDNEY: args.min_kidney_mm3, TUMOR: args.min_tumor_mm3, CYST: args.min_cyst_mm3}
    remove_outside = not args.keep_outside

    if (args.input is None) != (args.output is None):
        raise KitsInputError("give both INPUT and OUTPUT")
    if args.input is None and not args.export_pkl:
        raise KitsInputError("give INPUT and OUTPUT (or --export-pkl)")
    pairs = _pairs(Path(args.input), Path(args.output)) if args.input is not None else []
    inputs, outputs = [src for src, _ in pairs], [dst for _, dst in pairs]
    refuse_overwriting_inputs(outputs, inputs, "kits postprocess")
    for flag, extra in (("--report", args.report), ("--export-pkl", args.export_pkl)):
        if extra:
            refuse_overwriting_inputs([extra], inputs + outputs, f"kits postprocess {flag}")

    if args.export_pkl:
        from kits_plugins.postprocessing.nnunet_export import export_postprocessing_pkl

        path = export_postprocessing_pkl(args.export_pkl, args.pkl_spacing, thresholds, remove_outside)
        print(f"wrote {path} (apply with: nnUNetv2_apply_postprocessing -i IN -o OUT -pp_pkl_file {path})")
    if not pairs:
        return 0
    reports = {}
    n_changed = 0
    for src, dst in tqdm(pairs, desc="postprocess", unit="file", disable=len(pairs) == 1):
        report = postprocess_file(src, dst, thresholds, remove_outside)
        reports[src.name] = report.to_dict()
        if report.removed:
            n_changed += 1
            tqdm.write(f"{src.name}: {report.summary()}")
    print(f"postprocessed {len(pairs)} file(s) into {args.output}; {n_changed} changed")
    if args.report:
        atomic_write_bytes(args.report, json.dumps(reports, indent=1).encode())
    return 0
