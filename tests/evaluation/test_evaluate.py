"""``kits_plugins.evaluation.evaluate``: folders of predictions and references (both layouts), the CSV and JSON
written together, errors naming the case, and ``kits evaluate``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from kits_plugins.cli import main
from kits_plugins.evaluation.evaluate import evaluate_folders, find_reference_cases
from kits_plugins.evaluation.metrics import METRIC_COLUMNS, compute_case_metrics_straightforward
from kits_plugins.utilities.image_io import Geometry, KitsInputError, write_image

# surface_distance 0.1 imports from scipy's deprecated namespaces
pytestmark = pytest.mark.filterwarnings("ignore:Please import:DeprecationWarning")


CSV_COLUMNS = ["caseID", "Dice_kidney", "Dice_masses", "Dice_tumor", "SD_kidney", "SD_masses", "SD_tumor"]
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
