"""KiTS23 metrics as pure array functions: HEC Dice and Surface Dice, exactly as the challenge computes them.

The challenge (``kits23/evaluation/metrics.py``) builds a boolean mask per hierarchical evaluation class (HEC),
gives Dice 1 / Surface Dice 1 when both masks are empty and 0 / 0 when exactly one is, and otherwise uses
``2 |P & R| / (|P| + |R|)`` and DeepMind's ``surface_distance.compute_surface_distances(ref, pred, spacing)``
followed by ``compute_surface_dice_at_tolerance`` with the HEC's tolerance. Spacing is SimpleITK's reversed,
i.e. the numpy order of ``sitk.GetArrayFromImage``.

``compute_case_metrics`` gives the same numbers (to floating-point summation order) much faster:

* one pass over the full volumes finds the bounding box of all foreground in prediction or reference; every
  HEC mask lies inside it, and ``compute_surface_distances`` itself only ever looks at the union bounding box
  of the two masks (its result is translation invariant), so nothing outside can change any number;
* surfels are found with the library's own 2x2x2 neighbour code and surfel-area table
  (``surface_distance.lookup_tables``), computed on each HEC's crop zero-padded on every side so that every
  corner touching the mask is seen, as the library's ``correlate(mode="constant")`` plus padding does;
* instead of a full Euclidean distance transform followed by a Python sort, a surfel counts as overlapping iff
  a surfel of the other surface lies at a voxel offset whose length (computed with the same floating-point
  expression scipy's ``distance_transform_edt`` uses) is <= tolerance. The offsets within the tolerance
  (about 1 mm, so a handful of voxels) are enumerated once per spacing. Should a tolerance coincide with an
  offset length to within rounding, the exact distance transform is used instead.

``compute_case_metrics_straightforward`` is the challenge's computation verbatim (full volumes, per HEC),
kept for tests and the benchmark.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from surface_distance import compute_surface_dice_at_tolerance, compute_surface_distances
from surface_distance.lookup_tables import (
    ENCODE_NEIGHBOURHOOD_3D_KERNEL,
    create_table_neighbour_code_to_surface_area,
)

from kits_plugins.constants import HEC_LABELS, HEC_TOLERANCES_MM, MAX_LABEL
from kits_plugins.utilities.roi import outer_slices

# HEC -> name used in the challenge's CSV columns, in the challenge's column order.
HEC_COLUMN_NAMES = {"kidney_and_mass": "kidney", "mass": "masses", "tumor": "tumor"}
HECS = tuple(HEC_COLUMN_NAMES)
DICE_COLUMNS = tuple(f"Dice_{HEC_COLUMN_NAMES[h]}" for h in HECS)
SD_COLUMNS = tuple(f"SD_{HEC_COLUMN_NAMES[h]}" for h in HECS)
METRIC_COLUMNS = DICE_COLUMNS + SD_COLUMNS

def _check_inputs(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> tuple[float, float, float]:
    if pred.ndim != 3 or ref.ndim != 3:
        raise ValueError(f"expected 3D label maps, got shapes {pred.shape} and {ref.shape}")
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} != reference shape {ref.shape}")
    if len(spacing) != 3 or not all(float(s) > 0 for s in spacing):
        raise ValueError(f"expected 3 positive spacings (numpy order), got {tuple(spacing)}")
    for name, a in (("prediction", pred), ("reference", ref)):
        if a.dtype.kind not in "bui":
            raise ValueError(f"{name} must be an integer label map, got dtype {a.dtype}")
        if a.dtype.kind == "i" and a.size and a.min() < 0:
            raise ValueError(f"{name} has negative labels")
    return float(spacing[0]), float(spacing[1]), float(spacing[2])


def hec_mask(labels: np.ndarray, hec: str) -> np.ndarray:
    """Boolean mask of one HEC; ``labels`` must lie in 0..3 (HECs are label ranges, so two comparisons at most)."""
    values = sorted(HEC_LABELS[hec])
    lo, hi = values[0], values[-1]
    if values != list(range(lo, hi + 1)):
        return np.isin(labels, values)
    mask = labels >= lo
    if hi < MAX_LABEL:
        mask &= labels <= hi
    return mask


@functools.lru_cache(maxsize=64)
def _surface_area_table(spacing: tuple[float, float, float]) -> np.ndarray:
    return create_table_neighbour_code_to_surface_area(spacing)


def _offset_lengths(offsets: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Lengths in mm of integer voxel offsets, with scipy's distance_transform_edt arithmetic."""
    d = offsets.astype(np.float64) * np.asarray(spacing, dtype=np.float64)
    np.multiply(d, d, d)
    return np.sqrt(np.add.reduce(d, axis=1))


