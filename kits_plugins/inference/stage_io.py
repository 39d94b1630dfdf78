"""File-level helpers of the cascade: input discovery, ROI crops and ``crops.json``, paste-back.

``kits crop-rois`` and ``kits paste-rois`` let users run the cascade stage by stage with
``nnUNetv2_predict``; ``kits predict`` does the same in memory. Boxes come from
``kits_plugins.utilities.roi.roi_boxes`` in file order (SimpleITK numpy order), exactly as in
``kits derive-stages``, and crops are written by the same functions (:mod:`kits_plugins.utilities.crops`):
every crop keeps the source spacing and direction with the origin of its first voxel, so pasting back
restores the source header exactly.

``crops.json`` is the ``derive-stages`` format (:mod:`kits_plugins.utilities.crops`)::

    {"format": ..., "crops": {"case_00001_roi0": {"case": "case_00001", "image": <source CT, relative>,
        "box": [[z0, z1], [y0, y1], [x0, x1]], "source_shape": [Z, Y, X],
        "source_geometry": Geometry.to_dict(), "margin_mm": 15.0}},
     "cases": {"case_00001": Geometry.to_dict()}}

``cases`` (written here) also lists cases without any ROI, so ``paste-rois`` writes their (empty) label
map too.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kits_plugins.constants import FILE_ENDING
from kits_plugins.utilities import dicom_io, roi
from kits_plugins.utilities.crops import (
    CROPS_JSON,
    CropRecord,
    crop_geometry,
    crop_record,
    crops_json_path,
    load_crops,
    paste_back,
    read_crop_prediction,
    records_by_case,
    write_crop,
    write_crops_json,
    write_ct_crop,
)
from kits_plugins.utilities.ct_io import read_ct, read_ct_geometry
from kits_plugins.utilities.image_io import Geometry, KitsInputError, read_label, write_image
from kits_plugins.utilities.labels import MASSES_LABELS, combine_stage_outputs, decode_masses, kidney_mask
from kits_plugins.utilities.paths import check_id, child_path, refuse_overwriting_inputs

_CHANNEL = re.compile(r"_(\d{4})\.nii\.gz$")


def case_id_from_path(path: str | os.PathLike) -> str:
    """``case_00001_0000.nii.gz`` / ``case_00001.nii.gz`` / ``case_00001/imaging.nii.gz`` -> ``case_00001``
    (not checked; :func:`find_ct_inputs` checks it with :func:`kits_plugins.utilities.paths.check_id`)."""
    path = Path(path)
    if path.name in ("imaging.nii.gz", "imaging.nii"):
        return path.absolute().parent.name  # also for a bare "imaging.nii.gz" in the current folder
    name = _CHANNEL.sub("", path.name)
    for ending in (".nii.gz", ".nii"):
        if name.endswith(ending):
            return name[: -len(ending)]
    return name


def find_ct_inputs(path: str | os.PathLike) -> list[tuple[str, Path]]:
    """(case id, CT) pairs from a file, a folder of NIfTIs, the KiTS layout or DICOM, sorted by case id.

    A folder is read as the KiTS layout if it has ``*/imaging.nii.gz``, else as nnU-Net input if it has
    ``*_0000.nii.gz`` files (other channels are ignored), else every ``*.nii.gz`` is a case. A folder without
    any of these is DICOM: one series folder, or a folder whose immediate subfolders each hold one series; the
    CT of such a case is its series folder, its id from :func:`kits_plugins.utilities.dicom_io.series_case_ids`
    (every series' headers are checked here, before any work). NIfTI CTs and DICOM series in one input, and a
    single DICOM file, are refused. Case ids must be plain names (they name the outputs).
    """
    path = Path(path)
    if path.is_file():
        if dicom_io.is_dicom_file(path):
            raise KitsInputError(f"{path}: a single DICOM file; give the folder holding its series (one series per "
                                 "folder) or a folder of such folders")
        return [(case_id_from_path(path), path)]
    if not path.is_dir():
        raise KitsInputError(f"{path}: input does not exist")
    kits = sorted(p for p in path.glob("*/imaging.nii.gz") if p.is_file())
    if kits:
        files = kits
    else:
        files = sorted(path.glob("*_0000.nii.gz")) or sorted(
            p for p in path.glob("*.nii.gz") if not p.name.startswith(".")
        )
    if files:
        dicom = dicom_io.dicom_folders(path)
        if dicom:
            raise KitsInputError(f"{path}: holds NIfTI CTs ({len(files)}) and DICOM files (in {dicom[0]}); give them "
                                 "as separate inputs")
        pairs = [(check_id(case_id_from_path(f), f), f) for f in files]
    else:
        series = dicom_io.find_dicom_series(path)
        if not series:
            raise KitsInputError(
                f"{path}: no CT found (looked for case_XXXXX/imaging.nii.gz, *_0000.nii.gz, *.nii.gz and DICOM series "
                "in the folder or its subfolders)"
            )
        pairs = list(zip(dicom_io.series_case_ids(series), [s.folder for s in series]))
    seen: dict[str, Path] = {}
    for case, f in pairs:
        if case in seen:
            raise KitsInputError(f"{f}: case id {case} also given by {seen[case]}")
        seen[case] = f
    return sorted(pairs)


def mask_file(mask_dir: Path, case: str) -> Path:
    """``MASK_DIR/case.nii.gz`` (nnUNetv2_predict output naming) or the KiTS ``case/segmentation.nii.gz``."""
    for f in (mask_dir / f"{case}{FILE_ENDING}", mask_dir / case / "segmentation.nii.gz"):
        if f.is_file():
            return f
    raise KitsInputError(f"{mask_dir / (case + FILE_ENDING)}: mask for {case} not found")


def crop_rois(
    ct_input: str | os.PathLike,
    out_dir: str | os.PathLike,
    mask_dir: str | os.PathLike | None = None,
    crops_json: str | os.PathLike | None = None,
    roi_mask_dir: str | os.PathLike | None = None,
    with_mask_channel: bool = False,
    margin_mm: float = 15.0,
    min_roi_volume_mm3: float = 2000.0,
) -> dict[str, CropRecord]:
    """Write ROI crops ``<crop_id>_0000.nii.gz`` (+ ``_0001`` binary mask channel) and ``crops.json``.

    Boxes come from the full-size masks in ``mask_dir`` (e.g. the coarse 221 prediction; foreground = any
    label > 0) or are reused from ``crops_json`` (so the 223 crops match the 222 crops exactly). The mask
    channel is the crop of the full-size mask, or, with ``roi_mask_dir``, the ROI-sized prediction
    ``<crop_id>.nii.gz`` (e.g. the 222 output), checked to have the crop's header. Returns the records.
    """
    out_dir = Path(out_dir)
    if (mask_dir is None) == (crops_json is None):
        raise KitsInputError("crop-rois: give exactly one of --mask (compute boxes) or --crops (reuse boxes)")
    if with_mask_channel and mask_dir is None and roi_mask_dir is None:
        raise KitsInputError("crop-rois: --with-mask-channel needs --mask or --roi-mask")
    given = load_crops(crops_json) if crops_json is not None else None
    crops_source = crops_json_path(crops_json) if crops_json is not None else None
    cases = find_ct_inputs(ct_input)
    if given is not None:
        unknown = sorted(set(given[1]) - {c for c, _ in cases})
        if unknown:
            raise KitsInputError(f"{crops_json}: cases without CT in {ct_input}: {unknown}")
        cases = [(c, f) for c, f in cases if c in given[1]]
        by_case = records_by_case(given[0])
    masks = {c: mask_file(Path(mask_dir), c) for c, _ in cases} if mask_dir is not None else {}
    inputs = [f for _, f in cases] + list(masks.values())
    if crops_source is not None:
        inputs.append(crops_source)
        planned = [r.crop_id for rs in by_case.values() for r in rs]
        if roi_mask_dir is not None:
            inputs += [child_path(roi_mask_dir, f"{cid}{FILE_ENDING}", crops_source) for cid in planned]
        outputs = [child_path(out_dir, f"{cid}_{ch:04d}{FILE_ENDING}", crops_source) for cid in planned for ch in (0, 1)]
    else:
        outputs = []  # crop ids are made here from checked case ids; only crops.json can collide by name
    refuse_overwriting_inputs([*outputs, out_dir / CROPS_JSON], inputs, "kits crop-rois")
    out_dir.mkdir(parents=True, exist_ok=True)
    records: dict[str, CropRecord] = {}
    geometries: dict[str, Geometry] = {}
    for case, ct_path in tqdm(cases, desc="crop-rois", unit="case"):
        ct, g = read_ct(ct_path, view=True)  # only cropped from: no copy
        mask = None
        if mask_dir is not None:
            mpath = masks[case]
            mask, mg = read_label(mpath, max_label=255)
            if not mg.matches(g):
                raise KitsInputError(f"{mpath}: geometry differs from CT {ct_path} ({mg.describe_mismatch(g)})")
            mask = kidney_mask(mask)
        if given is not None:
            if not g.matches(given[1][case]):
                raise KitsInputError(f"{ct_path}: header differs from crops.json ({g.describe_mismatch(given[1][case])})")
            case_records = [
                CropRecord(r.crop_id, case, os.path.relpath(ct_path, out_dir), r.box, g, r.margin_mm)
                for r in by_case.get(case, [])
            ]
        else:
            assert mask is not None  # no crops.json: --mask was given
            boxes = roi.roi_boxes(mask, g.spacing_np, margin_mm, min_roi_volume_mm3)
            rel = os.path.relpath(ct_path, out_dir)
            case_records = [crop_record(case, k, b, g, rel, margin_mm) for k, b in enumerate(boxes)]
        geometries[case] = g
        for r in case_records:
            source = crops_source if crops_source is not None else ct_path
            write_ct_crop(ct, r, child_path(out_dir, f"{r.crop_id}_0000{FILE_ENDING}", source))
            if with_mask_channel:
                channel_path = child_path(out_dir, f"{r.crop_id}_0001{FILE_ENDING}", source)
                if roi_mask_dir is not None:  # an ROI-sized prediction: binarised as kits predict does
                    rpath = child_path(roi_mask_dir, f"{r.crop_id}{FILE_ENDING}", source)
                    write_image(kidney_mask(read_crop_prediction(rpath, r)), crop_geometry(r),
                                channel_path)
                else:
                    assert mask is not None  # a mask channel without --roi-mask needs --mask (checked above)
                    write_crop(mask, r, channel_path)
            records[r.crop_id] = r
    write_crops_json(out_dir / CROPS_JSON, records.values(), geometries)
    return records


def paste_rois(
    pred_dir: str | os.PathLike,
    crops_json: str | os.PathLike,
    out_dir: str | os.PathLike,
    ref: str | os.PathLike | None = None,
    fine_dir: str | os.PathLike | None = None,
) -> list[Path]:
    """Paste per-ROI predictions ``<crop_id>.nii.gz`` into full-size label maps ``<case>.nii.gz``.

    Without ``fine_dir`` the ROI values are pasted unchanged. With ``fine_dir`` (the 222 ROI predictions),
    ``pred_dir`` holds the 223 predictions: they are decoded to KiTS values with the labels of
    ``pred_dir/dataset.json`` (``nnUNetv2_predict`` copies it there; else derive-stages' encoding) and
    combined with the fine mask as ``kits predict`` does
    (:func:`kits_plugins.inference.cascade.combine_stage_outputs`). The header is the source geometry
    from ``crops.json``; with ``ref`` (CT file/folder) it is checked against the reference CT header.
    Cases listed in ``crops.json`` without ROIs get an all-zero map.
    """
    pred_dir, out_dir = Path(pred_dir), Path(out_dir)
    source = crops_json_path(crops_json)
    records, cases = load_crops(crops_json)
    by_case = records_by_case(records)
    refs = dict(find_ct_inputs(ref)) if ref is not None else {}
    inputs = [source, *refs.values()]
    for r in records.values():
        inputs.append(child_path(pred_dir, f"{r.crop_id}{FILE_ENDING}", source))
        if fine_dir is not None:
            inputs.append(child_path(fine_dir, f"{r.crop_id}{FILE_ENDING}", source))
    outputs = {case: child_path(out_dir, f"{case}{FILE_ENDING}", source) for case in cases}
    refuse_overwriting_inputs(outputs.values(), inputs, "kits paste-rois")
    masses_labels = MASSES_LABELS
    if fine_dir is not None and (pred_dir / "dataset.json").is_file():
        masses_labels = json.loads((pred_dir / "dataset.json").read_text())["labels"]
    written = []
    for case, g in tqdm(sorted(cases.items()), desc="paste-rois", unit="case"):
        if ref is not None:
            if case not in refs:
                raise KitsInputError(f"{ref}: no reference CT for {case}")
            rg = read_ct_geometry(refs[case])
            if not rg.matches(g):
                raise KitsInputError(f"{refs[case]}: header differs from crops.json ({rg.describe_mismatch(g)})")
            g = rg
        seg = np.zeros(g.shape, dtype=np.uint8)
        for r in by_case.get(case, []):
            ppath = child_path(pred_dir, f"{r.crop_id}{FILE_ENDING}", source)
            patch = read_crop_prediction(ppath, r)
            if fine_dir is not None:
                fine = read_crop_prediction(child_path(fine_dir, f"{r.crop_id}{FILE_ENDING}", source), r)
                try:
                    masses = decode_masses(patch, masses_labels)
                except ValueError as e:
                    raise KitsInputError(f"{ppath}: {e}") from None
                patch = combine_stage_outputs(kidney_mask(fine), masses)
            paste_back(patch, r, out=seg)
        write_image(seg, g, outputs[case])
        written.append(outputs[case])
    return written
