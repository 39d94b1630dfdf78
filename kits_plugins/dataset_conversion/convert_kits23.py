"""``kits convert``: the KiTS23 repository layout -> nnU-Net raw ``Dataset220_KiTS2023``.

Files are validated (headers of image and label, label values, the gzip CRC of both files) and then
hardlinked, or copied where a hardlink is impossible, unchanged: no recompression, so every header stays
byte-identical to the source.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kits_plugins.constants import FILE_ENDING, MAX_LABEL, RAW_DATASET_NAME
from kits_plugins.dataset_conversion.layout import (
    raw_root,
    run_jobs,
    staged_datasets,
    write_dataset_json,
)
from kits_plugins.utilities.ct_io import check_ct_finite
from kits_plugins.utilities.gzip_check import verify_gzip_stream
from kits_plugins.utilities.image_io import KitsInputError, atomic_copy, read_geometry, read_label
from kits_plugins.utilities.labels import RAW_LABELS, RAW_REGIONS_CLASS_ORDER

IMAGE_NAME, LABEL_NAME = "imaging.nii.gz", "segmentation.nii.gz"


@dataclass(frozen=True)
class CaseCheck:
    case: str
    error: str | None  # None: valid


def find_cases(kits_dir: str | os.PathLike) -> tuple[Path, list[str]]:
    """Case folders ``case_XXXXX`` of a KiTS23 layout (the folder itself or its ``dataset/`` subfolder)."""
    kits_dir = Path(kits_dir)
    if not kits_dir.is_dir():
        raise KitsInputError(f"{kits_dir}: not a folder")
    for base in (kits_dir, kits_dir / "dataset"):
        cases = sorted(p.name for p in base.glob("case_*") if p.is_dir())
        if cases:
            return base, cases
    raise KitsInputError(f"{kits_dir}: no case_XXXXX folders (expected the kits23 layout case_XXXXX/{IMAGE_NAME})")


def validate_case(case_dir: str | os.PathLike) -> CaseCheck:
    """Check one case: both files exist, readable 3D headers that agree, labels in 0..3, intact gzip streams
    (the label's CRC is checked as it is read; the CT, only linked, is decompressed once to check it), no NaN/inf
    in a CT stored as floats (:func:`kits_plugins.utilities.ct_io.check_ct_finite`). Never raises."""
    case_dir = Path(case_dir)
    image, label = case_dir / IMAGE_NAME, case_dir / LABEL_NAME
    try:
        for f in (image, label):
            if not f.is_file():
                raise KitsInputError(f"{case_dir.name}: missing {f.name} ({f})")
        gi, gl = read_geometry(image), read_geometry(label)
        if not gi.matches(gl):
            raise KitsInputError(f"{case_dir.name}: image and label geometry differ ({gi.describe_mismatch(gl)})")
        read_label(label, max_label=MAX_LABEL)
        verify_gzip_stream(image)  # only linked, never decoded here: check its whole stream
        check_ct_finite(image)  # stored as floats: NaN/inf rejected here, not in every later command
    except KitsInputError as e:
        msg = str(e)
        return CaseCheck(case_dir.name, msg if case_dir.name in msg else f"{case_dir.name}: {msg}")
    return CaseCheck(case_dir.name, None)


def _link_case(job: tuple[str, str, str]) -> None:
    case_dir, images_dir, labels_dir = map(Path, job)
    atomic_copy(case_dir / IMAGE_NAME, images_dir / f"{case_dir.name}_0000{FILE_ENDING}")
    atomic_copy(case_dir / LABEL_NAME, labels_dir / f"{case_dir.name}{FILE_ENDING}")


def convert_kits23(
    kits_dir: str | os.PathLike,
    dataset_id: int = 220,
    raw: str | os.PathLike | None = None,
    overwrite: bool = False,
    skip_invalid: bool = False,
    num_processes: int = 1,
) -> tuple[Path, list[CaseCheck]]:
    """Validate every case, then build ``DatasetXXX_KiTS2023`` (hardlinks/copies + dataset.json).

    Returns the dataset folder and the skipped cases. An invalid case raises KitsInputError naming it,
    unless ``skip_invalid``; nothing is written before validation passes.
    """
    base, cases = find_cases(kits_dir)
    name = RAW_DATASET_NAME if dataset_id == 220 else f"Dataset{dataset_id:03d}_KiTS2023"
    target = raw_root(raw) / name
    with staged_datasets([target], overwrite) as (stage,):
        checks = list(run_jobs(validate_case, [str(base / c) for c in cases], num_processes, "validate"))
        bad = [c for c in checks if c.error]
        if bad and not skip_invalid:
            more = f" (and {len(bad) - 1} more invalid cases)" if len(bad) > 1 else ""
            raise KitsInputError(bad[0].error + more + "; pass --skip-invalid to convert the rest")
        good = [c.case for c in checks if not c.error]
        if not good:
            raise KitsInputError(f"{kits_dir}: no valid case to convert")
        images_dir, labels_dir = stage / "imagesTr", stage / "labelsTr"
        images_dir.mkdir()
        labels_dir.mkdir()
        jobs = [(str(base / c), str(images_dir), str(labels_dir)) for c in good]
        list(run_jobs(_link_case, jobs, 1, "link"))  # hardlinks are instant; no workers needed
        write_dataset_json(
            stage,
            {0: "CT"},
            RAW_LABELS,
            len(good),
            RAW_REGIONS_CLASS_ORDER,
            description="KiTS23 CT, labels 0 background, 1 kidney, 2 tumor, 3 cyst; regions as the challenge's HECs",
        )
    return target, bad
