"""nnUNetTrainer subclasses of the cascade, found by nnU-Net through ``nnUNet_extTrainer``.

- ``nnUNetTrainerKiTSCoarse`` (stage 221, 3d_lowres on the full CT): Dice+CE, recall first. Cross-entropy
  weights foreground ``foreground_ce_weight`` (3) times background, so the weighted-CE optimum labels a voxel
  kidney once p(kidney) > 1 / (1 + 3) = 0.25: the coarse mask only has to *contain* the kidneys (its
  boxes get a 15 mm margin), a missed kidney cannot be recovered by the later stages, a false positive
  only costs ROI area.
- ``nnUNetTrainerKiTSFine`` (stage 222, 3d_fullres on kidney ROIs): nnU-Net's Dice+CE unchanged.
- ``nnUNetTrainerKiTSMasses`` (stage 223 without the surface term): nnU-Net's region loss with the binary mask
  channel handled as below; the surface-loss ablation.
- ``nnUNetTrainerKiTSSurface`` (stage 223, region training on kidney ROIs with the kidney mask as input
  channel 1): nnU-Net's region loss (Dice+BCE with deep supervision) plus the Kervadec boundary loss on the
  full-resolution output, its weight following ``BoundaryWeightSchedule`` and logged every epoch; the mask
  channel stays binary through augmentation and at inference, and is perturbed in training as nnU-Net perturbs a
  cascade's previous-stage segmentation (see ``kits_plugins.training.transforms``). The boundary loss's signed
  distance maps are computed per sample in nnU-Net's augmentation workers, for training and validation
  (``SignedDistanceMapsTransform``), and reach the loss as the batch key ``DISTANCE_MAPS_KEY``, moved to the device
  with the target; the main process computes none.

Elastic deformation stays off, as in nnU-Net v2 (``p_elastic_deform=0``); the ``_elastic`` variants turn it on
(``ELASTIC``: probability 0.2 per sample; see docs/planning_and_training.md for the measured cost).

Schedules are classes, as in nnU-Net (``nnUNetTrainer_5epochs``): the production trainers above train nnU-Net's
schedule (1000 epochs x 250 iterations, 50 validation iterations) and the surface trainer's class schedule, whatever
the environment. Only the ``_short`` variants (2 epochs x 4 iterations, CPU smoke tests) and the ``_demo`` variants
(the same for ``kits demo``, which sizes them; separate names keep separate results folders) read ``KITS_EPOCHS``,
``KITS_ITERS`` and ``KITS_VAL_ITERS`` (positive integers: epochs, training and validation iterations per epoch) and
``KITS_BOUNDARY_SCHEDULE=start,end,f0,f1`` (surface weight ``start`` until epoch f0 x epochs, linear to ``end`` at
f1 x epochs). A production trainer that finds one of them set says so on stdout and in its training log (a leftover
``KITS_EPOCHS=2`` in a shell must not silently shorten a production model) and ignores it.

The classes live here (picklable as ``kits_plugins.training.trainers.X``); the folder printed by
``kits trainer-path`` holds only a shim that star-imports this module.
"""

from __future__ import annotations

import math
import os
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.robust_ce_loss import RobustCrossEntropyLoss
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from torch import nn

from kits_plugins.losses.boundary import BoundaryLoss, BoundaryWeightSchedule, RegionDiceBCEBoundaryLoss
from kits_plugins.training.data_loader import nnUNetDataLoaderWithExtras
from kits_plugins.training.transforms import (
    DISTANCE_MAPS_KEY,
    BinarizeInputChannels,
    ElasticDeformation,
    binarize_first,
    keep_channels_binary,
    perturb_channels,
    with_distance_maps,
    with_elastic_deformation,
)

if TYPE_CHECKING:
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

