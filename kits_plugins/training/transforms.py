"""Keep binary input channels binary (stage 223's kidney mask, channel 1) in nnU-Net's pipelines.

nnU-Net's default training augmentation treats every input channel as an image: the spatial transform
interpolates it (trilinear), then Gaussian noise, blur, brightness, contrast, low-resolution simulation
and gamma change its values, so most mask voxels stop being 0 or 1. Two pieces fix this:

- ``keep_channels_binary`` edits nnU-Net's composed training transforms: right after the spatial transform
  the mask channels are thresholded at 0.5 (nearest-like resampling of the mask, aligned with the
  segmentation that the same spatial transform moved) and stashed; right before mirroring the stash is
  written back, so the intensity transforms in between cannot touch them. Mirroring then flips image,
  mask and segmentation together.
- ``BinarizeInputChannels`` wraps the network so that its forward thresholds those channels at 0.5.
  Preprocessing resamples every channel with the image's third-order spline (nnU-Net has one image
  resampling function per configuration), so at inference the mask channel holds spline overshoot near
  its edges; the wrapper makes training and inference see exactly binary masks. It is built by the
  trainer's ``build_network_architecture``, which nnU-Net's predictor also uses.

Train as you infer: at inference the mask channel is the previous stage's prediction, in training it is the ground
truth. ``perturb_channels`` adds nnU-Net's own perturbation of a previous-stage segmentation (what
``nnUNetTrainer.get_training_transforms`` does with ``is_cascaded``: random dilation / erosion / opening / closing,
removal of a random connected component; same classes, probabilities and parameters) on the mask channels, at
nnU-Net's place for it: after the spatial transform, binarisation, mirroring and ``RemoveLabelTansform``.

``SignedDistanceMapsTransform`` computes the boundary loss's signed distance maps of a sample's regions in the
augmentation workers (the surface trainer appends it after the region conversion and deep-supervision downsampling),
so that the main process does not compute them (see ``kits_plugins.training.data_loader`` for the batch key).

``with_elastic_deformation`` turns on the elastic deformation of nnU-Net's ``SpatialTransform`` (off in nnU-Net v2
and in this package's trainers by default; the ``_elastic`` trainer variants use it).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.nnunet.random_binary_operator import ApplyRandomBinaryOperatorTransform
from batchgeneratorsv2.transforms.nnunet.remove_connected_components import (
    RemoveRandomConnectedComponentFromOneHotEncodingTransform,
)
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.pseudo2d import Convert2DTo3DTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTansform
from torch import nn

from kits_plugins.losses.distance import sample_signed_distance_maps

STASH_KEY = "kits_binary_channels"
DISTANCE_MAPS_KEY = "kits_distance_maps"  # the sample's / batch's signed distance maps (mm) of the target's regions

# nnU-Net's perturbation of the previous stage's segmentation, as ``nnUNetTrainer.get_training_transforms`` configures
# it with ``is_cascaded`` (nnunetv2 2.8.1; a test compares these with nnU-Net's own pipeline)
CASCADE_BINARY_OPERATOR_P = 0.4  # per sample: dilation, erosion, opening or closing ...
CASCADE_STREL_SIZE = (1, 8)  # ... with a ball of radius uniform in [1, 8] voxels
CASCADE_REMOVE_COMPONENT_P = 0.2  # per sample: remove one connected component ...
CASCADE_MAX_COMPONENT_SHARE = 0.15  # ... among those under 15% of the patch's voxels
CASCADE_P_PER_LABEL = 0.5  # then per channel (nnU-Net: per label of the previous stage)


class BinarizeChannelsTransform(BasicTransform):
    """Threshold image channels at ``threshold`` (-> 0/1) and, with ``stash``, keep a copy in the data dict."""

    def __init__(self, channels: Sequence[int], threshold: float = 0.5, stash: bool = True):
        super().__init__()
        self.channels = list(channels)
        self.threshold = float(threshold)
        self.stash = stash

    def apply(self, data_dict: dict, **params) -> dict:
        img = data_dict.get("image")
        if img is None or not self.channels:
            return data_dict
        img[self.channels] = (img[self.channels] > self.threshold).to(img.dtype)
        if self.stash:
            data_dict[STASH_KEY] = img[self.channels].clone()
        return data_dict


class RestoreChannelsTransform(BasicTransform):
    """Write the channels stashed by ``BinarizeChannelsTransform`` back into the image (and drop the stash)."""

    def __init__(self, channels: Sequence[int]):
        super().__init__()
        self.channels = list(channels)

    def apply(self, data_dict: dict, **params) -> dict:
        stashed = data_dict.pop(STASH_KEY, None)
        if stashed is not None and data_dict.get("image") is not None:
            data_dict["image"][self.channels] = stashed.to(data_dict["image"].dtype)
        return data_dict


class SignedDistanceMapsTransform(BasicTransform):
    """Signed distance maps (float32, mm) of the full-resolution region target, stored under ``key``.

    Runs last in the pipeline: ``segmentation`` is then nnU-Net's region target (bool, one channel per region, the
    ignore mask last when ``ignore_channel``), or its deep-supervision list (entry 0 is full resolution). The maps are
    those of ``BoundaryLoss`` (``sample_signed_distance_maps``): same regions (ignore channel dropped), same
    ``spacing`` (the configuration's, in the tensor's axis order)."""

    def __init__(self, spacing: Sequence[float], ignore_channel: bool = False, key: str = DISTANCE_MAPS_KEY):
        super().__init__()
        self.spacing = tuple(float(s) for s in spacing)
        self.ignore_channel = ignore_channel
        self.key = key

    def apply(self, data_dict: dict, **params) -> dict:
        seg = data_dict.get("segmentation")
        if seg is None:
            return data_dict
        full = seg[0] if isinstance(seg, list | tuple) else seg
        regions = full[:-1] if self.ignore_channel else full
        inside = (regions if regions.dtype == torch.bool else regions > 0.5).numpy()
        data_dict[self.key] = torch.from_numpy(sample_signed_distance_maps(inside, self.spacing))
        return data_dict


def with_distance_maps(transforms: ComposeTransforms, spacing: Sequence[float],
                       ignore_channel: bool = False) -> ComposeTransforms:
    """``transforms`` followed by ``SignedDistanceMapsTransform`` (after the region conversion and deep-supervision
    downsampling: the maps are those of the final full-resolution target). Returns a new ``ComposeTransforms``."""
    return ComposeTransforms([*transforms.transforms, SignedDistanceMapsTransform(spacing, ignore_channel)])


def _spatial_index(ts: list[BasicTransform]) -> int:
    """Position of the one ``SpatialTransform`` in nnU-Net's training transforms."""
    spatial = [i for i, t in enumerate(ts) if isinstance(t, SpatialTransform)]
    if len(spatial) != 1:
        raise RuntimeError(f"expected exactly one SpatialTransform in nnU-Net's training transforms, found {len(spatial)}")
    return spatial[0]


