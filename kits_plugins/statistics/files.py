"""Statistics files: ``<case>.json`` per case and one CSV row per structure, written atomically; the inputs of
``kits statistics`` (label maps paired with their CTs by case id, headers checked before any work)."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kits_plugins.errors import KitsInputError
from kits_plugins.statistics.measurements import KIDNEY_REGION_LABEL, case_statistics
from kits_plugins.statistics.rules import DEFAULT_MIN_KIDNEY_ML, DEFAULT_MIN_LESION_ML
from kits_plugins.utilities.image_io import Geometry
from kits_plugins.utilities.paths import check_id, child_path
from kits_plugins.utilities.staging import atomic_write_bytes

#: the CSV's columns, in order: one row per kidney and per lesion
CSV_COLUMNS = (
    "case", "structure", "id", "side", "kidney", "label", "volume_ml", "parenchyma_ml", "max_diameter_mm",
    "hu_mean", "hu_std", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
)
CSV_NAME = "statistics.csv"
_SUFFIXES = (".nii.gz", ".nii")


def csv_rows(case: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The CSV rows of one case's JSON dict (:meth:`CaseStatistics.to_dict`): kidneys first, then lesions; empty
    cells for what does not apply (a lesion's parenchyma, HU without a CT)."""
    rows = []
    for k in case["kidneys"]:
        rows.append({
            "case": case["case"], "structure": "kidney", "id": k["id"], "side": k["side"], "kidney": k["id"],
            "label": KIDNEY_REGION_LABEL, "volume_ml": k["volume_ml"], "parenchyma_ml": k["parenchyma_ml"],
            "max_diameter_mm": k["max_diameter_mm"], "hu_mean": k["hu_mean"], "hu_std": k["hu_std"],
            **dict(zip(("centroid_x_mm", "centroid_y_mm", "centroid_z_mm"), k["centroid_lps_mm"])),
        })
    for les in case["lesions"]:
        rows.append({
            "case": case["case"], "structure": "lesion", "id": les["id"], "side": les["side"], "kidney": les["kidney"],
            "label": les["label"], "volume_ml": les["volume_ml"], "parenchyma_ml": None,
            "max_diameter_mm": les["max_diameter_mm"], "hu_mean": les["hu_mean"], "hu_std": les["hu_std"],
            **dict(zip(("centroid_x_mm", "centroid_y_mm", "centroid_z_mm"), les["centroid_lps_mm"])),
        })
    return [{c: ("" if r[c] is None else r[c]) for c in CSV_COLUMNS} for r in rows]


