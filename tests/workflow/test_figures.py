"""``kits_plugins.workflow.figures``: the slices shown and the PNG overlays."""

from __future__ import annotations

import numpy as np

from kits_plugins.utilities.image_io import Geometry
from kits_plugins.workflow.figures import kidney_slices, save_case_png


def test_kidney_slices_and_png(tmp_path):
    label = np.zeros((20, 30, 40), np.uint8)
    label[4:9, 5:10, 5:10] = 1
    label[12:17, 5:10, 25:35] = 1
    label[14, 6, 26] = 2
    assert kidney_slices(label) == [6, 14]
    assert kidney_slices(np.zeros((6, 4, 4), np.uint8)) == [3]
    # a KiTS-like permuted direction: the PNG goes through nnU-Net's orientation first
    d = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0)
    file_label = np.ascontiguousarray(label.transpose(2, 1, 0)[::-1, ::-1, ::-1])
    geom = Geometry((0.0, 0.0, 0.0), (4.0, 3.0, 3.0), d, file_label.shape[::-1])
    ct = np.where(file_label > 0, 150, -100).astype(np.int16)
    png = save_case_png(ct, file_label, file_label, geom, tmp_path / "c.png", title="t")
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
