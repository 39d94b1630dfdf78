"""Boundary (surface) loss of Kervadec et al. (MIDL 2019) for nnU-Net's region-based training, and its weight schedule.

``BoundaryLoss`` = mean over voxels, channels and batch of ``sigmoid(logit) * phi``, where ``phi`` is the signed
distance map (mm, negative inside) of each region's ground truth (see ``kits_plugins.losses.distance``). It is
minimal for the perfect prediction; its gradient ``sigmoid'(logit) * phi`` pushes voxels inside the ground truth up
and voxels outside down, proportionally to how far they are from the boundary.

``RegionDiceBCEBoundaryLoss`` adds it to an already-built nnU-Net region loss (``DC_and_BCE_loss``, possibly inside
``DeepSupervisionWrapper``) with a weight the trainer sets each epoch from ``BoundaryWeightSchedule``.

Both take the maps precomputed (``distance_maps``: the surface trainer's augmentation workers compute them with the
same ``sample_signed_distance_maps``) or compute them from the target themselves (for use outside the trainer).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from kits_plugins.losses.distance import batch_signed_distance_maps

NORMALIZE_MODES = ("none", "max")


def _highest_resolution(x):
    """nnU-Net deep supervision passes lists (highest resolution first); the boundary term uses only entry 0."""
    if isinstance(x, (list, tuple)):
        if len(x) == 0:
            raise ValueError("empty deep-supervision list")
        return x[0]
    return x


class BoundaryLoss(nn.Module):
    """Kervadec boundary loss on region (sigmoid) outputs.

    ``spacing``: voxel size in mm in the tensor's spatial axis order (nnU-Net: ``configuration_manager.spacing``).
    ``normalize``: ``"none"`` keeps ``phi`` in mm (default: the loss is a physical mean signed distance and does not
    depend on what else the patch holds); ``"max"`` divides each (sample, channel) map by its largest absolute value
    (loss in [-1, 1]); a positive number divides every map by that many mm.
    ``ignore_channel``: the target's last channel is nnU-Net's ignore mask (``use_ignore_label``); it is dropped and
    ignored voxels are left out of the mean.
    ``parallel``: threads for the distance transform (it runs on the CPU).

    Deep-supervision lists (logits and targets, highest resolution first) are accepted and only entry 0 is used: the
    boundary term is a fine-scale signal, and lower scales would need their own spacing; the Dice+BCE term keeps deep
    supervision.
    """

    def __init__(self, spacing: Sequence[float], normalize: str | float = "none", ignore_channel: bool = False,
                 parallel: int = 1):
        super().__init__()
        if isinstance(normalize, str):
            if normalize not in NORMALIZE_MODES:
                raise ValueError(f"normalize must be one of {NORMALIZE_MODES} or a positive number, got {normalize!r}")
        elif not (float(normalize) > 0 and math.isfinite(float(normalize))):
            raise ValueError(f"normalize scale must be a positive number of mm, got {normalize!r}")
        self.spacing = tuple(float(s) for s in spacing)
        self.normalize = normalize
        self.ignore_channel = ignore_channel
        self.parallel = parallel

    def distance_maps(self, target: torch.Tensor) -> torch.Tensor:
        """Signed distance maps of a (b, c, *spatial) region target, normalised as configured, without gradient."""
        return self.normalized(batch_signed_distance_maps(target, self.spacing, parallel=self.parallel))

    def normalized(self, dist: torch.Tensor) -> torch.Tensor:
        """Maps in mm (b, c, *spatial) -> float32 maps normalised as ``normalize`` says."""
        dist = dist.float()
        if self.normalize == "max":
            scale = dist.abs().flatten(2).amax(dim=2).clamp_min(1e-12)
            dist = dist / scale.view(*scale.shape, *([1] * (dist.ndim - 2)))
        elif not isinstance(self.normalize, str):
            dist = dist / float(self.normalize)
        return dist

    def forward(self, logits, target, distance_maps: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of ``sigmoid(logits) * phi``. ``distance_maps``: the target's maps in mm (b, c, *spatial, as from
        ``batch_signed_distance_maps``, without the ignore channel), else computed here from ``target``."""
        logits = _highest_resolution(logits)
        target = _highest_resolution(target)
        mask = None
        if self.ignore_channel:
            mask = ~target[:, -1:].bool() if target.dtype == torch.bool else target[:, -1:] < 0.5
            target = target[:, :-1]
        if logits.shape != target.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must have the same shape")
        if distance_maps is None:
            dist = self.distance_maps(target)
        elif distance_maps.shape != target.shape:
            raise ValueError(f"distance maps {tuple(distance_maps.shape)} do not match the target's regions "
                             f"{tuple(target.shape)}")
        else:
            dist = self.normalized(distance_maps)
        probs = torch.sigmoid(logits.float())  # float32 also under AMP
        if mask is None:
            return torch.dot(probs.flatten(), dist.flatten()) / dist.numel()  # mean of the product, no temporary
        n_valid = mask.sum() * probs.shape[1]
        return (probs * dist * mask).sum() / n_valid.clamp_min(1)


