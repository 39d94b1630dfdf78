"""``kits_plugins.postprocessing.nnunet_export``: the postprocessing.pkl for ``nnUNetv2_apply_postprocessing`` and
nnU-Net's own apply_postprocessing_to_folder giving our result."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from kits_plugins.constants import TARGET_SPACING
from kits_plugins.postprocessing import postprocess_segmentation
from kits_plugins.postprocessing.nnunet_export import export_postprocessing_pkl
from kits_plugins.utilities.image_io import read_label, write_image


def test_export_pkl_format(tmp_path, demo_case):
    path = export_postprocessing_pkl(tmp_path / "pp" / "postprocessing.pkl", TARGET_SPACING)
    with open(path, "rb") as f:
        fns, kwargs = pickle.load(f)
    assert [f.__name__ for f in fns] == ["nnunet_postprocessing_fn"]
    assert kwargs == [{"min_voxels": {1: 20000, 2: 200, 3: 50}, "remove_outside_kidney": True}]
    info = json.loads(path.with_suffix(".json").read_text())
    assert info["min_volume_mm3"]["tumor"] == pytest.approx(95.947, abs=1e-3)
    seg = demo_case()
    assert np.array_equal(fns[0](seg, **kwargs[0]), postprocess_segmentation(seg, TARGET_SPACING))


def test_nnunet_apply_postprocessing_to_folder_matches_ours(tmp_path, monkeypatch, demo_case, kits_geometry):
    """Run nnU-Net's own apply_postprocessing_to_folder (what nnUNetv2_apply_postprocessing calls)."""
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(var, str(tmp_path / var))
    from batchgenerators.utilities.file_and_folder_operations import load_pickle, save_json
    from nnunetv2.postprocessing.remove_connected_components import apply_postprocessing_to_folder

    src, dst = tmp_path / "pred", tmp_path / "pp"
    seg = demo_case()
    geom = kits_geometry(seg.shape)
    other = seg.copy()
    other[6:9, 6:9, 6:9] = 2  # 27 voxels * 1.4 mm3 = 37.8 mm3: kept
    write_image(seg, geom, src / "case_a.nii.gz")
    write_image(other, geom, src / "case_b.nii.gz")
    save_json({"image_reader_writer": "NibabelIOWithReorient"}, str(src / "plans.json"))
    save_json({"file_ending": ".nii.gz", "labels": {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}},
              str(src / "dataset.json"))
    thresholds = {1: 1000.0, 2: 26.0, 3: 8.0}
    pkl = export_postprocessing_pkl(tmp_path / "postprocessing.pkl", geom.spacing_np, thresholds)

    fns, kwargs = load_pickle(str(pkl))  # exactly what the entry point does
    apply_postprocessing_to_folder(str(src), str(dst), fns, kwargs, num_processes=1)

    for name, array in (("case_a.nii.gz", seg), ("case_b.nii.gz", other)):
        out, out_geom = read_label(dst / name)
        assert out_geom.matches(geom, atol=1e-5)
        expected = postprocess_segmentation(array, geom.spacing_np, thresholds)
        assert np.array_equal(out, expected)
        assert not np.array_equal(expected, array)
