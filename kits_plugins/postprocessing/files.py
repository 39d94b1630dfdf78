"""File-level postprocessing: read a label map, apply the rules at its own spacing, write it back."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from kits_plugins.postprocessing.remove_components import PostprocessReport, postprocess_with_report
from kits_plugins.utilities.image_io import KitsInputError, read_label, write_image

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def is_nifti(path: str | os.PathLike) -> bool:
    return str(path).endswith(NIFTI_SUFFIXES)


def postprocess_file(
    in_path: str | os.PathLike,
    out_path: str | os.PathLike,
    min_volume_mm3: Mapping[int, float] | None = None,
    remove_outside_kidney: bool = True,
) -> PostprocessReport:
    """Postprocess one label map file; the output keeps the input's origin, spacing and direction exactly.

    Thresholds in mm3 are converted with the file's own voxel volume. The output is written as uint8
    through a temporary file and renamed (``kits postprocess`` refuses an output that is one of its inputs). Raises
    :class:`KitsInputError` (naming the file) for unreadable files or labels outside 0-3.
    """
    seg, geometry = read_label(in_path)
    try:
        seg, report = postprocess_with_report(
            seg, geometry.spacing_np, min_volume_mm3, remove_outside_kidney, in_place=True
        )
    except ValueError as e:  # e.g. bad thresholds: still name the file
        raise KitsInputError(f"{in_path}: {e}") from None
    write_image(seg, geometry, out_path)
    return report


def list_label_files(folder: str | os.PathLike) -> list[Path]:
    """NIfTI files directly inside ``folder``, sorted (hidden/partial files skipped)."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and is_nifti(p) and not p.name.startswith("."))
