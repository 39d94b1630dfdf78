"""``kits_plugins.evaluation.metrics``: KiTS23 HEC Dice and Surface Dice on known values, building blocks and
random blobs against DeepMind's surface-distance, and real KiTS23 labels (optional)."""

from __future__ import annotations

from pathlib import Path

import cc3d
import numpy as np
import pytest
from scipy import ndimage
from surface_distance import compute_surface_dice_at_tolerance, compute_surface_distances
from surface_distance.lookup_tables import ENCODE_NEIGHBOURHOOD_3D_KERNEL

from kits_plugins.constants import HEC_TOLERANCES_MM
from kits_plugins.evaluation.metrics import (
    METRIC_COLUMNS,
    compute_case_metrics,
    compute_case_metrics_straightforward,
    neighbour_codes,
    surface_dice,
    tolerance_offsets,
)
from kits_plugins.utilities.image_io import read_geometry, read_label
from kits_plugins.utilities.roi import outer_slices

# surface_distance 0.1 imports from scipy's deprecated namespaces
pytestmark = pytest.mark.filterwarnings("ignore:Please import:DeprecationWarning")


TOL_KIDNEY = HEC_TOLERANCES_MM["kidney_and_mass"]


def library_sd(ref: np.ndarray, pred: np.ndarray, spacing, tol: float) -> float:
    return float(compute_surface_dice_at_tolerance(compute_surface_distances(ref, pred, spacing), tol))


def assert_metrics_close(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert list(a) == list(b) == list(METRIC_COLUMNS)
    for k in a:
        assert abs(a[k] - b[k]) <= atol, (k, a[k], b[k])


def box_mask(shape, box) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(a, b) for a, b in box)] = True
    return m


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (3.0, 0.7, 0.7), (0.5, 0.8, 2.5)])
def test_known_values_from_copies(spacing):
    """A = block, B = far translated copy: ref A vs pred A+B gives Dice 2/3 and Surface Dice 2/3 exactly."""
    shape = (30, 30, 30)
    a = box_mask(shape, [(2, 8), (3, 10), (4, 9)])
    b = np.roll(a, 15, axis=1)
    both = a | b
    assert surface_dice(a, both, spacing, TOL_KIDNEY) == pytest.approx(2 / 3, abs=1e-12)
    ref, pred = a.astype(np.uint8), both.astype(np.uint8)
    m = compute_case_metrics(pred, ref, spacing)
    assert m["Dice_kidney"] == pytest.approx(2 / 3, abs=1e-12)
    assert m["SD_kidney"] == pytest.approx(2 / 3, abs=1e-12)
    # no masses anywhere: both empty -> 1 and 1
    assert m["Dice_masses"] == m["SD_masses"] == m["Dice_tumor"] == m["SD_tumor"] == 1.0
    # disjoint and far apart: 0 and 0; A+B vs A+C (C far from both): 1/2 and 1/2
    m = compute_case_metrics(b.astype(np.uint8), ref, spacing)
    assert m["Dice_kidney"] == 0.0 and m["SD_kidney"] == 0.0
    c = np.roll(a, 15, axis=2)
    m = compute_case_metrics((a | c).astype(np.uint8), both.astype(np.uint8), spacing)
    assert m["Dice_kidney"] == pytest.approx(0.5, abs=1e-12) and m["SD_kidney"] == pytest.approx(0.5, abs=1e-12)


