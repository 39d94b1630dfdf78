"""`kits statistics`: per-kidney and per-lesion measurements of label maps (see kits_plugins.cli)."""

from __future__ import annotations

import argparse
from pathlib import Path

from kits_plugins.errors import KitsInputError
from kits_plugins.statistics.rules import DEFAULT_MIN_KIDNEY_ML, DEFAULT_MIN_LESION_ML
from kits_plugins.utilities.arguments import non_negative_float


def add_statistics_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Measure each kidney (left/right from patient coordinates, volume of kidney+masses and of parenchyma, "
        "maximum 3-D diameter) and each tumor and cyst (volume, maximum 3-D diameter from the surface, mean and "
        "standard deviation of HU with --ct, centroid in LPS mm, the kidney it belongs to). Writes OUT/<case>.json "
        "per case and OUT/statistics.csv with one row per structure. Components are 26-connected; left/right is "
        "taken against the patient's midline (the CT body's centroid with --ct, else the image centre), a component "
        "across it is a horseshoe."
    )
    parser.add_argument("labels", metavar="LABELMAP",
                        help="label map (.nii.gz/.nii; 0 background, 1 kidney, 2 tumor, 3 cyst), a folder of them "
                        "(case id = file name) or the KiTS layout (case_*/segmentation.nii.gz)")
    parser.add_argument("--ct", metavar="CT",
                        help="CT in HU, found as kits predict -i finds it (a file, a folder of *.nii.gz or *_0000.nii.gz, "
                        "the KiTS layout, a DICOM series folder or a folder of them) and matched by case id (one "
                        "label map with one CT pairs whatever the names); gives HU and the body midline")
    parser.add_argument("-o", "--output", metavar="OUT", required=True, help="output folder (created)")
    parser.add_argument("--min-kidney-ml", type=non_negative_float, default=DEFAULT_MIN_KIDNEY_ML,
                        help="kidney+masses components smaller than this are counted as fragments, not kidneys "
                        f"(default {DEFAULT_MIN_KIDNEY_ML})")
    parser.add_argument("--min-lesion-ml", type=non_negative_float, default=DEFAULT_MIN_LESION_ML,
                        help=f"tumor/cyst components smaller than this are not listed (default {DEFAULT_MIN_LESION_ML}: "
                        "all)")


def run_statistics(args: argparse.Namespace) -> int:
    from kits_plugins.statistics.files import (
        CSV_NAME,
        pair_inputs,
        statistics_of_files,
        summary_line,
        write_statistics_csv,
    )

    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise KitsInputError(f"{out}: the output must be a folder")
    pairs = pair_inputs(args.labels, args.ct)
    cases = []
    for case, label, ct in pairs:
        stats = statistics_of_files(case, label, ct, out, args.min_kidney_ml, args.min_lesion_ml)
        print(summary_line(stats))
        cases.append(stats)
    csv_path = write_statistics_csv(cases, out / CSV_NAME)
    print(f"wrote {len(cases)} case JSON(s) and {csv_path}")
    return 0
