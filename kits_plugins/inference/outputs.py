"""What ``kits predict`` writes for a case besides (or instead of) its NIfTI label map: a DICOM SEG for a DICOM
series input, the per-kidney and per-lesion statistics, a PNG preview.

For a case ``C`` predicted into ``OUT``:

- ``OUT/C.nii.gz``: the label map with the CT's exact header (``--output-type nifti`` or ``both``);
- ``OUT/C_seg.dcm``: a DICOM Segmentation referencing the source series (``--output-type dicom_seg`` or ``both``;
  the input must be a DICOM series: :mod:`kits_plugins.utilities.dicom_seg`);
- ``OUT/statistics/C.json`` and ``OUT/statistics/statistics.csv`` (``--statistics``; one CSV per part when the
  prediction is sharded: :func:`statistics_csv_name`; :mod:`kits_plugins.statistics`);
- ``OUT/C.png``: the axial slice through each kidney with the labels overlaid (``--preview``; the same drawing as
  the demo's figures: :mod:`kits_plugins.utilities.preview`).

Every file is written atomically; none may replace an input (checked with the NIfTI outputs before any model
loads).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kits_plugins.errors import KitsInputError
from kits_plugins.utilities.image_io import Geometry
from kits_plugins.utilities.paths import child_path

OUTPUT_TYPES = ("nifti", "dicom_seg", "both")
SEG_SUFFIX = "_seg.dcm"
PREVIEW_SUFFIX = ".png"
STATISTICS_DIR = "statistics"


@dataclass(frozen=True)
class CaseOutputs:
    """Which files ``kits predict`` writes per case."""

    nifti: bool = True
    dicom_seg: bool = False
    statistics: bool = False
    preview: bool = False

    @classmethod
    def from_options(cls, output_type: str = "nifti", statistics: bool = False, preview: bool = False) -> CaseOutputs:
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        return cls(nifti=output_type in ("nifti", "both"), dicom_seg=output_type in ("dicom_seg", "both"),
                   statistics=statistics, preview=preview)

    @property
    def needs_ct(self) -> bool:
        """The CT array is kept after prediction (statistics in HU, the preview's background)."""
        return self.statistics or self.preview


def seg_path(output_dir: str | os.PathLike, case: str) -> Path:
    return child_path(output_dir, f"{case}{SEG_SUFFIX}", output_dir)


def preview_path(output_dir: str | os.PathLike, case: str) -> Path:
    return child_path(output_dir, f"{case}{PREVIEW_SUFFIX}", output_dir)


def statistics_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / STATISTICS_DIR


def statistics_csv_name(num_parts: int = 1, part_id: int = 0) -> str:
    """``statistics.csv``, or one per part when prediction is sharded (the parts never write the same file)."""
    return "statistics.csv" if num_parts == 1 else f"statistics_part{part_id}_of_{num_parts}.csv"


def planned_paths(output_dir: str | os.PathLike, cases: Sequence[str], outputs: CaseOutputs, num_parts: int = 1,
                  part_id: int = 0) -> list[Path]:
    """Every file the options add for these cases (the NIfTI label maps are the caller's)."""
    out: list[Path] = []
    for case in cases:
        if outputs.dicom_seg:
            out.append(seg_path(output_dir, case))
        if outputs.preview:
            out.append(preview_path(output_dir, case))
        if outputs.statistics:
            out.append(child_path(statistics_dir(output_dir), f"{case}.json", output_dir))
    if outputs.statistics and cases:
        out.append(statistics_dir(output_dir) / statistics_csv_name(num_parts, part_id))
    return out


def check_dicom_seg_inputs(cts: Sequence[tuple[str, Path]], outputs: CaseOutputs) -> None:
    """A DICOM SEG references the series it segments: every case must come from a DICOM series folder."""
    if not outputs.dicom_seg:
        return
    for case, ct in cts:
        if not Path(ct).is_dir():
            raise KitsInputError(f"{ct}: --output-type dicom_seg needs DICOM series input, case {case} is a "
                                 f"{''.join(Path(ct).suffixes) or 'file'} file (use --output-type nifti)")


def write_case_outputs(case: str, ct_source: str | os.PathLike, labels: np.ndarray, ct: np.ndarray | None,
                       geometry: Geometry, output_dir: str | os.PathLike, outputs: CaseOutputs) -> dict | None:
    """Write the DICOM SEG, statistics JSON and preview of one predicted case (``labels`` in file order, as
    written in the NIfTI); returns the statistics dict (None without ``--statistics``)."""
    if outputs.dicom_seg:
        from kits_plugins.utilities.dicom_io import series_files
        from kits_plugins.utilities.dicom_seg import write_dicom_seg

        write_dicom_seg(labels, series_files(ct_source), seg_path(output_dir, case))
    stats = None
    if outputs.statistics:
        from kits_plugins.statistics.files import save_case_statistics

        stats = save_case_statistics(labels, geometry, statistics_dir(output_dir), case, ct)
    if outputs.preview:
        from kits_plugins.utilities.preview import save_prediction_png

        if ct is None:
            raise ValueError("the preview needs the CT")
        save_prediction_png(ct, labels, geometry, preview_path(output_dir, case), title=case)
    return stats


def write_statistics_table(output_dir: str | os.PathLike, cases: Sequence[dict], num_parts: int = 1,
                           part_id: int = 0) -> Path:
    """The CSV of every case's statistics of this run (one row per kidney and lesion)."""
    from kits_plugins.statistics.files import write_statistics_csv

    return write_statistics_csv(cases, statistics_dir(output_dir) / statistics_csv_name(num_parts, part_id))