def test_anisotropic_shift_within_and_beyond_tolerance():
    """Spacing (0.5, 2.5, 0.8): a 1-voxel shift along axis 0 (0.5 mm) keeps SD 1, along axis 1 (2.5 mm) it does not."""
    spacing = (0.5, 2.5, 0.8)
    ref = box_mask((24, 12, 20), [(4, 14), (3, 8), (5, 15)]).astype(np.uint8)
    along0 = np.roll(ref, 1, axis=0)
    m = compute_case_metrics(along0, ref, spacing)
    assert m["Dice_kidney"] == pytest.approx(9 / 10, abs=1e-12)  # 10 voxels long, 9 overlap
    assert m["SD_kidney"] == pytest.approx(1.0, abs=1e-12)
    along1 = np.roll(ref, 1, axis=1)
    m = compute_case_metrics(along1, ref, spacing)
    assert m["Dice_kidney"] == pytest.approx(4 / 5, abs=1e-12)
    assert 0.3 < m["SD_kidney"] < 0.99
    assert m["SD_kidney"] == pytest.approx(library_sd(ref > 0, along1 > 0, spacing, TOL_KIDNEY), abs=1e-12)


def test_hec_semantics_and_empty_rules():
    shape = (20, 20, 20)
    ref = np.zeros(shape, np.uint8)
    ref[box_mask(shape, [(2, 16), (2, 16), (2, 16)])] = 1
    ref[box_mask(shape, [(4, 8), (4, 8), (4, 8)])] = 2
    ref[box_mask(shape, [(10, 13), (10, 13), (10, 13)])] = 3
    pred = ref.copy()
    pred[pred == 2] = 3  # tumor predicted as cyst: kidney and masses perfect, tumor missing in prediction
    m = compute_case_metrics(pred, ref, (1.0, 1.0, 1.0))
    assert m == {
        "Dice_kidney": 1.0,
        "Dice_masses": 1.0,
        "Dice_tumor": 0.0,
        "SD_kidney": 1.0,
        "SD_masses": 1.0,
        "SD_tumor": 0.0,
    }
    empty = np.zeros(shape, np.uint8)
    assert compute_case_metrics(empty, empty, (2.0, 1.0, 1.0)) == dict.fromkeys(METRIC_COLUMNS, 1.0)
    assert compute_case_metrics(empty, ref, (2.0, 1.0, 1.0)) == dict.fromkeys(METRIC_COLUMNS, 0.0)
    assert compute_case_metrics(ref, empty, (2.0, 1.0, 1.0)) == dict.fromkeys(METRIC_COLUMNS, 0.0)
    assert compute_case_metrics_straightforward(pred, ref, (1.0, 1.0, 1.0)) == m


def test_bad_arrays_raise():
    a = np.zeros((5, 5, 5), np.uint8)
    with pytest.raises(ValueError, match="shape"):
        compute_case_metrics(a, np.zeros((5, 5, 6), np.uint8), (1, 1, 1))
    b = a.copy()
    b[2, 2, 2] = 5
    with pytest.raises(ValueError, match="outside 0-3"):
        compute_case_metrics(b, a, (1, 1, 1))
    with pytest.raises(ValueError, match="negative"):
        compute_case_metrics(a.astype(np.int16) - 1, a, (1, 1, 1))


def test_neighbour_codes_match_library_correlation():
    rng = np.random.default_rng(0)
    m = rng.random((7, 8, 9)) > 0.5
    padded = np.pad(m.astype(np.uint8), 1)
    ours = neighbour_codes(padded)
    # the library: correlate(cropmask, K, mode="constant") on the mask zero-padded once at the high end
    lib = ndimage.correlate(np.pad(m.astype(np.uint8), ((0, 1),) * 3), ENCODE_NEIGHBOURHOOD_3D_KERNEL, mode="constant")
    np.testing.assert_array_equal(ours, lib)


def test_tolerance_offsets():
    offsets, ok = tolerance_offsets((1.0, 1.0, 1.0), TOL_KIDNEY)
    assert ok and len(offsets) == 7 and tuple(offsets[0]) == (0, 0, 0)
    offsets, ok = tolerance_offsets((0.5, 0.7, 0.7), 1.1498198361434828)
    lengths = np.sqrt(((offsets * [0.5, 0.7, 0.7]) ** 2).sum(1))
    assert ok and np.all(lengths <= 1.1498198361434828) and np.all(np.diff(lengths) >= 0)
    assert {(2, 0, 0), (1, 1, 0), (0, 1, 1)} <= {tuple(o) for o in offsets}
    assert (0, 1, 1) not in {tuple(o) for o in tolerance_offsets((0.5, 0.8, 0.8), TOL_KIDNEY)[0]}
    # an offset exactly at the tolerance is flagged, so the exact distance transform is used
    assert tolerance_offsets((TOL_KIDNEY, 1.0, 1.0), TOL_KIDNEY)[1] is False


