"""``kits derive-stages``: the stage datasets 221 (coarse), 222 (kidney ROI) and 223 (masses ROI) from 220.

Per case the label map, the CT and (optionally) a coarse prediction are each read once, in file numpy
order (SimpleITK order, exact headers). Boxes are computed in that order with the file's spacing, so a
crop is a plain sub-array: its header is the source header with the origin moved to the physical point
of the first voxel (``Geometry.with_size``), and ``crops.json`` records everything needed to paste a crop
prediction back exactly. Crops, records and crops.json come from :mod:`kits_plugins.utilities.crops` and the
label encodings from :mod:`kits_plugins.utilities.labels`, the same modules ``kits crop-rois`` and ``kits predict``
use, so training crops and inference crops are made the same way.

- 221: full CT (hardlink of 220's file) + binary label kidney+masses (1 where label is 1, 2 or 3).
- 222: ROI crops of the CT + the binary label.
- 223: the same crops with two channels, CT (``_0000``, hardlink of 222's crop) and the binary
  kidney+masses mask (``_0001``, from the ground truth or from ``--from-predictions``), and labels
  0 background/kidney, 1 tumor, 2 cyst trained as regions masses (1, 2) and tumor (1).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nnunetv2.utilities.crossval_split import generate_crossval_split
from tqdm import tqdm

from kits_plugins.constants import (
    COARSE_DATASET_ID,
    DEFAULT_MARGIN_MM,
    DEFAULT_MIN_ROI_VOLUME_MM3,
    FILE_ENDING,
    FINE_DATASET_ID,
    MASSES_DATASET_ID,
    MAX_LABEL,
    RAW_DATASET_ID,
    STAGE_DATASET_NAMES,
)
from kits_plugins.dataset_conversion.layout import (
    find_dataset,
    raw_root,
    run_jobs,
    staged_datasets,
    write_dataset_json,
)
from kits_plugins.utilities import roi
from kits_plugins.utilities.crops import (
    CROPS_JSON,
    CropRecord,
    crop_record,
    write_crop,
    write_crops_json,
    write_ct_crop,
)
from kits_plugins.utilities.ct_io import read_ct
from kits_plugins.utilities.image_io import (
    Geometry,
    KitsInputError,
    atomic_copy,
    read_geometry,
    read_image,
    read_label,
    write_image,
)
from kits_plugins.utilities.labels import (
    BINARY_LABELS,
    MASSES_CHANNELS,
    MASSES_LABELS,
    MASSES_REGIONS_CLASS_ORDER,
    encode_masses,
    kidney_mask,
)

ALL_STAGES = (COARSE_DATASET_ID, FINE_DATASET_ID, MASSES_DATASET_ID)
DEFAULT_JITTER_MM = 10.0
DEFAULT_SEED = 12345
JITTER_DISTRIBUTION = "independent per side: uniform [0, jitter_mm] mm, rounded up to whole voxels, clamped to the image"

# ---------------------------------------------------------------- pure array functions


def case_rng(seed: int, case: str) -> np.random.Generator:
    """Random generator of one case: the same jitter whatever the order or number of workers."""
    return np.random.default_rng([int(seed), zlib.crc32(case.encode())])


def case_rois(
    mask: np.ndarray,
    spacing_np: Sequence[float],
    margin_mm: float,
    min_volume_mm3: float,
    jitter_mm: float = 0.0,
    rng: np.random.Generator | None = None,
) -> list[tuple[roi.Box, roi.Box]]:
    """(box, box before jitter) per ROI, sorted by position, never overlapping.

    Boxes come from :func:`roi.roi_boxes` (one per kidney component above ``min_volume_mm3``, grown by
    ``margin_mm``, merged where they overlap). With ``jitter_mm`` > 0 each side grows by an extra
    uniform [0, jitter_mm] mm (:func:`roi.jitter_box`); boxes that then overlap are merged again.
    """
    boxes = roi.roi_boxes(mask, spacing_np, margin_mm, min_volume_mm3)
    if jitter_mm <= 0 or not boxes:
        return [(b, b) for b in boxes]
    if rng is None:
        raise ValueError("jitter needs a random generator")
    jittered = roi.merge_overlapping([roi.jitter_box(b, rng, jitter_mm, spacing_np, mask.shape) for b in boxes])
    out = []
    for j in jittered:  # the un-jittered boxes inside each (merged) jittered box, as one union
        inner = [b for b in boxes if roi.boxes_overlap(b, j)]
        base = inner[0]
        for b in inner[1:]:
            base = roi.union_box(base, b)
        out.append((j, base))
    return out


def uncovered_voxels(mask: np.ndarray, boxes: Sequence[roi.Box]) -> int:
    """Foreground voxels of ``mask`` outside all (non-overlapping) ``boxes``, without a full-size copy."""
    total = int(np.count_nonzero(mask))
    return total - sum(int(np.count_nonzero(roi.crop(mask, b))) for b in boxes)


# ---------------------------------------------------------------- one case (file I/O)


@dataclass(frozen=True)
class Settings:
    margin_mm: float = DEFAULT_MARGIN_MM
    jitter_mm: float = DEFAULT_JITTER_MM
    seed: int = DEFAULT_SEED
    min_volume_mm3: float = DEFAULT_MIN_ROI_VOLUME_MM3
    stages: tuple[int, ...] = ALL_STAGES


@dataclass(frozen=True)
class CaseJob:
    case: str
    image: str  # source CT (Dataset220 imagesTr)
    label: str  # source label map
    image_rel: str  # source CT relative to the derived dataset folders (for crops.json)
    prediction: str | None  # coarse prediction giving the ROIs and 223's mask channel, or None (ground truth)
    out: dict[int, str]  # stage id -> (staging) dataset folder
    settings: Settings


@dataclass(frozen=True)
class CaseResult:
    case: str
    geometry: dict  # the CT's header, Geometry.to_dict()
    records: list[dict]  # CropRecord.to_dict() plus "crop_id"
    uncovered: int  # ground-truth foreground voxels outside every ROI
    warnings: list[str]


def _check_same_grid(reference: Geometry, ref_path: str, other: Geometry, path: str) -> None:
    if not reference.matches(other):
        raise KitsInputError(f"{path}: geometry differs from {ref_path} ({other.describe_mismatch(reference)})")


def derive_case(job: CaseJob) -> CaseResult:
    """Write one case's files into every requested stage folder; return its crop records."""
    s = job.settings
    geometry = read_geometry(job.image)
    label, label_geometry = read_label(job.label, max_label=MAX_LABEL, view=True)
    _check_same_grid(geometry, job.image, label_geometry, job.label)
    gt_mask = kidney_mask(label)
    warnings: list[str] = []

    if COARSE_DATASET_ID in s.stages:
        out = Path(job.out[COARSE_DATASET_ID])
        atomic_copy(job.image, out / "imagesTr" / f"{job.case}_0000{FILE_ENDING}")
        write_image(gt_mask, label_geometry, out / "labelsTr" / f"{job.case}{FILE_ENDING}")
    if FINE_DATASET_ID not in s.stages and MASSES_DATASET_ID not in s.stages:
        return CaseResult(job.case, geometry.to_dict(), [], 0, warnings)

    if job.prediction is None:
        roi_mask, jitter = gt_mask, s.jitter_mm
    else:
        prediction, pred_geometry = read_image(job.prediction, view=True)
        _check_same_grid(geometry, job.image, pred_geometry, job.prediction)
        roi_mask, jitter = kidney_mask(prediction), s.jitter_mm
        del prediction
    spacing = geometry.spacing_np
    rois = case_rois(roi_mask, spacing, s.margin_mm, s.min_volume_mm3, jitter, case_rng(s.seed, job.case))
    if not rois:
        warnings.append(f"{job.case}: no kidney in {'the prediction' if job.prediction else 'the label'}, no ROI")
        return CaseResult(job.case, geometry.to_dict(), [], uncovered_voxels(gt_mask, []), warnings)
    uncovered = uncovered_voxels(gt_mask, [b for b, _ in rois])

    ct, ct_geometry = read_ct(job.image, view=True)  # the one CT policy (NaN/inf refused), no copy
    records = []
    for i, (box, base) in enumerate(rois):
        record = crop_record(job.case, i, box, ct_geometry, job.image_rel, s.margin_mm, box_before_jitter=base,
                             jitter_mm=jitter)
        ct_file = None
        if FINE_DATASET_ID in s.stages:
            out = Path(job.out[FINE_DATASET_ID])
            ct_file = out / "imagesTr" / f"{record.crop_id}_0000{FILE_ENDING}"
            write_ct_crop(ct, record, ct_file)
            write_crop(gt_mask, record, out / "labelsTr" / f"{record.crop_id}{FILE_ENDING}")
        if MASSES_DATASET_ID in s.stages:
            out = Path(job.out[MASSES_DATASET_ID])
            dst = out / "imagesTr" / f"{record.crop_id}_0000{FILE_ENDING}"
            if ct_file is not None:
                atomic_copy(ct_file, dst)  # same crop, same bytes: hardlink
            else:
                write_ct_crop(ct, record, dst)
            write_crop(roi_mask, record, out / "imagesTr" / f"{record.crop_id}_0001{FILE_ENDING}")
            write_crop(label, record, out / "labelsTr" / f"{record.crop_id}{FILE_ENDING}", encode_masses)
        records.append({"crop_id": record.crop_id, **record.to_dict()})
    if uncovered:
        warnings.append(f"{job.case}: {uncovered} ground-truth kidney/mass voxels lie outside every ROI")
    return CaseResult(job.case, geometry.to_dict(), records, uncovered, warnings)