__all__ = [
    "nnUNetTrainerKiTSBase",
    "nnUNetTrainerKiTSCoarse",
    "nnUNetTrainerKiTSFine",
    "nnUNetTrainerKiTSMasses",
    "nnUNetTrainerKiTSSurface",
    "nnUNetTrainerKiTSCoarse_short",
    "nnUNetTrainerKiTSFine_short",
    "nnUNetTrainerKiTSMasses_short",
    "nnUNetTrainerKiTSSurface_short",
    "nnUNetTrainerStock_short",
    "nnUNetTrainerKiTSCoarse_demo",
    "nnUNetTrainerKiTSFine_demo",
    "nnUNetTrainerKiTSMasses_demo",
    "nnUNetTrainerKiTSSurface_demo",
    "nnUNetTrainerStock_demo",
    "nnUNetTrainerKiTSCoarse_elastic",
    "nnUNetTrainerKiTSFine_elastic",
    "nnUNetTrainerKiTSSurface_elastic",
]

CUDA = torch.device("cuda")  # nnUNetTrainer's default device

ENV_EPOCHS = "KITS_EPOCHS"
ENV_ITERS = "KITS_ITERS"
ENV_VAL_ITERS = "KITS_VAL_ITERS"
ENV_BOUNDARY_SCHEDULE = "KITS_BOUNDARY_SCHEDULE"
SHORT_SUFFIX = "_short"
DEMO_SUFFIX = "_demo"
ELASTIC = ElasticDeformation(p=0.2)  # the _elastic variants' setting


