"""ROI crops: their ids, records, files and ``crops.json``, and exact paste-back (one home for both the
training crops of ``kits derive-stages`` and the inference crops of ``kits crop-rois`` / ``kits predict``).

Each derived dataset with crops (222, 223) holds a ``crops.json`` next to its ``dataset.json``; ``crop-rois``
and ``kits predict --save-probabilities`` write one beside their crops. For every crop id
(``case_00001_roi0``, :func:`crop_id`) it records the source case, the source image (path relative to the
folder of crops.json), the half-open box in file numpy order (SimpleITK order), the source shape and the
source header (``Geometry.to_dict()``), and the margin used; an optional ``cases`` entry lists the header of
every case, ROIs or not. With that record a crop prediction is pasted back into an array of the source shape
and written with the source header, voxel- and header-exact. crops.json travels between users, so its ids
are checked (:func:`kits_plugins.utilities.paths.check_id`) before they become file names.

Every crop file is written by :func:`write_crop` (the source array's box, the crop's header).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kits_plugins.errors import KitsInputError
from kits_plugins.utilities.ct_io import compact_ct
from kits_plugins.utilities.image_io import Geometry, read_label, write_image
from kits_plugins.utilities.paths import check_id
from kits_plugins.utilities.roi import Box, box_shape, crop, paste
from kits_plugins.utilities.staging import atomic_write_bytes

CROPS_JSON = "crops.json"
FORMAT = "kits-cascade crops v1"


@dataclass(frozen=True)
class CropRecord:
    """One ROI crop: its source case and image, its box in the source (file numpy order) and the source header."""

    crop_id: str
    case: str
    image: str  # source image, relative to the folder holding crops.json
    box: Box  # half-open [[start, stop], ...] in file numpy order
    source_geometry: Geometry
    margin_mm: float
    extra: dict = field(default_factory=dict)  # e.g. jitter per side (mm), ROI source

    @property
    def source_shape(self) -> tuple[int, int, int]:
        return self.source_geometry.shape

    @property
    def start(self) -> tuple[int, ...]:
        return tuple(int(a) for a, _ in self.box)

    @property
    def shape(self) -> tuple[int, ...]:
        return box_shape(self.box)

    def to_dict(self) -> dict:
        return {
            "case": self.case,
            "image": self.image,
            "box": [[int(a), int(b)] for a, b in self.box],
            "source_shape": list(self.source_shape),
            "source_geometry": self.source_geometry.to_dict(),
            "margin_mm": float(self.margin_mm),
            **self.extra,
        }

    @classmethod
    def from_dict(cls, crop_id: str, d: Mapping) -> CropRecord:
        known = {"case", "image", "box", "source_shape", "source_geometry", "margin_mm"}
        geometry = Geometry.from_dict(d["source_geometry"])
        box = [[int(a), int(b)] for a, b in d["box"]]
        if tuple(int(s) for s in d["source_shape"]) != geometry.shape:
            raise ValueError(f"{crop_id}: source_shape {d['source_shape']} disagrees with the geometry {geometry.shape}")
        if len(box) != 3 or any(a < 0 or b > n or a >= b for (a, b), n in zip(box, geometry.shape)):
            raise ValueError(f"{crop_id}: box {box} does not lie inside the source shape {geometry.shape}")
        return cls(
            crop_id=crop_id,
            case=str(d["case"]),
            image=str(d["image"]),
            box=box,
            source_geometry=geometry,
            margin_mm=float(d["margin_mm"]),
            extra={k: v for k, v in d.items() if k not in known},
        )


def crop_id(case: str, k: int) -> str:
    """Id of ROI ``k`` of ``case``: ``case_00001_roi0``; its files are ``<crop id>[_XXXX].nii.gz``."""
    return f"{case}_roi{k}"


def crop_record(case: str, k: int, box: Box, geometry: Geometry, image: str, margin_mm: float, **extra) -> CropRecord:
    """The record of ROI ``k`` of ``case`` (``image``: source path relative to crops.json; ``extra`` keys are
    stored with it, e.g. derive-stages' jitter)."""
    return CropRecord(crop_id(case, k), case, image, [[int(a), int(b)] for a, b in box], geometry, float(margin_mm),
                      dict(extra))


def crop_geometry(record: CropRecord) -> Geometry:
    """Header of the crop file: same spacing and direction, origin at the physical point of its first voxel."""
    return record.source_geometry.with_size(record.shape, record.start)


def write_crop(
    array: np.ndarray, record: CropRecord, path: str | os.PathLike, convert: Callable[[np.ndarray], np.ndarray] | None = None
) -> None:
    """Write the crop of a source-sized ``array`` (file order) at ``record``'s box with the crop's header;
    ``convert`` maps the crop's values first (e.g. :func:`kits_plugins.utilities.labels.encode_masses`)."""
    part = crop(array, record.box)
    write_image(np.ascontiguousarray(convert(part) if convert is not None else part), crop_geometry(record), path)


def write_ct_crop(ct: np.ndarray, record: CropRecord, path: str | os.PathLike) -> None:
    """A CT crop as every stage's input gets it: int16 when lossless, else float32 (:func:`compact_ct`)."""
    write_crop(ct, record, path, compact_ct)


def paste_back(
    crop_array: np.ndarray, record: CropRecord, out: np.ndarray | None = None, fill: int | float = 0
) -> np.ndarray:
    """Put ``crop_array`` (file numpy order, optional leading channel axes) back at its box in the source.

    Without ``out`` a new array of the source shape filled with ``fill`` (dtype of the crop) is returned;
    with ``out`` the crop is written into it in place (paste several ROIs of one case into one array).
    """
    spatial = tuple(crop_array.shape[-3:])
    if spatial != record.shape:
        raise ValueError(f"{record.crop_id}: crop of shape {spatial} does not match its box {record.box}")
    if out is None:
        out = np.full(tuple(crop_array.shape[:-3]) + record.source_shape, fill, dtype=crop_array.dtype)
    elif tuple(out.shape[-3:]) != record.source_shape:
        raise ValueError(f"{record.crop_id}: target shape {out.shape} is not the source shape {record.source_shape}")
    return paste(out, crop_array, record.box)


def crops_json_dict(records: Sequence[CropRecord], **metadata) -> dict:
    """The JSON document: ``format``, run metadata (margin, jitter, seed, ROI source, ...) and ``crops``."""
    return {"format": FORMAT, **metadata, "crops": {r.crop_id: r.to_dict() for r in records}}


def save_crops_json(path: str | os.PathLike, records: Sequence[CropRecord], **metadata) -> None:
    """Write crops.json atomically (temporary file + rename)."""
    atomic_write_bytes(path, json.dumps(crops_json_dict(records, **metadata), indent=1).encode())


def crops_json_path(path: str | os.PathLike) -> Path:
    """``path`` itself, or ``path/crops.json`` when ``path`` is a folder."""
    path = Path(path)
    return path / CROPS_JSON if path.is_dir() else path


def read_crops_document(path: str | os.PathLike) -> dict:
    """The parsed ``crops.json`` (``path`` is the file or its folder); one-line errors naming the file."""
    path = crops_json_path(path)
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise KitsInputError(f"{path}: crops.json not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise KitsInputError(f"{path}: not a valid JSON text ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("crops"), dict):
        raise KitsInputError(f"{path}: not a crops.json (no 'crops' entry)")
    return doc


def records_from_document(doc: Mapping, path: str | os.PathLike) -> dict[str, CropRecord]:
    """Crop id -> :class:`CropRecord` of a parsed crops.json, checked: crop and case ids are plain names
    (:func:`kits_plugins.utilities.paths.check_id`: they become file names) and boxes lie inside their source."""
    records = {}
    for cid, d in doc["crops"].items():
        check_id(cid, path, "crop id")
        if not isinstance(d, Mapping):
            raise KitsInputError(f"{path}: crop {cid} is not a JSON object")
        check_id(d.get("case"), path, f"case id of crop {cid}")
        try:
            records[cid] = CropRecord.from_dict(cid, d)
        except (KeyError, TypeError, ValueError) as e:
            raise KitsInputError(f"{path}: bad crop record ({e})") from None
    return records


def load_crops_json(path: str | os.PathLike) -> dict[str, CropRecord]:
    """Crop id -> :class:`CropRecord`, checked (see :func:`records_from_document`). ``path`` is the file or its
    folder."""
    return records_from_document(read_crops_document(path), crops_json_path(path))


def records_by_case(records: Mapping[str, CropRecord]) -> dict[str, list[CropRecord]]:
    """Group crop records by source case (crop ids in sorted order)."""
    out: dict[str, list[CropRecord]] = {}
    for cid in sorted(records):
        out.setdefault(records[cid].case, []).append(records[cid])
    return out


def write_crops_json(path: str | os.PathLike, records: Iterable[CropRecord], cases: Mapping[str, Geometry],
                     **metadata) -> None:
    """``crops.json`` with ``cases`` (every case's header, ROIs or not) and run ``metadata``."""
    save_crops_json(path, list(records), cases={c: g.to_dict() for c, g in sorted(cases.items())}, **metadata)


def load_crops(path: str | os.PathLike) -> tuple[dict[str, CropRecord], dict[str, Geometry]]:
    """Crop records (checked) and the header of every case.

    Cases come from the ``cases`` entry (crop-rois, ``kits predict --save-probabilities``, derive-stages),
    else from the records (older crops.json files listed only cases with ROIs).
    """
    path = crops_json_path(path)
    doc = read_crops_document(path)
    records = records_from_document(doc, path)
    try:
        cases = {check_id(c, path): Geometry.from_dict(g) for c, g in (doc.get("cases") or {}).items()}
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise KitsInputError(f"{path}: bad 'cases' entry ({e})") from None
    for r in records.values():
        cases.setdefault(r.case, r.source_geometry)
    return records, cases


#: Header tolerance for crop-sized files written by nnU-Net (its writers round the origin through float32 and
#: the reoriented affine): a shifted or resized box differs by at least a voxel, far above it.
CROP_FILE_ATOL = 1e-3


def crop_header_mismatch(geometry: Geometry, record: CropRecord) -> str | None:
    """Why a file with header ``geometry`` is not a file of ``record``'s crop (size, origin, spacing or direction,
    within :data:`CROP_FILE_ATOL`), or None when it is: the check that a prediction was made on this very box."""
    expected = crop_geometry(record)
    if geometry.size == expected.size and geometry.matches(expected, atol=CROP_FILE_ATOL):
        return None
    return geometry.describe_mismatch(expected, atol=CROP_FILE_ATOL)


def read_crop_prediction(path: str | os.PathLike, record: CropRecord) -> np.ndarray:
    """A ROI-sized prediction (KiTS values 0-3, file order) of ``record``'s crop, its header checked
    (:func:`crop_header_mismatch`)."""
    if not Path(path).is_file():
        raise KitsInputError(f"{path}: ROI prediction of crop {record.crop_id} not found")
    seg, geometry = read_label(path, max_label=3)
    problem = crop_header_mismatch(geometry, record)
    if problem is not None:
        raise KitsInputError(f"{path}: header differs from crop {record.crop_id} ({problem})")
    return seg
