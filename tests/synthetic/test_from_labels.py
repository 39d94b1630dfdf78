"""``kits_plugins.synthetic.from_labels``: a CT synthesized for a given label map follows its direction."""

from __future__ import annotations

import numpy as np
import pytest

from kits_plugins.synthetic.from_labels import synthesize_ct_from_label
from kits_plugins.synthetic.phantom import make_phantom
from kits_plugins.utilities.image_io import Geometry
from kits_plugins.utilities.orientation import Reorientation

SMALL = (48, 96, 96)  # anatomical order; default spacing 3 x 1.5625 x 1.5625 mm (body scaled to fit)


def test_from_label_uses_direction(permuted_geometry):
    """The same anatomy stored with two different direction matrices gives the same anatomical CT."""
    ph = make_phantom(5, SMALL, (2.7, 1.6, 1.6))
    canon = ph.label
    cts = []
    for perm, flips in (((2, 1, 0), (1, 1, 1)), ((0, 2, 1), (-1, 1, -1)), ((1, 0, 2), (1, -1, 1))):
        geom0 = permuted_geometry((4, 5, 6), perm, flips)
        r = Reorientation.from_geometry(geom0)
        file_arr = np.ascontiguousarray(r.from_nnunet(canon))
        spacing_np = [0.0] * 3
        for fa, (na, _) in enumerate(r.axis_map):
            spacing_np[fa] = (2.7, 1.6, 1.6)[na]
        geom = Geometry(geom0.origin, tuple(spacing_np[::-1]), geom0.direction, tuple(file_arr.shape[::-1]))
        assert r.spacing_to_nnunet(geom.spacing_np) == pytest.approx((2.7, 1.6, 1.6))
        ct = synthesize_ct_from_label(file_arr, geom, seed=11)
        assert ct.shape == file_arr.shape and ct.dtype == np.int16
        cts.append(Reorientation.from_geometry(geom).to_nnunet(ct))
    assert np.array_equal(cts[0], cts[1]) and np.array_equal(cts[0], cts[2])
    # kidneys rendered as parenchyma, spine (> 300 HU) behind them in anatomical order
    assert 80 < cts[0][canon == 1].mean() < 250
    zk = np.nonzero((canon == 1).any(axis=(1, 2)))[0]
    by = np.nonzero(cts[0][zk] > 350)[1]
    assert np.median(by) < np.nonzero(canon[zk] == 1)[1].mean() + 5
