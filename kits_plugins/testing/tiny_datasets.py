"""Tiny nnU-Net raw datasets shaped like the stage datasets 221/222/223, for tests and device checks.

Not a data synthesizer (see ``kits_plugins.synthetic``): a few small CT-like volumes with two ellipsoid
kidneys, a tumor and a cyst, written with KiTS23's permuted direction matrix so nnU-Net's
``NibabelIOWithReorient`` has to reorient them, and a ``dataset.json`` made by nnU-Net's
``generate_dataset_json`` with the stage's channels and labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from kits_plugins.constants import (
    COARSE_DATASET_ID,
    FILE_ENDING,
    FINE_DATASET_ID,
    MASSES_DATASET_ID,
    READER_WRITER,
    STAGE_DATASET_NAMES,
)
from kits_plugins.utilities.image_io import Geometry, float_triple, int_triple, write_image
from kits_plugins.utilities.labels import (
    BINARY_LABELS,
    MASSES_CHANNELS,
    MASSES_LABELS,
    MASSES_REGIONS_CLASS_ORDER,
    encode_masses,
)

# KiTS23's direction matrix (row-major, SimpleITK): the slice axis is the last numpy axis of the file.
KITS_DIRECTION = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0)

# The stage datasets' channels and labels, exactly as ``kits derive-stages`` writes them.
STAGE_CHANNELS: dict[int, Mapping[int, str]] = {
    COARSE_DATASET_ID: {0: "CT"}, FINE_DATASET_ID: {0: "CT"}, MASSES_DATASET_ID: MASSES_CHANNELS,
}
STAGE_LABELS: dict[int, Mapping[str, int | tuple[int, ...]]] = {
    COARSE_DATASET_ID: BINARY_LABELS, FINE_DATASET_ID: BINARY_LABELS, MASSES_DATASET_ID: MASSES_LABELS,
}
STAGE_REGIONS_CLASS_ORDER = {MASSES_DATASET_ID: MASSES_REGIONS_CLASS_ORDER}


def _ellipsoid(
    shape: Sequence[int], center: Sequence[float] | np.ndarray, radii: Sequence[float] | np.ndarray
) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    d = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radii))
    return np.asarray(d <= 1.0)


def tiny_case(shape: Sequence[int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One CT-like int16 volume and its KiTS label map (0-3), numpy (file) order, slice axis last."""
    shape = tuple(int(s) for s in shape)
    labels = np.zeros(shape, np.uint8)
    c = np.array(shape, dtype=np.float64) / 2
    for side in (-1, 1):  # two kidneys left and right along numpy axis 0 (right-left after reorientation)
        center = c + np.array([side * shape[0] * 0.22, rng.uniform(-1, 1), rng.uniform(-1, 1)])
        radii = np.array(shape) * np.array([0.14, 0.2, 0.3]) * rng.uniform(0.85, 1.15)
        labels[_ellipsoid(shape, center, radii)] = 1
        lesion = center + radii * np.array([0.0, 0.35, 0.3]) * side
        labels[_ellipsoid(shape, lesion, np.maximum(radii * 0.45, 1.6)) & (labels == 1)] = 2 if side < 0 else 3
    ct = rng.normal(0.0, 18.0, shape)
    ct += np.where(_ellipsoid(shape, c, np.array(shape) * 0.48), 40.0, -950.0)
    ct[labels == 1] += 130.0
    ct[labels == 2] += 70.0
    ct[labels == 3] -= 25.0
    return ct.astype(np.int16), labels


def write_tiny_stage_dataset(
    raw_root: str | Path,
    dataset_id: int,
    num_cases: int = 5,
    shape: Sequence[int] = (24, 24, 16),
    spacing: Sequence[float] = (2.5, 1.5, 1.5),
    seed: int = 0,
) -> Path:
    """Write ``Dataset<id>_...`` (221, 222 or 223 layout) under ``raw_root``; returns its folder.

    ``shape`` is the file's numpy shape (slice axis last) and ``spacing`` the SimpleITK (index-order)
    spacing, slice thickness first, like the real KiTS23 files.
    """
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    folder = Path(raw_root) / STAGE_DATASET_NAMES[dataset_id]
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    geometry = Geometry((10.0, -20.0, 30.0), float_triple(spacing), KITS_DIRECTION, int_triple(shape[::-1]))
    for i in range(num_cases):
        ct, labels = tiny_case(shape, rng)
        case = f"case_{i:05d}"
        write_image(ct, geometry, folder / "imagesTr" / f"{case}_0000{FILE_ENDING}")
        if dataset_id == MASSES_DATASET_ID:
            write_image((labels > 0).astype(np.uint8), geometry, folder / "imagesTr" / f"{case}_0001{FILE_ENDING}")
            target = encode_masses(labels)  # 0 background/kidney, 1 tumor, 2 cyst
        else:
            target = (labels > 0).astype(np.uint8)
        write_image(target, geometry, folder / "labelsTr" / f"{case}{FILE_ENDING}")
    generate_dataset_json(
        str(folder),
        channel_names=dict(STAGE_CHANNELS[dataset_id]),
        labels=dict(STAGE_LABELS[dataset_id]),
        num_training_cases=num_cases,
        file_ending=FILE_ENDING,
        regions_class_order=STAGE_REGIONS_CLASS_ORDER.get(dataset_id),
        dataset_name=STAGE_DATASET_NAMES[dataset_id],
        overwrite_image_reader_writer=READER_WRITER,
        description="tiny synthetic stage dataset for tests (kits_plugins.testing.tiny_datasets)",
    )
    return folder