def env_positive_int(name: str) -> int | None:
    """A positive integer from the environment variable ``name`` (None when unset or empty)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"environment variable {name} must be a positive integer, got {raw!r}")
    return value


def boundary_schedule_from_env(num_epochs: int, default: BoundaryWeightSchedule) -> BoundaryWeightSchedule:
    """``KITS_BOUNDARY_SCHEDULE=start,end,ramp_start_fraction,ramp_end_fraction`` or ``default``."""
    raw = os.environ.get(ENV_BOUNDARY_SCHEDULE, "").strip()
    if not raw:
        return default
    try:
        start, end, f0, f1 = (float(v) for v in raw.split(","))
        return BoundaryWeightSchedule.for_num_epochs(num_epochs, start, end, f0, f1)
    except ValueError as e:
        raise ValueError(f"{ENV_BOUNDARY_SCHEDULE} must be 'start,end,ramp_start_fraction,ramp_end_fraction' "
                         f"(e.g. '0,0.5,0,0.5'), got {raw!r}: {e}") from None


def set_env_vars(names: tuple[str, ...]) -> list[str]:
    """``NAME=value`` of each of ``names`` set (non-empty) in the environment."""
    return [f"{n}={os.environ[n].strip()}" for n in names if os.environ.get(n, "").strip()]


def ignored_env_message(trainer_name: str, assignments: list[str]) -> str:
    """The one line a production trainer prints about schedule variables it ignores, naming the variants that
    honour them (``<trainer>_short`` / ``<trainer>_demo`` where they exist)."""
    variants = [trainer_name + suffix for suffix in (SHORT_SUFFIX, DEMO_SUFFIX)]
    honoured_by = " or ".join(variants) if all(v in __all__ for v in variants) else "the _short / _demo trainer variants"
    return (f"WARNING: {', '.join(assignments)} set but ignored: {trainer_name} trains its production schedule; "
            f"these variables are honoured only by {honoured_by}")


def nnunet_augmenters(train_loader, val_loader, num_processes: int, pin_memory: bool
                      ) -> tuple[NonDetMultiThreadedAugmenter | SingleThreadedAugmenter, ...]:
    """nnU-Net's background augmenters for the two loaders, started (``nnUNetTrainer.get_dataloaders``, 2.8.1):
    ``num_processes`` training and half as many validation workers, pinned batches on CUDA (every tensor of the batch
    dict), or none for 0 processes."""
    if num_processes == 0:
        augmenters: tuple[NonDetMultiThreadedAugmenter | SingleThreadedAugmenter, ...] = (
            SingleThreadedAugmenter(train_loader, None), SingleThreadedAugmenter(val_loader, None))
    else:
        augmenters = tuple(
            NonDetMultiThreadedAugmenter(data_loader=loader, transform=None, num_processes=n, num_cached=cached,
                                         seeds=None, pin_memory=pin_memory, wait_time=0.002)
            for loader, n, cached in ((train_loader, num_processes, max(6, num_processes // 2)),
                                      (val_loader, max(1, num_processes // 2), max(3, num_processes // 4))))
    for augmenter in augmenters:
        _ = next(augmenter)  # start the workers, as nnU-Net does
    return augmenters


def _inner_loss(loss: nn.Module) -> nn.Module:
    return loss.loss if isinstance(loss, DeepSupervisionWrapper) else loss


class nnUNetTrainerKiTSBase(nnUNetTrainer):
    """nnUNetTrainer with the package's schedule defaults; ``KITS_*`` overrides only where ``honours_env_schedule``;
    elastic deformation as ``elastic_deformation`` says (off: nnU-Net's default)."""

    elastic_deformation: ElasticDeformation = ElasticDeformation()
    default_num_epochs: int | None = None  # None keeps nnU-Net's value (1000 / 250 / 50)
    default_iterations_per_epoch: int | None = None
    default_val_iterations_per_epoch: int | None = None
    honours_env_schedule: bool = False  # True for the _short / _demo variants only
    schedule_env_vars: tuple[str, ...] = (ENV_EPOCHS, ENV_ITERS, ENV_VAL_ITERS)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = CUDA):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if len(self.configuration_manager.pool_op_kernel_sizes) < 3 and self.enable_deep_supervision:
            # nnU-Net drops the lowest-resolution output from deep supervision; with 2 stages that leaves
            # weight 0/0 = NaN on the only output. Tiny images (CPU demo spacing) give such networks.
            self.enable_deep_supervision = False
            self.print_to_log_file("deep supervision disabled: the planned network has fewer than 3 stages")
        self._announce_ignored_env()
        self.num_epochs = self._env_int(ENV_EPOCHS) or self.default_num_epochs or self.num_epochs
        self.num_iterations_per_epoch = (self._env_int(ENV_ITERS) or self.default_iterations_per_epoch
                                         or self.num_iterations_per_epoch)
        self.num_val_iterations_per_epoch = (self._env_int(ENV_VAL_ITERS) or self.default_val_iterations_per_epoch
                                             or self.num_val_iterations_per_epoch)
        self.print_to_log_file(f"{type(self).__name__}: {self.num_epochs} epochs x {self.num_iterations_per_epoch} "
                               f"iterations (+{self.num_val_iterations_per_epoch} validation iterations)",
                               also_print_to_console=False)

    @classmethod
    def get_training_transforms(cls, patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes,
                                do_dummy_2d_data_aug, use_mask_for_norm=None, is_cascaded=False,
                                foreground_labels=None, regions=None, ignore_label=None):
        transforms = super().get_training_transforms(
            patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes, do_dummy_2d_data_aug,
            use_mask_for_norm=use_mask_for_norm, is_cascaded=is_cascaded, foreground_labels=foreground_labels,
            regions=regions, ignore_label=ignore_label)
        if cls.elastic_deformation.p > 0:
            return with_elastic_deformation(transforms, cls.elastic_deformation)
        return transforms

    def _weight_foreground(self, loss: nn.Module, weight: float) -> nn.Module:
        """``loss`` (nnU-Net's, maybe inside deep supervision) with its cross-entropy weighting every foreground
        class ``weight`` : 1 (label datasets), or its BCE weighting the positives of every region ``weight`` : 1
        (region datasets): recall first, against the all-background plateau of short schedules."""
        inner = _inner_loss(loss)
        n = self.label_manager.num_segmentation_heads
        w = float(weight)
        if isinstance(inner, DC_and_CE_loss):
            class_weight = torch.tensor([1.0] + [w] * (n - 1), dtype=torch.float32, device=self.device)
            inner.ce = RobustCrossEntropyLoss(weight=class_weight, ignore_index=inner.ce.ignore_index)
        elif isinstance(inner, DC_and_BCE_loss):
            n_spatial = len(self.configuration_manager.patch_size)
            pos_weight = torch.full((n, *([1] * n_spatial)), w, dtype=torch.float32, device=self.device)
            inner.ce = nn.BCEWithLogitsLoss(reduction=inner.ce.reduction, pos_weight=pos_weight)
        else:
            raise RuntimeError(f"unexpected loss {type(inner).__name__} from nnUNetTrainer._build_loss")
        self.print_to_log_file(f"recall-first loss: foreground cross-entropy weight {w}")
        return loss

    def _env_int(self, name: str) -> int | None:
        """``env_positive_int(name)`` for the variants that honour the environment, else None."""
        return env_positive_int(name) if self.honours_env_schedule else None

    def _announce_ignored_env(self) -> None:
        """Production trainers: one line on stdout and in the training log naming each set, ignored variable."""
        assignments = [] if self.honours_env_schedule else set_env_vars(self.schedule_env_vars)
        if assignments:
            self.print_to_log_file(ignored_env_message(type(self).__name__, assignments), also_print_to_console=True)


