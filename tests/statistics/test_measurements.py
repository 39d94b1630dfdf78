"""``kits_plugins.statistics.measurements``: volumes, diameters, centroids, sides, HU and lesion-to-kidney assignment
on phantoms of known size, in straight, oblique and KiTS23 headers."""

from __future__ import annotations

import numpy as np
import pytest

from kits_plugins.errors import KitsInputError
from kits_plugins.statistics.measurements import (
    case_statistics,
    index_to_lps,
    max_diameter_mm,
    max_pairwise_distance,
    midline_x_mm,
)
from kits_plugins.utilities.image_io import Geometry, read_image, read_label, write_image

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def voxel_diagonal(geometry: Geometry) -> float:
    return float(np.linalg.norm(geometry.spacing))


def test_index_to_lps_follows_the_direction_matrix(rotation):
    d = rotation((20, -35, 50))
    g = Geometry((5.0, -7.0, 11.0), (0.8, 1.1, 2.5), tuple(d.ravel()), (10, 12, 14))
    # numpy index (z, y, x) = (2, 3, 4) is ITK index (4, 3, 2)
    expected = np.array(g.origin) + d @ (np.array([4, 3, 2]) * np.array(g.spacing))
    assert np.allclose(index_to_lps(np.array([2, 3, 4]), g), expected)
    assert index_to_lps(np.zeros((5, 3)), g).shape == (5, 3)


def test_sphere_volume_diameter_centroid(ellipsoid_lps):
    g = Geometry((-20.0, -25.0, 30.0), (0.9, 0.8, 1.2), IDENTITY, (45, 60, 40))
    centre, r = np.array([0.3, -0.2, 53.1]), 12.0
    labels = ellipsoid_lps(g, centre, (r, r, r)).astype(np.uint8) * 2  # a tumor alone (its own kidney component)
    stats = case_statistics(labels, g)
    (lesion,) = stats.lesions
    analytic_ml = 4 / 3 * np.pi * r**3 / 1000
    assert lesion.volume_ml == pytest.approx(analytic_ml, rel=0.02)
    assert lesion.volume_ml == pytest.approx(np.count_nonzero(labels) * 0.9 * 0.8 * 1.2 / 1000, abs=1e-5)
    assert abs(lesion.max_diameter_mm - 2 * r) <= voxel_diagonal(g)
    assert np.allclose(lesion.centroid_lps_mm, centre, atol=0.3)
    assert lesion.label == "tumor" and lesion.id == "tumor_1" and lesion.kidney == "kidney_1"
    assert stats.totals["tumor_burden_ml"] == pytest.approx(lesion.volume_ml)


def test_ellipsoid_in_an_oblique_header(ellipsoid_lps, rotation):
    d = rotation((25, 0, 30))
    g = Geometry((-30.0, 20.0, 100.0), (0.8, 0.9, 1.5), tuple(d.ravel()), (64, 60, 44))
    centre = index_to_lps((np.array(g.shape) - 1) / 2, g) + np.array([0.4, -0.3, 0.2])
    radii = np.array([16.0, 10.0, 7.0])
    mask = ellipsoid_lps(g, centre, radii, axes=rotation((-10, 40, 15)))
    labels = mask.astype(np.uint8) * 3
    (lesion,) = case_statistics(labels, g).lesions
    assert lesion.label == "cyst"
    assert lesion.volume_ml == pytest.approx(4 / 3 * np.pi * radii.prod() / 1000, rel=0.02)
    assert abs(lesion.max_diameter_mm - 2 * radii.max()) <= voxel_diagonal(g)
    assert np.allclose(lesion.centroid_lps_mm, centre, atol=0.3)


def test_max_diameter_edge_cases(rotation):
    g = Geometry((0.0, 0.0, 0.0), (0.7, 0.5, 2.0), tuple(rotation((10, 20, 30)).ravel()), (12, 5, 5))
    one = np.zeros(g.shape, bool)
    one[2, 2, 2] = True
    assert max_diameter_mm(one, g) == pytest.approx(2.0)  # a single voxel: its largest edge
    line = np.zeros(g.shape, bool)
    line[2, 2, 1:11] = True  # 10 voxels along numpy x = ITK i (0.7 mm)
    assert max_diameter_mm(line, g) == pytest.approx(7.0)
    assert max_diameter_mm(np.zeros(g.shape, bool), g) == 0.0
    # flat point sets (qhull refuses them without joggling): the result is still the exact maximum
    rng = np.random.default_rng(0)
    flat = np.c_[rng.uniform(-5, 5, (200, 2)), np.zeros(200)]
    brute = max(np.linalg.norm(flat[:, None] - flat[None], axis=-1).ravel())
    assert max_pairwise_distance(flat) == pytest.approx(brute)
    cloud = rng.normal(size=(500, 3))
    assert max_pairwise_distance(cloud) == pytest.approx(max(np.linalg.norm(cloud[:, None] - cloud[None], axis=-1).ravel()))


