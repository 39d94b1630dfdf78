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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.pseudo2d import Convert2DTo3DTransform
from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTansform
from torch import nn

STASH_KEY = "kits_binary_channels"


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


def keep_channels_binary(
    transforms: ComposeTransforms, channels: Sequence[int], threshold: float = 0.5
) -> ComposeTransforms:
    """nnU-Net's training transforms with ``channels`` binarized after the spatial transform and shielded from
    the intensity transforms (restored before mirroring). Returns a new ``ComposeTransforms``."""
    channels = list(channels)
    if not channels:
        return transforms
    ts = list(transforms.transforms)
    spatial = [i for i, t in enumerate(ts) if isinstance(t, SpatialTransform)]
    if len(spatial) != 1:
        raise RuntimeError(f"expected exactly one SpatialTransform in nnU-Net's training transforms, found {len(spatial)}")
    insert_at = spatial[0] + 1
    if insert_at < len(ts) and isinstance(ts[insert_at], Convert2DTo3DTransform):
        insert_at += 1  # pseudo-2D augmentation: binarize once the image is 3D again
    ts.insert(insert_at, BinarizeChannelsTransform(channels, threshold, stash=True))
    restore_at = next((i for i, t in enumerate(ts) if i > insert_at and isinstance(t, MirrorTransform | RemoveLabelTansform)),
                      len(ts))
    ts.insert(restore_at, RestoreChannelsTransform(channels))
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