@functools.lru_cache(maxsize=64)
def tolerance_offsets(spacing: tuple[float, float, float], tolerance_mm: float) -> tuple[np.ndarray, bool]:
    """Voxel offsets with length <= tolerance, shortest first, and whether the test is unambiguous.

    Ambiguous means some offset length equals the tolerance to within rounding, where the distance transform's
    choice among equidistant features could matter; callers then fall back to the exact distance transform.
    """
    radius = [int(np.floor(tolerance_mm / s)) + 1 for s in spacing]
    grid = np.array(list(itertools.product(*[range(-r, r + 1) for r in radius])), dtype=np.int64)
    lengths = _offset_lengths(grid, spacing)
    ambiguous = bool(np.any(np.abs(lengths - tolerance_mm) <= 1e-9 * max(1.0, tolerance_mm)))
    keep = lengths <= tolerance_mm
    order = np.argsort(lengths[keep], kind="stable")
    return grid[keep][order], not ambiguous


def neighbour_codes(mask: np.ndarray) -> np.ndarray:
    """2x2x2 neighbour code of every voxel corner of a zero-bordered mask (shape - 1 per axis).

    ``code[c] = sum_k K[k] * mask[c + k]`` with ``K = surface_distance.lookup_tables.ENCODE_NEIGHBOURHOOD_3D_KERNEL``,
    i.e. the library's ``ndimage.correlate(mask, K, mode="constant")`` shifted by one voxel.
    """
    m = mask.astype(np.uint8, copy=False)
    n0, n1, n2 = (s - 1 for s in m.shape)
    code = np.zeros((n0, n1, n2), dtype=np.uint8)
    for (a, b, c), w in np.ndenumerate(ENCODE_NEIGHBOURHOOD_3D_KERNEL):
        code += m[a : a + n0, b : b + n1, c : c + n2] * np.uint8(w)
    return code


