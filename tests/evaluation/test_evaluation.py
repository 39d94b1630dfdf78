"""KiTS23 evaluation: known values, agreement with DeepMind's surface-distance, folder I/O, errors, CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cc3d
import numpy as np
import pytest
from scipy import ndimage
from surface_distance import compute_surface_dice_at_tolerance, compute_surface_distances
from surface_distance.lookup_tables import ENCODE_NEIGHBOURHOOD_3D_KERNEL

from kits_plugins.cli import main
from kits_plugins.constants import HEC_TOLERANCES_MM
from kits_plugins.evaluation.evaluate import evaluate_folders, find_reference_cases
from kits_plugins.evaluation.metrics import (
    METRIC_COLUMNS,
    compute_case_metrics,
    compute_case_metrics_straightforward,
    neighbour_codes,
    surface_dice,
    tolerance_offsets,
)
from kits_plugins.utilities.image_io import Geometry, KitsInputError, read_geometry, read_label, write_image
from kits_plugins.utilities.roi import outer_slices

# surface_distance 0.1 imports from scipy's deprecated namespaces
pytestmark = pytest.mark.filterwarnings("ignore:Please import:DeprecationWarning")

CSV_COLUMNS = ["caseID", "Dice_kidney", "Dice_masses", "Dice_tumor", "SD_kidney", "SD_masses", "SD_tumor"]
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


# ----------------------------------------------------------------------------------------------- known values


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


# ----------------------------------------------------------------------------------- building blocks vs library


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


# ---------------------------------------------------------------------------------------- real KiTS23 labels


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


# --------------------------------------------------------------------------------------------- folders, CLI

SPACING_ITK = (0.8, 0.7, 2.5)  # index order x, y, z -> numpy order (2.5, 0.7, 0.8)
DIRECTION = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0)  # permuted like the KiTS23 files


def _geom(shape_np=(12, 16, 14), spacing_itk=SPACING_ITK) -> Geometry:
    return Geometry(origin=(1.0, -2.0, 3.0), spacing=spacing_itk, direction=DIRECTION, size=tuple(shape_np[::-1]))


def _label(seed: int, shape=(12, 16, 14)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.uint8)
    lab[2:10, 3:13, 2:12] = 1
    lab[3 + rng.integers(0, 3) : 7, 5:9, 4 : 8 + rng.integers(0, 3)] = 2
    if seed % 2:
        lab[8:10, 10:12, 8:10] = 3
    return lab


def _make_case_folders(tmp_path: Path, n: int = 3, kits_layout: bool = False) -> tuple[Path, Path, dict]:
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    arrays = {}
    for i in range(n):
        case = f"case_{i:05d}"
        ref = _label(i)
        pred = np.roll(_label(i + 10 * (i % 2)), i, axis=1)
        arrays[case] = (pred, ref)
        write_image(pred, _geom(), pred_dir / f"{case}.nii.gz")
        ref_path = ref_dir / case / "segmentation.nii.gz" if kits_layout else ref_dir / f"{case}.nii.gz"
        write_image(ref, _geom(), ref_path)
    return pred_dir, ref_dir, arrays


@pytest.mark.parametrize("kits_layout", [False, True])
def test_evaluate_folders_csv_json(tmp_path, kits_layout):
    pred_dir, ref_dir, arrays = _make_case_folders(tmp_path, kits_layout=kits_layout)
    out_csv = tmp_path / "out" / "evaluation.csv"
    result = evaluate_folders(pred_dir, ref_dir, out_csv=out_csv, num_processes=1, progress=False)
    with open(out_csv, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == CSV_COLUMNS
    assert [r[0] for r in rows[1:]] == ["case_00000", "case_00001", "case_00002", "average"]
    spacing_np = SPACING_ITK[::-1]
    expected = [compute_case_metrics_straightforward(p, r, spacing_np) for p, r in arrays.values()]
    for row, exp in zip(rows[1:-1], expected):
        np.testing.assert_allclose([float(v) for v in row[1:]], [exp[c] for c in METRIC_COLUMNS], atol=1e-8)
    mean = {c: np.mean([e[c] for e in expected]) for c in METRIC_COLUMNS}
    np.testing.assert_allclose([float(v) for v in rows[-1][1:]], [mean[c] for c in METRIC_COLUMNS], atol=1e-8)
    data = json.loads(out_csv.with_suffix(".json").read_text())
    assert data == json.loads(json.dumps(result))
    assert data["mean_dice"] == pytest.approx(np.mean([mean[c] for c in METRIC_COLUMNS[:3]]))
    assert data["mean_surface_dice"] == pytest.approx(np.mean([mean[c] for c in METRIC_COLUMNS[3:]]))
    assert [r["caseID"] for r in data["cases"]] == list(arrays)
    assert 0 < data["mean_dice"] < 1 and 0 < data["mean_surface_dice"] < 1
    assert sorted(p.name for p in out_csv.parent.iterdir()) == ["evaluation.csv", "evaluation.json"]


def test_missing_predictions_are_all_listed_and_nothing_written(tmp_path):
    pred_dir, ref_dir, _ = _make_case_folders(tmp_path, n=4)
    (pred_dir / "case_00001.nii.gz").unlink()
    (pred_dir / "case_00003.nii.gz").unlink()
    out_csv = tmp_path / "evaluation.csv"
    out_csv.write_text("old\n")
    with pytest.raises(KitsInputError, match=r"2 of 4 reference cases: case_00001, case_00003"):
        evaluate_folders(pred_dir, ref_dir, out_csv=out_csv, num_processes=1, progress=False)
    assert out_csv.read_text() == "old\n" and not out_csv.with_suffix(".json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evaluation.csv", "pred", "ref"]
    result = evaluate_folders(pred_dir, ref_dir, num_processes=1, progress=False, only_predicted=True)
    assert [r["caseID"] for r in result["cases"]] == ["case_00000", "case_00002"]


def test_outputs_renamed_together_with_ordinary_permissions(tmp_path, monkeypatch):
    import os

    from kits_plugins.evaluation import evaluate as evaluate_module

    pred_dir, ref_dir, _ = _make_case_folders(tmp_path, n=1)
    out_csv = tmp_path / "out" / "evaluation.csv"
    evaluate_folders(pred_dir, ref_dir, out_csv=out_csv, num_processes=1, progress=False)
    umask = os.umask(0)
    os.umask(umask)
    for f in (out_csv, out_csv.with_suffix(".json")):
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    before = {f: f.read_bytes() for f in out_csv.parent.iterdir()}

    def broken_dump(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(evaluate_module.json, "dump", broken_dump)  # the JSON fails after the CSV was written
    with pytest.raises(OSError, match="disk full"):
        evaluate_folders(pred_dir, ref_dir, out_csv=out_csv, num_processes=1, progress=False)
    assert {f: f.read_bytes() for f in out_csv.parent.iterdir()} == before  # old pair intact, no temporaries


def test_shape_spacing_and_label_errors_name_the_case(tmp_path):
    pred_dir, ref_dir, arrays = _make_case_folders(tmp_path, n=2)
    out_csv = tmp_path / "e.csv"
    write_image(np.zeros((12, 16, 15), np.uint8), _geom((12, 16, 15)), pred_dir / "case_00001.nii.gz")
    with pytest.raises(KitsInputError, match=r"case_00001: shape"):
        evaluate_folders(pred_dir, ref_dir, out_csv=out_csv, num_processes=1, progress=False)
    write_image(arrays["case_00001"][0], _geom(spacing_itk=(0.8, 0.7, 3.0)), pred_dir / "case_00001.nii.gz")
    with pytest.raises(KitsInputError, match=r"case_00001: spacing"):
        evaluate_folders(pred_dir, ref_dir, out_csv=out_csv, num_processes=1, progress=False)
    bad = arrays["case_00001"][0].copy()
    bad[0, 0, 0] = 4
    write_image(bad, _geom(), pred_dir / "case_00001.nii.gz")
    with pytest.raises(KitsInputError, match=r"case_00001\.nii\.gz: labels outside 0-3: \[4\]"):
        evaluate_folders(pred_dir, ref_dir, out_csv=out_csv, num_processes=2, progress=False)
    assert not out_csv.exists() and not out_csv.with_suffix(".json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_reference_layout_detection(tmp_path):
    ref = tmp_path / "ref"
    write_image(_label(0), _geom(), ref / "case_00000.nii.gz")
    write_image(_label(1), _geom(), ref / "case_00001" / "segmentation.nii.gz")
    (ref / "case_00002").mkdir()  # no segmentation: ignored
    assert list(find_reference_cases(ref)) == ["case_00000", "case_00001"]
    write_image(_label(1), _geom(), ref / "case_00000" / "segmentation.nii.gz")
    with pytest.raises(KitsInputError, match="case_00000 found twice"):
        find_reference_cases(ref)
    with pytest.raises(KitsInputError, match="no reference cases"):
        find_reference_cases(tmp_path / "ref" / "case_00002")


def test_cli_end_to_end(tmp_path, capsys):
    pred_dir, ref_dir, arrays = _make_case_folders(tmp_path, n=2, kits_layout=True)
    assert main(["evaluate", str(pred_dir), str(ref_dir), "-np", "2"]) == 0
    out = capsys.readouterr().out
    assert "Dice_kidney" in out and "average" in out and "mean Surface Dice" in out
    rows = list(csv.reader(open(pred_dir / "evaluation.csv", newline="")))
    assert rows[0] == CSV_COLUMNS and [r[0] for r in rows[1:]] == ["case_00000", "case_00001", "average"]
    assert json.loads((pred_dir / "evaluation.json").read_text())["num_cases"] == 2
    # a second run ignores the CSV/JSON in the prediction folder; errors are one line and exit code 2
    custom = tmp_path / "x" / "metrics.csv"
    assert main(["evaluate", str(pred_dir), str(ref_dir), "-o", str(custom), "--quiet"]) == 0
    assert custom.read_text() == (pred_dir / "evaluation.csv").read_text()
    (pred_dir / "case_00000.nii.gz").unlink()
    assert main(["evaluate", str(pred_dir), str(ref_dir), "-o", str(tmp_path / "y.csv")]) == 2
    err = capsys.readouterr().err
    assert "kits evaluate: error:" in err and "case_00000" in err
    assert not (tmp_path / "y.csv").exists()


@pytest.mark.parametrize("target", ["pred/case_00001.nii.gz", "ref/case_00002.nii.gz"])
def test_output_over_an_input_is_refused_and_the_input_kept(tmp_path, capsys, target):
    pred_dir, ref_dir, _ = _make_case_folders(tmp_path)
    victim = tmp_path / target
    original = victim.read_bytes()
    rc = main(["evaluate", str(pred_dir), str(ref_dir), "-o", str(victim), "-np", "1", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "would write over its input" in err and len(err.strip().splitlines()) == 1
    assert victim.read_bytes() == original
