"""``kits predict`` on DICOM input, with the tiny fixed-weight models of conftest.py: a generated case written as a
DICOM series predicts exactly the labels of the same case as NIfTI, with the series' geometry, and a folder holding
two series is refused before any model is loaded."""

from __future__ import annotations

import numpy as np
import torch

from kits_plugins.cli import main
from kits_plugins.testing.dicom_series import write_dicom_series
from kits_plugins.utilities.crops import load_crops
from kits_plugins.utilities.dicom_io import read_dicom_series
from kits_plugins.utilities.image_io import read_label, write_image

torch.set_num_threads(1)
FLAGS = ["-f", "0", "--disable-tta", "--margin-mm", "4.5", "--min-roi-volume-mm3", "50", "--no-postprocess"]


def test_dicom_series_predicts_the_labels_of_its_nifti(results, tmp_path, capsys, make_case):
    ct, lab, g = make_case()
    d = np.asarray(g.direction).reshape(3, 3)
    assert np.allclose(np.cross(d[:, 0], d[:, 1]), d[:, 2])  # right-handed, as a DICOM series' direction is
    write_dicom_series(np.round(ct).astype(np.int16), g, tmp_path / "dicom" / "series", patient_id="KITS-0007",
                       series_number=3)
    series_ct, sg = read_dicom_series(tmp_path / "dicom" / "series")
    assert sg.matches(g, atol=1e-6)
    write_image(series_ct, sg, tmp_path / "nifti" / "case_00007_0000.nii.gz")  # the same grid and values as NIfTI

    assert main(["predict", "-i", str(tmp_path / "dicom"), "-o", str(tmp_path / "out_dicom"), "--results",
                 str(results), "--save_probabilities", *FLAGS]) == 0
    assert main(["predict", "-i", str(tmp_path / "nifti"), "-o", str(tmp_path / "out_nifti"), "--results",
                 str(results), *FLAGS]) == 0
    from_dicom, dg = read_label(tmp_path / "out_dicom" / "KITS-0007_3.nii.gz")  # case id <PatientID>_<SeriesNumber>
    from_nifti, ng = read_label(tmp_path / "out_nifti" / "case_00007.nii.gz")
    assert dg == sg and ng == sg  # the DICOM geometry, exactly as SimpleITK reads the series
    assert np.array_equal(from_dicom, from_nifti) and np.array_equal(from_dicom, lab)
    _, cases = load_crops(tmp_path / "out_dicom" / "crops.json")  # --save_probabilities records the series header
    assert cases["KITS-0007_3"] == sg
    captured = capsys.readouterr()
    assert "KITS-0007_3: read" in captured.out + captured.err  # the per-case timing line


def test_a_folder_with_two_series_is_refused_before_loading_models(tmp_path, capsys, make_case):
    ct, _, g = make_case()
    folder = tmp_path / "mixed"
    write_dicom_series(np.round(ct).astype(np.int16), g, folder, series_number=1,
                       extra_tags={"0008|103e": "arterial"})
    write_dicom_series(np.round(ct).astype(np.int16), g, folder, series_number=2, prefix="venous",
                       extra_tags={"0008|103e": "venous"})
    rc = main(["predict", "-i", str(folder), "-o", str(tmp_path / "out"), "--results", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert (f"{folder}: holds 2 DICOM series (#1 'arterial' ({g.size[2]} files), #2 'venous' ({g.size[2]} files)); "
            "put each series in its own subfolder") in err
    assert "model" not in err and not (tmp_path / "out").exists()