class nnUNetTrainerKiTSCoarse(nnUNetTrainerKiTSBase):
    """Stage 221: Dice+CE on the full CT at coarse spacing, cross-entropy weighted towards the kidneys."""

    foreground_ce_weight: float = 3.0

    def _build_loss(self):
        return self._weight_foreground(super()._build_loss(), self.foreground_ce_weight)


class nnUNetTrainerKiTSFine(nnUNetTrainerKiTSBase):
    """Stage 222: nnU-Net's Dice+CE on kidney ROIs (fine kidney+masses mask)."""


class nnUNetTrainerKiTSMasses(nnUNetTrainerKiTSBase):
    """Stage 223 without the surface term: nnU-Net's region loss (Dice+BCE, deep supervision) on kidney ROIs, with
    the binary kidney-mask channel handled as in ``nnUNetTrainerKiTSSurface`` (the surface-loss ablation)."""

    binary_input_channels: tuple[int, ...] = (1,)
    #: BCE weight of the masses/tumor positives; 1 is nnU-Net's loss (the production trainers)
    foreground_bce_weight: float = 1.0

    def _build_loss(self):
        loss = super()._build_loss()
        return loss if self.foreground_bce_weight == 1 else self._weight_foreground(loss, self.foreground_bce_weight)

    # ----- binary mask channel
    @classmethod
    def _binary_channels(cls, num_input_channels: int | None = None) -> list[int]:
        return [c for c in cls.binary_input_channels if num_input_channels is None or c < num_input_channels]

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        network = super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                     num_output_channels, enable_deep_supervision)
        channels = cls._binary_channels(num_input_channels)
        return BinarizeInputChannels(network, channels) if channels else network

    @classmethod
    def get_training_transforms(cls, patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes,
                                do_dummy_2d_data_aug, use_mask_for_norm=None, is_cascaded=False,
                                foreground_labels=None, regions=None, ignore_label=None):
        transforms = super().get_training_transforms(
            patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes, do_dummy_2d_data_aug,
            use_mask_for_norm=use_mask_for_norm, is_cascaded=is_cascaded, foreground_labels=foreground_labels,
            regions=regions, ignore_label=ignore_label)
        channels = cls._binary_channels(len(use_mask_for_norm) if use_mask_for_norm is not None else None)
        return perturb_channels(keep_channels_binary(transforms, channels), channels)

    @classmethod
    def get_validation_transforms(cls, deep_supervision_scales, is_cascaded=False, foreground_labels=None,
                                  regions=None, ignore_label=None):
        transforms = super().get_validation_transforms(deep_supervision_scales, is_cascaded=is_cascaded,
                                                       foreground_labels=foreground_labels, regions=regions,
                                                       ignore_label=ignore_label)
        return binarize_first(transforms, cls._binary_channels())


