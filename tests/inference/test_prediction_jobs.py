"""``kits predict``'s input checks, made before any model is loaded."""

from __future__ import annotations

import numpy as np
import pytest

from kits_plugins.cli import main
from kits_plugins.errors import KitsInputError
from kits_plugins.inference.cascade import prediction_jobs
from kits_plugins.utilities.image_io import Geometry, write_image

GEOMETRY = Geometry((0.0, 0.0, 0.0), (1.0, 1.0, 2.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), (8, 8, 4))


def _ct(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(np.zeros(GEOMETRY.shape, np.int16), GEOMETRY, path)
    return path


def test_predict_into_its_input_folder_is_refused_before_loading_models(tmp_path, capsys):
    ct = _ct(tmp_path / "d" / "case_00001.nii.gz")  # a folder of *.nii.gz: the output would be the CT itself
    original = ct.read_bytes()
    rc = main(["predict", "-i", str(tmp_path / "d"), "-o", str(tmp_path / "d"), "--results", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert rc == 2 and "would write over its input" in err and "case_00001.nii.gz" in err
    assert "nnUNet_results" not in err and "model" not in err  # refused before any model lookup
    assert ct.read_bytes() == original


def test_predict_refuses_output_over_a_coarse_mask(tmp_path):
    _ct(tmp_path / "in" / "case_00001_0000.nii.gz")
    mask = _ct(tmp_path / "masks" / "case_00001.nii.gz")
    with pytest.raises(KitsInputError, match="would write over its input"):
        prediction_jobs(tmp_path / "in", tmp_path / "masks", coarse_masks=tmp_path / "masks")
    assert mask.exists()


def test_bare_imaging_file_in_the_case_folder_gets_the_folders_case_id(tmp_path, monkeypatch):
    _ct(tmp_path / "case_00042" / "imaging.nii.gz")
    monkeypatch.chdir(tmp_path / "case_00042")
    (job,) = prediction_jobs("imaging.nii.gz", tmp_path / "out")
    assert job.case == "case_00042" and job.output == tmp_path / "out" / "case_00042.nii.gz"


def test_case_ids_that_are_not_plain_names_are_refused(tmp_path):
    _ct(tmp_path / "in" / "-rf_0000.nii.gz")
    with pytest.raises(KitsInputError, match="-rf_0000.nii.gz: case id '-rf' is not a plain name"):
        prediction_jobs(tmp_path / "in", tmp_path / "out")


def test_missing_coarse_mask_is_reported_before_any_work(tmp_path):
    _ct(tmp_path / "in" / "case_00001_0000.nii.gz")
    (tmp_path / "masks").mkdir()
    with pytest.raises(KitsInputError, match="mask for case_00001 not found"):
        prediction_jobs(tmp_path / "in", tmp_path / "out", coarse_masks=tmp_path / "masks")