@pytest.mark.parametrize("seed", range(6))
def test_random_blobs_match_library(seed):
    rng = np.random.default_rng(seed)
    spacing = tuple(rng.choice([0.4, 0.5, 0.7031, 0.8, 1.0, 2.5, 3.0, 5.0], 3))
    if seed == 5:
        spacing = (TOL_KIDNEY, 0.8, 0.5)  # exercises the distance-transform fallback
    shape = (26, 22, 24)
    ref = ndimage.gaussian_filter(rng.random(shape), 2) > 0.5
    pred = ndimage.gaussian_filter(rng.random(shape), 2) > 0.5
    ref[0] |= rng.random(shape[1:]) > 0.7  # objects touching the volume border
    pred[:, -1] |= rng.random((shape[0], shape[2])) > 0.7
    for tol in HEC_TOLERANCES_MM.values():
        assert surface_dice(ref, pred, spacing, tol) == pytest.approx(library_sd(ref, pred, spacing, tol), abs=1e-9)
    labels_ref = ref.astype(np.uint8) + (ndimage.gaussian_filter(rng.random(shape), 2) > 0.52) * ref
    labels_pred = pred.astype(np.uint8) + 2 * (ndimage.gaussian_filter(rng.random(shape), 2) > 0.52) * pred
    assert_metrics_close(
        compute_case_metrics(labels_pred, labels_ref, spacing),
        compute_case_metrics_straightforward(labels_pred, labels_ref, spacing),
        atol=1e-9,
    )


def _smallest_cases(files: list[Path], n: int) -> list[Path]:
    return sorted(files, key=lambda p: np.prod(read_geometry(p).size))[:n]


def _perturbations(ref: np.ndarray) -> dict[str, np.ndarray]:
    fg = ref > 0
    out = {}
    p = ref.copy()
    p[ndimage.binary_dilation(fg, iterations=2) & ~fg] = 1
    out["dilated"] = p
    p = ref.copy()
    p[fg & ~ndimage.binary_erosion(fg)] = 0
    out["eroded"] = p
    out["shifted"] = np.roll(ref, (1, -2, 1), axis=(0, 1, 2))
    lesion = 3 if np.any(ref == 3) else 2  # drop a cyst (a tumor where the case has no cyst)
    comps = cc3d.connected_components(ref == lesion)
    p = ref.copy()
    p[comps == 1] = 1
    out["dropped_lesion"] = p
    p = ref.copy()
    p[ndimage.binary_dilation(ref == 2) & fg] = 2  # tumor grown into kidney and cyst
    out["tumor_grown"] = p
    return out


@pytest.mark.shared
def test_agreement_with_surface_distance_on_real_labels(shared_label_files):
    for path in _smallest_cases(shared_label_files, 3):
        ref_full, geom = read_label(path)
        box = outer_slices(ref_full)
        box = tuple(slice(max(s.start - 6, 0), s.stop + 6) for s in box)  # around the kidneys, for speed
        ref = np.ascontiguousarray(ref_full[box])
        for name, pred in _perturbations(ref).items():
            ours = compute_case_metrics(pred, ref, geom.spacing_np)
            lib = compute_case_metrics_straightforward(pred, ref, geom.spacing_np)
            assert_metrics_close(ours, lib, atol=1e-6)
            assert min(ours.values()) < 1.0 or name == "dropped_lesion", (path.name, name, ours)
