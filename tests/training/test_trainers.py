"""``kits_plugins.training.trainers``: the cascade trainers' schedules and environment overrides, their losses, the
binary and perturbed mask channel on real augmented batches (``kits_plugins.training.transforms`` inside the
trainer), elastic deformation (off; on in the ``_elastic`` variants), the surface trainer's distance maps from
nnU-Net's augmentation workers, and short CPU trainings through nnU-Net's own run_training / nnUNetv2_train."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kits_plugins.losses.boundary import BoundaryWeightSchedule, RegionDiceBCEBoundaryLoss
from kits_plugins.planning.planning import plan_and_preprocess
from kits_plugins.testing.tiny_datasets import tiny_case, write_tiny_stage_dataset
from kits_plugins.training import trainers
from kits_plugins.training.commands import trainer_path
from kits_plugins.training.data_loader import nnUNetDataLoaderWithExtras
from kits_plugins.training.transforms import (
    DISTANCE_MAPS_KEY,
    BinarizeInputChannels,
    PerturbChannelsTransform,
    SignedDistanceMapsTransform,
)

torch.set_num_threads(1)

TARGET = (2.0, 1.5, 1.5)  # tiny images (24 x 24 x 16 voxels of 2.5 x 1.5 x 1.5 mm) -> 20 x 24 x 24 voxels, 3 stages
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def stage_env(tmp_path_factory):
    """nnU-Net folders with tiny planned+preprocessed 222 and 223 (3 cases: 2 train, 1 validation)."""
    root = tmp_path_factory.mktemp("nnunet")
    mp = pytest.MonkeyPatch()
    env = {
        "nnUNet_raw": str(root / "raw"),
        "nnUNet_preprocessed": str(root / "pre"),
        "nnUNet_results": str(root / "results"),
        "nnUNet_extTrainer": str(trainer_path()),
        "nnUNet_n_proc_DA": "0",
        "nnUNet_def_n_proc": "1",
        "nnUNet_compile": "false",
    }
    for k, v in env.items():
        mp.setenv(k, v)
    for k in ("KITS_EPOCHS", "KITS_ITERS", "KITS_VAL_ITERS", "KITS_BOUNDARY_SCHEDULE"):
        mp.delenv(k, raising=False)
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as nnunet_trainer_module

    mp.setattr(nnunet_trainer_module, "default_num_processes", 1)  # validation export pool (read at import)
    folders = {d: write_tiny_stage_dataset(root / "raw", d, num_cases=3, seed=d) for d in (222, 223)}
    plan_and_preprocess([222, 223], target_spacing=TARGET, num_processes=1)
    for folder in folders.values():
        split = [{"train": ["case_00000", "case_00001"], "val": ["case_00002"]}]
        (root / "pre" / folder.name / "splits_final.json").write_text(json.dumps(split))
    yield {"root": root, "env": env, "names": {d: f.name for d, f in folders.items()}}
    mp.undo()


def _trainer(name: str, dataset_id: int):
    from nnunetv2.run.run_training import get_trainer_from_args

    return get_trainer_from_args(str(dataset_id), "3d_fullres", 0, name, "kitsPlans", device=CPU)


def _predict(model_folder: Path, two_channels: bool) -> np.ndarray:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=CPU, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=(0,))
    ct, labels = tiny_case((20, 24, 24), np.random.default_rng(7))
    image = np.stack([ct, labels > 0] if two_channels else [ct]).astype(np.float32)
    seg = predictor.predict_single_npy_array(image, {"spacing": list(TARGET)})
    assert seg.shape == image.shape[1:]
    return seg


class _Recorder:
    """A transform that keeps a copy of each sample's image (to compare with the batch the loader returns)."""

    def __init__(self) -> None:
        self.images: list[torch.Tensor] = []

    def __call__(self, **data_dict) -> dict:
        self.images.append(data_dict["image"].clone())
        return data_dict


def _record_after(loader, kind: type) -> _Recorder:
    """Insert a ``_Recorder`` into ``loader``'s transforms right after the first transform of type ``kind``."""
    ts = loader.data_loader.transforms.transforms
    recorder = _Recorder()
    ts.insert(next(i for i, t in enumerate(ts) if isinstance(t, kind)) + 1, recorder)
    return recorder