class nnUNetTrainerKiTSSurface(nnUNetTrainerKiTSMasses):
    """Stage 223: region Dice+BCE plus the boundary loss (scheduled weight) on kidney ROIs, binary mask channel."""

    boundary_normalize: str | float = "none"
    boundary_schedule_start: float = 0.0
    boundary_schedule_end: float = 0.5
    boundary_ramp_fractions: tuple[float, float] = (0.0, 0.5)
    distance_maps_in_workers: bool = True  # False: nnU-Net's loaders, maps computed by the loss in the main process
    log_keys = ("boundary_weights", "train_region_losses", "train_boundary_losses")
    schedule_env_vars = (*nnUNetTrainerKiTSBase.schedule_env_vars, ENV_BOUNDARY_SCHEDULE)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = CUDA):
        super().__init__(plans, configuration, fold, dataset_json, device)
        default = BoundaryWeightSchedule.for_num_epochs(
            self.num_epochs, self.boundary_schedule_start, self.boundary_schedule_end, *self.boundary_ramp_fractions)
        self.boundary_schedule = (boundary_schedule_from_env(self.num_epochs, default) if self.honours_env_schedule
                                  else default)
        self.print_to_log_file(f"boundary loss weight schedule: {self.boundary_schedule}", also_print_to_console=False)
        self._register_log_keys()

    # ----- logging: nnU-Net's local logger only accepts keys it knows, so add ours to it
    def _register_log_keys(self) -> None:
        local = getattr(self.logger, "local_logger", None)
        store = getattr(local, "my_fantastic_logging", None)
        if isinstance(store, dict):
            for k in self.log_keys:
                store.setdefault(k, [])
            self._own_log: dict[str, list[float]] | None = None
        else:  # a future nnU-Net logger without that dict: keep our own per-epoch lists
            self._own_log = {k: [] for k in self.log_keys}

    def _log(self, key: str, value: float) -> None:
        if self._own_log is not None:
            lst = self._own_log[key]
            lst[self.current_epoch:] = [value]
            return
        local = self.logger.local_logger
        local.my_fantastic_logging.setdefault(key, [])  # after load_checkpoint of an older checkpoint
        self.logger.log(key, value, self.current_epoch)

    def logged(self, key: str) -> list:
        """Per-epoch values of one of ``log_keys``."""
        if self._own_log is not None:
            return list(self._own_log[key])
        return list(self.logger.get_value(key, step=None))

    # ----- loss
    @property
    def _surface_loss(self) -> RegionDiceBCEBoundaryLoss:
        """``self.loss``, built by :meth:`_build_loss` in ``initialize`` (nnU-Net's ``__init__`` sets it to None,
        unannotated, so a type checker reads it as always None)."""
        return cast(RegionDiceBCEBoundaryLoss, self.loss)

    def _build_loss(self):
        if not self.label_manager.has_regions:
            raise RuntimeError(f"{type(self).__name__} needs region labels (dataset 223: masses and tumor regions)")
        region = super()._build_loss()
        boundary = BoundaryLoss(self.configuration_manager.spacing, normalize=self.boundary_normalize,
                                ignore_channel=self.label_manager.ignore_label is not None)
        return RegionDiceBCEBoundaryLoss(region, boundary, boundary_weight=self.boundary_schedule(self.current_epoch))

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        w = float(self.boundary_schedule(self.current_epoch))
        self._surface_loss.boundary_weight = w
        self._log("boundary_weights", w)
        self.print_to_log_file(f"boundary loss weight: {w:.4g}")

    def train_step(self, batch: dict) -> dict:
        with self._worker_distance_maps(batch):
            out = super().train_step(batch)
        out["region_loss"] = float(self._surface_loss.last_region_loss)
        out["boundary_loss"] = float(self._surface_loss.last_boundary_loss)
        return out

    def validation_step(self, batch: dict) -> dict:
        with self._worker_distance_maps(batch):
            return super().validation_step(batch)

    def _worker_distance_maps(self, batch: dict) -> AbstractContextManager[None]:
        """The loss uses the batch's worker-computed maps (popped, moved to the device like nnU-Net moves the target:
        non-blocking, from the augmenter's pinned memory); a batch without them lets the loss compute its own."""
        maps = batch.pop(DISTANCE_MAPS_KEY, None)
        if maps is not None:
            maps = maps.to(self.device, non_blocking=True)
        return self._surface_loss.given_distance_maps(maps)

    def on_train_epoch_end(self, train_outputs: list[dict]):
        region = [o.pop("region_loss") for o in train_outputs]
        boundary = [o.pop("boundary_loss") for o in train_outputs]
        super().on_train_epoch_end(train_outputs)
        r = float(np.nanmean(region)) if np.any(np.isfinite(region)) else math.nan
        b = float(np.nanmean(boundary)) if np.any(np.isfinite(boundary)) else math.nan
        self._log("train_region_losses", r)
        self._log("train_boundary_losses", b)
        self.print_to_log_file(f"train region loss {r:.4f}, boundary loss {b:.4f} "
                               f"(weight {self._surface_loss.boundary_weight:.4g})")

    # ----- distance maps in the augmentation workers
    def get_dataloaders(self):
        """nnU-Net's ``get_dataloaders`` (nnunetv2 2.8.1: same datasets, loaders, augmenters and settings, tested
        against it), with ``SignedDistanceMapsTransform`` after the training and validation transforms and loaders
        that keep its output (``nnUNetDataLoaderWithExtras``): the boundary term's maps are made per sample in the
        augmentation workers, for validation too (the validation loss stays the training objective, comparable with
        the training loss in nnU-Net's log and progress plot). ``distance_maps_in_workers = False``: nnU-Net's own
        loaders, and the loss computes the maps in the main process."""
        if not self.distance_maps_in_workers:
            self.print_to_log_file("boundary loss distance maps: computed in the main process (training and validation)")
            return super().get_dataloaders()
        unannotated: Any = self  # nnU-Net's __init__ sets dataset_class = None (so typed None) and the folder
        if unannotated.dataset_class is None:
            unannotated.dataset_class = infer_dataset_class(unannotated.preprocessed_dataset_folder)
        patch_size = self.configuration_manager.patch_size
        tr_transforms, val_transforms, initial_patch_size = self._nnunet_transforms()
        spacing, has_ignore = self.configuration_manager.spacing, self.label_manager.ignore_label is not None
        loaders = [nnUNetDataLoaderWithExtras(
            dataset, self.batch_size, size, patch_size, self.label_manager,
            oversample_foreground_percent=self.oversample_foreground_percent, sampling_probabilities=None,
            pad_sides=None, transforms=with_distance_maps(transforms, spacing, has_ignore),
            probabilistic_oversampling=self.probabilistic_oversampling, extra_keys=(DISTANCE_MAPS_KEY,))
            for dataset, size, transforms in zip(self.get_tr_and_val_datasets(), (initial_patch_size, patch_size),
                                                 (tr_transforms, val_transforms))]
        n_proc = get_allowed_n_proc_DA()
        where = (f"{n_proc} training and {max(1, n_proc // 2)} validation augmentation workers" if n_proc
                 else "the data loader (nnUNet_n_proc_DA=0: no workers)")
        self.print_to_log_file(f"boundary loss distance maps: computed per sample in {where}; the validation loss "
                               "includes the boundary term")
        return nnunet_augmenters(loaders[0], loaders[1], n_proc, pin_memory=self.device.type == "cuda")

    def _nnunet_transforms(self) -> tuple[ComposeTransforms, ComposeTransforms, tuple[int, ...]]:
        """Training and validation transforms and the initial patch size, built as ``nnUNetTrainer.get_dataloaders``
        builds them."""
        ds_scales = self._get_deep_supervision_scales()
        rotation, dummy_2d, initial_patch_size, mirror_axes = self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        lm = self.label_manager
        regions = lm.foreground_regions if lm.has_regions else None
        tr_transforms = self.get_training_transforms(
            self.configuration_manager.patch_size, rotation, ds_scales, mirror_axes, dummy_2d,
            use_mask_for_norm=self.configuration_manager.use_mask_for_norm, is_cascaded=self.is_cascaded,
            foreground_labels=lm.foreground_labels, regions=regions, ignore_label=lm.ignore_label)
        val_transforms = self.get_validation_transforms(ds_scales, is_cascaded=self.is_cascaded,
                                                        foreground_labels=lm.foreground_labels, regions=regions,
                                                        ignore_label=lm.ignore_label)
        return tr_transforms, val_transforms, initial_patch_size

