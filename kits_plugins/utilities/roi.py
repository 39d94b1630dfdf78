"""Kidney regions of interest: boxes, crops and lossless paste-back (pure array functions).

Boxes are half-open ``[[start, stop], ...]`` in numpy axis order, the convention of acvl_utils and
nnU-Net (``acvl_utils.cropping_and_padding.bounding_boxes``); the few helpers are restated here so that
importing this module does not import torch. Both ``kits derive-stages`` and the cascade predictor use these functions, so training crops
and inference crops are made the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import cc3d
import numpy as np

Box = list[list[int]]
Connectivity = Literal[6, 18, 26]  # 3-D neighbourhoods cc3d accepts: faces, + edges, + corners


def bounding_box_to_slice(box: Box) -> tuple[slice, ...]:
    """Slices of a half-open box (as acvl_utils' function of the same name; local so that importing
    this module does not import torch through acvl_utils)."""
    return tuple(slice(int(a), int(b)) for a, b in box)


def outer_box(mask: np.ndarray) -> Box | None:
    """Bounding box of all nonzero voxels (None if empty), from two projections: two passes over the
    volume instead of a slice-by-slice scan (seconds on a 512 x 512 x 1059 scan)."""
    axis0 = np.flatnonzero(mask.any(axis=tuple(range(1, mask.ndim))))
    if axis0.size == 0:
        return None
    plane = np.any(mask[axis0[0] : axis0[-1] + 1], axis=0)
    rest = [np.flatnonzero(plane.any(axis=tuple(a for a in range(plane.ndim) if a != k))) for k in range(plane.ndim)]
    return [[int(a[0]), int(a[-1]) + 1] for a in (axis0, *rest)]


def outer_slices(*arrays: np.ndarray, pad: int = 0) -> tuple[slice, ...] | None:
    """Slices of the bounding box of the nonzero voxels of all ``arrays`` (same shape), grown by ``pad`` voxels
    per side and clamped to the array; None if every array is empty. The one bounding-box helper of the
    package (postprocessing, evaluation and the synthesizer work inside it)."""
    boxes = [b for b in (outer_box(a) for a in arrays if a.size) if b is not None]
    if not boxes:
        return None
    shape = arrays[0].shape
    return tuple(
        slice(max(min(b[k][0] for b in boxes) - pad, 0), min(max(b[k][1] for b in boxes) + pad, int(shape[k])))
        for k in range(len(shape))
    )


def mm_to_voxels(length_mm: float | Sequence[float], spacing: Sequence[float]) -> list[int]:
    """Smallest whole number of voxels per axis covering ``length_mm`` (per axis or one value)."""
    lengths = length_mm if isinstance(length_mm, (Sequence, np.ndarray)) else [float(length_mm)] * len(spacing)
    return [int(math.ceil(float(m) / float(s) - 1e-9)) if m > 0 else 0 for m, s in zip(lengths, spacing)]


def box_shape(box: Box) -> tuple[int, ...]:
    return tuple(int(b - a) for a, b in box)


def box_volume(box: Box) -> int:
    return int(np.prod(box_shape(box)))


def boxes_overlap(a: Box, b: Box) -> bool:
    """True if the half-open boxes share at least one voxel."""
    return all(a0 < b1 and b0 < a1 for (a0, a1), (b0, b1) in zip(a, b))


def union_box(a: Box, b: Box) -> Box:
    return [[min(a0, b0), max(a1, b1)] for (a0, a1), (b0, b1) in zip(a, b)]


def merge_overlapping(boxes: Sequence[Box]) -> list[Box]:
    """Merge boxes until none overlap (a merged box may swallow a third one, so repeat)."""
    boxes = [[list(map(int, ax)) for ax in b] for b in boxes]
    merged = True
    while merged:
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                if boxes_overlap(boxes[i], boxes[j]):
                    boxes[i] = union_box(boxes[i], boxes[j])
                    del boxes[j]
                    merged = True
                    break
            if merged:
                break
    return sorted(boxes)


def pad_box_mm(box: Box, margin_mm: float | Sequence[float], spacing: Sequence[float], shape: Sequence[int]) -> Box:
    """Grow ``box`` by ``margin_mm`` on every side (per axis or one value), clamped to the image."""
    pad = mm_to_voxels(margin_mm, spacing)
    return [[max(0, int(a) - p), min(int(n), int(b) + p)] for (a, b), p, n in zip(box, pad, shape)]


def component_boxes(
    mask: np.ndarray, spacing: Sequence[float], min_volume_mm3: float = 0.0, connectivity: Connectivity = 26
) -> list[tuple[Box, int]]:
    """Tight boxes and voxel counts of the connected components of ``mask`` (largest first).

    Components below ``min_volume_mm3`` are dropped, except that the largest component is always kept
    when the mask is not empty (so a small or partial kidney still gets a ROI). Connected components
    are only computed inside the mask's bounding box, so memory scales with the kidneys, not the scan.
    """
    if mask.ndim != 3:
        raise ValueError(f"expected a 3D mask, got shape {mask.shape}")
    outer = outer_box(mask)
    if outer is None:
        return []
    sub = np.ascontiguousarray(mask[bounding_box_to_slice(outer)], dtype=bool)
    labels = cc3d.connected_components(sub, connectivity=connectivity)
    stats = cc3d.statistics(labels)
    del labels
    voxel_mm3 = float(np.prod(spacing))
    found = []
    for lab in range(1, len(stats["voxel_counts"])):
        count = int(stats["voxel_counts"][lab])
        if count == 0:
            continue
        slices = stats["bounding_boxes"][lab]
        box = [[int(s.start) + o[0], int(s.stop) + o[0]] for s, o in zip(slices, outer)]
        found.append((box, count))
    found.sort(key=lambda bc: -bc[1])
    kept = [bc for bc in found if bc[1] * voxel_mm3 >= min_volume_mm3]
    return kept if kept else found[:1]


def roi_boxes(
    mask: np.ndarray,
    spacing: Sequence[float],
    margin_mm: float | Sequence[float] = 15.0,
    min_volume_mm3: float = 2000.0,
) -> list[Box]:
    """One box per kidney: components of ``mask`` above ``min_volume_mm3``, grown by ``margin_mm``,
    clamped at the image border, overlapping boxes merged (a horseshoe kidney gives one box).
    Sorted by position. Empty list for an empty mask."""
    comps = component_boxes(mask, spacing, min_volume_mm3)
    return pad_and_merge([box for box, _ in comps], margin_mm, spacing, mask.shape)


def pad_and_merge(
    boxes: Sequence[Box], margin_mm: float | Sequence[float], spacing: Sequence[float], shape: Sequence[int]
) -> list[Box]:
    """ROIs from tight component boxes: each grown by ``margin_mm`` and clamped, overlapping ones merged."""
    return merge_overlapping([pad_box_mm(box, margin_mm, spacing, shape) for box in boxes])


def jitter_box(
    box: Box, rng: np.random.Generator, max_extra_mm: float, spacing: Sequence[float], shape: Sequence[int]
) -> Box:
    """Grow each side of ``box`` by an independent extra margin drawn uniformly from [0, max_extra_mm]
    (rounded up to voxels, clamped to the image). Used for ground-truth training crops so the fine
    stages see ROI borders as varied as the coarse model's at inference."""
    out = []
    for (a, b), s, n in zip(box, spacing, shape):
        lo = mm_to_voxels(float(rng.uniform(0.0, max_extra_mm)), [s])[0]
        hi = mm_to_voxels(float(rng.uniform(0.0, max_extra_mm)), [s])[0]
        out.append([max(0, a - lo), min(int(n), b + hi)])
    return out


