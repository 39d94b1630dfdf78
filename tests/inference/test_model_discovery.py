"""``kits_plugins.inference.model_discovery``: finding the stage model folders and folds, errors that list what
was looked for (on the tiny models of conftest.py)."""

from __future__ import annotations

import pytest

from kits_plugins.inference.model_discovery import (
    ModelNotFoundError,
    StageModel,
    find_model_folder,
    resolve_folds,
    stage_models,
)
from kits_plugins.utilities.image_io import KitsInputError


def test_model_discovery_errors_list_what_was_looked_for(results, tmp_path):
    models = stage_models(fine_trainer="nnUNetTrainerMissing", folds=["0"])
    assert models["fine"].trainer == "nnUNetTrainerMissing" and models["masses"].folds == ("0",)
    with pytest.raises(ModelNotFoundError, match=r"nnUNetTrainerMissing__kitsPlans__3d_fullres.*present in "
                                                 r"Dataset222_KiTS2023Kidney: \['nnUNetTrainerKiTSFine"):
        find_model_folder(models["fine"], results)
    with pytest.raises(ModelNotFoundError, match=r"dataset 224 .*datasets present: \['Dataset221"):
        find_model_folder(StageModel(224, "nnUNetTrainer", "3d_fullres"), results)
    coarse = stage_models()["coarse"]
    folder = find_model_folder(coarse, results)
    assert resolve_folds(folder, coarse) == [0]
    with pytest.raises(ModelNotFoundError, match=r"fold\(s\) \[3\]"):
        resolve_folds(folder, StageModel(221, "x", "3d_lowres", folds=(3,)))
    with pytest.raises(KitsInputError, match="does not exist"):
        find_model_folder(coarse, tmp_path / "nowhere")