if TYPE_CHECKING:  # the schedule mixins below only ever come first in a trainer's bases: check them as trainers
    _TrainerMixin = nnUNetTrainerKiTSBase
else:
    _TrainerMixin = object


class _ShortSchedule(_TrainerMixin):
    """Defaults for CPU smoke tests and the demo, overridable by ``KITS_*`` (unlike the production trainers)."""

    honours_env_schedule = True
    default_num_epochs = 2
    default_iterations_per_epoch = 4
    default_val_iterations_per_epoch = 2


class nnUNetTrainerKiTSCoarse_short(_ShortSchedule, nnUNetTrainerKiTSCoarse):
    """``nnUNetTrainerKiTSCoarse`` on a short schedule."""


class nnUNetTrainerKiTSFine_short(_ShortSchedule, nnUNetTrainerKiTSFine):
    """``nnUNetTrainerKiTSFine`` on a short schedule."""


class nnUNetTrainerKiTSMasses_short(_ShortSchedule, nnUNetTrainerKiTSMasses):
    """``nnUNetTrainerKiTSMasses`` on a short schedule."""


class nnUNetTrainerKiTSSurface_short(_ShortSchedule, nnUNetTrainerKiTSSurface):
    """``nnUNetTrainerKiTSSurface`` on a short schedule."""