def crop(array: np.ndarray, box: Box) -> np.ndarray:
    """View of ``array`` inside ``box`` (box applies to the last len(box) axes)."""
    lead = (slice(None),) * (array.ndim - len(box))
    return array[lead + bounding_box_to_slice(box)]


def paste(target: np.ndarray, patch: np.ndarray, box: Box) -> np.ndarray:
    """Write ``patch`` into ``target`` at ``box`` in place and return ``target``; shapes must agree."""
    if tuple(patch.shape[-len(box):]) != box_shape(box):
        raise ValueError(f"patch shape {patch.shape} does not match box {box}")
    for (a, b), n in zip(box, target.shape[-len(box):]):
        if a < 0 or b > n or a >= b:
            raise ValueError(f"box {box} does not lie inside an array of shape {target.shape}")
    target[(slice(None),) * (target.ndim - len(box)) + bounding_box_to_slice(box)] = patch
    return target


def covers(boxes: Sequence[Box], mask: np.ndarray) -> bool:
    """True if every nonzero voxel of ``mask`` lies in at least one box."""
    rest = mask.astype(bool, copy=True)
    for box in boxes:
        rest[bounding_box_to_slice(box)] = False
    return not rest.any()


#: a face of a box: (axis, side), side 0 the low face (index ``start``), 1 the high face (``stop - 1``)
Face = tuple[int, int]