class BoundaryWeightSchedule:
    """Weight of the boundary term per epoch: ``start`` until ``ramp_start_epoch``, linear to ``end`` at
    ``ramp_end_epoch``, constant after.

    Default 0 -> 0.5 over epochs 0-500 (the first half of nnU-Net's 1000 epochs). Kervadec et al. start from the
    region loss alone and shift weight to the boundary term over about the first half of training (their alpha
    rebalancing), because the boundary term alone cannot find the regions from scratch. Unlike them, nnU-Net's
    Dice+BCE keeps weight 1 throughout (its deep supervision and the cyst-free patches rely on it), and the boundary
    term is added on top. At p = 0.5 a voxel's logit gets ``w * 0.25 * phi`` from the boundary term (weight ``w``) and
    ``w0 * 0.5`` from the full-resolution BCE, whose deep-supervision weight in nnU-Net's 6-stage 3d_fullres U-Net is
    ``w0 = 1 / (1 + 1/2 + 1/4 + 1/8) = 8/15``: equal at ``phi = 2 * w0 / w``, about 2.1 mm at w = 0.5 (4 mm without
    deep supervision). The region loss governs the boundary layer, the boundary term gross errors further away.
    Use ``for_num_epochs`` for short schedules.
    """

    def __init__(self, start: float = 0.0, end: float = 0.5, ramp_start_epoch: int = 0, ramp_end_epoch: int = 500):
        if ramp_end_epoch < ramp_start_epoch:
            raise ValueError(f"ramp_end_epoch {ramp_end_epoch} < ramp_start_epoch {ramp_start_epoch}")
        if not (math.isfinite(start) and math.isfinite(end)):
            raise ValueError("start and end weights must be finite")
        self.start = float(start)
        self.end = float(end)
        self.ramp_start_epoch = int(ramp_start_epoch)
        self.ramp_end_epoch = int(ramp_end_epoch)

    @classmethod
    def for_num_epochs(cls, num_epochs: int, start: float = 0.0, end: float = 0.5, ramp_start_fraction: float = 0.0,
                       ramp_end_fraction: float = 0.5) -> BoundaryWeightSchedule:
        """Same shape scaled to a schedule of ``num_epochs`` epochs (ramp over the given fractions of training)."""
        return cls(start, end, round(ramp_start_fraction * num_epochs), round(ramp_end_fraction * num_epochs))

    def __call__(self, epoch: int) -> float:
        if epoch >= self.ramp_end_epoch:  # first, so that equal ramp epochs give a step to ``end``
            return self.end
        if epoch <= self.ramp_start_epoch:
            return self.start
        t = (epoch - self.ramp_start_epoch) / (self.ramp_end_epoch - self.ramp_start_epoch)
        return self.start + t * (self.end - self.start)

    def __repr__(self) -> str:
        return (f"BoundaryWeightSchedule(start={self.start}, end={self.end}, ramp_start_epoch={self.ramp_start_epoch}, "
                f"ramp_end_epoch={self.ramp_end_epoch})")


class RegionDiceBCEBoundaryLoss(nn.Module):
    """``region_loss(output, target) + boundary_weight * boundary_loss(output, target)``.

    ``region_loss`` is nnU-Net's region loss as built by the trainer (``DC_and_BCE_loss``, possibly wrapped in
    ``DeepSupervisionWrapper``): it gets the full deep-supervision lists; ``boundary_loss`` uses the highest
    resolution only. The trainer sets ``boundary_weight`` each epoch. With weight 0 the boundary term is skipped when
    ``skip_when_zero`` (no term, no maps computed) and ``last_boundary_loss`` is NaN. ``last_region_loss`` and
    ``last_boundary_loss`` give the unweighted components of the last call as floats, for logging (kept as detached
    tensors until read, so the step itself never waits for the device).

    Precomputed maps come as ``distance_maps`` or, for callers that only pass ``(output, target)`` (nnU-Net's
    ``train_step`` / ``validation_step``), through ``given_distance_maps``; without them the maps are computed here.
    """

    def __init__(self, region_loss: nn.Module, boundary_loss: BoundaryLoss, boundary_weight: float = 0.0,
                 skip_when_zero: bool = True):
        super().__init__()
        self.region_loss = region_loss
        self.boundary_loss = boundary_loss
        self.boundary_weight = float(boundary_weight)
        self.skip_when_zero = skip_when_zero
        self._last_region: torch.Tensor | float = math.nan  # detached tensors: no device sync inside the step
        self._last_boundary: torch.Tensor | float = math.nan
        self._given_maps: torch.Tensor | None = None

    @property
    def last_region_loss(self) -> float:
        """Unweighted region loss of the last call (read after the step: on a GPU, reading waits for it)."""
        return float(self._last_region)

    @property
    def last_boundary_loss(self) -> float:
        """Unweighted boundary loss of the last call; NaN when it was skipped."""
        return float(self._last_boundary)

    @contextmanager
    def given_distance_maps(self, distance_maps: torch.Tensor | None) -> Iterator[None]:
        """Calls inside the block use ``distance_maps`` (None: compute them) unless a call passes its own."""
        self._given_maps = distance_maps
        try:
            yield
        finally:
            self._given_maps = None

    def forward(self, output, target, distance_maps: torch.Tensor | None = None) -> torch.Tensor:
        region = self.region_loss(output, target)
        self._last_region = region.detach()
        if self.boundary_weight == 0.0 and self.skip_when_zero:
            self._last_boundary = math.nan
            return region
        maps = distance_maps if distance_maps is not None else self._given_maps
        boundary = self.boundary_loss(output, target, distance_maps=maps)
        self._last_boundary = boundary.detach()
        return region + self.boundary_weight * boundary