class nnUNetTrainerStock_short(_ShortSchedule, nnUNetTrainerKiTSBase):
    """nnU-Net's own ``nnUNetTrainer`` (loss, augmentation, sampling unchanged) on a short schedule: the stock baseline
    of ``benchmarks/accuracy_study.py``, trained on the whole CT (Dataset220, nnU-Net's KiTS23 regions)."""


class _DemoSchedule(_ShortSchedule):
    """``kits demo`` trains with fold ``all``, whose final validation would only re-predict the training cases:
    skip it there (the demo evaluates on held-out cases instead). Numeric folds validate as nnU-Net does: their
    predictions are the cross-validated inputs of the next stage (train as you infer)."""

    #: progress.png is redrawn every this many epochs and after the last one: matplotlib takes about 1 s per
    #: drawing on a laptop CPU, 7-10% of a demo epoch (nnU-Net redraws it after every epoch)
    plot_every = 5

    def perform_actual_validation(self, save_probabilities: bool = False):
        if self.fold != "all":
            return super().perform_actual_validation(save_probabilities)
        self.print_to_log_file("final validation skipped (fold 'all' holds no unseen case; kits demo evaluates "
                               "held-out cases)")

    def on_epoch_end(self):
        epoch = self.current_epoch
        if (epoch + 1) % self.plot_every == 0 or epoch == self.num_epochs - 1:
            return super().on_epoch_end()
        setattr(self.logger, "plot_progress_png", lambda *args, **kwargs: None)  # noqa: B010 (this epoch only)
        try:
            return super().on_epoch_end()
        finally:
            delattr(self.logger, "plot_progress_png")