def write_statistics_csv(cases: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """One CSV (:data:`CSV_COLUMNS`) with the rows of every case's JSON dict, in the order given; atomic."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for case in cases:
        writer.writerows(csv_rows(case))
    atomic_write_bytes(path, buffer.getvalue().encode())
    return Path(path)


def write_case_json(case: Mapping[str, Any], out_dir: str | os.PathLike) -> Path:
    """``out_dir/<case>.json`` (the case id checked as a plain name); atomic."""
    name = check_id(case["case"], out_dir)
    path = child_path(out_dir, f"{name}.json", out_dir)
    atomic_write_bytes(path, (json.dumps(case, indent=1) + "\n").encode())
    return path


def save_case_statistics(
    labels: np.ndarray,
    geometry: Geometry,
    out_dir: str | os.PathLike,
    case: str,
    ct: np.ndarray | None = None,
    min_kidney_ml: float = DEFAULT_MIN_KIDNEY_ML,
    min_lesion_ml: float = DEFAULT_MIN_LESION_ML,
) -> dict[str, Any]:
    """Measure one case from arrays (numpy order, ``geometry`` its header, ``ct`` in HU optional) and write
    ``out_dir/<case>.json``; returns the JSON dict (give a list of them to :func:`write_statistics_csv`)."""
    stats = case_statistics(labels, geometry, ct, case, min_kidney_ml, min_lesion_ml).to_dict()
    write_case_json(stats, out_dir)
    return stats


def read_case_jsons(paths: Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    """Case JSONs written by :func:`write_case_json` (for example of several prediction shards, to make one CSV)."""
    out = []
    for p in paths:
        try:
            data = json.loads(Path(p).read_text())
        except (OSError, ValueError) as e:
            raise KitsInputError(f"{p}: cannot read statistics JSON ({e})") from None
        if not isinstance(data, dict) or not {"case", "kidneys", "lesions"} <= data.keys():
            raise KitsInputError(f"{p}: not a case statistics JSON (needs case, kidneys, lesions)")
        out.append(data)
    return out


def _case_id(path: Path) -> str:
    if path.name in ("segmentation.nii.gz", "segmentation.nii"):
        return path.absolute().parent.name
    for suffix in _SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.name


def find_label_inputs(path: str | os.PathLike) -> list[tuple[str, Path]]:
    """(case id, label map) pairs from a file, the KiTS layout (``case_*/segmentation.nii.gz``) or a folder of
    ``.nii.gz`` / ``.nii`` files (the case id is the file name without its extension), sorted by case id."""
    path = Path(path)
    if path.is_file():
        if not path.name.endswith(_SUFFIXES):
            raise KitsInputError(f"{path}: expected a .nii.gz or .nii label map")
        return [(check_id(_case_id(path), path), path)]
    if not path.is_dir():
        raise KitsInputError(f"{path}: no such file or folder")
    files = sorted(p for p in path.glob("*/segmentation.nii.gz") if p.is_file()) or sorted(
        p for p in path.iterdir() if p.is_file() and p.name.endswith(_SUFFIXES) and not p.name.startswith(".")
    )
    if not files:
        raise KitsInputError(f"{path}: no label maps (looked for case_XXXXX/segmentation.nii.gz and *.nii.gz)")
    seen: dict[str, Path] = {}
    for f in files:
        case = check_id(_case_id(f), f)
        if case in seen:
            raise KitsInputError(f"{f}: case id {case} also given by {seen[case]}")
        seen[case] = f
    return sorted(seen.items())


def pair_inputs(
    label_path: str | os.PathLike, ct_path: str | os.PathLike | None
) -> list[tuple[str, Path, Path | None]]:
    """(case, label map, CT or None) for every label map. CTs are found as ``kits predict`` finds them
    (:func:`find_ct_inputs`: a file, a folder of NIfTIs, the KiTS layout, DICOM series folders) and matched by case
    id; one label map with one CT pairs whatever their names. Headers are compared here, before any voxel is read:
    a missing CT or a header mismatch is a KitsInputError."""
    from kits_plugins.inference.stage_io import find_ct_inputs
    from kits_plugins.utilities.ct_io import read_ct_geometry
    from kits_plugins.utilities.image_io import read_geometry

    labels = find_label_inputs(label_path)
    if ct_path is None:
        return [(case, f, None) for case, f in labels]
    ct_path = Path(ct_path)
    cts = dict(find_ct_inputs(ct_path))
    if len(labels) == 1 and len(cts) == 1:
        cts = {labels[0][0]: next(iter(cts.values()))}
    elif ct_path.is_file():
        raise KitsInputError(f"{ct_path}: one CT file given for {len(labels)} label maps; give a CT folder")
    out: list[tuple[str, Path, Path | None]] = []
    for case, f in labels:
        if case not in cts:
            raise KitsInputError(f"{ct_path}: no CT for case {case} (label map {f})")
        label_geometry, ct_geometry = read_geometry(f), read_ct_geometry(cts[case])
        if not label_geometry.matches(ct_geometry):
            raise KitsInputError(
                f"{f}: header differs from its CT {cts[case]}: {label_geometry.describe_mismatch(ct_geometry)}"
            )
        out.append((case, f, cts[case]))
    return out


def statistics_of_files(
    case: str,
    label_file: str | os.PathLike,
    ct_file: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    min_kidney_ml: float = DEFAULT_MIN_KIDNEY_ML,
    min_lesion_ml: float = DEFAULT_MIN_LESION_ML,
) -> dict[str, Any]:
    """Read one label map (values checked in 0-3) and its CT (the package's CT policy: a NIfTI file or a DICOM
    series folder), measure, write ``out_dir/<case>.json``; returns the JSON dict."""
    from kits_plugins.utilities.ct_io import read_ct
    from kits_plugins.utilities.image_io import read_label

    labels, geometry = read_label(label_file, view=True)
    ct = None
    if ct_file is not None:
        ct, ct_geometry = read_ct(ct_file, view=True)
        if not geometry.matches(ct_geometry):
            raise KitsInputError(
                f"{label_file}: header differs from its CT {ct_file}: {geometry.describe_mismatch(ct_geometry)}"
            )
    return save_case_statistics(labels, geometry, out_dir, case, ct, min_kidney_ml, min_lesion_ml)


def summary_line(case: Mapping[str, Any]) -> str:
    """One line for the terminal: kidneys with side and volume, tumor and cyst counts and volumes."""
    kidneys = ", ".join(f"{k['side']} {k['volume_ml']:.1f} ml" for k in case["kidneys"]) or "none"
    t = case["totals"]
    return (f"{case['case']}: kidneys {kidneys}; {t['tumors']} tumor(s) {t['tumor_burden_ml']:.2f} ml; "
            f"{t['cysts']} cyst(s) {t['cyst_ml']:.2f} ml")
