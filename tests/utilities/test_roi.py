"""``kits_plugins.utilities.roi``: the one bounding-box helper."""

from __future__ import annotations

import numpy as np

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
