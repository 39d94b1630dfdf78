"""Anatomy statistics of KiTS label maps: what a phantom generator must reproduce (pure array functions).

One flat record per case (:func:`case_anatomy`) built on :func:`~kits_plugins.statistics.measurements.case_statistics`
(kidneys and lesions as ``kits statistics`` finds them) plus the shape measures it lacks: the scan's extent and
slice spacing, each kidney's principal axis lengths and tilt, its position in the scan, and how much of each tumor's
surface faces the outside of the kidney (exophytic share). Label maps hold no body, so positions are taken against
the image: the midline is the image centre (as ``kits statistics`` does without a CT) and heights are fractions of
the scan's superior-inferior extent. :func:`summarize` reduces a list of records to per-statistic medians and
10-90% ranges, the form ``benchmarks/anatomy_stats.py`` writes and ``benchmarks/phantom_realism.py`` compares.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from kits_plugins.constants import TUMOR
from kits_plugins.statistics.measurements import case_statistics, centroid_index, component_masks, index_to_lps
from kits_plugins.utilities.image_io import Geometry
from kits_plugins.utilities.roi import outer_slices

#: at most this many voxels of a kidney enter its principal-axis fit (an even subsample of larger kidneys)
_MAX_PCA_VOXELS = 2_000_000


def principal_axes_mm(points_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Full axis lengths (mm, longest first) of the solid ellipsoid with the same second moments as ``points_mm``
    (N, 3), and the unit vector of the longest axis. A solid ellipsoid's variance along a semi-axis ``a`` is
    ``a**2 / 5``, so the full length is ``2 * sqrt(5 * eigenvalue)``."""
    p = np.asarray(points_mm, dtype=np.float64)
    if len(p) < 2:
        return np.zeros(3), np.array([0.0, 0.0, 1.0])
    values, vectors = np.linalg.eigh(np.cov(p, rowvar=False))
    order = np.argsort(values)[::-1]
    lengths = 2.0 * np.sqrt(5.0 * np.clip(values[order], 0.0, None))
    return lengths, vectors[:, order[0]]


def exophytic_share(labels: np.ndarray, component: np.ndarray, spacing_np: Sequence[float]) -> float:
    """Share (0-1) of the outer surface of ``component`` (a boolean mask on ``labels``' grid) that faces background
    (label 0), by area: each voxel face weighs the product of the other two spacings (numpy order, mm). Faces on the
    array border count as background. 0 for a lesion inside its kidney, about 0.5 for one half out of it."""
    comp = np.pad(np.asarray(component, dtype=bool), 1)
    background = np.pad(np.asarray(labels) == 0, 1, constant_values=True)
    outer = total = 0.0
    for a in range(3):
        area = float(np.prod([s for b, s in enumerate(spacing_np) if b != a]))
        lo = tuple(slice(None, -1) if b == a else slice(None) for b in range(3))
        hi = tuple(slice(1, None) if b == a else slice(None) for b in range(3))
        for inside, outside in ((comp[lo], hi), (comp[hi], lo)):  # faces towards +axis, then towards -axis
            neighbour_out = ~comp[outside]
            faces = inside & neighbour_out
            total += area * np.count_nonzero(faces)
            outer += area * np.count_nonzero(faces & background[outside])
    return outer / total if total else 0.0


def _corners_lps(geometry: Geometry) -> np.ndarray:
    """LPS positions (mm) of the 8 corner voxel centres."""
    last = np.asarray(geometry.shape, dtype=np.float64) - 1.0
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=np.float64) * last
    return index_to_lps(corners, geometry)


def _slice_axis(geometry: Geometry) -> int:
    """The numpy axis that runs most nearly superior-inferior (LPS z)."""
    origin = index_to_lps(np.zeros(3), geometry)
    return int(np.argmax([abs(index_to_lps(np.eye(3)[a], geometry)[2] - origin[2]) for a in range(3)]))


