"""``kits export-model`` -> ``kits install-model`` -> ``kits predict -m``: the exported cascade predicts the same
label map (array and header) as the stage models in nnUNet_results, with no nnUNet_results variable; ``-m`` takes
an installed name, a folder or a zip; the manifest's ROI settings reach the cascade unless flags override them.

Uses the tiny fixed-weight stage models of conftest.py (they segment ``make_case``'s cases exactly)."""

from __future__ import annotations

import json
import tempfile
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk

from kits_plugins.cli import main
from kits_plugins.constants import DEFAULT_MIN_VOLUME_MM3
from kits_plugins.inference import cascade as cascade_module
from kits_plugins.models import archive
from kits_plugins.utilities.image_io import read_label

ROI = ["--margin-mm", "4.5", "--min-roi-volume-mm3", "50"]
RUN = ["--disable-tta", "--no-postprocess"]  # the tiny kidneys are below the postprocessing's kidney minimum


@pytest.fixture(scope="module")
def model_zip(results, tmp_path_factory):
    """tiny.zip exported from the conftest's nnUNet_results, with the test's ROI settings."""
    out = tmp_path_factory.mktemp("export") / "tiny.zip"
    assert main(["export-model", str(out), "--results", str(results), *ROI]) == 0
    return out


def same_image(a, b) -> None:
    """Equal voxels, dtype, geometry and header fields."""
    ia, ib = sitk.ReadImage(str(a)), sitk.ReadImage(str(b))
    assert np.array_equal(sitk.GetArrayFromImage(ia), sitk.GetArrayFromImage(ib))
    assert ia.GetPixelID() == ib.GetPixelID()
    assert (ia.GetOrigin(), ia.GetSpacing(), ia.GetDirection()) == (ib.GetOrigin(), ib.GetSpacing(), ib.GetDirection())
    assert {k: ia.GetMetaData(k) for k in ia.GetMetaDataKeys()} == {k: ib.GetMetaData(k) for k in ib.GetMetaDataKeys()}


def test_export_install_predict_equals_predicting_from_nnunet_results(results, model_zip, tmp_path, monkeypatch,
                                                                      make_case, write_case, capsys):
    ct, lab, g = make_case()
    write_case(tmp_path / "in", "case_00021", ct, lab, g)
    assert main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "ref"), "--results", str(results),
                 *ROI, *RUN]) == 0
    ref = tmp_path / "ref" / "case_00021.nii.gz"
    out, og = read_label(ref)
    assert og == g and np.array_equal(out, lab)  # the reference itself is right

    models = tmp_path / "models"
    assert main(["install-model", str(model_zip), "--dest", str(models)]) == 0
    monkeypatch.setenv("KITS_MODELS", str(models))
    monkeypatch.delenv("nnUNet_results", raising=False)
    seen: list[dict] = []
    original = cascade_module.KiTSCascadePredictor.__init__

    def spy(self, *args, **kwargs):
        seen.append(kwargs)
        original(self, *args, **kwargs)

    monkeypatch.setattr(cascade_module.KiTSCascadePredictor, "__init__", spy)
    assert main(["predict", "-m", "tiny", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "by_name"), *RUN]) == 0
    same_image(tmp_path / "by_name" / "case_00021.nii.gz", ref)
    assert (seen[-1]["margin_mm"], seen[-1]["min_roi_volume_mm3"], seen[-1]["max_regrow"]) == (4.5, 50.0, 2)
    assert seen[-1]["min_volume_mm3"] == DEFAULT_MIN_VOLUME_MM3  # the manifest's postprocessing settings

    # an installed folder, with a fold subset and an explicit ROI flag that overrides the manifest
    assert main(["predict", "-m", str(models / "tiny"), "-f", "0", "--margin-mm", "6", "-i", str(tmp_path / "in"),
                 "-o", str(tmp_path / "by_folder"), *RUN]) == 0
    same_image(tmp_path / "by_folder" / "case_00021.nii.gz", ref)
    assert (seen[-1]["margin_mm"], seen[-1]["min_roi_volume_mm3"]) == (6.0, 50.0)


def test_predict_from_the_zip_itself_leaves_no_unpacked_model(model_zip, tmp_path, monkeypatch, make_case,
                                                              write_case, results):
    ct, lab, g = make_case()
    write_case(tmp_path / "in", "case_00022", ct, lab, g)
    monkeypatch.delenv("nnUNet_results", raising=False)
    monkeypatch.setenv("KITS_MODELS", str(tmp_path / "no_models"))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    unpacked = []
    original = archive.resolve_model

    def spy(spec, scratch=None):
        folder, manifest = original(spec, scratch)
        unpacked.append(folder)
        assert (folder / "nnUNet_results").is_dir()
        return folder, manifest

    monkeypatch.setattr(archive, "resolve_model", spy)
    assert main(["predict", "-m", str(model_zip), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), *RUN]) == 0
    out, og = read_label(tmp_path / "out" / "case_00022.nii.gz")
    assert og == g and np.array_equal(out, lab)
    assert unpacked[0].parent.parent == scratch and unpacked[0].name == "tiny"
    assert not [p for p in scratch.iterdir() if p.name.startswith("kits-model-")]  # the unpacked copy is gone
    assert not (tmp_path / "no_models").exists()


def test_predict_m_refuses_results_flags_unknown_models_missing_folds_and_tampered_zips(model_zip, tmp_path,
                                                                                      monkeypatch, capsys, make_case,
                                                                                      write_case):
    ct, lab, g = make_case()
    write_case(tmp_path / "in", "case_00023", ct, lab, g)
    monkeypatch.setenv("KITS_MODELS", str(tmp_path / "models"))
    base = ["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out")]

    def refused(*argv: str) -> str:
        assert main([*base, *argv]) == 2
        return capsys.readouterr().err

    err = refused("-m", str(model_zip), "-p", "otherPlans", "--fine-trainer", "T")
    assert "-p, --fine-trainer cannot be combined with -m" in err
    assert "--results cannot be combined" in refused("-m", str(model_zip), "--results", str(tmp_path))
    assert "no installed model 'nope'" in refused("-m", "nope")
    assert "fold(s) [3] not in the model (stage coarse has folds [0])" in refused("-m", str(model_zip), "-f", "3")
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(model_zip) as src:
        members = [(i.filename, src.read(i)) for i in src.infolist()]
    with zipfile.ZipFile(bad, "w") as dst:
        for name, data in members:
            if name.endswith("plans.json"):
                data = data.replace(b"3d_", b"3D_")  # same size, other bytes
            dst.writestr(name, data)
    manifest = json.loads(dict(members)["kits_model.json"])
    assert "refused: SHA-256 or size differs" in refused("-m", str(bad))
    assert not (tmp_path / "out").exists() and manifest["name"] == "tiny"