def _surfels(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices and codes of the surface corners (codes other than 0 and 255)."""
    code = neighbour_codes(mask).ravel()
    idx = np.flatnonzero((code != 0) & (code != 255))
    return idx, code[idx]


def _hits(idx: np.ndarray, target: np.ndarray, flat_offsets: np.ndarray) -> np.ndarray:
    """For each flat index, whether ``target`` is True at some ``idx + offset`` (offsets shortest first)."""
    hit = np.zeros(idx.size, dtype=bool)
    remaining = np.arange(idx.size)
    for off in flat_offsets:
        found = target[idx[remaining] + off]
        hit[remaining[found]] = True
        remaining = remaining[~found]
        if remaining.size == 0:
            break
    return hit


def surface_dice(mask_ref: np.ndarray, mask_pred: np.ndarray, spacing: Sequence[float], tolerance_mm: float) -> float:
    """Surface Dice at ``tolerance_mm`` of two non-empty boolean masks, equal to
    ``compute_surface_dice_at_tolerance(compute_surface_distances(mask_ref, mask_pred, spacing), tolerance_mm)``.
    """
    spacing = tuple(float(s) for s in spacing)
    tolerance_mm = float(tolerance_mm)
    box = outer_slices(mask_ref, mask_pred)
    if box is None or not mask_ref.any() or not mask_pred.any():
        raise ValueError("surface_dice needs two non-empty masks")
    offsets, unambiguous = tolerance_offsets(spacing, tolerance_mm)
    if not unambiguous:
        return _surface_dice_edt(mask_ref[box], mask_pred[box], spacing, tolerance_mm)
    pad = [int(np.abs(offsets[:, i]).max()) + 1 for i in range(3)]
    pads = [(p, p) for p in pad]
    ref = np.pad(mask_ref[box].astype(np.uint8), pads)
    pred = np.pad(mask_pred[box].astype(np.uint8), pads)
    code_shape = tuple(s - 1 for s in ref.shape)
    # Every surface corner is at least `pad - 1` from the code array's edges, so offsets never leave it or wrap.
    strides = np.array([code_shape[1] * code_shape[2], code_shape[2], 1], dtype=np.int64)
    flat_offsets = offsets @ strides
    idx_r, code_r = _surfels(ref)
    idx_p, code_p = _surfels(pred)
    size = int(np.prod(code_shape))
    border_r = np.zeros(size, dtype=bool)
    border_r[idx_r] = True
    border_p = np.zeros(size, dtype=bool)
    border_p[idx_p] = True
    table = _surface_area_table(spacing)
    area_r, area_p = table[code_r], table[code_p]
    overlap_r = area_r[_hits(idx_r, border_p, flat_offsets)].sum()
    overlap_p = area_p[_hits(idx_p, border_r, flat_offsets)].sum()
    return float((overlap_r + overlap_p) / (area_r.sum() + area_p.sum()))


def _surface_dice_edt(ref: np.ndarray, pred: np.ndarray, spacing: tuple, tolerance_mm: float) -> float:
    """Exact fallback: distance transforms of the padded crops (the library's own algorithm, without sorting)."""
    table = _surface_area_table(spacing)
    codes = [neighbour_codes(np.pad(m.astype(np.uint8), 1)) for m in (ref, pred)]
    borders = [(c != 0) & (c != 255) for c in codes]
    dist = [ndimage.distance_transform_edt(~b, sampling=spacing) for b in borders]
    area = [table[c[b]] for c, b in zip(codes, borders)]
    overlap_r = area[0][dist[1][borders[0]] <= tolerance_mm].sum()
    overlap_p = area[1][dist[0][borders[1]] <= tolerance_mm].sum()
    return float((overlap_r + overlap_p) / (area[0].sum() + area[1].sum()))


def _dice_and_sd(ref: np.ndarray, pred: np.ndarray, spacing: tuple, tolerance_mm: float) -> tuple[float, float]:
    n_ref, n_pred = int(np.count_nonzero(ref)), int(np.count_nonzero(pred))
    if n_ref == 0 and n_pred == 0:
        return 1.0, 1.0
    if n_ref == 0 or n_pred == 0:
        return 0.0, 0.0
    dice = 2 * int(np.count_nonzero(ref & pred)) / (n_ref + n_pred)
    return float(dice), surface_dice(ref, pred, spacing, tolerance_mm)


def compute_case_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Challenge metrics of one case: ``Dice_kidney, Dice_masses, Dice_tumor, SD_kidney, SD_masses, SD_tumor``.

    ``pred`` and ``ref`` are label maps (0 background, 1 kidney, 2 tumor, 3 cyst) of the same shape; ``spacing``
    is in their numpy axis order (as SimpleITK's array, i.e. ``image.GetSpacing()[::-1]``).
    """
    spacing = _check_inputs(pred, ref, spacing)
    box = outer_slices(pred, ref)
    if box is None:
        pred_c = ref_c = np.zeros((1, 1, 1), dtype=np.uint8)
    else:
        pred_c, ref_c = pred[box], ref[box]
        for name, a in (("prediction", pred_c), ("reference", ref_c)):
            if int(a.max()) > MAX_LABEL:
                bad = np.unique(a[a > MAX_LABEL])[:10].tolist()
                raise ValueError(f"{name} has labels outside 0-{MAX_LABEL}: {bad}")
        pred_c, ref_c = pred_c.astype(np.uint8, copy=False), ref_c.astype(np.uint8, copy=False)
    out = {}
    for hec in HECS:
        dice, sd = _dice_and_sd(hec_mask(ref_c, hec), hec_mask(pred_c, hec), spacing, HEC_TOLERANCES_MM[hec])
        out[f"Dice_{HEC_COLUMN_NAMES[hec]}"] = dice
        out[f"SD_{HEC_COLUMN_NAMES[hec]}"] = sd
    return {k: out[k] for k in METRIC_COLUMNS}


def compute_case_metrics_straightforward(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]
) -> dict[str, float]:
    """The challenge's own computation: per HEC, full-volume masks and ``surface_distance`` as published.

    Slow (full-volume masks, distance transforms and a Python sort of all surfels); the reference for tests
    and ``benchmarks/evaluate_speed.py``.
    """
    spacing = _check_inputs(pred, ref, spacing)
    out = {}
    for hec in HECS:
        mask_pred = np.isin(pred, HEC_LABELS[hec])
        mask_ref = np.isin(ref, HEC_LABELS[hec])
        ref_empty, pred_empty = np.count_nonzero(mask_ref) == 0, np.count_nonzero(mask_pred) == 0
        if ref_empty and pred_empty:
            dice, sd = 1.0, 1.0
        elif ref_empty or pred_empty:
            dice, sd = 0.0, 0.0
        else:
            inter = np.count_nonzero(mask_pred & mask_ref)
            dice = 2 * inter / (np.count_nonzero(mask_ref) + np.count_nonzero(mask_pred))
            dist = compute_surface_distances(mask_ref, mask_pred, spacing)
            sd = compute_surface_dice_at_tolerance(dist, tolerance_mm=HEC_TOLERANCES_MM[hec])
        out[f"Dice_{HEC_COLUMN_NAMES[hec]}"] = float(dice)
        out[f"SD_{HEC_COLUMN_NAMES[hec]}"] = float(sd)
    return {k: out[k] for k in METRIC_COLUMNS}


def ranking_means(rows: Sequence[dict[str, float]]) -> tuple[float, float]:
    """The two ranking numbers: mean Dice and mean Surface Dice over all cases and HECs."""
    if not rows:
        return float("nan"), float("nan")
    dice = np.array([[r[c] for c in DICE_COLUMNS] for r in rows], dtype=np.float64)
    sd = np.array([[r[c] for c in SD_COLUMNS] for r in rows], dtype=np.float64)
    return float(dice.mean()), float(sd.mean())


def average_row(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per-column mean over cases (the CSV's ``average`` row)."""
    return {c: float(np.mean([r[c] for r in rows])) if rows else float("nan") for c in METRIC_COLUMNS}