def case_anatomy(labels: np.ndarray, geometry: Geometry, case: str = "case") -> dict[str, Any]:
    """One case's anatomy (labels in numpy order with their header): the scan, the kidneys (largest first) and the
    lesions; every length in mm, volumes in ml."""
    stats = case_statistics(labels, geometry, case=case)
    spacing_np = tuple(float(s) for s in geometry.spacing[::-1])
    slice_axis = _slice_axis(geometry)
    corners = _corners_lps(geometry)
    z_top, z_bottom = float(corners[:, 2].max()), float(corners[:, 2].min())
    centre = index_to_lps((np.asarray(geometry.shape, dtype=np.float64) - 1.0) / 2.0, geometry)
    record: dict[str, Any] = {
        "case": case,
        "slices": int(labels.shape[slice_axis]),
        "slice_spacing_mm": spacing_np[slice_axis],
        "inplane_spacing_mm": float(min(s for a, s in enumerate(spacing_np) if a != slice_axis)),
        "z_extent_mm": z_top - z_bottom,
        "kidneys": [],
        "tumors": [],
        "cysts": [],
    }
    # the same components as case_statistics (inside the box of the labelled voxels, with that box's header),
    # matched to its kidneys and tumors by centroid (the same computation, so the nearest is the same component)
    box = outer_slices(labels) or tuple(slice(0, 0) for _ in range(3))
    inner = geometry.with_size(labels[box].shape, tuple(b.start for b in box))
    lab = labels[box]

    def centroid(sl: tuple[slice, ...], sub: np.ndarray) -> np.ndarray:
        return index_to_lps(centroid_index(sl, sub)[0], inner)

    def nearest(items: list, point: Sequence[float]):
        return min(items, key=lambda it: float(np.linalg.norm(it[0] - np.asarray(point))))

    kidney_fits = []
    for _i, sl, sub in component_masks(lab > 0)[1]:
        idx = np.argwhere(sub) + np.array([s.start for s in sl])
        step = max(1, math.ceil(len(idx) / _MAX_PCA_VOXELS))
        kidney_fits.append((centroid(sl, sub), *principal_axes_mm(index_to_lps(idx[::step].astype(np.float64), inner))))
    for kidney in stats.kidneys:
        lps = kidney.centroid_lps_mm
        _c, lengths, axis = nearest(kidney_fits, lps)
        record["kidneys"].append({
            "side": kidney.side, "volume_ml": kidney.volume_ml, "max_diameter_mm": kidney.max_diameter_mm,
            "length_mm": float(lengths[0]), "width_mm": float(lengths[1]), "thickness_mm": float(lengths[2]),
            "tilt_deg": float(np.degrees(np.arccos(min(1.0, abs(float(axis[2])))))),
            "lateral_offset_mm": float(abs(lps[0] - stats.midline_x_mm)),
            "posterior_offset_mm": float(lps[1] - centre[1]),
            "height_fraction": float((z_top - lps[2]) / (z_top - z_bottom)) if z_top > z_bottom else 0.5,
        })
    tumor_shares = []
    for _i, sl, sub in component_masks(lab == TUMOR)[1]:
        grown = tuple(slice(max(0, s.start - 1), min(n, s.stop + 1)) for s, n in zip(sl, lab.shape))
        inset = tuple(slice(s.start - g.start, s.stop - g.start) for s, g in zip(sl, grown))
        component = np.zeros(lab[grown].shape, bool)
        component[inset] = sub
        tumor_shares.append((centroid(sl, sub), exophytic_share(lab[grown], component, spacing_np)))
    for lesion in stats.lesions:
        entry = {"volume_ml": lesion.volume_ml, "max_diameter_mm": lesion.max_diameter_mm}
        if lesion.label_value == TUMOR:
            entry["exophytic_share"] = nearest(tumor_shares, lesion.centroid_lps_mm)[1]
            record["tumors"].append(entry)
        else:
            record["cysts"].append(entry)
    return record


