"""File-level helpers of the cascade: input discovery, ROI crops and ``crops.json``, paste-back.

``kits crop-rois`` and ``kits paste-rois`` let users run the cascade stage by stage with
``nnUNetv2_predict``; ``kits predict`` does the same in memory. Boxes come from
``kits_plugins.utilities.roi.roi_boxes`` in file order (SimpleITK numpy order), exactly as in
``kits derive-stages``, and every crop keeps the source spacing and direction with the origin of its
first voxel, so pasting back restores the source header exactly.

``crops.json`` schema (shared with ``derive-stages``)::

    {"crops": {"case_00001_roi0": {"case": "case_00001", "box": [[z0, z1], [y0, y1], [x0, x1]],
                                   "source_shape": [Z, Y, X], "source_geometry": Geometry.to_dict()}},
     "cases": {"case_00001": Geometry.to_dict()}}

``cases`` (written by ``crop-rois``) also lists cases without any ROI, so their empty label map can be
written by ``paste-rois``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kits_plugins.constants import FILE_ENDING
from kits_plugins.utilities import roi
from kits_plugins.utilities.image_io import Geometry, KitsInputError, read_geometry, read_image, read_label, write_image

_CHANNEL = re.compile(r"_(\d{4})\.nii\.gz$")


def case_id_from_path(path: str | os.PathLike) -> str:
    """``case_00001_0000.nii.gz`` / ``case_00001.nii.gz`` / ``case_00001/imaging.nii.gz`` -> ``case_00001``."""
    path = Path(path)
    if path.name in ("imaging.nii.gz", "imaging.nii"):
        return path.parent.name
    name = _CHANNEL.sub("", path.name)
    for ending in (".nii.gz", ".nii"):
        if name.endswith(ending):
            return name[: -len(ending)]
    return name


def find_ct_inputs(path: str | os.PathLike) -> list[tuple[str, Path]]:
    """(case id, CT file) pairs from a file, a folder of NIfTIs or the KiTS layout, sorted by case id.

    A folder is read as the KiTS layout if it has ``*/imaging.nii.gz``, else as nnU-Net input if it has
    ``*_0000.nii.gz`` files (other channels are ignored), else every ``*.nii.gz`` is a case.
    """
    path = Path(path)
    if path.is_file():
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
    if not files:
        raise KitsInputError(
            f"{path}: no CT found (looked for case_XXXXX/imaging.nii.gz, *_0000.nii.gz and *.nii.gz)"
        )
    pairs = [(case_id_from_path(f), f) for f in files]
    seen: dict[str, Path] = {}
    for case, f in pairs:
        if case in seen:
            raise KitsInputError(f"{f}: case id {case} also given by {seen[case]}")
        seen[case] = f
    return sorted(pairs)


def crop_id(case: str, k: int) -> str:
    return f"{case}_roi{k}"


def crop_entry(case: str, box: roi.Box, geometry: Geometry) -> dict:
    return {
        "case": case,
        "box": [[int(a), int(b)] for a, b in box],
        "source_shape": list(geometry.shape),
        "source_geometry": geometry.to_dict(),
    }


def write_crops_json(path: str | os.PathLike, crops: dict[str, dict], cases: dict[str, dict] | None = None) -> None:
    """Write ``crops.json`` atomically (see module docstring for the schema)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data: dict = {"crops": crops}
    if cases is not None:
        data["cases"] = cases
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def load_crops_json(path: str | os.PathLike) -> dict:
    """Read and check ``crops.json``; returns ``{"crops": {...}, "cases": {case: geometry dict}}``.

    ``cases`` is filled from the crops when the file has none (as written by ``derive-stages``).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise KitsInputError(f"{path}: cannot read crops.json ({e})") from None
    crops = data.get("crops") if isinstance(data, dict) else None
    if not isinstance(crops, dict):
        raise KitsInputError(f"{path}: no 'crops' mapping")
    cases = dict(data.get("cases") or {})
    for cid, c in crops.items():
        missing = {"case", "box", "source_geometry"} - set(c)
        if missing:
            raise KitsInputError(f"{path}: crop {cid} lacks {sorted(missing)}")
        g = Geometry.from_dict(c["source_geometry"])
        if len(c["box"]) != 3 or any(not (0 <= a < b <= n) for (a, b), n in zip(c["box"], g.shape)):
            raise KitsInputError(f"{path}: crop {cid} box {c['box']} does not lie in source shape {g.shape}")
        cases.setdefault(c["case"], c["source_geometry"])
    return {"crops": crops, "cases": cases}


def crops_by_case(crops: dict[str, dict]) -> dict[str, list[tuple[str, roi.Box]]]:
    out: dict[str, list[tuple[str, roi.Box]]] = {}
    for cid, c in sorted(crops.items()):
        out.setdefault(c["case"], []).append((cid, c["box"]))
    return out


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
) -> dict:
    """Write ROI crops ``<crop_id>_0000.nii.gz`` (+ ``_0001`` binary mask channel) and ``crops.json``.

    Boxes come from the full-size masks in ``mask_dir`` (e.g. the coarse 221 prediction; foreground = any
    label > 0) or are reused from ``crops_json`` (so the 223 crops match the 222 crops exactly). The mask
    channel is the crop of the full-size mask, or, with ``roi_mask_dir``, the ROI-sized prediction
    ``<crop_id>.nii.gz`` (e.g. the 222 output), checked to have the crop's header. Returns the crops dict.
    """
    out_dir = Path(out_dir)
    if (mask_dir is None) == (crops_json is None):
        raise KitsInputError("crop-rois: give exactly one of --mask (compute boxes) or --crops (reuse boxes)")
    if with_mask_channel and mask_dir is None and roi_mask_dir is None:
        raise KitsInputError("crop-rois: --with-mask-channel needs --mask or --roi-mask")
    given = load_crops_json(crops_json) if crops_json is not None else None
    by_case = crops_by_case(given["crops"]) if given else {}
    cases = find_ct_inputs(ct_input)
    if given is not None:
        unknown = sorted(set(given["cases"]) - {c for c, _ in cases})
        if unknown:
            raise KitsInputError(f"{crops_json}: cases without CT in {ct_input}: {unknown}")
        cases = [(c, f) for c, f in cases if c in given["cases"]]
    out_dir.mkdir(parents=True, exist_ok=True)
    crops: dict[str, dict] = {}
    case_geoms: dict[str, dict] = {}
    for case, ct_path in tqdm(cases, desc="crop-rois", unit="case"):
        ct, g = read_image(ct_path)
        mask = None
        if mask_dir is not None:
            mpath = mask_file(Path(mask_dir), case)
            mask, mg = read_label(mpath, max_label=255)
            if mask.shape != ct.shape:
                raise KitsInputError(f"{mpath}: mask shape {mask.shape} differs from CT {ct_path} {ct.shape}")
            mask = mask > 0
        if given is not None:
            expected = Geometry.from_dict(given["cases"][case])
            if not g.matches(expected):
                raise KitsInputError(f"{ct_path}: header differs from crops.json ({g.describe_mismatch(expected)})")
            boxes = [(cid, box) for cid, box in by_case.get(case, [])]
        else:
            boxes = [(crop_id(case, k), b) for k, b in enumerate(roi.roi_boxes(mask, g.spacing_np, margin_mm, min_roi_volume_mm3))]
        case_geoms[case] = g.to_dict()
        for cid, box in boxes:
            start = tuple(a for a, _ in box)
            cg = g.with_size(roi.box_shape(box), start)
            write_image(roi.crop(ct, box), cg, out_dir / f"{cid}_0000{FILE_ENDING}")
            if with_mask_channel:
                if roi_mask_dir is not None:
                    rpath = Path(roi_mask_dir) / f"{cid}{FILE_ENDING}"
                    if not rpath.is_file():
                        raise KitsInputError(f"{rpath}: ROI mask for {cid} not found")
                    channel, rg = read_label(rpath, max_label=255)
                    if not rg.matches(cg):
                        raise KitsInputError(f"{rpath}: header differs from crop {cid} ({rg.describe_mismatch(cg)})")
                    channel = channel > 0
                else:
                    channel = roi.crop(mask, box)
                write_image(channel.astype(np.uint8), cg, out_dir / f"{cid}_0001{FILE_ENDING}")
            crops[cid] = crop_entry(case, box, g)
    write_crops_json(out_dir / "crops.json", crops, case_geoms)
    return crops


def paste_roi_labels(shape: tuple[int, ...], patches: Iterable[tuple[roi.Box, np.ndarray]]) -> np.ndarray:
    """Full-size uint8 label map, zero outside the boxes (boxes from ``roi_boxes`` never overlap)."""
    seg = np.zeros(shape, dtype=np.uint8)
    for box, patch in patches:
        roi.paste(seg, patch.astype(np.uint8, copy=False), box)
    return seg


def paste_rois(
    pred_dir: str | os.PathLike,
    crops_json: str | os.PathLike,
    out_dir: str | os.PathLike,
    ref: str | os.PathLike | None = None,
    fine_dir: str | os.PathLike | None = None,
) -> list[Path]:
    """Paste per-ROI predictions ``<crop_id>.nii.gz`` into full-size label maps ``<case>.nii.gz``.

    With ``fine_dir`` (the 222 ROI predictions) the two stages are combined as ``kits predict`` does
    (:func:`kits_plugins.inference.cascade.combine_stage_outputs`). The header is the source geometry
    from ``crops.json``; with ``ref`` (CT file/folder) it is checked against the reference CT header.
    Cases listed in ``crops.json`` without ROIs get an all-zero map.
    """
    from kits_plugins.inference.cascade import combine_stage_outputs

    pred_dir, out_dir = Path(pred_dir), Path(out_dir)
    data = load_crops_json(crops_json)
    by_case = crops_by_case(data["crops"])
    refs = dict(find_ct_inputs(ref)) if ref is not None else {}
    written = []
    for case, gdict in tqdm(sorted(data["cases"].items()), desc="paste-rois", unit="case"):
        g = Geometry.from_dict(gdict)
        if ref is not None:
            if case not in refs:
                raise KitsInputError(f"{ref}: no reference CT for {case}")
            rg = read_geometry(refs[case])
            if not rg.matches(g):
                raise KitsInputError(f"{refs[case]}: header differs from crops.json ({rg.describe_mismatch(g)})")
            g = rg
        patches = []
        for cid, box in by_case.get(case, []):
            cg = g.with_size(roi.box_shape(box), tuple(a for a, _ in box))
            patch = _read_roi_prediction(pred_dir / f"{cid}{FILE_ENDING}", cg)
            if fine_dir is not None:
                fine = _read_roi_prediction(Path(fine_dir) / f"{cid}{FILE_ENDING}", cg)
                patch = combine_stage_outputs(fine > 0, patch)
            patches.append((box, patch))
        out = out_dir / f"{case}{FILE_ENDING}"
        write_image(paste_roi_labels(g.shape, patches), g, out)
        written.append(out)
    return written


def _read_roi_prediction(path: Path, expected: Geometry) -> np.ndarray:
    if not path.is_file():
        raise KitsInputError(f"{path}: ROI prediction not found")
    seg, g = read_label(path, max_label=255)
    if g.size != expected.size or not g.matches(expected, atol=1e-3):
        raise KitsInputError(f"{path}: header differs from its crop ({g.describe_mismatch(expected, atol=1e-3)})")
    if seg.max() > 3:
        raise KitsInputError(f"{path}: labels outside 0-3: {np.unique(seg[seg > 3])[:10].tolist()}")
    return seg


__all__ = [
    "case_id_from_path",
    "crop_rois",
    "find_ct_inputs",
    "load_crops_json",
    "paste_roi_labels",
    "paste_rois",
    "write_crops_json",
]