#: Masses are 0.2-1% of a kidney ROI with KiTS23's kidney and tumor sizes. With a few hundred iterations nnU-Net's
#: region loss settles on "no masses" (sigmoids saturated near 0, so the Dice term's gradient vanishes). On one
#: demo's data (2026-12-02) it left that plateau only after 15-27 of 28 epochs, or never: without the surface term,
#: with it from epoch 0 or from epoch 14, and with the BCE positives weighted 5 and the term from epoch 0. With the
#: term from half of training (``nnUNetTrainerKiTSSurface_demo``) and 36 epochs: positives weighted 20 found masses
#: in the first epoch but over-marked them on held-out cases (held-out masses Dice 0.25), 10 left the plateau by
#: epoch 4 (0.13), 5 by epoch 7 with the fewest false masses (0.20). The demo's stage-223 trainers, both arms of the
#: accuracy study's surface ablation, use 5; the production trainers keep nnU-Net's loss.
DEMO_MASSES_BCE_WEIGHT = 5.0


class nnUNetTrainerKiTSCoarse_demo(_DemoSchedule, nnUNetTrainerKiTSCoarse):
    """``kits demo``'s coarse trainer: the short schedule, sized by the demo through ``KITS_*`` (own results folder).

    Kidneys are under 1% of the coarse image; with a few hundred iterations the plain weighting can sit on
    "all background" for most of the run, so the demo weights the kidney class more (10 : 1, still recall first).
    """

    foreground_ce_weight = 10.0


class nnUNetTrainerKiTSFine_demo(_DemoSchedule, nnUNetTrainerKiTSFine):
    """``kits demo``'s fine trainer (see ``nnUNetTrainerKiTSCoarse_demo``)."""


class nnUNetTrainerKiTSMasses_demo(_DemoSchedule, nnUNetTrainerKiTSMasses):
    """``nnUNetTrainerKiTSSurface_demo`` without the surface term (the accuracy study's ablation)."""

    foreground_bce_weight = DEMO_MASSES_BCE_WEIGHT


class nnUNetTrainerKiTSSurface_demo(_DemoSchedule, nnUNetTrainerKiTSSurface):
    """``kits demo``'s masses trainer (see ``nnUNetTrainerKiTSCoarse_demo``): recall-first BCE as the ablation's
    ``nnUNetTrainerKiTSMasses_demo``, and the surface term only in the second half (0 until half the epochs, then
    linear to 0.5 at three quarters). Once the masses are found the two arms differ only by the surface term."""

    foreground_bce_weight = DEMO_MASSES_BCE_WEIGHT
    boundary_ramp_fractions = (0.5, 0.75)


class nnUNetTrainerStock_demo(_DemoSchedule, nnUNetTrainerKiTSBase):
    """``nnUNetTrainerStock_short`` sized through ``KITS_*`` like the demo trainers (fold ``all``, no final
    validation, progress.png every 5th epoch): the accuracy study's stock nnU-Net."""


class _ElasticDeformation(_TrainerMixin):
    """Elastic deformation on (``ELASTIC``), the one change of the ``_elastic`` variants."""

    elastic_deformation = ELASTIC


class nnUNetTrainerKiTSCoarse_elastic(_ElasticDeformation, nnUNetTrainerKiTSCoarse):
    """``nnUNetTrainerKiTSCoarse`` with elastic deformation."""


class nnUNetTrainerKiTSFine_elastic(_ElasticDeformation, nnUNetTrainerKiTSFine):
    """``nnUNetTrainerKiTSFine`` with elastic deformation."""


class nnUNetTrainerKiTSSurface_elastic(_ElasticDeformation, nnUNetTrainerKiTSSurface):
    """``nnUNetTrainerKiTSSurface`` with elastic deformation (the mask channel is thresholded after it)."""
