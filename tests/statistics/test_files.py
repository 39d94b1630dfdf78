"""``kits_plugins.statistics.files``: ``kits statistics`` on files and folders (JSON and CSV content), the function
for one case from arrays, and the one-line errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from kits_plugins.cli import main as kits_main
from kits_plugins.statistics.files import (
    CSV_COLUMNS,
    csv_rows,
    find_label_inputs,
    read_case_jsons,
    save_case_statistics,
    write_statistics_csv,
)
from kits_plugins.utilities.image_io import Geometry, write_image

KITS_DIRECTION = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0)


def make_case(shift: int = 0) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """A KiTS23-layout case (numpy axis 0 runs along LPS x): patient's right kidney at small axis-0 index with a
    tumor, left kidney with a cyst; CT 100 HU in kidney, 30 in tumor, 0 in cyst, -1000 outside."""
    g = Geometry((-40.0, -20.0, 30.0), (3.0, 2.0, 2.0), KITS_DIRECTION, (10, 20, 40))  # numpy (x, y, z') = (40, 20, 10)
    labels = np.zeros(g.shape, np.uint8)
    labels[5:15, 5:15, 2:8] = 1  # x = -40 + 2 * (5..14) < 0: patient's right, 600 voxels
    labels[25 + shift : 37 + shift, 5:15, 2:8] = 1  # patient's left, 720 voxels
    labels[6:9, 6:9, 3:5] = 2  # 18 voxels
    labels[30:32, 8:10, 4:6] = 3  # 8 voxels
    ct = np.select([labels == 1, labels == 2, labels == 3], [100, 30, 0], -1000).astype(np.int16)
    return labels, ct, g


def test_cli_folder_json_and_csv(tmp_path, capsys):
    voxel_ml = 3 * 2 * 2 / 1000
    for i in range(2):
        labels, ct, g = make_case(shift=i)
        write_image(labels, g, tmp_path / "labels" / f"case_{i:05d}.nii.gz")
        write_image(ct, g, tmp_path / "ct" / f"case_{i:05d}_0000.nii.gz")
    out = tmp_path / "out"
    assert kits_main(["statistics", str(tmp_path / "labels"), "--ct", str(tmp_path / "ct"), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "case_00000: kidneys left 8.6 ml, right 7.2 ml; 1 tumor(s) 0.22 ml; 1 cyst(s) 0.10 ml" in printed
    assert sorted(p.name for p in out.iterdir()) == ["case_00000.json", "case_00001.json", "statistics.csv"]

    case = json.loads((out / "case_00000.json").read_text())
    assert case["case"] == "case_00000" and case["geometry"]["direction"] == list(KITS_DIRECTION)
    assert case["rules"]["connectivity"] == 26 and case["rules"]["midline_source"] == "ct_body"
    left, right = case["kidneys"]
    assert (left["side"], right["side"]) == ("left", "right")
    assert left["volume_ml"] == pytest.approx(720 * voxel_ml) and right["parenchyma_ml"] == pytest.approx(582 * voxel_ml)
    assert right["hu_mean"] == pytest.approx((582 * 100 + 18 * 30) / 600, abs=0.01)
    tumor, cyst = case["lesions"]
    assert tumor == {
        "id": "tumor_1", "label": "tumor", "label_value": 2, "volume_ml": pytest.approx(18 * voxel_ml),
        # a 3 x 3 x 2-voxel box (6 x 6 x 6 mm): the farthest face centres are the -z face of one corner voxel and
        # the +z face of the opposite one, 4, 4 and 6 mm apart
        "max_diameter_mm": pytest.approx(np.sqrt(4**2 + 4**2 + 6**2), abs=1e-3), "kidney": "kidney_2", "side": "right",
        "hu_mean": 30.0, "hu_std": 0.0,
        "centroid_lps_mm": pytest.approx([-40 + 2 * 7, -20 + 2 * 7, 30 - 3 * 3.5], abs=1e-3),
    }
    assert (cyst["kidney"], cyst["hu_mean"]) == ("kidney_1", 0.0)
    assert case["totals"]["tumor_burden_ml"] == pytest.approx(18 * voxel_ml)

    with open(out / "statistics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    assert [(r["case"], r["structure"], r["id"], r["side"], r["kidney"], r["label"]) for r in rows[:4]] == [
        ("case_00000", "kidney", "kidney_1", "left", "kidney_1", "kidney_and_mass"),
        ("case_00000", "kidney", "kidney_2", "right", "kidney_2", "kidney_and_mass"),
        ("case_00000", "lesion", "tumor_1", "right", "kidney_2", "tumor"),
        ("case_00000", "lesion", "cyst_1", "left", "kidney_1", "cyst"),
    ]
    assert len(rows) == 8 and rows[4]["case"] == "case_00001"
    assert float(rows[2]["volume_ml"]) == pytest.approx(18 * voxel_ml) and rows[2]["parenchyma_ml"] == ""
    assert float(rows[2]["centroid_z_mm"]) == pytest.approx(19.5) and float(rows[3]["hu_std"]) == 0.0

    # without a CT: no HU, midline at the image centre, same sides
    assert kits_main(["statistics", str(tmp_path / "labels" / "case_00000.nii.gz"), "-o", str(tmp_path / "o2")]) == 0
    plain = json.loads((tmp_path / "o2" / "case_00000.json").read_text())
    assert [k["side"] for k in plain["kidneys"]] == ["left", "right"] and plain["kidneys"][0]["hu_mean"] is None
    assert plain["rules"]["midline_source"] == "image_centre"
    with open(tmp_path / "o2" / "statistics.csv", newline="") as f:
        assert next(csv.DictReader(f))["hu_mean"] == ""


def test_kits_layout_and_one_case_from_arrays(tmp_path):
    labels, ct, g = make_case()
    write_image(labels, g, tmp_path / "kits" / "case_00007" / "segmentation.nii.gz")
    write_image(ct, g, tmp_path / "kits" / "case_00007" / "imaging.nii.gz")
    assert [c for c, _ in find_label_inputs(tmp_path / "kits")] == ["case_00007"]
    assert kits_main(["statistics", str(tmp_path / "kits"), "--ct", str(tmp_path / "kits"), "-o", str(tmp_path / "a")]) == 0
    from_files = json.loads((tmp_path / "a" / "case_00007.json").read_text())
    from_arrays = save_case_statistics(labels, g, tmp_path / "b", "case_00007", ct)
    assert json.loads((tmp_path / "b" / "case_00007.json").read_text()) == from_arrays == from_files
    # a CSV rebuilt from the JSONs (as sharded predictions would) equals the command's
    write_statistics_csv(read_case_jsons([tmp_path / "b" / "case_00007.json"]), tmp_path / "b" / "statistics.csv")
    assert (tmp_path / "b" / "statistics.csv").read_text() == (tmp_path / "a" / "statistics.csv").read_text()
    assert len(csv_rows(from_arrays)) == 4


def test_ct_as_a_dicom_series(tmp_path):
    from kits_plugins.testing.dicom_series import write_dicom_series

    labels, ct, g = make_case()
    write_image(labels, g, tmp_path / "pred.nii.gz")
    write_dicom_series(ct, g, tmp_path / "series")  # keeps the process's locale (GDCM's writer resets it)
    assert kits_main(["statistics", str(tmp_path / "pred.nii.gz"), "--ct", str(tmp_path / "series"), "-o",
                      str(tmp_path / "out")]) == 0
    case = json.loads((tmp_path / "out" / "pred.json").read_text())
    assert [les["hu_mean"] for les in case["lesions"]] == [30.0, 0.0]
    assert case == save_case_statistics(labels, g, tmp_path / "arrays", "pred", ct)


def test_error_lines(tmp_path, capsys):
    labels, ct, g = make_case()
    write_image(labels, g, tmp_path / "labels" / "case_00000.nii.gz")
    write_image(labels, g, tmp_path / "labels" / "case_00001.nii.gz")
    write_image(ct, g, tmp_path / "ct" / "case_00000.nii.gz")
    shifted = Geometry(g.origin, (3.0, 2.0, 2.5), g.direction, g.size)
    write_image(ct, shifted, tmp_path / "ct_bad" / "case_00000.nii.gz")
    write_image(ct, shifted, tmp_path / "ct_bad" / "case_00001.nii.gz")
    bad = labels.copy()
    bad[0, 0, 0] = 5
    write_image(bad, g, tmp_path / "bad" / "case_00000.nii.gz")
    out = tmp_path / "out"
    cases = [
        (["statistics", str(tmp_path / "labels"), "--ct", str(tmp_path / "ct"), "-o", str(out)],
         "no CT for case case_00001"),
        (["statistics", str(tmp_path / "labels"), "--ct", str(tmp_path / "ct_bad"), "-o", str(out)],
         "case_00000.nii.gz: header differs from its CT"),
        (["statistics", str(tmp_path / "labels"), "--ct", str(tmp_path / "ct_bad"), "-o", str(out)],
         "spacing (3.0, 2.0, 2.0) != (3.0, 2.0, 2.5)"),
        (["statistics", str(tmp_path / "labels"), "--ct", str(tmp_path / "ct" / "case_00000.nii.gz"), "-o", str(out)],
         "one CT file given for 2 label maps"),
        (["statistics", str(tmp_path / "bad"), "-o", str(out)], "case_00000.nii.gz: labels outside 0-3: [5]"),
        (["statistics", str(tmp_path / "missing"), "-o", str(out)], "missing: no such file or folder"),
    ]
    for argv, message in cases:
        assert kits_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists() or not any(out.iterdir())