def keep_channels_binary(
    transforms: ComposeTransforms, channels: Sequence[int], threshold: float = 0.5
) -> ComposeTransforms:
    """nnU-Net's training transforms with ``channels`` binarized after the spatial transform and shielded from
    the intensity transforms (restored before mirroring). Returns a new ``ComposeTransforms``."""
    channels = list(channels)
    if not channels:
        return transforms
    ts = list(transforms.transforms)
    insert_at = _spatial_index(ts) + 1
    if insert_at < len(ts) and isinstance(ts[insert_at], Convert2DTo3DTransform):
        insert_at += 1  # pseudo-2D augmentation: binarize once the image is 3D again
    ts.insert(insert_at, BinarizeChannelsTransform(channels, threshold, stash=True))
    restore_at = next((i for i, t in enumerate(ts) if i > insert_at and isinstance(t, MirrorTransform | RemoveLabelTansform)),
                      len(ts))
    ts.insert(restore_at, RestoreChannelsTransform(channels))
    return ComposeTransforms(ts)


class PerturbChannelsTransform(ComposeTransforms):
    """nnU-Net's cascade perturbation (``CASCADE_*``) of binary image ``channels``; each channel is an independent
    mask (not one one-hot encoding), so each gets its own pair of transforms. Results stay exactly 0/1."""

    def __init__(self, channels: Sequence[int]):
        self.channels = [int(c) for c in channels]
        super().__init__([t for c in self.channels for t in _cascade_perturbation(c)])


def _cascade_perturbation(channel: int) -> list[BasicTransform]:
    """The two random transforms nnU-Net applies to each previous-stage label channel, on image ``channel``."""
    operator = ApplyRandomBinaryOperatorTransform(channel_idx=[channel], strel_size=CASCADE_STREL_SIZE,
                                                  p_per_label=CASCADE_P_PER_LABEL)
    remove = RemoveRandomConnectedComponentFromOneHotEncodingTransform(
        channel_idx=[channel], fill_with_other_class_p=0,
        dont_do_if_covers_more_than_x_percent=CASCADE_MAX_COMPONENT_SHARE, p_per_label=CASCADE_P_PER_LABEL)
    return [RandomTransform(operator, apply_probability=CASCADE_BINARY_OPERATOR_P),
            RandomTransform(remove, apply_probability=CASCADE_REMOVE_COMPONENT_P)]


