"""Find the trained stage models in ``$nnUNet_results`` and load one ``nnUNetPredictor`` per stage.

A stage model is identified the way ``nnUNetv2_predict`` identifies it: dataset id, trainer, plans and
configuration (``$nnUNet_results/DatasetXXX_Name/<trainer>__<plans>__<configuration>/fold_N``). The
defaults are the package's trainers and ``kitsPlans``; every part can be overridden. Torch and nnU-Net
are imported only when a predictor is loaded, so ``kits --help`` stays fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from kits_plugins.constants import (
    COARSE_DATASET_ID,
    FINE_DATASET_ID,
    MASSES_DATASET_ID,
    PLANS_NAME,
    STAGE_DATASET_NAMES,
)
from kits_plugins.utilities.image_io import KitsInputError

if TYPE_CHECKING:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

STAGES = ("coarse", "fine", "masses")


class ModelNotFoundError(KitsInputError):
    """A stage model folder (or its checkpoints) is missing; the message lists what was looked for."""


@dataclass(frozen=True)
class StageModel:
    """Which trained model runs one cascade stage."""

    dataset_id: int
    trainer: str
    configuration: str
    plans: str = PLANS_NAME
    folds: tuple[int | str, ...] | None = None  # None: every fold_N with a checkpoint, else fold_all
    checkpoint: str = "checkpoint_final.pth"

    @property
    def identifier(self) -> str:
        return f"{self.trainer}__{self.plans}__{self.configuration}"


DEFAULT_STAGE_MODELS: dict[str, StageModel] = {
    "coarse": StageModel(COARSE_DATASET_ID, "nnUNetTrainerKiTSCoarse", "3d_lowres"),
    "fine": StageModel(FINE_DATASET_ID, "nnUNetTrainerKiTSFine", "3d_fullres"),
    "masses": StageModel(MASSES_DATASET_ID, "nnUNetTrainerKiTSSurface", "3d_fullres"),
}


def stage_models(
    folds: list[int | str] | None = None,
    plans: str | None = None,
    checkpoint: str | None = None,
    **overrides: str | None,
) -> dict[str, StageModel]:
    """Default stage models with overrides: ``coarse_trainer=``, ``fine_config=``, ``masses_dataset=`` ...

    ``folds``, ``plans`` and ``checkpoint`` apply to all three stages.
    """
    out = {}
    for stage, model in DEFAULT_STAGE_MODELS.items():
        changes: dict = {}
        if folds:
            changes["folds"] = tuple(folds)
        if plans:
            changes["plans"] = plans
        if checkpoint:
            changes["checkpoint"] = checkpoint
        for key, field in (("trainer", "trainer"), ("config", "configuration"), ("dataset", "dataset_id")):
            value = overrides.pop(f"{stage}_{key}", None)
            if value is not None:
                changes[field] = int(value) if field == "dataset_id" else value
        out[stage] = replace(model, **changes)
    if overrides:
        raise TypeError(f"unknown stage model overrides: {sorted(overrides)}")
    return out


def results_dir(results: str | os.PathLike | None = None) -> Path:
    """``results`` or ``$nnUNet_results``; a clear error when neither is set."""
    value = results if results is not None else os.environ.get("nnUNet_results")
    if not value:
        raise ModelNotFoundError("nnUNet_results is not set: export it or pass --results DIR")
    path = Path(value)
    if not path.is_dir():
        raise ModelNotFoundError(f"{path}: nnUNet_results folder does not exist")
    return path


def find_model_folder(model: StageModel, results: str | os.PathLike | None = None) -> Path:
    """``$nnUNet_results/DatasetXXX_*/<trainer>__<plans>__<config>``; error listing what exists if missing."""
    root = results_dir(results)
    prefix = f"Dataset{model.dataset_id:03d}_"
    candidates = sorted(p for p in root.glob(prefix + "*") if p.is_dir())
    preferred = STAGE_DATASET_NAMES.get(model.dataset_id)
    if preferred and (root / preferred).is_dir():
        candidates = [root / preferred]
    if not candidates:
        found = sorted(p.name for p in root.glob("Dataset*") if p.is_dir())
        raise ModelNotFoundError(
            f"{root}: no trained model folder for dataset {model.dataset_id} (looked for {prefix}*/"
            f"{model.identifier}); datasets present: {found or 'none'}"
        )
    if len(candidates) > 1:
        raise ModelNotFoundError(f"{root}: several folders for dataset {model.dataset_id}: {[p.name for p in candidates]}")
    folder = candidates[0] / model.identifier
    if not folder.is_dir():
        present = sorted(p.name for p in candidates[0].iterdir() if p.is_dir())
        raise ModelNotFoundError(
            f"{folder}: model folder missing (dataset {model.dataset_id}, trainer {model.trainer}, plans "
            f"{model.plans}, configuration {model.configuration}); present in {candidates[0].name}: {present or 'none'}"
        )
    for needed in ("plans.json", "dataset.json"):
        if not (folder / needed).is_file():
            raise ModelNotFoundError(f"{folder / needed}: missing, not a complete nnU-Net model folder")
    return folder


def resolve_folds(folder: Path, model: StageModel) -> list[int | str]:
    """Requested folds (checked), else every ``fold_N`` holding the checkpoint, else ``all``."""
    if model.folds:
        folds = [f if f == "all" else int(f) for f in model.folds]
        missing = [f for f in folds if not (folder / f"fold_{f}" / model.checkpoint).is_file()]
        if missing:
            raise ModelNotFoundError(
                f"{folder}: no {model.checkpoint} for fold(s) {missing} (looked in "
                + ", ".join(f"fold_{f}" for f in missing)
                + ")"
            )
        return folds
    numbered: list[int | str] = sorted(
        int(p.name.split("_")[1])
        for p in folder.glob("fold_*")
        if p.name.split("_")[1].isdigit() and (p / model.checkpoint).is_file()
    )
    if numbered:
        return numbered
    if (folder / "fold_all" / model.checkpoint).is_file():
        return ["all"]
    raise ModelNotFoundError(f"{folder}: no fold_N/{model.checkpoint} and no fold_all/{model.checkpoint}")


def ensure_ext_trainer_path() -> None:
    """Put the package's trainer shim folder first in ``nnUNet_extTrainer`` (keeping the user's other folders)
    so checkpoints that name our trainers load."""
    from kits_plugins.training.commands import ext_trainer_paths

    os.environ["nnUNet_extTrainer"] = ext_trainer_paths(os.environ.get("nnUNet_extTrainer"))


def make_nnunet_predictor(device: str = "cpu", step_size: float = 0.5, use_mirroring: bool = True,
                          verbose: bool = False) -> nnUNetPredictor:
    """An uninitialised ``nnUNetPredictor`` with the cascade's settings (no tqdm per sliding window)."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    dev = torch.device(device)
    return nnUNetPredictor(
        tile_step_size=step_size,
        use_gaussian=True,
        use_mirroring=use_mirroring,
        perform_everything_on_device=dev.type == "cuda",
        device=dev,
        verbose=verbose,
        verbose_preprocessing=False,
        allow_tqdm=False,
    )


def load_stage_predictor(
    model: StageModel,
    results: str | os.PathLike | None = None,
    device: str = "cpu",
    step_size: float = 0.5,
    use_mirroring: bool = True,
    verbose: bool = False,
    trust_checkpoints: bool = False,
) -> nnUNetPredictor:
    """Find ``model`` and return an initialised ``nnUNetPredictor`` (loaded once, reused for every case).

    Checkpoints are read without running code from them unless ``trust_checkpoints``
    (see :mod:`kits_plugins.inference.checkpoints`).
    """
    from kits_plugins.inference.checkpoints import initialize_from_model_folder

    folder = find_model_folder(model, results)
    folds = resolve_folds(folder, model)
    ensure_ext_trainer_path()
    predictor = make_nnunet_predictor(device, step_size, use_mirroring, verbose)
    return initialize_from_model_folder(predictor, folder, use_folds=tuple(folds), checkpoint_name=model.checkpoint,
                                        trust=trust_checkpoints)