def _kidney_height_gap(r: Mapping) -> float | None:
    """Superior-inferior distance (mm) between the two kidneys' centroids, left above right positive."""
    sides = {k["side"]: k for k in r["kidneys"][:2]}
    if set(sides) != {"left", "right"}:
        return None
    return (sides["right"]["height_fraction"] - sides["left"]["height_fraction"]) * r["z_extent_mm"]


#: per-case statistics: name -> function of a case record (None when the case has nothing to measure)
CASE_STATISTICS = {
    "slices": lambda r: r["slices"],
    "slice_spacing_mm": lambda r: r["slice_spacing_mm"],
    "inplane_spacing_mm": lambda r: r["inplane_spacing_mm"],
    "z_extent_mm": lambda r: r["z_extent_mm"],
    "kidney_count": lambda r: len(r["kidneys"]),
    "solitary_kidney": lambda r: float(len(r["kidneys"]) == 1),
    "horseshoe_kidney": lambda r: float(any(k["side"] == "horseshoe" for k in r["kidneys"])),
    "kidney_height_gap_mm": _kidney_height_gap,
    "tumor_count": lambda r: len(r["tumors"]),
    "cyst_count": lambda r: len(r["cysts"]),
    "has_cyst": lambda r: float(bool(r["cysts"])),
    "tumor_burden_ml": lambda r: sum(t["volume_ml"] for t in r["tumors"]),
    "largest_tumor_ml": lambda r: max((t["volume_ml"] for t in r["tumors"]), default=0.0),
}
#: per-kidney and per-lesion statistics: name -> (list in the record, key)
ITEM_STATISTICS = {
    "kidney_volume_ml": ("kidneys", "volume_ml"),
    "kidney_length_mm": ("kidneys", "length_mm"),
    "kidney_width_mm": ("kidneys", "width_mm"),
    "kidney_thickness_mm": ("kidneys", "thickness_mm"),
    "kidney_tilt_deg": ("kidneys", "tilt_deg"),
    "kidney_lateral_offset_mm": ("kidneys", "lateral_offset_mm"),
    "kidney_posterior_offset_mm": ("kidneys", "posterior_offset_mm"),
    "kidney_height_fraction": ("kidneys", "height_fraction"),
    "tumor_volume_ml": ("tumors", "volume_ml"),
    "tumor_diameter_mm": ("tumors", "max_diameter_mm"),
    "tumor_exophytic_share": ("tumors", "exophytic_share"),
    "cyst_volume_ml": ("cysts", "volume_ml"),
    "cyst_diameter_mm": ("cysts", "max_diameter_mm"),
}


def statistic_values(records: Iterable[Mapping]) -> dict[str, list[float]]:
    """Every statistic's values over ``records`` (per case, or per kidney / lesion), in one dict."""
    records = list(records)
    out: dict[str, list[float]] = {}
    for name, f in CASE_STATISTICS.items():
        out[name] = [float(v) for v in (f(r) for r in records) if v is not None]
    for name, (items, key) in ITEM_STATISTICS.items():
        out[name] = [float(item[key]) for r in records for item in r[items] if key in item]
    return out


def describe(values: Sequence[float]) -> dict[str, float | int | None]:
    """n, mean, median, 10th and 90th percentiles, min and max (None when there are no values)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"n": 0, "mean": None, "median": None, "p10": None, "p90": None, "min": None, "max": None}
    p10, median, p90 = (float(x) for x in np.percentile(v, [10, 50, 90]))
    return {"n": int(v.size), "mean": float(v.mean()), "median": median, "p10": p10, "p90": p90,
            "min": float(v.min()), "max": float(v.max())}


def summarize(records: Iterable[Mapping]) -> dict[str, dict[str, float | int | None]]:
    """Per statistic: :func:`describe` of its values over ``records``."""
    return {name: describe(values) for name, values in statistic_values(records).items()}
