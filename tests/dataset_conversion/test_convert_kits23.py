"""``kits_plugins.dataset_conversion.convert_kits23``: ``kits convert`` of tiny generated KiTS-layout folders into
Dataset220 (hardlinks, dataset.json, per-case errors, an existing dataset)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kits_plugins.cli import main
from kits_plugins.dataset_conversion.convert_kits23 import convert_kits23
from kits_plugins.utilities.image_io import KitsInputError, write_image


def test_convert_dataset_json_and_hardlinks(raw_with_220):
    kits, raw, target = raw_with_220
    assert target == raw / "Dataset220_KiTS2023"
    dj = json.loads((target / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "CT"}
    assert dj["labels"] == {"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2}
    assert dj["regions_class_order"] == [1, 3, 2]
    assert dj["file_ending"] == ".nii.gz" and dj["numTraining"] == 4
    assert dj["overwrite_image_reader_writer"] == "NibabelIOWithReorient"
    for case in sorted(kits.glob("case_*")):
        for src, dst in (
            (case / "imaging.nii.gz", target / "imagesTr" / f"{case.name}_0000.nii.gz"),
            (case / "segmentation.nii.gz", target / "labelsTr" / f"{case.name}.nii.gz"),
        ):
            assert src.read_bytes() == dst.read_bytes()
            assert os.stat(src).st_ino == os.stat(dst).st_ino  # hardlinked: no recompression
    assert not [p for p in raw.iterdir() if p.name.startswith(".")]


@pytest.fixture
def bad_layout(tmp_path: Path, make_kits_dir, make_label, case_geometry) -> Path:
    """Four cases: case_00000 without imaging, a label 4 in case_00001, case_00002's segmentation on another grid."""
    kits = make_kits_dir(tmp_path, kinds=("two", "two", "two", "two"))
    (kits / "case_00000" / "imaging.nii.gz").unlink()
    lab = make_label()
    lab[0, 0, 0] = 4
    write_image(lab, case_geometry(origin=(-119.0, 35.5, 408.0)), kits / "case_00001" / "segmentation.nii.gz")
    write_image(make_label(), case_geometry(origin=(0.0, 0.0, 0.0)), kits / "case_00002" / "segmentation.nii.gz")
    return kits


def test_convert_bad_inputs_name_the_case(tmp_path, bad_layout):
    kits = bad_layout
    raw = tmp_path / "raw"
    with pytest.raises(KitsInputError, match="case_00000.*missing imaging"):
        convert_kits23(kits, raw=raw)
    assert not raw.exists() or not any(raw.iterdir())  # nothing half-written
    target, skipped = convert_kits23(kits, raw=raw, skip_invalid=True)
    errors = {c.case: c.error for c in skipped}
    assert set(errors) == {"case_00000", "case_00001", "case_00002"}
    assert "labels outside 0-3: [4]" in errors["case_00001"]
    assert "geometry differ" in errors["case_00002"] and "origin" in errors["case_00002"]
    assert sorted(p.name for p in (target / "labelsTr").iterdir()) == ["case_00003.nii.gz"]
    assert json.loads((target / "dataset.json").read_text())["numTraining"] == 1


def test_convert_refuses_existing_dataset_and_cli_errors(tmp_path, monkeypatch, capsys, make_kits_dir):
    kits = make_kits_dir(tmp_path, kinds=("two",))
    raw = tmp_path / "raw"
    monkeypatch.delenv("nnUNet_raw", raising=False)
    assert main(["convert", str(kits), "-np", "1"]) == 2
    assert "nnUNet_raw is not set" in capsys.readouterr().err
    monkeypatch.setenv("nnUNet_raw", str(raw))
    assert main(["convert", str(kits), "-np", "1"]) == 0
    marker = raw / "Dataset220_KiTS2023" / "marker"
    marker.write_text("x")
    assert main(["convert", str(kits), "-np", "1"]) == 2
    assert "already exists" in capsys.readouterr().err and marker.exists()
    assert main(["convert", str(kits), "--overwrite", "-np", "1"]) == 0
    assert not marker.exists() and (raw / "Dataset220_KiTS2023" / "dataset.json").exists()
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset220_KiTS2023"]  # no staging left over
    assert main(["convert", str(tmp_path / "nowhere"), "-np", "1"]) == 2