# ---------------------------------------------------------------- whole dataset


def stage_splits(case_ids: Sequence[str], crop_cases: dict[str, str] | None = None, n_splits: int = 5) -> list[dict]:
    """nnU-Net's default 5-fold split of the source cases (same seed and order as nnU-Net uses for 220/221),
    mapped to crop ids when ``crop_cases`` (crop id -> case) is given, so both ROIs of a patient share a fold."""
    cases = sorted(case_ids)
    if len(cases) < n_splits:
        return []
    splits = generate_crossval_split(cases, seed=12345, n_splits=n_splits)
    if crop_cases is None:
        return [{"train": [str(c) for c in f["train"]], "val": [str(c) for c in f["val"]]} for f in splits]
    out = []
    for f in splits:
        train, val = set(f["train"]), set(f["val"])
        out.append(
            {
                "train": sorted(c for c, k in crop_cases.items() if k in train),
                "val": sorted(c for c, k in crop_cases.items() if k in val),
            }
        )
    return out


def _list_source_cases(source: Path) -> list[str]:
    labels = sorted(p.name[: -len(FILE_ENDING)] for p in (source / "labelsTr").glob(f"case_*{FILE_ENDING}"))
    if not labels:
        raise KitsInputError(f"{source / 'labelsTr'}: no case_*{FILE_ENDING} label files")
    for c in labels:
        image = source / "imagesTr" / f"{c}_0000{FILE_ENDING}"
        if not image.is_file():
            raise KitsInputError(f"{c}: missing image {image}")
    return labels


