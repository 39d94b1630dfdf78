"""``kits_plugins.training.transforms``: the boundary loss's signed distance maps computed per sample in the
augmentation pipeline (``SignedDistanceMapsTransform``, ``with_distance_maps``). The binary and perturbed mask channel
and elastic deformation are tested inside the trainer (tests/training/test_trainers.py)."""

from __future__ import annotations

import numpy as np
import torch
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from batchgeneratorsv2.transforms.utils.seg_to_regions import ConvertSegmentationToRegionsTransform

from kits_plugins.losses.distance import sample_signed_distance_maps
from kits_plugins.testing.tiny_datasets import tiny_case
from kits_plugins.training.transforms import DISTANCE_MAPS_KEY, SignedDistanceMapsTransform, with_distance_maps
from kits_plugins.utilities.labels import encode_masses

SPACING = (2.0, 1.5, 1.5)


def _sample(shape=(20, 24, 24)) -> dict:
    ct, labels = tiny_case(shape, np.random.default_rng(0))
    seg = torch.from_numpy(encode_masses(labels)[None].astype(np.int16))  # 1 tumor, 2 cyst
    return {"image": torch.from_numpy(ct[None].astype(np.float32)), "segmentation": seg}


def _regions(ignore_label: int | None = None) -> ComposeTransforms:
    """nnU-Net's last two training transforms for stage 223: regions (+ ignore) and deep-supervision targets."""
    regions = [(1, 2), 1] + ([ignore_label] if ignore_label is not None else [])
    return ComposeTransforms([ConvertSegmentationToRegionsTransform(regions, channel_in_seg=0),
                              DownsampleSegForDSTransform([[1, 1, 1], [0.5, 0.5, 0.5]])])


def test_maps_of_the_full_resolution_regions_after_nnunets_target_transforms():
    pipeline = with_distance_maps(_regions(), SPACING)
    assert isinstance(pipeline.transforms[-1], SignedDistanceMapsTransform)
    out = pipeline(**_sample())
    maps, target = out[DISTANCE_MAPS_KEY], out["segmentation"]
    assert isinstance(target, list) and len(target) == 2  # the target is untouched
    assert maps.dtype == torch.float32 and maps.shape == target[0].shape == (2, 20, 24, 24)
    np.testing.assert_array_equal(maps.numpy(), sample_signed_distance_maps(target[0].numpy(), SPACING))
    assert (maps[0] < 0).any() and (maps[1] < 0).any()  # both regions present: real maps
    assert torch.equal(maps < 0, target[0])  # negative exactly inside


def test_ignore_channel_dropped_and_plain_target():
    sample = _sample()
    sample["segmentation"][0, :4] = 5  # an ignore label, converted by nnU-Net into the last region channel
    out = with_distance_maps(_regions(ignore_label=5), SPACING, ignore_channel=True)(**sample)
    assert out[DISTANCE_MAPS_KEY].shape == (2, 20, 24, 24) and out["segmentation"][0].shape[0] == 3
    np.testing.assert_array_equal(out[DISTANCE_MAPS_KEY].numpy(),
                                  sample_signed_distance_maps(out["segmentation"][0][:2].numpy(), SPACING))
    plain = SignedDistanceMapsTransform(SPACING)(segmentation=torch.ones(1, 3, 4, 5, dtype=torch.bool))
    assert plain[DISTANCE_MAPS_KEY].shape == (1, 3, 4, 5) and not plain[DISTANCE_MAPS_KEY].any()  # full: zeros
    assert DISTANCE_MAPS_KEY not in SignedDistanceMapsTransform(SPACING)(image=torch.zeros(1, 3, 4, 5))