def inner_faces_touched(mask_crop: np.ndarray, box: Box, shape: Sequence[int]) -> list[Face]:
    """Faces of ``box`` (on an image of ``shape``) that the nonzero voxels of ``mask_crop`` (the box's crop)
    touch, leaving out faces that lie on the image border: there the object may end at the border, but an
    inner face it touches cut it."""
    faces = []
    for axis, ((a, b), n) in enumerate(zip(box, shape)):
        for side, (index, at_border) in enumerate(((0, a == 0), (b - a - 1, b == int(n)))):
            if not at_border and np.take(mask_crop, index, axis=axis).any():
                faces.append((axis, side))
    return faces


def grow_faces(box: Box, faces: Sequence[Face], margin_mm: float, spacing: Sequence[float], shape: Sequence[int]) -> Box:
    """``box`` with each face in ``faces`` moved outwards by ``margin_mm`` (whole voxels, at least one), clamped
    to the image of ``shape``."""
    out = [[int(a), int(b)] for a, b in box]
    for axis, side in faces:
        step = max(1, mm_to_voxels(margin_mm, [spacing[axis]])[0])
        if side == 0:
            out[axis][0] = max(0, out[axis][0] - step)
        else:
            out[axis][1] = min(int(shape[axis]), out[axis][1] + step)
    return out


def extend_box(box: Box, face: Face, depth: int) -> Box:
    """``box`` with one face (``(axis, side)``, see :data:`Face`) moved outward by ``depth`` voxels, the other five
    kept: a training crop that, like a ROI from a coarse over-segmentation of a neighbouring organ, reaches far past
    the kidney on one side. The caller keeps it inside the image."""
    axis, side = face
    if side not in (0, 1) or depth < 1:
        raise ValueError(f"cannot extend face {face} of {box} by {depth} voxels (at least 1)")
    out = [[int(lo), int(hi)] for lo, hi in box]
    if side == 0:
        out[axis][0] -= int(depth)
    else:
        out[axis][1] += int(depth)
    return out


def truncate_box(box: Box, face: Face, depth: int) -> Box:
    """``box`` with one face (``(axis, side)``, see :data:`Face`) moved inward by ``depth`` voxels, the other five
    kept: a training crop that, like a ROI from a coarse under-segmentation, cuts through the kidney. At least one
    voxel must remain on that axis."""
    axis, side = face
    a, b = int(box[axis][0]), int(box[axis][1])
    if side not in (0, 1) or depth < 1 or depth >= b - a:
        raise ValueError(f"cannot truncate face {face} of {box} by {depth} voxels (1 to {b - a - 1} possible)")
    out = [[int(lo), int(hi)] for lo, hi in box]
    out[axis] = [a + depth, b] if side == 0 else [a, b - depth]
    return out
