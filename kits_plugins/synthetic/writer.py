"""Write synthetic cases in the KiTS23 layout ``OUT/case_XXXXX/{imaging,segmentation}.nii.gz``.

Every case is written into a hidden temporary folder next to its destination and renamed into place
when both files are complete, so an interrupted run never leaves a half-written case.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kits_plugins.synthetic.from_labels import synthesize_ct_from_label
from kits_plugins.synthetic.phantom import DEFAULT_SHAPE, DEFAULT_SPACING, make_case
from kits_plugins.utilities.image_io import Geometry, KitsInputError, read_geometry, read_label, write_image

IMAGING, SEGMENTATION = "imaging.nii.gz", "segmentation.nii.gz"
_LABEL_FILE = re.compile(r"^(case_\d{5})\.nii\.gz$")


def case_seed(seed: int, index: int) -> int:
    """Seed of case ``index`` of a dataset with master ``seed`` (independent streams per case)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def _commit_case(out_dir: Path, case_id: str, fill) -> Path:
    """Create OUT/.case_id.*.partial, let ``fill(tmp_dir)`` write into it, then rename it to OUT/case_id."""
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / case_id
    tmp = Path(tempfile.mkdtemp(prefix=f".{case_id}.", suffix=".partial", dir=out_dir))
    try:
        fill(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp/mkstemp create private entries; use normal permissions
        for p in tmp.iterdir():
            os.chmod(p, 0o666 & ~umask)
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{case_id}.", suffix=".old", dir=out_dir))
            os.replace(final, old / case_id)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


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
) -> list[Path]:
    """Write procedural cases ``case_{first_case:05d}`` ... ; case i uses :func:`case_seed` (seed, i)."""
    out = []
    for i in tqdm(range(first_case, first_case + n_cases), desc="kits synth", unit="case", disable=not progress):
        ct, label, geom = make_case(case_seed(seed, i), tuple(shape_zyx), tuple(spacing_zyx))
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
    out_dir: str | os.PathLike, label_dir: str | os.PathLike, seed: int = 0, progress: bool = True
) -> list[Path]:
    """For each ``DIR/case_XXXXX.nii.gz`` write ``OUT/case_XXXXX/imaging.nii.gz`` + an exact copy of the label.

    Headers are checked first (all files 3D), so a bad file fails the run before any case is written;
    label values are checked when each map is read. The seed of a case is :func:`case_seed` (seed, XXXXX).
    """
    files = label_files(label_dir)
    for f in files:
        read_geometry(f)  # raises KitsInputError naming the file (unreadable, not 3D)
    out = []
    for f in tqdm(files, desc="kits synth --from-labels", unit="case", disable=not progress):
        case_id = _LABEL_FILE.match(f.name).group(1)
        label, geom = read_label(f)
        ct = synthesize_ct_from_label(label, geom, case_seed(seed, int(case_id[5:])))
        del label

        def fill(tmp: Path, ct=ct, geom=geom, src=f) -> None:
            write_image(ct, geom, tmp / IMAGING)
            shutil.copyfile(src, tmp / SEGMENTATION)

        out.append(_commit_case(Path(out_dir), case_id, fill))
        del ct
    return out