def derive_stages(
    dataset_id: int = RAW_DATASET_ID,
    raw: str | os.PathLike | None = None,
    margin_mm: float = DEFAULT_MARGIN_MM,
    jitter_mm: float | None = None,
    seed: int = DEFAULT_SEED,
    min_volume_mm3: float = DEFAULT_MIN_ROI_VOLUME_MM3,
    overwrite: bool = False,
    from_predictions: str | os.PathLike | None = None,
    stages: Sequence[int] | None = None,
    num_processes: int = 1,
) -> dict[int, Path]:
    """Build the requested stage datasets (default: 221, 222, 223; with predictions 222 and 223).

    ``jitter_mm`` defaults to 10 mm for ground-truth ROIs and 0 for ROIs from predictions (their own
    errors are the variation to train on). Returns stage id -> dataset folder.
    """
    if margin_mm < 0 or (jitter_mm is not None and jitter_mm < 0) or min_volume_mm3 < 0:
        raise KitsInputError("--margin-mm, --jitter-mm and --min-volume-mm3 must not be negative")
    root = raw_root(raw)
    source = find_dataset(root, dataset_id)
    if stages is None:
        stages = (FINE_DATASET_ID, MASSES_DATASET_ID) if from_predictions else ALL_STAGES
    stages = tuple(sorted(set(int(s) for s in stages)))
    if not stages or any(s not in ALL_STAGES for s in stages):
        raise KitsInputError(f"stages must be among {ALL_STAGES}, got {stages}")
    if jitter_mm is None:
        jitter_mm = 0.0 if from_predictions else DEFAULT_JITTER_MM
    cases = _list_source_cases(source)
    predictions: dict[str, str | None] = dict.fromkeys(cases)
    if from_predictions is not None:
        pdir = Path(from_predictions)
        if not pdir.is_dir():
            raise KitsInputError(f"{pdir}: predictions folder not found")
        missing = [c for c in cases if not (pdir / f"{c}{FILE_ENDING}").is_file()]
        if missing:
            raise KitsInputError(f"{pdir}: no prediction for {len(missing)} case(s), first {missing[0]}{FILE_ENDING}")
        predictions = {c: str((pdir / f"{c}{FILE_ENDING}").resolve()) for c in cases}

    targets = [root / STAGE_DATASET_NAMES[s] for s in stages]
    settings = Settings(float(margin_mm), float(jitter_mm), int(seed), float(min_volume_mm3), stages)
    with staged_datasets(targets, overwrite) as staging:
        out = {s: str(p) for s, p in zip(stages, staging)}
        for p in staging:
            (p / "imagesTr").mkdir()
            (p / "labelsTr").mkdir()
        jobs = [
            CaseJob(
                case=c,
                image=str(source / "imagesTr" / f"{c}_0000{FILE_ENDING}"),
                label=str(source / "labelsTr" / f"{c}{FILE_ENDING}"),
                image_rel=os.path.relpath(source / "imagesTr" / f"{c}_0000{FILE_ENDING}", targets[-1]),
                prediction=predictions[c],
                out=out,
                settings=settings,
            )
            for c in cases
        ]
        results = list(run_jobs(derive_case, jobs, num_processes, "derive-stages"))
        for r in results:
            for w in r.warnings:
                tqdm.write(f"warning: {w}")
        _write_metadata(source, cases, results, out, settings, from_predictions)
    return dict(zip(stages, targets))


