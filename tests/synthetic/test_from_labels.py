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


def test_resample_label_keeps_the_field_of_view_and_follows_the_direction(permuted_geometry):
    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape

    from kits_plugins.synthetic.from_labels import resample_label

    ph = make_phantom(5, SMALL, (2.7, 1.6, 1.6))
    geom0 = permuted_geometry((4, 5, 6), (2, 1, 0), (1, 1, -1))  # slices along the last file axis, as KiTS23
    r = Reorientation.from_geometry(geom0)
    file_arr = np.ascontiguousarray(r.from_nnunet(ph.label))
    spacing_np = [0.0] * 3
    for fa, (na, _) in enumerate(r.axis_map):
        spacing_np[fa] = (2.7, 1.6, 1.6)[na]
    geom = Geometry(geom0.origin, tuple(spacing_np[::-1]), geom0.direction, tuple(file_arr.shape[::-1]))

    out, g = resample_label(file_arr, geom, (3.0, 2.0, 4.0))  # anatomical: superior-inferior, AP, RL
    assert r.spacing_to_nnunet(g.spacing_np) == pytest.approx((3.0, 2.0, 4.0))
    assert g.origin == geom.origin and g.direction == geom.direction
    nn_shape = Reorientation.from_geometry(g).to_nnunet(out).shape
    assert nn_shape == tuple(round(n * s / t) for n, s, t in zip(SMALL, (2.7, 1.6, 1.6), (3.0, 2.0, 4.0)))
    assert out.dtype == np.uint8 and set(np.unique(out)) <= {0, 1, 2, 3}
    # nnU-Net's own segmentation resampling of the same array, and volumes that survive it
    theirs = resample_data_or_seg_to_shape(file_arr[None], out.shape, geom.spacing_np, g.spacing_np, is_seg=True,
                                           order=1, order_z=0, force_separate_z=None)[0]
    assert np.array_equal(out, theirs)
    before = (file_arr > 0).sum() * geom.voxel_volume_mm3  # kidney+masses of a small phantom (tumors of a few mm)
    assert (out > 0).sum() * g.voxel_volume_mm3 == pytest.approx(before, rel=0.05)


def test_resample_real_label_volumes(shared_label_files):
    from kits_plugins.synthetic.from_labels import resample_label
    from kits_plugins.utilities.image_io import read_label

    path = next(p for p in shared_label_files if p.name == "case_00065.nii.gz")
    label, geom = read_label(path)
    out, g = resample_label(label, geom, (3.0, 3.0, 3.0))
    assert g.spacing == (3.0, 3.0, 3.0) and g.origin == geom.origin and g.direction == geom.direction
    for k in (1, 2):  # kidney and tumor volumes within 3% at 3 mm (this case has no cyst)
        assert (out == k).sum() * 27.0 == pytest.approx((label == k).sum() * geom.voxel_volume_mm3, rel=0.03)


def _kidney_box(label: np.ndarray, spacing, z, y, x) -> None:
    """Mark a box of kidney given in mm ranges (z, y, x)."""
    sl = tuple(slice(int(lo / s), int(hi / s)) for (lo, hi), s in zip((z, y, x), spacing))
    label[sl] = 1


def test_the_spine_goes_behind_a_kidney_only_where_it_crosses_the_midline():
    """The body is laid out around the kidneys of a label map: the spine lies between two kidneys at their
    antero-posterior level, even when a mass bulges to within a few mm of the midline (three of the 26 real maps:
    the spine was put 72-77 mm behind both kidneys before); it goes behind a kidney that reaches across the
    midline (a horseshoe kidney)."""
    from kits_plugins.synthetic.anatomy import crosses_midline, frame_from_kidneys
    from kits_plugins.synthetic.from_labels import kidney_infos

    spacing = (4.0, 4.0, 4.0)
    fov = (200.0, 300.0, 400.0)
    shape = tuple(int(f / s) + 1 for f, s in zip(fov, spacing))
    bulging = np.zeros(shape, np.uint8)
    _kidney_box(bulging, spacing, (60, 160), (120, 180), (80, 140))     # right kidney, x 80-140 mm
    _kidney_box(bulging, spacing, (60, 160), (120, 180), (260, 320))    # left kidney, x 260-320 mm
    _kidney_box(bulging, spacing, (90, 130), (100, 200), (196, 260))    # a mass bulging medially to x = 196 mm
    kidneys = kidney_infos(bulging, spacing)
    assert len(kidneys) == 2
    frame = frame_from_kidneys(np.random.default_rng(0), kidneys, fov)
    assert frame["x_mid"] == pytest.approx(190.0, abs=8)
    assert not any(crosses_midline(k, frame["x_mid"]) for k in kidneys)
    mean_y = np.mean([k.center[1] for k in kidneys])
    assert 0 <= frame["y_spine"] - mean_y <= 12  # between the kidneys, at their level

    horseshoe = np.zeros(shape, np.uint8)
    _kidney_box(horseshoe, spacing, (60, 160), (120, 180), (80, 320))   # one kidney across the midline
    kidneys = kidney_infos(horseshoe, spacing)
    frame = frame_from_kidneys(np.random.default_rng(0), kidneys, fov)
    assert len(kidneys) == 1 and crosses_midline(kidneys[0], frame["x_mid"])
    assert frame["y_spine"] <= kidneys[0].y_range[0] - 30.0  # behind it