def perturb_channels(transforms: ComposeTransforms, channels: Sequence[int]) -> ComposeTransforms:
    """``transforms`` with ``PerturbChannelsTransform(channels)`` right after nnU-Net's ``RemoveLabelTansform``, where
    nnU-Net perturbs a cascade's previous-stage segmentation: the mask has then been moved by the spatial transform,
    thresholded (``keep_channels_binary``) and mirrored, so dilation radii are voxels of the patch, as in nnU-Net, and
    nothing interpolates the result. Returns a new ``ComposeTransforms``."""
    if not channels:
        return transforms
    ts = list(transforms.transforms)
    at = next((i for i, t in enumerate(ts) if isinstance(t, RemoveLabelTansform)), None)
    if at is None:
        raise RuntimeError("expected nnU-Net's RemoveLabelTansform in its training transforms")
    ts.insert(at + 1, PerturbChannelsTransform(channels))
    return ComposeTransforms(ts)


@dataclass(frozen=True)
class ElasticDeformation:
    """Elastic deformation of nnU-Net's ``SpatialTransform``: probability per sample, smoothing scale (fraction of the
    patch edge, one per sample) and maximum displacement as a fraction of that scale in voxels (batchgenerators'
    ``augment_spatial_2`` rule, which batchgeneratorsv2's deformation follows)."""

    p: float = 0.0
    scale: tuple[float, float] = (0.0, 0.25)
    magnitude: tuple[float, float] = (0.125, 0.5)


class ElasticMagnitude:
    """``SpatialTransform``'s ``elastic_deform_magnitude`` as a callable: uniform in ``fraction`` x sigma voxels, sigma
    = deformation scale x patch edge. batchgeneratorsv2's default, (0, 0.2) voxels, barely moves anything."""

    def __init__(self, fraction: tuple[float, float]):
        self.fraction = fraction

    def __call__(self, *, patch_size: Sequence[int], dim: int, deformation_scale: float, **_: object) -> float:
        return float(np.random.uniform(*self.fraction) * deformation_scale * patch_size[dim])


def with_elastic_deformation(transforms: ComposeTransforms, elastic: ElasticDeformation) -> ComposeTransforms:
    """``transforms`` with a copy of their ``SpatialTransform`` deforming elastically as ``elastic`` says (nnU-Net v2
    builds it with ``p_elastic_deform=0``). Returns a new ``ComposeTransforms``."""
    ts = list(transforms.transforms)
    i = _spatial_index(ts)
    spatial = copy.copy(cast(SpatialTransform, ts[i]))
    spatial.p_elastic_deform = elastic.p
    spatial.elastic_deform_scale = elastic.scale
    spatial.elastic_deform_magnitude = ElasticMagnitude(elastic.magnitude)
    spatial.p_synchronize_def_scale_across_axes = 1  # one scale per sample, as augment_spatial_2
    ts[i] = spatial
    return ComposeTransforms(ts)


def binarize_first(transforms: ComposeTransforms, channels: Sequence[int], threshold: float = 0.5) -> ComposeTransforms:
    """``transforms`` preceded by a plain threshold of ``channels`` (validation pipeline: no augmentation)."""
    if not channels:
        return transforms
    return ComposeTransforms([BinarizeChannelsTransform(channels, threshold, stash=False), *transforms.transforms])


class BinarizeInputChannels(nn.Module):
    """Wraps a segmentation network: input ``channels`` are thresholded at ``threshold`` before the forward pass.

    Exposes ``decoder`` so nnU-Net's ``set_deep_supervision_enabled`` keeps working.
    """

    def __init__(self, network: nn.Module, channels: Sequence[int], threshold: float = 0.5):
        super().__init__()
        self.network = network
        self.channels = tuple(int(c) for c in channels)
        self.threshold = float(threshold)

    @property
    def decoder(self) -> nn.Module:
        return cast(nn.Module, self.network.decoder)  # a submodule (Module.__getattr__ is typed Tensor | Module)

    def forward(self, x: torch.Tensor):
        if self.channels:
            x = x.clone()
            idx = list(self.channels)
            x[:, idx] = (x[:, idx] > self.threshold).to(x.dtype)
        return self.network(x)
