"""``kits predict --output-type / --statistics / --preview`` (kits_plugins.inference.outputs), with the tiny
fixed-weight models of conftest.py: the DICOM SEG of a DICOM case reads back to the NIfTI label map and references
its series, the statistics equal ``kits statistics`` on the written files, the preview is a PNG, and the options'
input errors come before any model is loaded."""

from __future__ import annotations

import csv
import json

import numpy as np
import pydicom
import pytest
import torch

from kits_plugins.cli import main
from kits_plugins.inference.outputs import CaseOutputs, planned_paths, statistics_csv_name
from kits_plugins.testing.dicom_series import write_dicom_series
from kits_plugins.utilities.dicom_io import series_files
from kits_plugins.utilities.dicom_seg import read_dicom_seg
from kits_plugins.utilities.image_io import read_label

torch.set_num_threads(1)
FLAGS = ["-f", "0", "--disable-tta", "--margin-mm", "4.5", "--min-roi-volume-mm3", "50", "--no-postprocess"]


@pytest.fixture()
def dicom_case(tmp_path, make_case):
    ct, lab, g = make_case()
    series = tmp_path / "dicom" / "series"
    write_dicom_series(np.round(ct).astype(np.int16), g, series, patient_id="KITS-0007", series_number=3)
    return series, lab


def test_dicom_seg_statistics_and_preview_of_a_dicom_case(results, tmp_path, dicom_case):
    series, lab = dicom_case
    out = tmp_path / "out"
    assert main(["predict", "-i", str(series.parent), "-o", str(out), "--results", str(results), *FLAGS,
                 "--output-type", "both", "--statistics", "--preview"]) == 0
    labels, g = read_label(out / "KITS-0007_3.nii.gz")
    assert np.array_equal(labels, lab)

    # the SEG: voxel for voxel the label map, on the source series' instances
    files = series_files(series)
    assert np.array_equal(read_dicom_seg(out / "KITS-0007_3_seg.dcm", files), labels)
    seg = pydicom.dcmread(out / "KITS-0007_3_seg.dcm")
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID and seg.PatientID == "KITS-0007"

    # statistics: what `kits statistics` gives on the written label map and the series
    assert main(["statistics", str(out / "KITS-0007_3.nii.gz"), "--ct", str(series), "-o", str(tmp_path / "st")]) == 0
    from_predict = json.loads((out / "statistics" / "KITS-0007_3.json").read_text())
    assert from_predict == json.loads((tmp_path / "st" / "KITS-0007_3.json").read_text())
    assert [k["volume_ml"] for k in from_predict["kidneys"]] == pytest.approx(
        sorted([(lab[:20] > 0).sum() * 1.5 * 1.5 * 3.0 / 1000, (lab[20:] > 0).sum() * 1.5 * 1.5 * 3.0 / 1000],
               reverse=True), rel=1e-3)
    with open(out / "statistics" / "statistics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["structure"] for r in rows) == ["kidney", "kidney", "lesion", "lesion"]
    assert {r["label"] for r in rows if r["structure"] == "lesion"} == {"tumor", "cyst"}

    # the preview
    import matplotlib.image as mpimg

    png = mpimg.imread(out / "KITS-0007_3.png")
    assert png.ndim == 3 and png.shape[0] > 100 and png.shape[1] > 100


def test_dicom_seg_only_writes_no_nifti(results, tmp_path, dicom_case):
    series, lab = dicom_case
    out = tmp_path / "out"
    assert main(["predict", "-i", str(series), "-o", str(out), "--results", str(results), *FLAGS,
                 "--output-type", "dicom_seg"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["KITS-0007_3_seg.dcm"]
    assert np.array_equal(read_dicom_seg(out / "KITS-0007_3_seg.dcm", series_files(series)), lab)


def test_dicom_seg_of_a_nifti_input_is_refused_before_loading_models(tmp_path, capsys, make_case, write_case):
    ct, lab, g = make_case()
    write_case(tmp_path / "in", "case_00001", ct, lab, g)
    rc = main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--results",
               str(tmp_path / "no_models"), "--output-type", "both"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == (f"kits predict: error: {tmp_path / 'in' / 'case_00001_0000.nii.gz'}: --output-type "
                               "dicom_seg needs DICOM series input, case case_00001 is a .nii.gz file (use "
                               "--output-type nifti)")
    assert not (tmp_path / "out").exists()


def test_planned_paths():
    o = CaseOutputs.from_options("both", statistics=True, preview=True)
    assert o.nifti and o.dicom_seg and o.needs_ct
    assert [p.name for p in planned_paths("/out", ["a", "b"], o, 3, 1)] == [
        "a_seg.dcm", "a.png", "a.json", "b_seg.dcm", "b.png", "b.json", "statistics_part1_of_3.csv"]
    assert planned_paths("/out", ["a"], CaseOutputs()) == [] and statistics_csv_name() == "statistics.csv"
    assert not CaseOutputs.from_options("dicom_seg").nifti
    with pytest.raises(ValueError):
        CaseOutputs.from_options("png")
