"""Stage model folders with placeholder bytes (export and install never load a checkpoint) and an archive
exported from them, for the tests of ``kits_plugins.models``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kits_plugins.inference.model_discovery import DEFAULT_STAGE_MODELS, stage_models
from kits_plugins.models import archive

DATASETS = {"coarse": "Dataset221_KiTS2023Coarse", "fine": "Dataset222_KiTS2023Kidney",
            "masses": "Dataset223_KiTS2023Masses"}


def make_results(root: Path) -> Path:
    """nnUNet_results with the three default stage models, folds 0 and 1, plus files the export must leave out."""
    for stage, dataset in DATASETS.items():
        folder = root / dataset / DEFAULT_STAGE_MODELS[stage].identifier
        for k in (0, 1):
            (folder / f"fold_{k}" / "validation").mkdir(parents=True)
            (folder / f"fold_{k}" / "checkpoint_final.pth").write_bytes(f"{stage} weights {k}".encode() * 100)
            (folder / f"fold_{k}" / "checkpoint_best.pth").write_bytes(b"best")
            (folder / f"fold_{k}" / "debug.json").write_text('{"output_folder": "/home/someone/x"}')
            (folder / f"fold_{k}" / "validation" / "summary.json").write_text("{}")
        (folder / "fold_0" / "progress.png").write_bytes(b"\x89PNG fake")
        (folder / "plans.json").write_text(json.dumps({"plans_name": "kitsPlans", "stage": stage}))
        (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0}}))
        (folder / "dataset_fingerprint.json").write_text("{}")
    return root


@pytest.fixture
def exported(tmp_path) -> tuple[Path, Path]:
    """(results folder, model.zip exported from it with the defaults, name 'tiny')."""
    results = make_results(tmp_path / "results")
    out = tmp_path / "model.zip"
    archive.export_model(out, stage_models(), results=results, name="tiny", progress=None)
    return results, out


@pytest.fixture
def datasets() -> dict[str, str]:
    """Stage -> dataset folder of :func:`make_results`."""
    return DATASETS


@pytest.fixture
def results_factory():
    """``results_factory(root)``: :func:`make_results`."""
    return make_results