def _two_kidneys(ellipsoid_lps, g: Geometry, rng) -> tuple[np.ndarray, np.ndarray]:
    """Right kidney (patient's right: LPS x < 0) with a tumor, larger left kidney with a cyst; CT with noise."""
    labels = np.zeros(g.shape, np.uint8)
    labels[ellipsoid_lps(g, (-40, 0, 30), (12, 15, 25))] = 1
    labels[ellipsoid_lps(g, (42, 3, 32), (14, 16, 27))] = 1
    labels[ellipsoid_lps(g, (-44, 0, 30), (6, 6, 6))] = 2
    labels[ellipsoid_lps(g, (46, 3, 40), (5, 5, 5))] = 3
    ct = rng.normal(-800, 20, g.shape)
    ct[labels == 1] = rng.normal(150, 10, np.count_nonzero(labels == 1))
    ct[labels == 2] = rng.normal(90, 25, np.count_nonzero(labels == 2))
    ct[labels == 3] = rng.normal(10, 5, np.count_nonzero(labels == 3))
    return labels, ct.astype(np.float32)


def test_sides_and_centroids_agree_in_two_array_layouts(tmp_path, ellipsoid_lps, kits_layout, voxel_centres_lps):
    g1 = Geometry((-75.0, -30.0, 0.0), (1.5, 1.25, 2.0), IDENTITY, (101, 49, 31))  # image centre at x = 0
    labels1, ct1 = _two_kidneys(ellipsoid_lps, g1, np.random.default_rng(1))
    labels2, g2 = kits_layout(labels1, g1)
    ct2, _ = kits_layout(ct1, g1)
    assert np.allclose(voxel_centres_lps(g2)[7, 5, g1.shape[0] - 1 - 3], voxel_centres_lps(g1)[3, 5, 7])
    results = []
    for name, (lab, ct, g) in {"identity": (labels1, ct1, g1), "kits": (labels2, ct2, g2)}.items():
        write_image(lab, g, tmp_path / f"{name}.nii.gz")
        write_image(ct, g, tmp_path / f"{name}_ct.nii.gz")
        lab_read, g_read = read_label(tmp_path / f"{name}.nii.gz")
        ct_read, _ = read_image(tmp_path / f"{name}_ct.nii.gz")
        for with_ct in (None, ct_read):
            stats = case_statistics(lab_read, g_read, with_ct, name)
            left, right = stats.kidneys  # numbered by decreasing volume: the left one is larger
            assert (left.side, right.side) == ("left", "right"), name
            assert left.centroid_lps_mm[0] > 30 and right.centroid_lps_mm[0] < -30
            tumor, cyst = stats.lesions
            assert (tumor.label, tumor.kidney, tumor.side) == ("tumor", right.id, "right")
            assert (cyst.label, cyst.kidney, cyst.side) == ("cyst", left.id, "left")
            assert right.tumors == [tumor.id] and left.cysts == [cyst.id] and not right.cysts
            assert stats.midline_source == ("image_centre" if with_ct is None else "ct_body")
            assert left.volume_ml == pytest.approx(left.parenchyma_ml + left.cyst_ml, abs=2e-5)
            assert left.volume_ml == pytest.approx(4 / 3 * np.pi * 14 * 16 * 27 / 1000, rel=0.02)
            results.append(stats.to_dict())
    # the same patient in two layouts: the same numbers (JSON values are rounded: 1e-3 mm, 1e-5 ml)
    for other in results[1:]:
        for key in ("kidneys", "lesions"):
            for a, b in zip(results[0][key], other[key]):
                assert a["id"] == b["id"] and a.get("side") == b.get("side")
                assert np.allclose(a["centroid_lps_mm"], b["centroid_lps_mm"], atol=2e-3)
                assert a["volume_ml"] == pytest.approx(b["volume_ml"], abs=2e-5)
                assert a["max_diameter_mm"] == pytest.approx(b["max_diameter_mm"], abs=2e-3)
    assert results[0]["lesions"][0]["hu_mean"] is None
    assert results[1]["lesions"][0]["hu_mean"] == pytest.approx(results[3]["lesions"][0]["hu_mean"], abs=0.011)


