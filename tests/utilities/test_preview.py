"""``kits_plugins.utilities.preview``: the slices shown, their orientation and the PNGs (size, content)."""

from __future__ import annotations

import numpy as np

from kits_plugins.utilities.image_io import Geometry
from kits_plugins.utilities.preview import axial_panels, kidney_slices, save_case_png, save_prediction_png

KITS_DIRECTION = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0)


def test_kidney_slices_and_png(tmp_path):
    label = np.zeros((20, 30, 40), np.uint8)
    label[4:9, 5:10, 5:10] = 1
    label[12:17, 5:10, 25:35] = 1
    label[14, 6, 26] = 2
    assert kidney_slices(label) == [6, 14]
    assert kidney_slices(np.zeros((6, 4, 4), np.uint8)) == [3]
    # a KiTS-like permuted direction: the PNG goes through nnU-Net's orientation first
    file_label = np.ascontiguousarray(label.transpose(2, 1, 0)[::-1, ::-1, ::-1])
    geom = Geometry((0.0, 0.0, 0.0), (4.0, 3.0, 3.0), KITS_DIRECTION, file_label.shape[::-1])
    ct = np.where(file_label > 0, 150, -100).astype(np.int16)
    png = save_case_png(ct, file_label, file_label, geom, tmp_path / "c.png", title="t")
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


def _patient(direction_kits: bool):
    """Identity header (numpy z, y, x; LPS): a left kidney (large x) with an anterior tumor (small y), a right
    kidney lower down; or the same voxels in KiTS23's layout."""
    labels = np.zeros((12, 30, 40), np.uint8)
    labels[6:10, 10:20, 28:36] = 1  # patient's left (LPS +x)
    labels[7:9, 10:12, 30:33] = 2  # anterior edge of it (LPS -y)
    labels[1:5, 10:20, 4:12] = 1  # patient's right, other slices
    ct = np.where(labels > 0, 120, -900).astype(np.int16)
    g = Geometry((-20.0, -15.0, 0.0), (1.0, 1.0, 3.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), (40, 30, 12))
    if not direction_kits:
        return labels, ct, g
    to_kits = lambda a: np.ascontiguousarray(a.transpose(2, 1, 0)[:, :, ::-1])  # noqa: E731
    g2 = Geometry((-20.0, -15.0, 3.0 * 11), (3.0, 1.0, 1.0), KITS_DIRECTION, (12, 30, 40))
    return to_kits(labels), to_kits(ct), g2


def test_panels_are_radiological_whatever_the_layout():
    panels = {}
    for kits in (False, True):
        labels, ct, g = _patient(kits)
        slices, rows, aspect = axial_panels(ct, [None, labels], g)
        assert len(slices) == 2 and aspect == 1.0
        panels[kits] = rows
    for a, b in zip(panels[False], panels[True]):
        assert all(np.array_equal(x, y) for x, y in zip(a, b))  # the same picture from both layouts
    # the slice through the left kidney: it is on the viewer's right, its tumor (red) at the top (anterior)
    left_row = next(row for row in panels[False] if (row[1][..., 0] > row[1][..., 1] + 0.2).any())
    red = np.argwhere(left_row[1][..., 0] > left_row[1][..., 1] + 0.2)
    green = np.argwhere(left_row[1][..., 1] > left_row[1][..., 0] + 0.2)
    width = left_row[1].shape[1]
    assert red[:, 1].min() > width / 2 and green[:, 1].min() > width / 2
    assert red[:, 0].min() <= green[:, 0].min() and red[:, 0].max() < green[:, 0].mean()
    assert not (left_row[0][..., 0] > left_row[0][..., 1] + 0.2).any()  # the CT panel has no overlay


def test_png_sizes(tmp_path):
    import matplotlib.image

    labels, ct, g = _patient(True)
    png = save_prediction_png(ct, labels, g, tmp_path / "p" / "case.png", title="case")
    assert matplotlib.image.imread(png).shape[:2] == (2 * 351, 2 * 300)  # 2 kidney slices x (CT, prediction)
    png = save_case_png(ct, labels, labels, g, tmp_path / "c.png")
    assert matplotlib.image.imread(png).shape[:2] == (2 * 351, 3 * 300)
    one = labels.copy()
    one[one.shape[0] // 2 :] = 0  # the right kidney only (KiTS layout: numpy axis 0 runs along x)
    png = save_prediction_png(ct, one, g, tmp_path / "one.png")
    assert matplotlib.image.imread(png).shape[:2] == (351, 600)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "one.png", "p"]  # no temporaries left
