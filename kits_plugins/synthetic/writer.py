"""Write synthetic cases in the KiTS23 layout ``OUT/case_XXXXX/{imaging,segmentation}.nii.gz``.

Every case is written into a hidden temporary folder next to its destination and renamed into place
when both files are complete, so an interrupted run never leaves a half-written case.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kits_plugins.synthetic.from_labels import resample_label, synthesize_ct_from_label
from kits_plugins.synthetic.phantom import DEFAULT_SHAPE, DEFAULT_SPACING, make_case
from kits_plugins.utilities.image_io import Geometry, KitsInputError, read_geometry, read_label, write_image
from kits_plugins.utilities.staging import make_temp_dir

IMAGING, SEGMENTATION = "imaging.nii.gz", "segmentation.nii.gz"
_LABEL_FILE = re.compile(r"^(case_\d{5})\.nii\.gz$")


def case_seed(seed: int, index: int) -> int:
    """Seed of case ``index`` of a dataset with master ``seed`` (independent streams per case)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def _commit_case(out_dir: Path, case_id: str, fill) -> Path:
    """Create a hidden OUT/.case_id.*.partial folder, let ``fill(tmp_dir)`` write into it, then rename it to
    OUT/case_id (:func:`kits_plugins.utilities.staging.make_temp_dir`: ordinary permissions, owner in the name)."""
    final = out_dir / case_id
    tmp = make_temp_dir(final)
    try:
        fill(tmp)
        if final.exists():
            old = make_temp_dir(final, suffix=".old")
            os.replace(final, old / case_id)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def check_output_folder(out_dir: str | os.PathLike, overwrite: bool) -> None:
    """Refuse an ``out_dir`` that is a file, or a folder with visible entries unless ``overwrite`` (its cases of
    the same ids would be replaced: a KiTS folder must not be overwritten by accident)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise KitsInputError(f"{out}: exists and is not a folder")
    entries = sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.is_dir() else []
    if entries and not overwrite:
        raise KitsInputError(
            f"{out}: folder is not empty ({len(entries)} entries, e.g. {entries[0]}); pass --overwrite to write into "
            "it (cases of the same ids are replaced)"
        )


def write_case(out_dir: str | os.PathLike, case_id: str, ct: np.ndarray, label: np.ndarray, geometry: Geometry) -> Path:
    """Write one case (arrays in file order with ``geometry``) atomically; returns the case folder."""
    if ct.shape != geometry.shape or label.shape != geometry.shape:
        raise ValueError(f"{case_id}: array shapes {ct.shape}/{label.shape} do not match geometry {geometry.shape}")

    def fill(tmp: Path) -> None:
        write_image(np.asarray(ct, dtype=np.int16), geometry, tmp / IMAGING)
        write_image(np.asarray(label, dtype=np.uint8), geometry, tmp / SEGMENTATION)

    return _commit_case(Path(out_dir), case_id, fill)


def synthesize_dataset(
    out_dir: str | os.PathLike,
    n_cases: int,
    seed: int,
    shape_zyx: Sequence[int] = DEFAULT_SHAPE,
    spacing_zyx: Sequence[float] = DEFAULT_SPACING,
    first_case: int = 0,
    progress: bool = True,
    kits23_extent: bool = False,
) -> list[Path]:
    """Write procedural cases ``case_{first_case:05d}`` ... ; case i uses :func:`case_seed` (seed, i);
    ``kits23_extent``: see :func:`~kits_plugins.synthetic.phantom.make_phantom`."""
    out = []
    for i in tqdm(range(first_case, first_case + n_cases), desc="kits synth", unit="case", disable=not progress):
        ct, label, geom = make_case(case_seed(seed, i), tuple(shape_zyx), tuple(spacing_zyx), kits23_extent)
        out.append(write_case(out_dir, f"case_{i:05d}", ct, label, geom))
    return out


def label_files(label_dir: str | os.PathLike) -> list[Path]:
    """``DIR/case_XXXXX.nii.gz`` files, sorted; KitsInputError if there are none."""
    d = Path(label_dir)
    if not d.is_dir():
        raise KitsInputError(f"{d}: not a folder of label maps")
    files = sorted(p for p in d.iterdir() if _LABEL_FILE.match(p.name))
    if not files:
        raise KitsInputError(f"{d}: no label maps named case_XXXXX.nii.gz")
    return files


def synthesize_from_labels(
    out_dir: str | os.PathLike,
    label_dir: str | os.PathLike,
    seed: int = 0,
    progress: bool = True,
    label_spacing: tuple[float, float, float] | None = None,
) -> list[Path]:
    """For each ``DIR/case_XXXXX.nii.gz`` write ``OUT/case_XXXXX/imaging.nii.gz`` + an exact copy of the label, or,
    with ``label_spacing`` (mm, anatomical order), the label resampled to that grid (:func:`resample_label`) and the
    CT made there.

    Headers are checked first (all files 3D), so a bad file fails the run before any case is written;
    label values are checked when each map is read. The seed of a case is :func:`case_seed` (seed, XXXXX).
    """
    files = label_files(label_dir)
    for f in files:
        read_geometry(f)  # raises KitsInputError naming the file (unreadable, not 3D)
    out = []
    for f in tqdm(files, desc="kits synth --from-labels", unit="case", disable=not progress):
        match = _LABEL_FILE.match(f.name)
        assert match is not None  # label_files lists matching names only
        case_id = match.group(1)
        label, geom = read_label(f)
        resampled = None
        if label_spacing is not None:
            label, geom = resampled = resample_label(label, geom, label_spacing)
        ct = synthesize_ct_from_label(label, geom, case_seed(seed, int(case_id[5:])))
        del label

        def fill(tmp: Path, ct=ct, geom=geom, src=f, resampled=resampled) -> None:
            write_image(ct, geom, tmp / IMAGING)
            if resampled is None:
                shutil.copyfile(src, tmp / SEGMENTATION)
            else:
                write_image(resampled[0], resampled[1], tmp / SEGMENTATION)

        out.append(_commit_case(Path(out_dir), case_id, fill))
        del ct
    return out