def test_hu_mean_and_std(ellipsoid_lps):
    g = Geometry((-75.0, -30.0, 0.0), (1.5, 1.25, 2.0), IDENTITY, (101, 49, 31))
    labels, ct = _two_kidneys(ellipsoid_lps, g, np.random.default_rng(2))
    stats = case_statistics(labels, g, ct)
    tumor, cyst = stats.lesions
    for lesion, value in ((tumor, 2), (cyst, 3)):
        voxels = ct[labels == value].astype(np.float64)
        assert lesion.hu_mean == pytest.approx(voxels.mean(), abs=0.006)
        assert lesion.hu_std == pytest.approx(voxels.std(), abs=0.006)
    assert tumor.hu_mean == pytest.approx(90, abs=5) and cyst.hu_std == pytest.approx(5, abs=1.5)
    right = stats.kidneys[1]
    assert right.hu_mean == pytest.approx(ct[(labels > 0) & (np.arange(101) < 50)].astype(np.float64).mean(), abs=0.006)


def test_midline_from_the_ct_body_and_horseshoe(ellipsoid_lps):
    g = Geometry((-75.0, -60.0, 0.0), (1.5, 1.5, 3.0), IDENTITY, (101, 81, 11))  # image centre x = 0
    body = ellipsoid_lps(g, (30, 0, 15), (40, 50, 1000))  # a body shifted 30 mm towards the patient's left
    ct = np.where(body, 40.0, -1000.0).astype(np.float32)
    assert midline_x_mm(g, ct) == (pytest.approx(30.0, abs=0.1), "ct_body")
    assert midline_x_mm(g) == (pytest.approx(0.0), "image_centre")
    assert midline_x_mm(g, np.full(g.shape, -1000.0)) == (pytest.approx(0.0), "image_centre")
    labels = np.zeros(g.shape, np.uint8)
    labels[ellipsoid_lps(g, (15, 0, 15), (8, 10, 12))] = 1  # one kidney between image centre and body midline
    (alone,) = case_statistics(labels, g).kidneys
    (with_ct,) = case_statistics(labels, g, ct).kidneys
    assert (alone.side, with_ct.side) == ("left", "right")
    # one component across the midline: a horseshoe
    labels[:] = 0
    labels[ellipsoid_lps(g, (0, 10, 15), (45, 8, 10))] = 1
    (horseshoe,) = case_statistics(labels, g).kidneys
    assert horseshoe.side == "horseshoe" and horseshoe.fraction_left == pytest.approx(0.5, abs=0.05)


def test_fragments_small_lesions_and_bad_labels():
    g = Geometry((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), IDENTITY, (40, 20, 20))
    labels = np.zeros(g.shape, np.uint8)
    labels[2:14, 2:14, 2:14] = 1  # 1.728 ml
    labels[5:8, 5:8, 5:8] = 2  # 27 voxels
    labels[10, 10, 10] = 3  # one voxel cyst
    labels[2:6, 2:6, 30:34] = 1  # 0.064 ml fragment ...
    labels[3, 3, 31] = 2  # ... holding one tumor voxel
    stats = case_statistics(labels, g, min_kidney_ml=1.0, min_lesion_ml=0.0)
    (kidney,) = stats.kidneys
    assert kidney.volume_ml == pytest.approx(1.728) and kidney.parenchyma_ml == pytest.approx(1.728 - 0.028)
    assert [(les.id, les.kidney) for les in stats.lesions] == [("tumor_1", "kidney_1"), ("tumor_2", None),
                                                                ("cyst_1", "kidney_1")]
    assert stats.totals["fragments"] == 1 and stats.totals["fragments_ml"] == pytest.approx(0.064)
    assert stats.totals["tumor_burden_ml"] == pytest.approx(0.028)
    assert stats.totals["kidney_and_mass_ml"] == pytest.approx(1.792)
    small = case_statistics(labels, g, min_lesion_ml=0.01)
    assert [les.id for les in small.lesions] == ["tumor_1"] and small.totals["lesions_below_min_lesion_ml"] == 2
    empty = case_statistics(np.zeros(g.shape, np.uint8), g)
    assert empty.kidneys == [] and empty.lesions == [] and empty.totals["kidney_and_mass_ml"] == 0.0
    labels[0, 0, 0] = 7
    with pytest.raises(KitsInputError, match=r"case_x: labels outside 0-3: \[7\]"):
        case_statistics(labels, g, case="case_x")
