"""``kits_plugins.postprocessing.commands``: ``kits postprocess`` on files and folders, its options and report, and
outputs that would replace an input."""

from __future__ import annotations

import json

import numpy as np

from kits_plugins.cli import main as kits_main
from kits_plugins.postprocessing import postprocess_segmentation
from kits_plugins.utilities.image_io import read_geometry, read_label, write_image


def test_cli_folder_and_options(tmp_path, capsys, demo_case, kits_geometry):
    src, dst = tmp_path / "in", tmp_path / "out"
    seg = demo_case()
    geom = kits_geometry(seg.shape)
    for name in ("a.nii.gz", "b.nii.gz"):
        write_image(seg, geom, src / name)
    args = ["postprocess", str(src), str(dst), "--min-kidney-mm3", "1000", "--min-tumor-mm3", "26",
            "--min-cyst-mm3", "8", "--report", str(tmp_path / "report.json")]
    assert kits_main(args) == 0
    assert sorted(p.name for p in dst.iterdir()) == ["a.nii.gz", "b.nii.gz"]
    out, out_geom = read_label(dst / "a.nii.gz")
    assert out_geom == read_geometry(src / "a.nii.gz")  # exact (NIfTI stores float32 spacing)
    assert np.array_equal(out, postprocess_segmentation(seg, geom.spacing_np, {1: 1000.0, 2: 26.0, 3: 8.0}))
    report = json.loads((tmp_path / "report.json").read_text())
    assert {r["reason"] for r in report["a.nii.gz"]["removed"]} == {"outside_kidney", "small_kidney", "small_tumor"}

    # --keep-outside keeps the 27-voxel cyst outside the kidney; a single file into an existing folder
    assert kits_main(["postprocess", str(src / "a.nii.gz"), str(dst), "--keep-outside", "--min-kidney-mm3", "1000"]) == 0
    out, _ = read_label(dst / "a.nii.gz")
    assert np.all(out[30:33, 30:33, 30:33] == 3)

    assert kits_main(["postprocess", str(tmp_path / "missing"), str(dst)]) == 2
    assert "missing: no such file" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert kits_main(["postprocess", str(tmp_path / "empty"), str(dst)]) == 2


def test_cli_refuses_outputs_over_inputs(tmp_path, capsys, demo_case, kits_geometry):
    seg = demo_case()
    write_image(seg, kits_geometry(seg.shape), tmp_path / "in" / "a.nii.gz")
    src = tmp_path / "in" / "a.nii.gz"
    original = src.read_bytes()
    cases = [
        ["postprocess", str(src), str(src)],  # in place
        ["postprocess", str(tmp_path / "in"), str(tmp_path / "in")],  # folder onto itself
        ["postprocess", str(src), str(tmp_path / "out.nii.gz"), "--report", str(src)],
        ["postprocess", str(src), str(tmp_path / "out.nii.gz"), "--report", str(tmp_path / "out.nii.gz")],
        ["postprocess", str(src), str(tmp_path / "out.nii.gz"), "--export-pkl", str(src)],
    ]
    for argv in cases:
        assert kits_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "would write over its input" in err and len(err.strip().splitlines()) == 1
        assert src.read_bytes() == original
    assert not (tmp_path / "out.nii.gz").exists()
