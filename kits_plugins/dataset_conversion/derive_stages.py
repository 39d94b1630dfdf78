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
  kidney+masses mask (``_0001``, from the ground truth, from ``--from-predictions``, or, with ``--masks-from``,
  from stage-222 predictions of these very crops), and labels 0 background/kidney, 1 tumor, 2 cyst trained as
  regions masses (1, 2) and tumor (1).

Train as you infer: besides the seeded jitter, a share of the ROIs is truncated on one face into the kidney
(a coarse under-segmentation), and with ``--from-predictions`` the coarse model's false-positive ROIs are kept
with their empty labels; every crop's ``sampling`` is recorded in crops.json.
"""

from __future__ import annotations

import math
import os
import zlib
from collections import Counter
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
    crop_geometry,
    crop_header_mismatch,
    crop_record,
    load_crops,
    read_crop_prediction,
    read_crops_document,
    records_by_case,
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
# Ground-truth ROIs: 15% of the crops cut up to 15 mm (the default margin) into the kidney on one face, i.e. a coarse
# model that missed up to 30 mm of one pole; most crops stay whole, as most coarse ROIs are at inference.
DEFAULT_TRUNCATE_SHARE = 0.15
DEFAULT_TRUNCATE_MAX_MM = 15.0
TRUNCATION_DISTRIBUTION = (
    "per ROI with probability truncate_share: one of its 6 faces (uniform) moved to k voxels inside the ground-truth "
    "kidney+masses extent of the ROI, k uniform in 1..floor(truncate_max_mm / spacing of that axis), at most the "
    "extent minus one voxel (no truncation where that leaves no choice); the rest of the box is kept"
)
TRUNCATION_STREAM = 1  # case_rng stream of the truncation draws: the jitter (stream 0) stays as without truncation
# Ground-truth ROIs: by default none extended. With a share > 0, that share of the whole crops reaches up to
# extend_max_mm further on one face, as a coarse model's box does when it merges a neighbouring organ into the
# kidney's component; the kidney then lies off-centre in a crop larger than the patch, beside organs labelled
# background.
DEFAULT_EXTEND_SHARE = 0.0
DEFAULT_EXTEND_MAX_MM = 60.0
EXTENSION_DISTRIBUTION = (
    "per whole (not truncated) ROI with probability extend_share: one of its 6 faces (uniform) moved k voxels "
    "outwards, k uniform in 1..ceil(extend_max_mm / spacing of that axis), clamped to the image (no extension where "
    "the face lies on the image border); the rest of the box is kept"
)
EXTENSION_STREAM = 2  # case_rng stream of the extension draws: jitter and truncation stay as without extension
MASK_BINARISATION = "kits_plugins.utilities.labels.kidney_mask: any label > 0 (as kits predict binarises stage 222)"

# ---------------------------------------------------------------- pure array functions


def case_rng(seed: int, case: str, stream: int = 0) -> np.random.Generator:
    """Random generator of one case: the same draws whatever the order or number of workers. ``stream`` separates
    independent draws (0 the jitter, :data:`TRUNCATION_STREAM` the truncation, :data:`EXTENSION_STREAM` the
    extension), so one does not shift the other."""
    return np.random.default_rng([int(seed), zlib.crc32(case.encode())] + ([int(stream)] if stream else []))


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


@dataclass(frozen=True)
class SampledRoi:
    """One training crop: its box, the box before truncation or extension and before jitter, and its crops.json
    fields (``sampling``: full | truncated | extended | false_positive; for truncated and extended crops the face and
    depth, for truncated ones the lost voxels)."""

    box: roi.Box
    full_box: roi.Box
    box_before_jitter: roi.Box
    fields: dict


def truncation_depth(box: roi.Box, extent: roi.Box, face: roi.Face, draw: float, spacing_np: Sequence[float],
                     max_mm: float) -> tuple[int, int] | None:
    """(voxels to move ``face`` of ``box`` inward, of which inside the kidney) for a cut ``k`` voxels into
    ``extent`` (the kidney's box, relative to ``box``), ``k = 1 + floor(draw * k_max)`` with ``draw`` in [0, 1) and
    ``k_max`` the whole voxels in ``max_mm`` (at most the extent minus one voxel); None when ``k_max`` < 1."""
    axis, side = face
    k_max = min(int(math.floor(max_mm / float(spacing_np[axis]) + 1e-9)), extent[axis][1] - extent[axis][0] - 1)
    if k_max < 1:
        return None
    k = 1 + int(draw * k_max)
    gap = extent[axis][0] if side == 0 else (box[axis][1] - box[axis][0]) - extent[axis][1]
    return gap + k, k


def extension_depth(box: roi.Box, face: roi.Face, draw: float, spacing_np: Sequence[float], max_mm: float,
                    shape: Sequence[int]) -> int | None:
    """Voxels to move ``face`` of ``box`` outwards: ``1 + floor(draw * k_max)`` with ``draw`` in [0, 1) and ``k_max``
    the whole voxels covering ``max_mm``, clamped to the image of ``shape``; None when nothing can be added."""
    axis, side = face
    room = int(box[axis][0]) if side == 0 else int(shape[axis]) - int(box[axis][1])
    k_max = roi.mm_to_voxels(max_mm, [spacing_np[axis]])[0]
    if k_max < 1 or room < 1:
        return None
    return min(1 + int(draw * k_max), room)


def sample_rois(
    rois: Sequence[tuple[roi.Box, roi.Box]],
    gt_mask: np.ndarray,
    spacing_np: Sequence[float],
    truncate_share: float,
    truncate_max_mm: float,
    rng: np.random.Generator,
    from_prediction: bool,
    extend_share: float = 0.0,
    extend_max_mm: float = DEFAULT_EXTEND_MAX_MM,
    extend_rng: np.random.Generator | None = None,
) -> list[SampledRoi]:
    """Training crops of one case from its ROIs (box, box before jitter), as the coarse stage errs at inference.

    A ROI holding no ground-truth kidney+masses voxel (only possible for ROIs from predictions) is a coarse false
    positive: ``false_positive``, with an all-zero label. Any other is ``truncated`` with probability
    ``truncate_share`` (:data:`TRUNCATION_DISTRIBUTION`, :func:`truncation_depth`); one that stays whole is
    ``extended`` with probability ``extend_share`` (:data:`EXTENSION_DISTRIBUTION`, :func:`extension_depth`, draws
    from ``extend_rng``), else ``full``. Three numbers are drawn per ROI from each generator whatever happens, so a
    ROI's draws depend on neither the others nor the shares.
    """
    if extend_share > 0 and extend_rng is None:
        raise ValueError("extension needs its own random generator")
    out = []
    for box, base in rois:
        u, face_index, draw = float(rng.random()), int(rng.integers(6)), float(rng.random())
        if extend_rng is not None:
            eu, e_face_index, e_draw = float(extend_rng.random()), int(extend_rng.integers(6)), float(extend_rng.random())
        else:
            eu, e_face_index, e_draw = 1.0, 0, 0.0
        part = roi.crop(gt_mask, box)
        extent = roi.outer_box(part)
        if extent is None:
            out.append(SampledRoi(box, box, base, {"sampling": "false_positive" if from_prediction else "full"}))
            continue
        face = (face_index // 2, face_index % 2)
        depth = truncation_depth(box, extent, face, draw, spacing_np, truncate_max_mm) if u < truncate_share else None
        if depth is None:
            e_face = (e_face_index // 2, e_face_index % 2)
            grow = (extension_depth(box, e_face, e_draw, spacing_np, extend_max_mm, gt_mask.shape)
                    if eu < extend_share else None)
            if grow is None:
                out.append(SampledRoi(box, box, base, {"sampling": "full"}))
                continue
            grown = roi.extend_box(box, e_face, grow)
            out.append(SampledRoi(grown, box, base, {
                "sampling": "extended",
                "extended_side": [e_face[0], "start" if e_face[1] == 0 else "stop"],
                "extended_mm": float(grow * float(spacing_np[e_face[0]])),
                "box_before_extension": [list(ax) for ax in box],
            }))
            continue
        cut = roi.truncate_box(box, face, depth[0])
        lost = int(np.count_nonzero(part)) - int(np.count_nonzero(roi.crop(gt_mask, cut)))
        fields: dict[str, object] = {
            "sampling": "truncated",
            "truncated_side": [face[0], "start" if face[1] == 0 else "stop"],
            "truncated_mm": float(depth[1] * float(spacing_np[face[0]])),
            "box_before_truncation": [list(ax) for ax in box],
            "truncated_voxels": lost,
        }
        out.append(SampledRoi(cut, box, base, fields))
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
    truncate_share: float = DEFAULT_TRUNCATE_SHARE
    truncate_max_mm: float = DEFAULT_TRUNCATE_MAX_MM
    drop_false_positives: bool = False
    extend_share: float = DEFAULT_EXTEND_SHARE
    extend_max_mm: float = DEFAULT_EXTEND_MAX_MM


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
    uncovered: int  # ground-truth foreground voxels outside every ROI (before truncation)
    warnings: list[str]
    truncated: int = 0  # ground-truth foreground voxels left outside on purpose by truncated crops


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
    sampled = sample_rois(rois, gt_mask, spacing, s.truncate_share, s.truncate_max_mm,
                          case_rng(s.seed, job.case, TRUNCATION_STREAM), from_prediction=job.prediction is not None,
                          extend_share=s.extend_share, extend_max_mm=s.extend_max_mm,
                          extend_rng=case_rng(s.seed, job.case, EXTENSION_STREAM))
    if s.drop_false_positives:
        sampled = [r for r in sampled if r.fields["sampling"] != "false_positive"]
    if not sampled:
        what = "no kidney" if not rois else "only false-positive ROIs (dropped)"
        warnings.append(f"{job.case}: {what} in {'the prediction' if job.prediction else 'the label'}, no ROI")
        return CaseResult(job.case, geometry.to_dict(), [], uncovered_voxels(gt_mask, []), warnings)
    uncovered = uncovered_voxels(gt_mask, [r.full_box for r in sampled])

    ct, ct_geometry = read_ct(job.image, view=True)  # the one CT policy (NaN/inf refused), no copy
    records = []
    for i, sample in enumerate(sampled):
        record = crop_record(job.case, i, sample.box, ct_geometry, job.image_rel, s.margin_mm,
                             box_before_jitter=sample.box_before_jitter, jitter_mm=jitter, **sample.fields)
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
    truncated = sum(int(r.fields.get("truncated_voxels", 0)) for r in sampled)
    if uncovered:
        warnings.append(f"{job.case}: {uncovered} ground-truth kidney/mass voxels lie outside every ROI")
    return CaseResult(job.case, geometry.to_dict(), records, uncovered, warnings, truncated)


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
    margin_mm: float | None = None,
    jitter_mm: float | None = None,
    seed: int | None = None,
    min_volume_mm3: float | None = None,
    overwrite: bool = False,
    from_predictions: str | os.PathLike | None = None,
    stages: Sequence[int] | None = None,
    num_processes: int = 1,
    truncate_share: float | None = None,
    truncate_max_mm: float | None = None,
    drop_false_positives: bool = False,
    masks_from: str | os.PathLike | None = None,
    extend_share: float | None = None,
    extend_max_mm: float | None = None,
) -> dict[int, Path]:
    """Build the requested stage datasets (default: 221, 222, 223; with predictions 222 and 223).

    Unset options take their defaults (:func:`resolve_settings`). With ``masks_from`` only 223 is rebuilt, on
    Dataset222's crops (:func:`derive_mask_channel`), and the options that shape boxes must stay unset.
    Returns stage id -> dataset folder.
    """
    if masks_from is not None:
        _refuse_box_options_with_masks_from(margin_mm, jitter_mm, seed, min_volume_mm3, from_predictions,
                                            truncate_share, truncate_max_mm, drop_false_positives, stages,
                                            extend_share, extend_max_mm)
        root = raw_root(raw)
        target = derive_mask_channel(root, find_dataset(root, dataset_id), masks_from, overwrite, num_processes)
        return {MASSES_DATASET_ID: target}
    if stages is None:
        stages = (FINE_DATASET_ID, MASSES_DATASET_ID) if from_predictions else ALL_STAGES
    stages = tuple(sorted(set(int(s) for s in stages)))
    if not stages or any(s not in ALL_STAGES for s in stages):
        raise KitsInputError(f"stages must be among {ALL_STAGES}, got {stages}")
    settings = resolve_settings(from_predictions is not None, stages, margin_mm, jitter_mm, seed, min_volume_mm3,
                                truncate_share, truncate_max_mm, drop_false_positives, extend_share, extend_max_mm)
    root = raw_root(raw)
    source = find_dataset(root, dataset_id)
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
        if not any(r.records for r in results) and {FINE_DATASET_ID, MASSES_DATASET_ID} & set(stages):
            marks = f"the predictions in {from_predictions}" if from_predictions else "the labels"
            raise KitsInputError(f"{source}: no kidney ROI in any of its {len(cases)} case(s) ({marks} mark no kidney "
                                 f"component): stages 222/223 would have no training case")
        _report(results, settings)
        _write_metadata(source, cases, results, out, settings, from_predictions)
    return dict(zip(stages, targets))


def resolve_settings(
    from_predictions: bool,
    stages: tuple[int, ...] = ALL_STAGES,
    margin_mm: float | None = None,
    jitter_mm: float | None = None,
    seed: int | None = None,
    min_volume_mm3: float | None = None,
    truncate_share: float | None = None,
    truncate_max_mm: float | None = None,
    drop_false_positives: bool = False,
    extend_share: float | None = None,
    extend_max_mm: float | None = None,
) -> Settings:
    """The run's settings, unset ones at their defaults: margin 15 mm, seed 12345, minimum ROI volume 2000 mm3,
    truncation up to 15 mm; jitter 10 mm and truncate share 0.15 for ground-truth ROIs, both 0 for ROIs from
    predictions (the coarse model's own errors are then the variation to train on); extend share 0, up to 60 mm.
    Bad values are one error."""
    settings = Settings(
        margin_mm=DEFAULT_MARGIN_MM if margin_mm is None else float(margin_mm),
        jitter_mm=(0.0 if from_predictions else DEFAULT_JITTER_MM) if jitter_mm is None else float(jitter_mm),
        seed=DEFAULT_SEED if seed is None else int(seed),
        min_volume_mm3=DEFAULT_MIN_ROI_VOLUME_MM3 if min_volume_mm3 is None else float(min_volume_mm3),
        stages=stages,
        truncate_share=(0.0 if from_predictions else DEFAULT_TRUNCATE_SHARE) if truncate_share is None
        else float(truncate_share),
        truncate_max_mm=DEFAULT_TRUNCATE_MAX_MM if truncate_max_mm is None else float(truncate_max_mm),
        drop_false_positives=bool(drop_false_positives),
        extend_share=DEFAULT_EXTEND_SHARE if extend_share is None else float(extend_share),
        extend_max_mm=DEFAULT_EXTEND_MAX_MM if extend_max_mm is None else float(extend_max_mm),
    )
    if min(settings.margin_mm, settings.jitter_mm, settings.min_volume_mm3, settings.truncate_max_mm,
           settings.extend_max_mm) < 0:
        raise KitsInputError("--margin-mm, --jitter-mm, --min-volume-mm3, --truncate-max-mm and --extend-max-mm "
                             "must not be negative")
    for name, value in (("--truncate-share", settings.truncate_share), ("--extend-share", settings.extend_share)):
        if not 0.0 <= value <= 1.0:
            raise KitsInputError(f"{name} must lie in [0, 1], got {value}")
    if settings.drop_false_positives and not from_predictions:
        raise KitsInputError("--drop-false-positives needs --from-predictions (ground-truth ROIs have no false positives)")
    return settings


def _refuse_box_options_with_masks_from(
    margin_mm: float | None, jitter_mm: float | None, seed: int | None, min_volume_mm3: float | None,
    from_predictions: str | os.PathLike | None, truncate_share: float | None, truncate_max_mm: float | None,
    drop_false_positives: bool, stages: Sequence[int] | None, extend_share: float | None = None,
    extend_max_mm: float | None = None,
) -> None:
    """``--masks-from`` reuses 222's boxes: an option that would shape other boxes is an error, not ignored."""
    options = {
        "--margin-mm": margin_mm, "--jitter-mm": jitter_mm, "--seed": seed, "--min-volume-mm3": min_volume_mm3,
        "--from-predictions": from_predictions, "--truncate-share": truncate_share,
        "--truncate-max-mm": truncate_max_mm, "--drop-false-positives": drop_false_positives or None,
        "--extend-share": extend_share, "--extend-max-mm": extend_max_mm,
    }
    given = [name for name, value in options.items() if value is not None]
    if given:
        raise KitsInputError(f"--masks-from rebuilds Dataset223 on the crops in Dataset222's crops.json, whose boxes "
                             f"were fixed when 222 was derived: drop {', '.join(given)}")
    if stages is not None and {int(s) for s in stages} != {MASSES_DATASET_ID}:
        raise KitsInputError(f"--masks-from builds stage {MASSES_DATASET_ID} only, got --stages {list(stages)}")


def _report(results: Sequence[CaseResult], settings: Settings) -> None:
    """Per-case warnings, and one note each for the crops truncated, extended or kept as false positives on
    purpose."""
    for r in results:
        for w in r.warnings:
            tqdm.write(f"warning: {w}")
    counts = Counter(d["sampling"] for r in results for d in r.records)
    total = sum(counts.values())
    if counts["truncated"]:
        tqdm.write(f"note: {counts['truncated']} of {total} ROIs truncated on purpose (share {settings.truncate_share:g}, "
                   f"up to {settings.truncate_max_mm:g} mm into the kidney), leaving "
                   f"{sum(r.truncated for r in results)} ground-truth kidney/mass voxels outside their crops "
                   f"(crops.json: truncated_foreground_voxels)")
    if counts["extended"]:
        tqdm.write(f"note: {counts['extended']} of {total} ROIs extended on purpose on one face (share "
                   f"{settings.extend_share:g}, up to {settings.extend_max_mm:g} mm past the margin)")
    if counts["false_positive"]:
        tqdm.write(f"note: {counts['false_positive']} of {total} ROIs are coarse false positives (no ground-truth "
                   "kidney inside), kept with all-zero labels")


# ---------------------------------------------------------------- 223's mask channel from stage-222 predictions


@dataclass(frozen=True)
class MaskJob:
    case: str
    label: str  # source label map
    records: tuple[CropRecord, ...]  # this case's crops in Dataset222's crops.json
    fine_images: str  # Dataset222/imagesTr: the CT crops the stage-222 predictions were made on
    predictions: str  # the --masks-from folder
    out: str  # staging folder of Dataset223


def derive_masks_case(job: MaskJob) -> None:
    """One case's 223 crops: 222's CT crop (hardlink), the binarised stage-222 prediction, the encoded label."""
    label, geometry = read_label(job.label, max_label=MAX_LABEL, view=True)
    out = Path(job.out)
    for r in job.records:
        if not geometry.matches(r.source_geometry):
            raise KitsInputError(f"{job.label}: header differs from the source of {r.crop_id} in crops.json "
                                 f"({geometry.describe_mismatch(r.source_geometry)})")
        prediction = read_crop_prediction(Path(job.predictions) / f"{r.crop_id}{FILE_ENDING}", r)
        atomic_copy(Path(job.fine_images) / f"{r.crop_id}_0000{FILE_ENDING}",
                    out / "imagesTr" / f"{r.crop_id}_0000{FILE_ENDING}")
        write_image(kidney_mask(prediction), crop_geometry(r), out / "imagesTr" / f"{r.crop_id}_0001{FILE_ENDING}")
        write_crop(label, r, out / "labelsTr" / f"{r.crop_id}{FILE_ENDING}", encode_masses)


def _joined(items: Sequence[str]) -> str:
    return ", ".join(items)


def check_mask_inputs(records: dict[str, CropRecord], fine: Path, source: Path, predictions: Path) -> None:
    """Before anything is written: every crop of 222's crops.json has a stage-222 prediction made on it (its
    header is the crop's, :func:`kits_plugins.utilities.crops.crop_header_mismatch`), its CT crop in 222 and its
    source label map; each kind of problem is one error listing every crop (or case) concerned."""
    crops_json = fine / CROPS_JSON
    ids = sorted(records)
    missing = [cid for cid in ids if not (predictions / f"{cid}{FILE_ENDING}").is_file()]
    if missing:
        raise KitsInputError(f"{predictions}: no stage-222 prediction <crop id>{FILE_ENDING} for {len(missing)} of "
                             f"{len(ids)} crop(s) of {crops_json}: {_joined(missing)}")
    no_ct = [cid for cid in ids if not (fine / "imagesTr" / f"{cid}_0000{FILE_ENDING}").is_file()]
    if no_ct:
        raise KitsInputError(f"{fine / 'imagesTr'}: no CT crop for {len(no_ct)} crop(s) of {crops_json}: {_joined(no_ct)}")
    no_label = sorted({r.case for r in records.values() if not (source / "labelsTr" / f"{r.case}{FILE_ENDING}").is_file()})
    if no_label:
        raise KitsInputError(f"{source / 'labelsTr'}: no label map for {_joined(no_label)} (cases of {crops_json})")
    wrong = []
    for cid in ids:
        problem = crop_header_mismatch(read_geometry(predictions / f"{cid}{FILE_ENDING}"), records[cid])
        if problem is not None:
            wrong.append(f"{cid} ({problem})")
    if wrong:
        raise KitsInputError(f"{predictions}: {len(wrong)} stage-222 prediction(s) were not made on the crops of "
                             f"{crops_json} (header differs from the crop): {'; '.join(wrong)}")
    extra = sorted(p.name for p in predictions.glob(f"*{FILE_ENDING}") if p.name[: -len(FILE_ENDING)] not in records)
    if extra:
        tqdm.write(f"warning: {predictions}: {len(extra)} file(s) match no crop of {crops_json}, ignored: "
                   f"{_joined(extra[:5])}{', ...' if len(extra) > 5 else ''}")


def derive_mask_channel(
    root: Path, source: Path, masks_from: str | os.PathLike, overwrite: bool = False, num_processes: int = 1
) -> Path:
    """Rebuild Dataset223 with its ``_0001`` channel from stage-222 predictions ``<crop id>.nii.gz`` of 222's crops,
    binarised as ``kits predict`` binarises its 222 output (:func:`kits_plugins.utilities.labels.kidney_mask`).

    The crops are the records of Dataset222's crops.json, read, never recomputed: the same ids and boxes as the
    crops the predictions were made on, whatever seed, jitter, truncation or coarse predictions made them. Each
    prediction's header must be its crop's, so predictions of a 222 rebuilt since are an error, not a silent
    mismatch. CT crops are 222's (hardlinks), labels come from the source; crops.json keeps 222's records and
    metadata and records the mask's origin under ``mask_channel``. Everything is checked before anything is
    written. Returns the dataset folder.
    """
    predictions = Path(masks_from)
    if not predictions.is_dir():
        raise KitsInputError(f"{predictions}: stage-222 predictions folder not found")
    fine = find_dataset(root, FINE_DATASET_ID)
    doc = read_crops_document(fine)
    records, cases = load_crops(fine)
    if doc.get("source_dataset", source.name) != source.name:
        raise KitsInputError(f"{fine / CROPS_JSON}: crops of {doc['source_dataset']}, not of {source.name}")
    target = root / STAGE_DATASET_NAMES[MASSES_DATASET_ID]
    if target.resolve() in (predictions.resolve(), *predictions.resolve().parents):
        raise KitsInputError(f"{predictions}: the predictions lie inside {target}, which this command replaces")
    check_mask_inputs(records, fine, source, predictions)
    metadata = {k: v for k, v in doc.items() if k not in ("format", "crops", "cases")}
    metadata["mask_channel"] = {
        "source": "stage_222_predictions",
        "folder": str(predictions.resolve()),
        "binarisation": MASK_BINARISATION,
        "crops_from": str((fine / CROPS_JSON).resolve()),
    }
    with staged_datasets([target], overwrite) as staging:
        out = staging[0]
        (out / "imagesTr").mkdir()
        (out / "labelsTr").mkdir()
        jobs = [
            MaskJob(case, str(source / "labelsTr" / f"{case}{FILE_ENDING}"), tuple(rs), str(fine / "imagesTr"),
                    str(predictions.resolve()), str(out))
            for case, rs in records_by_case(records).items()
        ]
        list(run_jobs(derive_masks_case, jobs, num_processes, "derive-stages --masks-from"))
        _write_masses_dataset_json(out, len(records))
        write_crops_json(out / CROPS_JSON, records.values(), cases, **metadata)
        if (fine / "splits_final.json").is_file():  # the folds the 222 predictions were made with
            atomic_copy(fine / "splits_final.json", out / "splits_final.json", link=False)
    return target


# ---------------------------------------------------------------- metadata


def _mask_channel(from_predictions: str | os.PathLike | None) -> dict:
    """Where a derive-stages run takes 223's ``_0001`` channel from (crops.json ``mask_channel``)."""
    if from_predictions is None:
        return {"source": "ground_truth", "folder": None, "binarisation": MASK_BINARISATION}
    return {"source": "coarse_predictions", "folder": str(Path(from_predictions).resolve()),
            "binarisation": MASK_BINARISATION}


def _write_masses_dataset_json(folder: Path, n: int) -> None:
    write_dataset_json(folder, MASSES_CHANNELS, MASSES_LABELS, n, MASSES_REGIONS_CLASS_ORDER, name="KiTS2023Masses",
                       description="Kidney ROI crops: CT + binary kidney mask; labels 0 background/kidney, "
                       "1 tumor, 2 cyst (kits_plugins.utilities.labels.decode_masses: 1 -> 2, 2 -> 3)")


def _write_metadata(source, cases, results, out, settings: Settings, from_predictions) -> None:
    import json

    records = [CropRecord.from_dict(d["crop_id"], {k: v for k, v in d.items() if k != "crop_id"}) for r in results
               for d in r.records]
    crop_cases = {r.crop_id: r.case for r in records}
    geometries = {r.case: Geometry.from_dict(r.geometry) for r in results}
    if from_predictions is None:
        false_positives = "none (ground-truth ROIs)"
    else:
        false_positives = "dropped" if settings.drop_false_positives else "kept, all-zero labels"
    meta = {
        "source_dataset": source.name,
        "roi_source": str(Path(from_predictions).resolve()) if from_predictions else "ground_truth",
        "margin_mm": settings.margin_mm,
        "min_volume_mm3": settings.min_volume_mm3,
        "jitter_mm": settings.jitter_mm,
        "jitter_distribution": JITTER_DISTRIBUTION,
        "seed": settings.seed,
        "truncate_share": settings.truncate_share,
        "truncate_max_mm": settings.truncate_max_mm,
        "truncation_distribution": TRUNCATION_DISTRIBUTION,
        "extend_share": settings.extend_share,
        "extend_max_mm": settings.extend_max_mm,
        "extension_distribution": EXTENSION_DISTRIBUTION,
        "false_positive_rois": false_positives,
        "sampling_counts": dict(sorted(Counter(r.extra.get("sampling", "full") for r in records).items())),
        "box_order": "half-open [[start, stop], ...] in file numpy order (SimpleITK GetArrayFromImage order)",
        "uncovered_foreground_voxels": {r.case: r.uncovered for r in results if r.uncovered},
        "truncated_foreground_voxels": {r.case: r.truncated for r in results if r.truncated},
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
        _write_masses_dataset_json(p, len(records))
        write_crops_json(p / CROPS_JSON, records, geometries, mask_channel=_mask_channel(from_predictions), **meta)
        dump(p / "splits_final.json", stage_splits(cases, crop_cases))
