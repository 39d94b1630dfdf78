"""``kits_plugins.statistics.anatomy``: principal axes, exophytic share, the per-case record and its summary, and the
two benchmark scripts built on them (``anatomy_stats.py``, ``phantom_realism.py``) on procedural label maps."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kits_plugins.statistics.anatomy import case_anatomy, describe, exophytic_share, principal_axes_mm, summarize
from kits_plugins.synthetic.phantom import kits_geometry
from kits_plugins.synthetic.writer import synthesize_dataset
from kits_plugins.utilities.orientation import Reorientation

REPO = Path(__file__).resolve().parents[2]


def test_principal_axes_of_a_solid_ellipsoid():
    spacing = np.array([2.0, 1.0, 0.5])
    semi = np.array([12.0, 30.0, 8.0])  # mm: the long axis is numpy axis 1
    grid = np.stack(np.meshgrid(*[np.arange(-40, 40.01, s) for s in spacing], indexing="ij"), axis=-1)
    inside = ((grid / semi) ** 2).sum(-1) <= 1.0
    lengths, axis = principal_axes_mm(grid[inside])
    np.testing.assert_allclose(lengths, 2 * np.sort(semi)[::-1], rtol=0.03)
    assert abs(axis[1]) > 0.999


def test_exophytic_share_weighs_faces_by_area():
    spacing = (2.0, 1.0, 0.5)
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[:, :, :10] = 1  # kidney where x < 10
    labels[5:9, 5:9, 8:11] = 2  # a 4 x 4 x 3 tumor, x = 8, 9 in the kidney and x = 10 out of it
    a0, a1, a2 = spacing[1] * spacing[2], spacing[0] * spacing[2], spacing[0] * spacing[1]
    expected = (2 * 4 * a0 + 2 * 4 * a1 + 16 * a2) / (2 * 12 * a0 + 2 * 12 * a1 + 32 * a2)
    assert exophytic_share(labels, labels == 2, spacing) == pytest.approx(expected)
    inside = np.zeros_like(labels)
    inside[:, :, :10] = 1
    inside[5:9, 5:9, 3:6] = 2
    assert exophytic_share(inside, inside == 2, spacing) == 0.0
    alone = np.zeros_like(labels)
    alone[5:9, 5:9, 3:6] = 2
    assert exophytic_share(alone, alone == 2, spacing) == 1.0


def _case(shape=(60, 40, 50), spacing=(2.5, 1.0, 1.0)):
    """Two box kidneys in anatomical order (superior-inferior, anterior-posterior, right-left), a tumor in the
    first; returned in KiTS file order with its header."""
    label = np.zeros(shape, np.uint8)
    label[10:30, 10:20, 5:15] = 1  # the lower kidney (axis 0 runs inferior to superior), on one side
    label[20:40, 10:20, 35:45] = 1  # the upper one, on the other
    label[12:16, 12:16, 5:9] = 2
    label[30:32, 12:14, 38:40] = 3
    geometry = kits_geometry(shape, spacing)
    return np.ascontiguousarray(Reorientation.from_geometry(geometry).from_nnunet(label)), geometry


def test_case_anatomy_measures_scan_kidneys_and_lesions():
    labels, geometry = _case()
    r = case_anatomy(labels, geometry, "c")
    assert r["slices"] == 60 and r["slice_spacing_mm"] == 2.5 and r["inplane_spacing_mm"] == 1.0
    assert r["z_extent_mm"] == pytest.approx(59 * 2.5)
    assert len(r["kidneys"]) == 2 and {k["side"] for k in r["kidneys"]} == {"left", "right"}
    for k in r["kidneys"]:
        assert k["volume_ml"] == pytest.approx(20 * 2.5 * 10 * 10 / 1000)
        assert k["length_mm"] > k["width_mm"] >= k["thickness_mm"]
        assert k["tilt_deg"] == pytest.approx(0.0, abs=1e-6)  # boxes along the body axis
        assert k["lateral_offset_mm"] == pytest.approx(15.0)  # box centres 10 and 40 on a 0-49 axis
    heights = sorted(k["height_fraction"] for k in r["kidneys"])  # nnU-Net's axis 0 runs inferior to superior
    assert heights == pytest.approx([(59 - 29.5) / 59, (59 - 19.5) / 59])
    assert len(r["tumors"]) == 1 and len(r["cysts"]) == 1
    tumor = r["tumors"][0]
    assert tumor["volume_ml"] == pytest.approx(4 * 2.5 * 4 * 4 / 1000)
    assert 0.0 < tumor["exophytic_share"] < 0.5  # on the kidney's outer face on one side only


def test_summary_percentiles_and_empty_statistics():
    d = describe([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (d["n"], d["median"], d["min"], d["max"]) == (5, 3.0, 1.0, 5.0)
    assert d["p10"] == pytest.approx(1.4) and d["p90"] == pytest.approx(4.6)
    assert describe([])["median"] is None
    labels, geometry = _case()
    s = summarize([case_anatomy(labels, geometry)])
    assert s["kidney_count"]["median"] == 2 and s["kidney_volume_ml"]["n"] == 2
    assert s["cyst_count"]["median"] == 1 and s["solitary_kidney"]["median"] == 0.0


def test_phantom_realism_script_compares_real_and_procedural(tmp_path):
    cases = synthesize_dataset(tmp_path / "p", 2, 3, (48, 96, 96), (5.0, 4.0, 4.0), progress=False)
    labels = tmp_path / "labels"
    labels.mkdir()
    for c in cases:
        shutil.copyfile(c / "segmentation.nii.gz", labels / f"{c.name}.nii.gz")
    out = tmp_path / "realism.json"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "phantom_realism.py"), "--labels", str(labels),
                          "--out", str(out), "--cases", "3", "--shape", "48", "96", "96", "--spacing", "5", "4", "4"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["real_cases"] == 2 and result["procedural"]["cases"] == 3
    c = result["comparison"]["slice_spacing_mm"]
    assert c["real"]["median"] == 5.0 and c["procedural"]["median"] == 5.0 and c["ks_distance"] == 0.0
    assert set(result["comparison"]) >= {"kidney_volume_ml", "tumor_exophytic_share", "z_extent_mm"}
    assert out.with_suffix(".png").stat().st_size > 10_000
    bad = subprocess.run([sys.executable, str(REPO / "benchmarks" / "anatomy_stats.py"), "--labels",
                          str(tmp_path / "none"), "--out", str(tmp_path / "x.json")], capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.strip().count("\n") == 0 and "none" in bad.stderr
