"""``kits_plugins.losses.distance``: signed distance maps (exact values against brute force, sign convention,
empty and full masks, bad spacing) and the batched maps of a target tensor."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kits_plugins.losses import batch_signed_distance_maps, signed_distance_map
from kits_plugins.losses.distance import sample_signed_distance_maps

torch.set_num_threads(1)

SPACING = (2.5, 0.8, 0.8)


def brute_force_sdm(mask: np.ndarray, spacing) -> np.ndarray:
    """Reference: for each voxel centre, min distance (mm) to a voxel centre of the other set; minus inside."""
    coords = np.indices(mask.shape).reshape(mask.ndim, -1).T * np.asarray(spacing, dtype=np.float64)
    flat = mask.ravel().astype(bool)
    dist = np.sqrt(((coords[:, None, :] - coords[None, :, :]) ** 2).sum(-1))
    to_inside = np.where(flat[None, :], dist, np.inf).min(1)
    to_outside = np.where(~flat[None, :], dist, np.inf).min(1)
    return np.where(flat, -to_outside, to_inside).reshape(mask.shape)


@pytest.mark.parametrize(
    "shape, spacing",
    [
        ((5, 7, 6), SPACING),
        ((6, 5, 7), (0.8, 2.5, 0.8)),
        ((1, 6, 7), SPACING),
        ((4, 1, 9), (3.0, 1.0, 0.5)),
        ((9, 8), (0.7, 1.9)),
        ((13,), (1.3,)),
    ],
)
@pytest.mark.parametrize("fraction", [0.05, 0.4, 0.9])
def test_sdm_equals_brute_force(shape, spacing, fraction):
    rng = np.random.default_rng(hash((shape, fraction)) % 2**32)
    for _ in range(4):
        mask = rng.random(shape) < fraction
        if not mask.any() or mask.all():
            continue
        sdm = signed_distance_map(mask, spacing)
        assert sdm.dtype == np.float32 and sdm.shape == mask.shape
        np.testing.assert_allclose(sdm, brute_force_sdm(mask, spacing), rtol=1e-5, atol=1e-5)


def test_sdm_convention_signs_and_boundary_values():
    mask = np.zeros((4, 5, 6), dtype=np.uint8)
    mask[1:3, 1:4, 2:5] = 1
    before = mask.copy()
    sdm = signed_distance_map(mask, SPACING)
    np.testing.assert_array_equal(mask, before)  # input untouched
    assert (sdm[mask == 1] < 0).all() and (sdm[mask == 0] > 0).all()  # no voxel is exactly zero
    # face neighbours across the boundary hold -s and +s: the interpolated zero lies on the face between them
    assert sdm[1, 2, 2] == pytest.approx(-0.8) and sdm[1, 2, 1] == pytest.approx(0.8)
    assert sdm[0, 2, 3] == pytest.approx(2.5)  # across the slice face: one slice spacing
    # centre voxel of a 2-slice x 3 x 3 box: nearest outside voxel is two in-plane steps (1.6 mm), not the 2.5 mm slice
    assert sdm[1, 2, 3] == pytest.approx(-1.6) and sdm[2, 2, 3] == pytest.approx(-1.6)
    assert sdm[0, 0, 0] == pytest.approx(math.sqrt(2.5**2 + 0.8**2 + 1.6**2), rel=1e-6)
    # antisymmetric: the complement's map is the negative map
    np.testing.assert_allclose(signed_distance_map(mask == 0, SPACING), -sdm, rtol=1e-6)


def test_sdm_accepts_labels_and_non_contiguous_views(ellipsoid):
    mask = ellipsoid((8, 12, 14), (2.5, 4, 5))
    expected = signed_distance_map(mask, SPACING)
    np.testing.assert_array_equal(signed_distance_map(mask.astype(np.int16) * 3, SPACING), expected)
    big = np.zeros((8, 24, 14), dtype=bool)
    big[:, ::2] = mask
    np.testing.assert_array_equal(signed_distance_map(big[:, ::2], SPACING), expected)


@pytest.mark.parametrize("fill", [0, 1])
def test_sdm_empty_and_full_masks_are_zero(fill):
    sdm = signed_distance_map(np.full((3, 4, 5), fill, dtype=np.uint8), SPACING)
    assert sdm.dtype == np.float32 and sdm.shape == (3, 4, 5)
    assert not sdm.any()


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (1.0, 0.0, 1.0), (1.0, -1.0, 1.0), (1.0, float("nan"), 1.0)])
def test_sdm_rejects_bad_spacing(spacing):
    with pytest.raises(ValueError, match="spacing"):
        signed_distance_map(np.ones((2, 2, 2), dtype=bool), spacing)


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.float32, torch.float16])
def test_batch_maps_match_per_channel_and_stay_on_device(dtype, ellipsoid):
    kidney = ellipsoid((8, 12, 14), (3, 5, 6))
    mass = ellipsoid((8, 12, 14), (1.5, 2, 2), center=(4, 6, 9))
    masks = np.stack([np.stack([kidney, mass]), np.stack([kidney, np.zeros_like(mass)])])  # cyst-free 2nd sample
    target = torch.from_numpy(masks).to(dtype)
    maps = batch_signed_distance_maps(target, SPACING)
    assert maps.dtype == torch.float32 and maps.device == target.device and maps.shape == target.shape
    assert not maps.requires_grad
    for b in range(2):
        for c in range(2):
            np.testing.assert_array_equal(maps[b, c].numpy(), signed_distance_map(masks[b, c], SPACING))
    assert not maps[1, 1].any() and maps[0, 1].any()  # absent channel in one sample: zeros there only


def test_batch_maps_reuse_identical_channels_exactly(ellipsoid):
    tumor = ellipsoid((8, 12, 14), (2, 3, 3), center=(4, 6, 8))
    cyst = ellipsoid((8, 12, 14), (1.5, 2, 2), center=(3, 3, 3))
    target = torch.from_numpy(np.stack([np.stack([tumor, tumor]), np.stack([tumor | cyst, tumor])]))
    maps = batch_signed_distance_maps(target, SPACING)
    expected = signed_distance_map(tumor, SPACING)
    for b, c in ((0, 0), (0, 1), (1, 1)):
        np.testing.assert_array_equal(maps[b, c].numpy(), expected)
    np.testing.assert_array_equal(maps[1, 0].numpy(), signed_distance_map(tumor | cyst, SPACING))


def test_batch_maps_reject_wrong_spacing_length():
    with pytest.raises(ValueError, match="spatial axes"):
        batch_signed_distance_maps(torch.zeros(1, 1, 4, 4, 4), (1.0, 1.0))


def test_sample_maps_are_the_batch_maps_of_one_sample(ellipsoid):
    tumor = ellipsoid((8, 12, 14), (2, 3, 3), center=(4, 6, 8))
    cyst = ellipsoid((8, 12, 14), (1.5, 2, 2), center=(3, 3, 3))
    inside = np.stack([tumor | cyst, tumor, tumor])
    maps = sample_signed_distance_maps(inside, SPACING)
    assert maps.dtype == np.float32 and maps.shape == inside.shape
    np.testing.assert_array_equal(maps, batch_signed_distance_maps(torch.from_numpy(inside[None]), SPACING)[0].numpy())
    np.testing.assert_array_equal(maps[2], signed_distance_map(tumor, SPACING))
    out = np.full(inside.shape, np.nan, dtype=np.float32)
    assert sample_signed_distance_maps(inside, SPACING, out=out) is out
    np.testing.assert_array_equal(out, maps)
    with pytest.raises(ValueError, match="spatial axes"):
        sample_signed_distance_maps(inside, SPACING[:2])
    with pytest.raises(ValueError, match="c, \\*spatial"):
        sample_signed_distance_maps(tumor[0, 0], (1.0,))
