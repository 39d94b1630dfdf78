"""``kits_plugins.postprocessing.remove_components``: the three rules (small kidneys, masses outside the kidneys,
small tumors and cysts), volume thresholds in mm3 at any spacing, the array contract, warnings."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from kits_plugins.constants import TARGET_SPACING
from kits_plugins.postprocessing import DEFAULT_MIN_VOLUME_MM3, postprocess_segmentation, postprocess_with_report
from kits_plugins.postprocessing.remove_components import min_volume_to_voxels

ISO = (1.0, 1.0, 1.0)


# Small thresholds for small arrays: kidney(+masses) 1000, tumor 27, cyst 8 mm3.
SMALL = {1: 1000.0, 2: 27.0, 3: 8.0}


def test_defaults_are_seed_voxels_at_target_spacing():
    vv = float(np.prod(TARGET_SPACING))
    assert vv == pytest.approx(0.47973632, rel=1e-6)
    assert DEFAULT_MIN_VOLUME_MM3[1] == pytest.approx(20000 * vv) and DEFAULT_MIN_VOLUME_MM3[1] == pytest.approx(9594.73)
    assert DEFAULT_MIN_VOLUME_MM3[2] == pytest.approx(95.947, abs=1e-3)
    assert DEFAULT_MIN_VOLUME_MM3[3] == pytest.approx(23.987, abs=1e-3)
    assert min_volume_to_voxels(DEFAULT_MIN_VOLUME_MM3, TARGET_SPACING) == {1: 20000, 2: 200, 3: 50}


def test_anisotropic_spacing_changes_voxel_threshold(base_map):
    # 30 mm3 at 1 mm^3 voxels = 30 voxels; at 3 x 1 x 0.5 = 1.5 mm3 per voxel = 20 voxels; order is irrelevant.
    assert min_volume_to_voxels({2: 30.0}, ISO) == {2: 30}
    assert min_volume_to_voxels({2: 30.0}, (3.0, 1.0, 0.5)) == {2: 20}
    assert min_volume_to_voxels({2: 30.0}, (0.5, 3.0, 1.0)) == {2: 20}
    assert min_volume_to_voxels({2: 31.0}, (3.0, 1.0, 0.5)) == {2: 21}  # rounds up: 20 voxels are only 30 mm3
    assert min_volume_to_voxels({2: 0.0, 3: None}, ISO) == {2: 0, 3: 0}
    with pytest.raises(ValueError):
        min_volume_to_voxels({4: 1.0}, ISO)
    with pytest.raises(ValueError):
        min_volume_to_voxels({2: 1.0}, (1.0, 0.0, 1.0))

    # The same 20-voxel tumor is removed at 1 mm iso (20 mm3 < 30) and kept at 1.5 mm3 voxels (30 mm3).
    seg = base_map()
    seg[8:10, 8:10, 8:13] = 2  # 20 voxels inside the kidney
    thr = {**SMALL, 2: 30.0}
    iso = postprocess_segmentation(seg, ISO, thr)
    aniso = postprocess_segmentation(seg, (3.0, 1.0, 0.5), thr)
    assert np.count_nonzero(iso == 2) == 0
    assert np.array_equal(aniso, seg)


def test_small_kidney_dropped_with_its_lesions_large_kept(base_map, reasons):
    seg = base_map()
    seg[25:34, 25:34, 25:37] = 1  # 972 voxels < 1000: removed
    seg[28:31, 28:31, 28:31] = 2  # its 27-voxel tumor goes with it
    out, rep = postprocess_with_report(seg, ISO, SMALL)
    assert np.array_equal(out[:20, :20, :20], seg[:20, :20, :20])  # 1728-voxel kidney kept
    assert not out[20:].any()
    assert reasons(rep) == ["small_kidney"]
    r = rep.removed[0]
    assert (r.label, r.voxels, r.volume_mm3, r.new_label, r.mass_voxels) == (1, 972, 972.0, 0, 27)

    seg[25:34, 25:34, 25:38] = 1  # 1053 voxels: kept
    seg[28:31, 28:31, 28:31] = 2
    out, rep = postprocess_with_report(seg, ISO, SMALL)
    assert np.array_equal(out, seg) and rep.removed == []


def test_kidney_size_counts_kidney_plus_masses():
    seg = np.zeros((30, 30, 30), np.uint8)
    seg[5:15, 5:15, 5:11] = 1  # 600 kidney voxels
    seg[5:15, 5:15, 11:16] = 2  # 500 tumor voxels touching it: organ of 1100 >= 1000
    out = postprocess_segmentation(seg, ISO, SMALL)
    assert np.array_equal(out, seg)
    out = postprocess_segmentation(seg, ISO, {**SMALL, 1: 1101.0})
    assert not out.any()


def test_components_touching_the_array_border():
    seg = np.zeros((20, 20, 20), np.uint8)
    seg[:12, :12, 8:] = 1  # touches three faces
    seg[0, 0, 19] = 2
    out = postprocess_segmentation(seg, ISO, {**SMALL, 2: 1.0})
    assert np.array_equal(out, seg)


def test_tumor_outside_kidney_removed_touching_kept(base_map):
    seg = base_map()
    seg[17, 17, 17] = 2  # touches the kidney's corner only: 26-connected, kept
    seg[30:35, 30:35, 30:35] = 2  # 125 voxels, far from any kidney: removed
    seg[20:23, 5:8, 5:8] = 3  # cyst separated by 3 empty slices: removed
    out, rep = postprocess_with_report(seg, ISO, {**SMALL, 2: 1.0})
    assert out[17, 17, 17] == 2
    assert not out[30:35, 30:35, 30:35].any() and not out[20:23].any()
    assert sorted((r.reason, r.label, r.voxels) for r in rep.removed) == [
        ("outside_kidney", 2, 125), ("outside_kidney", 3, 27)
    ]

    kept = postprocess_segmentation(seg, ISO, {**SMALL, 2: 1.0}, remove_outside_kidney=False)
    assert np.array_equal(kept, seg)


def test_tumor_touching_kidney_through_a_cyst_is_kept(base_map):
    seg = base_map()
    seg[17:20, 8:12, 8:12] = 3  # cyst touching the kidney
    seg[20:24, 8:12, 8:12] = 2  # tumor touching only the cyst
    out = postprocess_segmentation(seg, ISO, SMALL)
    assert np.array_equal(out, seg)


def test_tumor_of_a_removed_kidney_counts_as_outside_after_removal(base_map, reasons):
    seg = base_map()
    seg[30:34, 30:34, 30:34] = 1  # tiny kidney fragment (64 voxels): removed with its tumor
    seg[34:38, 30:34, 30:34] = 2
    out, rep = postprocess_with_report(seg, ISO, SMALL)
    assert not out[25:].any()
    assert reasons(rep) == ["small_kidney"] and rep.removed[0].mass_voxels == 64


def test_small_tumor_inside_kidney_becomes_kidney_large_kept(base_map):
    seg = base_map()
    seg[6:9, 6:9, 6:9] = 2  # 27 voxels == 27 mm3: kept
    seg[12:15, 12:15, 12:14] = 2  # 18 voxels: relabelled kidney
    out, rep = postprocess_with_report(seg, ISO, SMALL)
    assert np.all(out[6:9, 6:9, 6:9] == 2)
    assert np.all(out[12:15, 12:15, 12:14] == 1)
    assert [(r.reason, r.voxels, r.new_label) for r in rep.removed] == [("small_tumor", 18, 1)]
    # kidney_and_mass region is unchanged by rule 3
    assert np.array_equal(out > 0, seg > 0)


def test_small_cyst_relabelled_kidney_large_kept(base_map):
    seg = base_map()
    seg[6:8, 6:8, 6:8] = 3  # 8 voxels: kept
    seg[12:14, 12:14, 12] = 3  # 4 voxels: relabelled kidney
    out, rep = postprocess_with_report(seg, ISO, SMALL)
    assert np.all(out[6:8, 6:8, 6:8] == 3) and np.all(out[12:14, 12:14, 12] == 1)
    assert [(r.reason, r.label, r.voxels) for r in rep.removed] == [("small_cyst", 3, 4)]


def test_small_tumor_on_a_kept_cyst_joins_the_cyst_not_the_kidney(base_map):
    seg = base_map()
    seg[6:9, 6:9, 6:9] = 3  # a kept cyst (27 voxels)
    seg[9, 6:9, 6:8] = 2  # a 6-voxel tumor fragment on its face: same mass, below 27 mm3
    seg[13, 13, 13] = 2  # a lone 1-voxel tumor speck inside the kidney: still kidney
    seg[6:8, 13:15, 13] = 3  # a small cyst (4 voxels) on a kept tumor becomes tumor
    seg[6:9, 13:16, 14:16] = 2  # a kept tumor (18 voxels, threshold 7)
    out, rep = postprocess_with_report(seg, ISO, {1: 1000.0, 2: 7.0, 3: 8.0})
    assert np.all(out[9, 6:9, 6:8] == 3)  # no kidney-labelled hole in the mass
    assert out[13, 13, 13] == 1
    assert np.all(out[6:8, 13:15, 13] == 2) and np.all(out[6:9, 13:16, 14:16] == 2)
    assert sorted((r.reason, r.voxels, r.new_label) for r in rep.removed) == [
        ("small_cyst", 4, 2), ("small_tumor", 1, 1), ("small_tumor", 6, 3)]
    seg[13, 13, 13] = 1  # the lone speck aside, every mass keeps its extent
    assert np.array_equal(out > 0, seg > 0) and np.array_equal(out >= 2, seg >= 2)


def test_two_small_masses_touching_each_other_both_become_kidney(base_map):
    seg = base_map()
    seg[6:8, 6:8, 6] = 2  # 4 voxels
    seg[6:8, 6:8, 7] = 3  # 4 voxels, touching: neither is kept, so neither gives its label
    out, rep = postprocess_with_report(seg, ISO, {1: 1000.0, 2: 27.0, 3: 8.0})
    assert np.all(out[6:8, 6:8, 6:8] == 1)
    assert sorted((r.reason, r.new_label) for r in rep.removed) == [("small_cyst", 1), ("small_tumor", 1)]


def test_small_mass_outside_kidney_becomes_background_with_keep_outside(base_map):
    seg = base_map()
    seg[30:32, 30:32, 30:32] = 2  # 8 voxels outside: with --keep-outside only the size rule removes it
    seg[22:26, 22:26, 22:26] = 2  # 64 voxels outside: kept with --keep-outside
    out, rep = postprocess_with_report(seg, ISO, SMALL, remove_outside_kidney=False)
    assert not out[30:32, 30:32, 30:32].any()
    assert np.all(out[22:26, 22:26, 22:26] == 2)
    assert [(r.reason, r.new_label) for r in rep.removed] == [("small_tumor", 0)]


def test_zero_threshold_disables_rule(base_map):
    seg = base_map()
    seg[6, 6, 6] = 2
    seg[30, 30, 30] = 1
    out = postprocess_segmentation(seg, ISO, {1: 0.0, 2: 0.0, 3: 0.0})
    assert np.array_equal(out, seg)


def test_warns_when_removed_lesion_has_seed_voxel_count(caplog):
    # At 0.2 mm3 voxels the default cyst minimum (24 mm3) is 120 voxels; a 64-voxel cyst is removed but has
    # more than the seed's 50 voxels, so a warning names it.
    seg = np.zeros((60, 60, 60), np.uint8)
    seg[2:58, 2:58, 2:58] = 1
    seg[10:14, 10:14, 10:14] = 3
    spacing = (0.8, 0.5, 0.5)
    with caplog.at_level(logging.WARNING, logger="kits_plugins.postprocessing.remove_components"):
        out, rep = postprocess_with_report(seg, spacing, {1: 1.0})
    assert rep.min_voxels[3] == 120
    assert rep.removed[0].exceeds_seed_voxels and "cyst component of 64 voxels" in caplog.text
    assert np.all(out[10:14, 10:14, 10:14] == 1)


def test_output_labels_dtype_shape_and_input_untouched(base_map):
    rng = np.random.default_rng(0)
    seg = base_map((30, 31, 32)).astype(np.int16)
    noise = rng.integers(0, 4, size=seg.shape).astype(np.int16) * (rng.random(seg.shape) < 0.02)
    seg = np.maximum(seg, noise)
    before = seg.copy()
    out = postprocess_segmentation(seg, ISO, SMALL)
    assert out.dtype == np.uint8 and out.shape == seg.shape
    assert set(np.unique(out)) <= {0, 1, 2, 3}
    assert np.array_equal(seg, before)  # not in place
    assert not out[20:].any()  # isolated noise specks are gone


def test_in_place_and_errors(base_map):
    seg = base_map()
    seg[30, 30, 30] = 1
    out = postprocess_segmentation(seg, ISO, SMALL, in_place=True)
    assert out is seg and seg[30, 30, 30] == 0
    empty = np.zeros((4, 4, 4), np.uint8)
    assert not postprocess_segmentation(empty, ISO).any()
    bad = base_map()
    bad[0, 0, 0] = 4
    with pytest.raises(ValueError, match="0-3"):
        postprocess_segmentation(bad, ISO)
    with pytest.raises(ValueError, match="3D"):
        postprocess_segmentation(np.zeros((4, 4), np.uint8), ISO)


def test_removing_every_kidney_is_reported_and_warned(caplog, base_map):
    seg = base_map()
    with caplog.at_level(logging.WARNING, logger="kits_plugins.postprocessing.remove_components"):
        out, report = postprocess_with_report(seg, (1.0, 1.0, 1.0), {1: 1e9})
    assert not out.any() and report.emptied and report.to_dict()["emptied"] is True
    assert any("removed every kidney component" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kits_plugins.postprocessing.remove_components"):
        out, report = postprocess_with_report(seg, (2.0, 2.0, 2.0))  # 1728 voxels of 8 mm3: kept
    assert out.any() and not report.emptied and not caplog.records
    assert not postprocess_with_report(np.zeros_like(seg), (1.0, 1.0, 1.0))[1].emptied  # empty in, not "emptied"
