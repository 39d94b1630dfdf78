"""``kits_plugins.utilities.roi``: bounding boxes, ROI boxes around mask components, crops."""

from __future__ import annotations

import numpy as np
import pytest

from kits_plugins.utilities import roi
from kits_plugins.utilities.roi import outer_slices


def test_outer_slices_union_pad_and_clamp():
    a = np.zeros((6, 7, 8), np.uint8)
    assert outer_slices(a) is None and outer_slices(a, a.copy()) is None
    a[1, 2, 3] = 1
    b = np.zeros_like(a)
    b[4, 5, 0] = 2
    assert outer_slices(a, b) == (slice(1, 5), slice(2, 6), slice(0, 4))
    assert outer_slices(a, b, pad=2) == (slice(0, 6), slice(0, 7), slice(0, 6))  # clamped at both ends
    seg = np.zeros((20, 20, 20), np.uint8)
    seg[:12, :12, 8:] = 1  # touches three faces
    assert outer_slices(seg) == (slice(0, 12), slice(0, 12), slice(8, 20))
    assert outer_slices(np.zeros((0, 3, 3), np.uint8)) is None


@pytest.mark.parametrize("seed", range(8))
def test_roi_boxes_equal_brute_force(seed, kidneys_with_tumors):
    """roi.roi_boxes (components inside the projected outer box) equals a full-volume scipy reference,
    also at the image border."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    shape = (50, 44, 30)
    centers = [tuple(int(rng.integers(0, n)) for n in shape) for _ in range(int(rng.integers(1, 4)))]
    mask = kidneys_with_tumors(shape, centers, radii=(5, 6, 3)) > 0
    spacing = tuple(float(v) for v in rng.uniform(0.5, 3.0, 3))
    margin = float(rng.uniform(0, 20))
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    sizes = ndimage.sum(mask, labels, range(1, n + 1))
    keep = [i for i in range(n) if sizes[i] * np.prod(spacing) >= 30.0] or [int(np.argmax(sizes))]
    objs = ndimage.find_objects(labels)
    pad = roi.mm_to_voxels(margin, spacing)
    ref = [[[max(0, sl.start - p), min(s, sl.stop + p)] for sl, p, s in zip(objs[i], pad, shape)] for i in keep]
    assert roi.roi_boxes(mask, spacing, margin, 30.0) == roi.merge_overlapping(ref)
    where = np.nonzero(mask)
    assert roi.outer_box(mask) == [[int(w.min()), int(w.max()) + 1] for w in where]
    assert roi.outer_box(np.zeros(shape, bool)) is None and roi.roi_boxes(np.zeros(shape, bool), spacing, 5, 0) == []


def test_inner_faces_touched_ignores_the_image_border_and_grow_faces_clamps():
    from kits_plugins.utilities.roi import grow_faces, inner_faces_touched

    shape = (20, 20, 20)
    box = [[0, 10], [5, 15], [5, 20]]  # low face of axis 0 and high face of axis 2 lie on the image border
    mask = np.zeros((10, 10, 15), np.uint8)
    mask[0, 3, 3] = mask[9, 3, 3] = mask[4, 0, 3] = mask[4, 3, 14] = 1
    assert inner_faces_touched(mask, box, shape) == [(0, 1), (1, 0)]
    assert inner_faces_touched(np.zeros_like(mask), box, shape) == []
    grown = grow_faces(box, [(0, 1), (1, 0)], 4.5, (3.0, 1.0, 1.0), shape)
    assert grown == [[0, 12], [0, 15], [5, 20]]  # 4.5 mm = 2 rows of 3 mm; 5 columns of 1 mm, clamped at 0
    assert grow_faces(box, [(0, 1)], 0.0, (3.0, 1.0, 1.0), shape) == [[0, 11], [5, 15], [5, 20]]  # at least one


def test_extend_box_moves_one_face_outward():
    box = [[2, 10], [0, 5], [3, 4]]
    assert roi.extend_box(box, (0, 0), 2) == [[0, 10], [0, 5], [3, 4]]
    assert roi.extend_box(box, (2, 1), 7) == [[2, 10], [0, 5], [3, 11]]
    assert box == [[2, 10], [0, 5], [3, 4]]  # a new box
    for face, depth in (((0, 0), 0), ((1, 2), 1)):
        with pytest.raises(ValueError):
            roi.extend_box(box, face, depth)  # no growth, or no such face


def test_truncate_box_moves_one_face_inward():
    box = [[2, 10], [0, 5], [3, 4]]
    assert roi.truncate_box(box, (0, 0), 3) == [[5, 10], [0, 5], [3, 4]]
    assert roi.truncate_box(box, (1, 1), 4) == [[2, 10], [0, 1], [3, 4]]
    assert box == [[2, 10], [0, 5], [3, 4]]  # a new box
    for face, depth in (((0, 0), 0), ((0, 1), 8), ((2, 0), 1), ((1, 2), 1)):
        with pytest.raises(ValueError):
            roi.truncate_box(box, face, depth)  # no cut, nothing left, or no such face