def _batches_with_recorded(loader, recorder: _Recorder, n_batches: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of ``n_batches`` batches from ``loader`` and their samples as ``recorder`` saw them (fixed seeds)."""
    torch.manual_seed(0)
    np.random.seed(0)
    recorder.images.clear()
    batches = torch.cat([next(loader)["data"] for _ in range(n_batches)])
    return batches, torch.stack(recorder.images)


def _training_transforms(cls, patch_size=(20, 24, 24)):
    return cls.get_training_transforms(patch_size, (-0.5, 0.5), None, (0, 1, 2), False, use_mask_for_norm=[False, False])


# ----------------------------------------------------------------------------------------------- fast unit tests
def test_env_overrides(monkeypatch):
    monkeypatch.setenv("KITS_EPOCHS", " 7 ")
    assert trainers.env_positive_int("KITS_EPOCHS") == 7
    monkeypatch.setenv("KITS_EPOCHS", "0")
    with pytest.raises(ValueError, match="KITS_EPOCHS must be a positive integer"):
        trainers.env_positive_int("KITS_EPOCHS")
    monkeypatch.delenv("KITS_EPOCHS")
    assert trainers.env_positive_int("KITS_EPOCHS") is None
    default = BoundaryWeightSchedule()
    assert trainers.boundary_schedule_from_env(10, default) is default
    monkeypatch.setenv("KITS_BOUNDARY_SCHEDULE", "0.1,1.0,0,0.5")
    s = trainers.boundary_schedule_from_env(10, default)
    assert [s(e) for e in (0, 5, 9)] == [pytest.approx(0.1), 1.0, 1.0]
    monkeypatch.setenv("KITS_BOUNDARY_SCHEDULE", "0.5")
    with pytest.raises(ValueError, match="KITS_BOUNDARY_SCHEDULE"):
        trainers.boundary_schedule_from_env(10, default)


def test_mask_perturbation_is_nnunets_cascade_perturbation_on_channel_1():
    """Same classes, probabilities and parameters as nnU-Net's ``is_cascaded`` pipeline, at the same place."""
    from batchgeneratorsv2.transforms.nnunet.random_binary_operator import ApplyRandomBinaryOperatorTransform
    from batchgeneratorsv2.transforms.nnunet.remove_connected_components import (
        RemoveRandomConnectedComponentFromOneHotEncodingTransform as RemoveComponent,
    )
    from batchgeneratorsv2.transforms.utils.random import RandomTransform
    from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTansform
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    def settings(randoms: list) -> list:
        return [(type(r.transform), r.apply_probability, {k: v for k, v in vars(r.transform).items() if k != "channel_idx"})
                for r in randoms]

    cascade = nnUNetTrainer.get_training_transforms((20, 24, 24), (-0.5, 0.5), None, (0, 1, 2), False,
                                                    is_cascaded=True, foreground_labels=[1])
    theirs = [t for t in cascade.transforms
              if isinstance(t, RandomTransform) and isinstance(t.transform, ApplyRandomBinaryOperatorTransform | RemoveComponent)]
    ts = _training_transforms(trainers.nnUNetTrainerKiTSSurface).transforms
    ours = [i for i, t in enumerate(ts) if isinstance(t, PerturbChannelsTransform)]
    assert len(theirs) == 2 and len(ours) == 1
    perturbation = ts[ours[0]]
    assert settings(perturbation.transforms) == settings(theirs)
    assert [r.transform.channel_idx for r in perturbation.transforms] == [[1], [1]]  # the mask channel, not the CT
    assert isinstance(ts[ours[0] - 1], RemoveLabelTansform)  # where nnU-Net perturbs its cascade input
    for name in ("nnUNetTrainerKiTSCoarse", "nnUNetTrainerKiTSFine"):  # no mask channel, no perturbation
        assert not any(isinstance(t, PerturbChannelsTransform) for t in _training_transforms(getattr(trainers, name)).transforms)


@pytest.mark.parametrize("name", ["nnUNetTrainerKiTSCoarse", "nnUNetTrainerKiTSFine", "nnUNetTrainerKiTSSurface"])
def test_elastic_deformation_off_by_default_on_in_the_elastic_variants(name):
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform

    def displacements(cls) -> np.ndarray:
        """Largest elastic displacement (voxels) drawn for each of 200 samples (0: not deformed)."""
        spatial = next(t for t in _training_transforms(cls).transforms if isinstance(t, SpatialTransform))
        np.random.seed(0)
        torch.manual_seed(0)
        out = [spatial.get_parameters(image=torch.zeros(2, 30, 34, 34))["elastic_offsets"] for _ in range(200)]
        return np.array([0.0 if o is None else float(o.abs().max()) for o in out])

    default, variant = getattr(trainers, name), getattr(trainers, name + "_elastic")
    assert not displacements(default).any()
    moved = displacements(variant)
    # probability 0.2 per sample, up to half the smoothing scale (batchgeneratorsv2's default moves <= 0.2 voxels)
    assert 0.12 < float(np.mean(moved > 0)) < 0.28 and moved.max() > 1.0
    assert [type(t) for t in _training_transforms(variant).transforms] == [
        type(t) for t in _training_transforms(default).transforms]  # nothing else changes


def test_elastic_surface_variant_keeps_the_mask_channel_binary():
    transforms = _training_transforms(trainers.nnUNetTrainerKiTSSurface_elastic)
    ct, labels = tiny_case((24, 28, 28), np.random.default_rng(0))
    mask = torch.from_numpy(labels > 0).float()
    np.random.seed(0)
    torch.manual_seed(0)
    for _ in range(10):
        image = torch.stack([torch.from_numpy(ct.astype(np.float32)) / 1000, mask])
        out = transforms(image=image, segmentation=torch.from_numpy(labels[None].astype(np.int16)))["image"][1]
        assert ((out == 0) | (out == 1)).all()


# ------------------------------------------------------------------------------------ trainers on planned tiny data
def test_schedule_defaults_and_env(stage_env, monkeypatch):
    tr = _trainer("nnUNetTrainerKiTSFine_short", 222)
    assert (tr.num_epochs, tr.num_iterations_per_epoch, tr.num_val_iterations_per_epoch) == (2, 4, 2)
    monkeypatch.setenv("KITS_EPOCHS", "3")
    monkeypatch.setenv("KITS_ITERS", "5")
    monkeypatch.setenv("KITS_VAL_ITERS", "1")
    for name in ("nnUNetTrainerKiTSFine_short", "nnUNetTrainerKiTSFine_demo"):
        tr = _trainer(name, 222)
        assert (tr.num_epochs, tr.num_iterations_per_epoch, tr.num_val_iterations_per_epoch) == (3, 5, 1)


def test_demo_trainers_redraw_progress_every_fifth_epoch_and_after_the_last(stage_env, monkeypatch):
    tr = _trainer("nnUNetTrainerKiTSFine_demo", 222)
    tr.num_epochs = 12
    drawn: list[int] = []

    class Logger:  # nnU-Net's logger, as on_epoch_end uses it
        def log(self, *args):
            pass

        def get_value(self, key, step):
            return [0.5] if key == "dice_per_class_or_region" else 0.5

        def plot_progress_png(self, folder):
            drawn.append(tr.current_epoch)

    tr.logger = Logger()
    monkeypatch.setattr(tr, "save_checkpoint", lambda filename: None)
    for _ in range(12):
        tr.on_epoch_end()
    assert drawn == [4, 9, 11] and tr.current_epoch == 12
    assert "plot_progress_png" not in vars(tr.logger)  # the logger is left as it was


def test_demo_trainers_validate_numeric_folds_and_skip_fold_all(stage_env, monkeypatch):
    """Fold ``all`` has no unseen case; numeric folds' validation predictions feed the next stage (train as you
    infer), so they run nnU-Net's own validation."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    calls: list[object] = []
    monkeypatch.setattr(nnUNetTrainer, "perform_actual_validation", lambda self, save=False: calls.append(self.fold))
    monkeypatch.setattr(nnUNetTrainer, "print_to_log_file", lambda self, *a, **k: calls.append(" ".join(map(str, a))))
    tr = _trainer("nnUNetTrainerKiTSFine_demo", 222)
    calls.clear()  # the constructor's own log lines
    tr.perform_actual_validation()
    assert calls == [0]
    tr.fold = "all"
    tr.perform_actual_validation()
    assert calls[1:] == ["final validation skipped (fold 'all' holds no unseen case; kits demo evaluates held-out "
                         "cases)"]


@pytest.mark.parametrize("name", ["nnUNetTrainerKiTSCoarse", "nnUNetTrainerKiTSFine"])
def test_production_trainers_ignore_and_announce_schedule_env(stage_env, monkeypatch, capsys, name):
    """A leftover KITS_EPOCHS in the shell must not shorten a production model; the trainer says it ignores it."""
    monkeypatch.setenv("KITS_EPOCHS", "3")
    tr = _trainer(name, 222)
    assert (tr.num_epochs, tr.num_iterations_per_epoch, tr.num_val_iterations_per_epoch) == (1000, 250, 50)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "KITS_EPOCHS" in ln]
    assert len(lines) == 1
    assert f"KITS_EPOCHS=3 set but ignored: {name} " in lines[0] and f"{name}_short or {name}_demo" in lines[0]
    assert lines[0].split(": ", 1)[1] in Path(tr.log_file).read_text()  # also in nnU-Net's training log


def test_surface_production_trainer_ignores_boundary_schedule_env(stage_env, monkeypatch, capsys):
    monkeypatch.setenv("KITS_BOUNDARY_SCHEDULE", "0.1,1.0,0,0.5")
    monkeypatch.setenv("KITS_ITERS", "2")
    tr = _trainer("nnUNetTrainerKiTSSurface", 223)
    assert (tr.num_epochs, tr.num_iterations_per_epoch) == (1000, 250)
    assert [tr.boundary_schedule(e) for e in (0, 250, 500, 999)] == [0.0, 0.25, 0.5, 0.5]
    out = capsys.readouterr().out
    assert "KITS_ITERS=2, KITS_BOUNDARY_SCHEDULE=0.1,1.0,0,0.5 set but ignored: nnUNetTrainerKiTSSurface " in out
    short = _trainer("nnUNetTrainerKiTSSurface_short", 223)
    assert short.num_iterations_per_epoch == 2 and short.boundary_schedule(0) == pytest.approx(0.1)
    assert "ignored" not in capsys.readouterr().out


def test_production_trainer_without_env_says_nothing(stage_env, capsys):
    tr = _trainer("nnUNetTrainerKiTSFine", 222)
    assert tr.num_epochs == 1000
    assert "ignored" not in capsys.readouterr().out  # log and stdout come from the same print_to_log_file call


def test_coarse_loss_weights_missed_kidney_three_times_a_false_positive(stage_env):
    tr = _trainer("nnUNetTrainerKiTSCoarse", 222)
    tr.initialize()
    ce = tr.loss.loss.ce
    assert ce.weight.tolist() == [1.0, 3.0]
    # a missed kidney voxel (p(kidney) = 0.2) and a false-positive voxel (p(kidney) = 0.8) in one patch: the same
    # error, but the missed kidney pulls 3x harder on its logits
    p = 0.2
    logits = torch.tensor([[math.log(1 - p), math.log(p)], [math.log(p), math.log(1 - p)]]).T.reshape(1, 2, 2, 1, 1)
    logits.requires_grad_(True)
    ce(logits, torch.tensor([1.0, 0.0]).reshape(1, 1, 2, 1, 1)).backward()
    g_miss, g_fp = logits.grad[0, :, 0].norm(), logits.grad[0, :, 1].norm()
    assert float(g_miss / g_fp) == pytest.approx(3.0)


def _region_loss(loss):
    """nnU-Net's Dice+BCE inside a 223 trainer's loss (under the surface term and deep supervision)."""
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    from kits_plugins.losses.boundary import RegionDiceBCEBoundaryLoss

    loss = loss.region_loss if isinstance(loss, RegionDiceBCEBoundaryLoss) else loss
    return loss.loss if isinstance(loss, DeepSupervisionWrapper) else loss


@pytest.mark.parametrize("name", ["nnUNetTrainerKiTSMasses_demo", "nnUNetTrainerKiTSSurface_demo"])
def test_demo_masses_losses_weight_missed_masses_five_times(stage_env, name):
    """The demo's stage-223 trainers (both arms of the surface ablation alike) weight the BCE positives of every
    region 5 : 1; the production trainers keep nnU-Net's unweighted BCE."""
    tr = _trainer(name, 223)
    tr.initialize()
    bce = _region_loss(tr.loss).ce
    assert bce.pos_weight.shape[0] == 2 and torch.all(bce.pos_weight == 5.0)
    # a missed mass voxel (p = 0.2) and a false-positive voxel (p = 0.8): the miss pulls 5x harder on its logit
    logits = torch.logit(torch.tensor([0.2, 0.8])).reshape(1, 1, 2, 1, 1).repeat(1, 2, 1, 1, 1).requires_grad_(True)
    bce(logits, torch.tensor([1.0, 0.0]).reshape(1, 1, 2, 1, 1).repeat(1, 2, 1, 1, 1)).backward()
    assert float(logits.grad[0, 0, 0].abs() / logits.grad[0, 0, 1].abs()) == pytest.approx(5.0)
    production = _trainer(name.removesuffix("_demo"), 223)
    production.initialize()
    assert _region_loss(production.loss).ce.pos_weight is None


def test_demo_surface_trainer_starts_the_surface_term_at_half_of_training(stage_env, monkeypatch):
    monkeypatch.setenv("KITS_EPOCHS", "36")
    tr = _trainer("nnUNetTrainerKiTSSurface_demo", 223)
    weights = [tr.boundary_schedule(e) for e in range(36)]
    assert weights[:19] == [0.0] * 19 and weights[27:] == [0.5] * 9 and 0 < weights[22] < 0.5


def test_surface_trainer_loss_network_and_region_requirement(stage_env):
    tr = _trainer("nnUNetTrainerKiTSSurface", 223)
    tr.initialize()
    assert isinstance(tr.loss, RegionDiceBCEBoundaryLoss)
    assert tr.loss.boundary_loss.spacing == TARGET
    assert isinstance(tr.network, BinarizeInputChannels) and tr.network.channels == (1,)
    tr.set_deep_supervision_enabled(False)  # nnU-Net reaches the decoder through the wrapper
    assert tr.network.decoder.deep_supervision is False
    tr.network.eval()
    x = torch.randn(1, 2, 20, 24, 24)
    x[:, 1] = (torch.rand(1, 20, 24, 24) > 0.5).float()
    soft = x.clone()
    soft[:, 1] = soft[:, 1] * 0.8 + 0.1  # spline-resampled-like mask: 0.1 / 0.9
    with torch.no_grad():
        assert torch.equal(tr.network(x), tr.network(soft))
    with pytest.raises(RuntimeError, match="region labels"):
        _trainer("nnUNetTrainerKiTSSurface", 222).initialize()


def test_masses_trainer_is_the_surface_trainer_without_the_boundary_term(stage_env):
    from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    tr = _trainer("nnUNetTrainerKiTSMasses", 223)
    tr.initialize()
    inner = tr.loss.loss if isinstance(tr.loss, DeepSupervisionWrapper) else tr.loss
    assert type(inner) is DC_and_BCE_loss  # nnU-Net's region loss, no boundary term
    assert isinstance(tr.network, BinarizeInputChannels) and tr.network.channels == (1,)
    surface = _trainer("nnUNetTrainerKiTSSurface", 223)
    names = [type(t).__name__ for t in tr.get_training_transforms(
        [20, 24, 24], ((0, 0),) * 3, None, (0, 1, 2), False, use_mask_for_norm=[False, False],
        regions=[(1, 2), (2,)]).transforms]
    assert names == [type(t).__name__ for t in surface.get_training_transforms(
        [20, 24, 24], ((0, 0),) * 3, None, (0, 1, 2), False, use_mask_for_norm=[False, False],
        regions=[(1, 2), (2,)]).transforms]  # the same mask-channel handling
    assert "PerturbChannelsTransform" in names


def test_stock_trainer_is_nnunets_trainer_with_a_schedule(stage_env, monkeypatch):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    monkeypatch.setenv("KITS_EPOCHS", "3")
    monkeypatch.setenv("KITS_ITERS", "5")
    stock = _trainer("nnUNetTrainerStock_demo", 222)
    assert (stock.num_epochs, stock.num_iterations_per_epoch) == (3, 5)
    stock.initialize()
    theirs = _trainer("nnUNetTrainer", 222)
    assert type(theirs) is nnUNetTrainer
    theirs.initialize()
    assert type(stock.loss) is type(theirs.loss) and type(stock.loss.loss) is type(theirs.loss.loss)
    assert stock.loss.loss.ce.weight is None  # no recall-first weighting
    assert [type(t) for t in stock.get_training_transforms(
        [20, 24, 24], ((0, 0),) * 3, None, (0, 1, 2), False).transforms] == [type(t) for t in
        nnUNetTrainer.get_training_transforms([20, 24, 24], ((0, 0),) * 3, None, (0, 1, 2), False).transforms]


def test_mask_channel_stays_binary_on_real_augmented_batches(stage_env):
    """nnU-Net's own dataloader and training transforms on the preprocessed 223 cases."""
    from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTansform
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    tr = _trainer("nnUNetTrainerKiTSSurface", 223)
    tr.initialize()
    dl_train, dl_val = tr.get_dataloaders()
    unperturbed = _record_after(dl_train, RemoveLabelTansform)  # the mask before the train-as-you-infer perturbation

    def stats(loader, n_batches):
        non_binary = total = masses = masses_in_mask = 0
        for _ in range(n_batches):
            batch = next(loader)
            mask = batch["data"][:, 1]
            target = batch["target"][0] if isinstance(batch["target"], list) else batch["target"]
            non_binary += int(((mask != 0) & (mask != 1)).sum())
            total += mask.numel()
            m = target[:, 0].bool()  # region "masses" at full resolution
            aligned = torch.stack(unperturbed.images[-len(mask):])[:, 1] if unperturbed.images else mask
            masses += int(m.sum())
            masses_in_mask += int((m & (aligned > 0.5)).sum())
        return non_binary / total, masses_in_mask / max(masses, 1), masses

    torch.manual_seed(0)
    np.random.seed(0)
    frac_non_binary, frac_masses_inside, n_masses = stats(dl_train, 10)
    assert frac_non_binary == 0.0
    assert n_masses > 0 and frac_masses_inside > 0.95  # the mask still matches the augmented label
    unperturbed.images.clear()
    assert stats(dl_val, 2)[0] == 0.0

    # the same loader with nnU-Net's stock transforms: the mask channel is no longer binary
    rot, dummy_2d, _, mirror = tr.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    dl_train.data_loader.transforms = nnUNetTrainer.get_training_transforms(
        tr.configuration_manager.patch_size, rot, tr._get_deep_supervision_scales(), mirror, dummy_2d,
        use_mask_for_norm=tr.configuration_manager.use_mask_for_norm, regions=tr.label_manager.foreground_regions)
    torch.manual_seed(0)
    np.random.seed(0)
    assert stats(dl_train, 10)[0] > 0.05


def test_mask_channel_perturbed_in_training_not_in_validation(stage_env):
    """Train as you infer: nnU-Net's loader with the 223 trainer's transforms; each sample's image just before the
    perturbation (right after ``RemoveLabelTansform``) is compared with the batch the loader returns."""
    from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTansform

    from kits_plugins.training.transforms import BinarizeChannelsTransform

    tr = _trainer("nnUNetTrainerKiTSSurface", 223)
    tr.initialize()
    dl_train, dl_val = tr.get_dataloaders()
    batch, unperturbed = _batches_with_recorded(dl_train, _record_after(dl_train, RemoveLabelTansform), 10)
    mask = batch[:, 1]
    assert ((mask == 0) | (mask == 1)).all()
    changed = (mask != unperturbed[:, 1]).flatten(1).any(1).float().mean()
    assert 0.1 <= float(changed) <= 0.5  # 20 samples; expected about 0.4 x 0.5 + 0.2 x 0.5 minus overlaps, no-ops
    assert torch.equal(batch[:, 0], unperturbed[:, 0])  # the CT channel is not touched
    val, val_binarized = _batches_with_recorded(dl_val, _record_after(dl_val, BinarizeChannelsTransform), 4)
    assert torch.equal(val, val_binarized)  # validation: thresholded, never perturbed


# ------------------------------------------------------------ boundary distance maps in the augmentation workers
def _loader_of(augmenter):
    """The data loader inside nnU-Net's augmenter (multi-process or single-threaded)."""
    return getattr(augmenter, "generator", None) or augmenter.data_loader


def _finish(augmenters) -> None:
    for augmenter in augmenters:
        if hasattr(augmenter, "_finish"):
            augmenter._finish()


def _loss_and_grads(loss, output: list[torch.Tensor], target, maps: torch.Tensor | None):
    """Value, boundary component and gradients on ``output`` of the surface loss given ``maps`` (None: its own)."""
    out = [o.clone().requires_grad_(True) for o in output]
    with loss.given_distance_maps(maps):  # what the trainer's steps do with the batch key
        value = loss(out, target)
    value.backward()
    return value.detach(), loss.last_boundary_loss, [o.grad for o in out]


class _Spy:
    """Wraps a trainer's transform builder: records the arguments (as text) and the result of each call."""

    def __init__(self, build, calls: list) -> None:
        self.build, self.calls = build, calls

    def __call__(self, *args, **kwargs):
        result = self.build(*args, **kwargs)
        self.calls.append((self.build.__name__, repr((args, sorted(kwargs.items()))), result))
        return result


def test_worker_distance_maps_give_the_main_process_loss_and_gradient(stage_env, monkeypatch):
    """nnU-Net's augmenter with 2 worker processes on the surface trainer's loaders: each training and validation
    batch carries the maps, and the loss and its gradient from them equal the loss's own main-process computation."""
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter

    monkeypatch.setenv("nnUNet_n_proc_DA", "2")
    tr = _trainer("nnUNetTrainerKiTSSurface", 223)
    tr.initialize()
    tr.loss.boundary_weight = 0.5
    augmenters = tr.get_dataloaders()
    try:
        boundary_terms = []
        for augmenter in augmenters:  # training, validation
            assert isinstance(augmenter, NonDetMultiThreadedAugmenter) and augmenter.num_processes >= 1
            for _ in range(3):
                batch = next(augmenter)
                maps, target = batch[DISTANCE_MAPS_KEY], batch["target"]
                assert maps.dtype == torch.float32 and maps.shape == target[0].shape  # full resolution, 2 regions
                with torch.no_grad():
                    output = tr.network(batch["data"])
                v_worker, b_worker, g_worker = _loss_and_grads(tr.loss, output, target, maps)
                v_main, b_main, g_main = _loss_and_grads(tr.loss, output, target, None)
                torch.testing.assert_close(v_worker, v_main, rtol=0, atol=1e-6)
                assert b_worker == pytest.approx(b_main, rel=0, abs=1e-6)
                for gw, gm in zip(g_worker, g_main, strict=True):
                    torch.testing.assert_close(gw, gm, rtol=0, atol=1e-6)
                boundary_terms.append(b_worker)
        assert sum(b != 0 for b in boundary_terms) >= 3  # patches with regions: the maps carry a real signal
    finally:
        _finish(augmenters)


def test_surface_steps_use_the_batch_maps_and_compute_none(stage_env, monkeypatch):
    """train_step and validation_step move the batch's maps to the device and the loss uses them: the main process
    computes no distance map (a batch without them falls back to the loss's own computation)."""
    import kits_plugins.losses.boundary as boundary_module

    tr = _trainer("nnUNetTrainerKiTSSurface", 223)
    tr.initialize()
    tr.loss.boundary_weight = 0.5
    dl_train, dl_val = tr.get_dataloaders()
    batches = [next(dl_train), next(dl_train), next(dl_val)]

    def refuse(*args, **kwargs):
        raise AssertionError("distance maps computed in the main process")

    monkeypatch.setattr(boundary_module, "batch_signed_distance_maps", refuse)
    out = tr.train_step(batches[0])
    assert math.isfinite(out["boundary_loss"]) and math.isfinite(out["region_loss"])
    tr.network.eval()
    with torch.no_grad():
        val = tr.validation_step(batches[2])
    assert np.isfinite(val["loss"]) and math.isfinite(tr.loss.last_boundary_loss)  # validation loss: with the term
    tr.network.train()
    del batches[1][DISTANCE_MAPS_KEY]
    with pytest.raises(AssertionError, match="main process"):
        tr.train_step(batches[1])


@pytest.mark.parametrize("n_proc", ["0", "2"])
def test_surface_loaders_are_nnunets_plus_distance_maps(stage_env, monkeypatch, n_proc):
    """The surface trainer's ``get_dataloaders`` builds what nnU-Net's builds (same transform arguments, loader and
    augmenter settings) with the maps transform appended and a loader that keeps its output."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    monkeypatch.setenv("nnUNet_n_proc_DA", n_proc)
    tr = _trainer("nnUNetTrainerKiTSSurface", 223)
    tr.initialize()
    calls: list[tuple[str, str, object]] = []
    for name in ("get_training_transforms", "get_validation_transforms"):
        monkeypatch.setattr(tr, name, _Spy(getattr(tr, name), calls))
    ours = tr.get_dataloaders()
    ours_calls, calls[:] = list(calls), []
    theirs = nnUNetTrainer.get_dataloaders(tr)
    loader_settings = ("batch_size", "patch_size", "final_patch_size", "oversample_foreground_percent",
                       "annotated_classes_key", "has_ignore", "indices", "sampling_probabilities", "pad_sides",
                       "patch_size_was_2d")
    augmenter_settings = ("num_processes", "num_cached", "pin_memory", "wait_time", "transform", "seeds")
    try:
        assert [c[:2] for c in ours_calls] == [c[:2] for c in calls]  # same arguments to the transform builders
        for a, b, built in zip(ours, theirs, [c[2] for c in ours_calls], strict=True):
            assert type(a) is type(b)
            assert [getattr(a, k, None) for k in augmenter_settings] == [getattr(b, k, None) for k in augmenter_settings]
            la, lb = _loader_of(a), _loader_of(b)
            assert type(la) is nnUNetDataLoaderWithExtras and type(lb).__name__ == "nnUNetDataLoader"
            assert repr([getattr(la, k) for k in loader_settings]) == repr([getattr(lb, k) for k in loader_settings])
            assert la.get_do_oversample.__func__ is lb.get_do_oversample.__func__
            assert la.need_to_pad.tolist() == lb.need_to_pad.tolist()
            assert la._data.identifiers == lb._data.identifiers and type(la._data) is type(lb._data)
            *pipeline, maps = la.transforms.transforms
            assert pipeline == built.transforms  # the very transforms nnU-Net's arguments built, then the maps
            assert isinstance(maps, SignedDistanceMapsTransform) and la.extra_keys == (DISTANCE_MAPS_KEY,)
            assert maps.spacing == TARGET and maps.ignore_channel is False
    finally:
        _finish([*ours, *theirs])


def test_surface_trainer_can_keep_the_maps_in_the_main_process(stage_env, monkeypatch):
    monkeypatch.setattr(trainers.nnUNetTrainerKiTSSurface, "distance_maps_in_workers", False)
    tr = _trainer("nnUNetTrainerKiTSSurface", 223)
    tr.initialize()
    tr.loss.boundary_weight = 0.5
    dl_train, _ = tr.get_dataloaders()
    batch = next(dl_train)
    assert DISTANCE_MAPS_KEY not in batch and type(dl_train.data_loader).__name__ == "nnUNetDataLoader"
    assert math.isfinite(tr.train_step(batch)["boundary_loss"])
    assert "computed in the main process" in Path(tr.log_file).read_text()


# ----------------------------------------------------------------------------- short trainings (nnU-Net's own path)
@pytest.mark.slow
@pytest.mark.parametrize("trainer_name", ["nnUNetTrainerKiTSCoarse_short", "nnUNetTrainerKiTSFine_short"])
def test_run_training_cpu_smoke(stage_env, monkeypatch, trainer_name):
    from nnunetv2.run.run_training import run_training

    monkeypatch.setenv("KITS_EPOCHS", "1")
    monkeypatch.setenv("KITS_ITERS", "2")
    monkeypatch.setenv("KITS_VAL_ITERS", "1")
    run_training("222", "3d_fullres", 0, trainer_name, "kitsPlans", device=CPU)
    folder = stage_env["root"] / "results" / stage_env["names"][222] / f"{trainer_name}__kitsPlans__3d_fullres"
    ckpt = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == trainer_name
    losses = ckpt["logging"]["train_losses"]
    assert len(losses) == 1 and np.isfinite(losses).all()
    assert (folder / "fold_0" / "validation" / "summary.json").is_file()
    seg = _predict(folder, two_channels=False)
    assert set(np.unique(seg)) <= {0, 1}


@pytest.mark.slow
def test_nnunetv2_train_console_command_surface_trainer(stage_env):
    """`nnUNetv2_train 223 3d_fullres 0 -tr nnUNetTrainerKiTSSurface_short -p kitsPlans -device cpu`."""
    exe = shutil.which("nnUNetv2_train") or str(Path(sys.executable).parent / "nnUNetv2_train")
    env = {**os.environ, **stage_env["env"], "KITS_ITERS": "2", "KITS_VAL_ITERS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [exe, "223", "3d_fullres", "0", "-tr", "nnUNetTrainerKiTSSurface_short", "-p", "kitsPlans", "-device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "boundary loss weight: 0.5" in proc.stdout
    folder = stage_env["root"] / "results" / stage_env["names"][223] / "nnUNetTrainerKiTSSurface_short__kitsPlans__3d_fullres"
    ckpt = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    log = ckpt["logging"]
    assert log["boundary_weights"] == [0.0, 0.5]  # 2 epochs, ramp over the first half
    assert np.isfinite(log["train_losses"]).all() and np.isfinite(log["train_region_losses"]).all()
    assert math.isnan(log["train_boundary_losses"][0]) and np.isfinite(log["train_boundary_losses"][1])
    seg = _predict(folder, two_channels=True)
    assert set(np.unique(seg)) <= {0, 1, 2}  # Dataset223 values: 1 tumor, 2 cyst