def _write_metadata(source, cases, results, out, settings: Settings, from_predictions) -> None:
    import json

    records = [CropRecord.from_dict(d["crop_id"], {k: v for k, v in d.items() if k != "crop_id"}) for r in results
               for d in r.records]
    crop_cases = {r.crop_id: r.case for r in records}
    geometries = {r.case: Geometry.from_dict(r.geometry) for r in results}
    meta = {
        "source_dataset": source.name,
        "roi_source": str(Path(from_predictions).resolve()) if from_predictions else "ground_truth",
        "margin_mm": settings.margin_mm,
        "min_volume_mm3": settings.min_volume_mm3,
        "jitter_mm": settings.jitter_mm,
        "jitter_distribution": JITTER_DISTRIBUTION,
        "seed": settings.seed,
        "box_order": "half-open [[start, stop], ...] in file numpy order (SimpleITK GetArrayFromImage order)",
        "uncovered_foreground_voxels": {r.case: r.uncovered for r in results if r.uncovered},
    }

    def dump(path: Path, splits: list) -> None:
        if splits:  # fewer cases than folds: leave the split to nnU-Net
            path.write_text(json.dumps(splits, indent=1))

    if COARSE_DATASET_ID in out:
        p = Path(out[COARSE_DATASET_ID])
        write_dataset_json(p, {0: "CT"}, BINARY_LABELS, len(cases), name="KiTS2023Coarse",
                           description="Full CT; label 1 = kidney, tumor or cyst (coarse stage, 3d_lowres)")
        dump(p / "splits_final.json", stage_splits(cases))
    if FINE_DATASET_ID in out:
        p = Path(out[FINE_DATASET_ID])
        write_dataset_json(p, {0: "CT"}, BINARY_LABELS, len(records), name="KiTS2023Kidney",
                           description="Kidney ROI crops of the CT; label 1 = kidney, tumor or cyst")
        write_crops_json(p / CROPS_JSON, records, geometries, **meta)
        dump(p / "splits_final.json", stage_splits(cases, crop_cases))
    if MASSES_DATASET_ID in out:
        p = Path(out[MASSES_DATASET_ID])
        write_dataset_json(p, MASSES_CHANNELS, MASSES_LABELS, len(records), MASSES_REGIONS_CLASS_ORDER,
                           name="KiTS2023Masses",
                           description="Kidney ROI crops: CT + binary kidney mask; labels 0 background/kidney, "
                           "1 tumor, 2 cyst (kits_plugins.utilities.labels.decode_masses: 1 -> 2, 2 -> 3)")
        write_crops_json(p / CROPS_JSON, records, geometries, **meta)
        dump(p / "splits_final.json", stage_splits(cases, crop_cases))
