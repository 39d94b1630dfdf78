"""``kits_plugins.models.manifest``: the version rule, the manifest's round trip and checks, the stage models
(and fold subsets) it names."""

from __future__ import annotations

import json
import zipfile

import pytest

from kits_plugins.errors import KitsInputError
from kits_plugins.inference.model_discovery import StageModel
from kits_plugins.models.manifest import MANIFEST_NAME, compatible_version, parse_manifest
from kits_plugins.models.manifest import stage_models as manifest_stage_models


@pytest.mark.parametrize("model, ours, ok", [
    ("0.1.0", "0.1.0", True), ("0.1.7", "0.1.2", True), ("0.1.0rc1", "0.1.3", True), ("0.2.0", "0.1.0", False),
    ("1.4.0", "1.0.2", True), ("2.0.0", "1.9.0", False), ("garbage", "0.1.0", False), ("", "0.1.0", False),
])
def test_version_rule(model, ours, ok):
    assert compatible_version(model, ours) is ok


def test_manifest_round_trip_and_stage_fold_subsets(exported):
    _, out = exported
    with zipfile.ZipFile(out) as zf:
        data = json.loads(zf.read(MANIFEST_NAME))
    manifest = parse_manifest(data, out)
    assert manifest.to_json() == data
    models = manifest_stage_models(manifest, [1])
    assert models["coarse"] == StageModel(221, "nnUNetTrainerKiTSCoarse", "3d_lowres", folds=(1,))
    assert manifest_stage_models(manifest)["masses"].folds == (0, 1)
    with pytest.raises(KitsInputError, match=r"fold\(s\) \['all'\] not in the model"):
        manifest_stage_models(manifest, ["all"])
    data["stages"]["fine"]["dataset_folder"] = "Dataset221_KiTS2023Coarse"
    with pytest.raises(KitsInputError, match="is not Dataset222_<name>"):
        parse_manifest(data, out)
