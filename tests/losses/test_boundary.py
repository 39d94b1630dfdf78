"""``kits_plugins.losses.boundary``: the Kervadec boundary loss (minimum, gradient direction, edge cases, deep
supervision, normalisation, ignore channel), its weight schedule and the region + boundary composition."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from scipy import ndimage

from kits_plugins.losses import (
    BoundaryLoss,
    BoundaryWeightSchedule,
    RegionDiceBCEBoundaryLoss,
    batch_signed_distance_maps,
    signed_distance_map,
)

torch.set_num_threads(1)

SPACING = (2.5, 0.8, 0.8)


def logits_of(mask: np.ndarray, scale: float = 10.0) -> torch.Tensor:
    """(1, 1, *spatial) logits +scale inside, -scale outside."""
    return torch.from_numpy(np.where(mask, scale, -scale).astype(np.float32))[None, None]


def target_of(*masks: np.ndarray) -> torch.Tensor:
    """(1, c, *spatial) float target from one mask per channel."""
    return torch.from_numpy(np.stack(masks).astype(np.float32))[None]


def test_perfect_prediction_is_the_minimum(ellipsoid):
    gt = ellipsoid()
    loss = BoundaryLoss(SPACING)
    target = target_of(gt)
    perfect = loss(logits_of(gt), target).item()
    struct = ndimage.generate_binary_structure(3, 1)
    others = {
        "dilated": ndimage.binary_dilation(gt, struct),
        "eroded": ndimage.binary_erosion(gt, struct),
        "empty": np.zeros_like(gt),
        "full": np.ones_like(gt),
    }
    for axis in range(3):
        for step in (-1, 1):
            others[f"shift{axis}{step:+d}"] = np.roll(gt, step, axis=axis)
    for name, pred in others.items():
        assert loss(logits_of(pred), target).item() > perfect + 1e-3, name
    # the value is the mean of the map over the inside (sigmoid(+10) ~ 1, sigmoid(-10) ~ 0)
    sdm = signed_distance_map(gt, SPACING)
    assert perfect == pytest.approx(sdm[gt].sum() / gt.size, rel=1e-3)


def test_gradient_grows_a_too_small_prediction(ellipsoid):
    gt = ellipsoid()
    pred = ndimage.binary_erosion(gt, iterations=2)
    ring = gt & ~pred  # inside the ground truth, outside the prediction
    logits = logits_of(pred).requires_grad_(True)
    BoundaryLoss(SPACING)(logits, target_of(gt)).backward()
    grad = logits.grad[0, 0].numpy()
    assert (grad[ring] < 0).all()  # gradient descent raises these logits
    assert (grad[gt] < 0).all() and (grad[~gt] > 0).all()
    # a few plain gradient steps from a soft, too-small start grow the predicted region towards the ground truth
    logits = logits_of(pred, scale=2.0).requires_grad_(True)
    optimizer = torch.optim.SGD([logits], lr=20.0 * gt.size)
    for _ in range(10):
        optimizer.zero_grad()
        BoundaryLoss(SPACING)(logits, target_of(gt)).backward()
        optimizer.step()
    grown = logits.detach()[0, 0].numpy() > 0
    assert grown[ring].sum() > 0.5 * ring.sum()
    assert not (grown & ~gt).any()


@pytest.mark.parametrize("normalize", ["none", "max", 10.0])
def test_no_nan_on_empty_or_full_targets(normalize):
    loss = BoundaryLoss(SPACING, normalize=normalize)
    for fill in (0.0, 1.0):
        target = torch.full((2, 2, 4, 5, 6), fill)
        logits = torch.randn(2, 2, 4, 5, 6, requires_grad=True)
        value = loss(logits, target)
        value.backward()
        assert value.item() == 0.0
        assert torch.isfinite(logits.grad).all() and not logits.grad.any()


def test_channel_absent_in_one_sample(ellipsoid):
    gt = ellipsoid((8, 12, 14), (3, 5, 6))
    target = torch.from_numpy(np.stack([np.stack([gt, gt]), np.stack([gt, np.zeros_like(gt)])]).astype(np.float32))
    logits = torch.randn(target.shape, requires_grad=True)
    value = BoundaryLoss(SPACING)(logits, target)
    value.backward()
    maps = batch_signed_distance_maps(target, SPACING)
    assert value.item() == pytest.approx((torch.sigmoid(logits.detach()) * maps).mean().item(), rel=1e-5)
    assert torch.isfinite(logits.grad).all() and not logits.grad[1, 1].any() and logits.grad[1, 0].any()


def test_deep_supervision_lists_use_highest_resolution_only(ellipsoid):
    gt = ellipsoid((8, 12, 14), (3, 5, 6))
    target = target_of(gt)
    logits = torch.randn(target.shape)
    loss = BoundaryLoss(SPACING)
    expected = loss(logits, target)
    low_logits, low_target = torch.randn(1, 1, 4, 6, 7), torch.ones(1, 1, 4, 6, 7)  # anything: ignored
    assert loss([logits, low_logits], [target, low_target]).item() == expected.item()
    assert loss((logits, low_logits), (target, low_target)).item() == expected.item()
    with pytest.raises(ValueError, match="same shape"):
        loss(low_logits, target)


def test_normalize_modes(ellipsoid):
    gt = ellipsoid((8, 12, 14), (3, 5, 6))
    target = torch.from_numpy(np.stack([gt, np.zeros_like(gt)]).astype(np.float32))[None]
    raw = BoundaryLoss(SPACING).distance_maps(target)
    by_max = BoundaryLoss(SPACING, normalize="max").distance_maps(target)
    assert by_max[0, 0].abs().max().item() == pytest.approx(1.0)
    torch.testing.assert_close(by_max[0, 0], raw[0, 0] / raw[0, 0].abs().max())
    assert not by_max[0, 1].any()  # empty channel: still zeros, no NaN
    torch.testing.assert_close(BoundaryLoss(SPACING, normalize=5.0).distance_maps(target), raw / 5.0)
    for bad in ("mean", 0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="normalize"):
            BoundaryLoss(SPACING, normalize=bad)


def test_ignore_channel_is_dropped_and_masked(ellipsoid):
    gt = ellipsoid((8, 12, 14), (3, 5, 6))
    ignore = np.zeros_like(gt)
    ignore[:, :, :3] = True
    target = torch.from_numpy(np.stack([gt, ignore]).astype(np.float32))[None]
    logits = torch.randn(1, 1, *gt.shape)
    value = BoundaryLoss(SPACING, ignore_channel=True)(logits, target).item()
    product = torch.sigmoid(logits[0, 0]).numpy() * signed_distance_map(gt, SPACING)
    assert value == pytest.approx(product[~ignore].mean(), rel=1e-5)


def test_weight_schedule():
    schedule = BoundaryWeightSchedule(start=0.1, end=0.5, ramp_start_epoch=10, ramp_end_epoch=20)
    assert [schedule(e) for e in (0, 10, 15, 20, 100)] == pytest.approx([0.1, 0.1, 0.3, 0.5, 0.5])
    default = BoundaryWeightSchedule()
    assert default(0) == 0.0 and default(250) == pytest.approx(0.25) and default(999) == 0.5
    short = BoundaryWeightSchedule.for_num_epochs(10)
    assert (short.ramp_start_epoch, short.ramp_end_epoch) == (0, 5) and short(5) == 0.5
    step = BoundaryWeightSchedule(start=0.0, end=1.0, ramp_start_epoch=3, ramp_end_epoch=3)
    assert (step(2), step(3), step(4)) == (0.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        BoundaryWeightSchedule(ramp_start_epoch=5, ramp_end_epoch=4)
    assert "end=0.5" in repr(default)


def _nnunet_region_loss(deep_supervision: bool):
    loss = DC_and_BCE_loss({}, {"batch_dice": True, "do_bg": True, "smooth": 1e-5, "ddp": False},
                           use_ignore_label=False, dice_class=MemoryEfficientSoftDiceLoss)
    return DeepSupervisionWrapper(loss, [0.6, 0.4]) if deep_supervision else loss


@pytest.mark.parametrize("deep_supervision", [True, False])
def test_region_plus_boundary_composition(deep_supervision, ellipsoid):
    gt = ellipsoid((8, 12, 14), (3, 5, 6))
    target = torch.from_numpy(np.stack([gt, ndimage.binary_erosion(gt, iterations=2)]).astype(np.float32))[None]
    target = target.repeat(2, 1, 1, 1, 1)
    logits = torch.randn(target.shape, requires_grad=True)
    low_target = target[:, :, ::2, ::2, ::2]
    low_logits = torch.randn(low_target.shape, requires_grad=True)
    output, tgt = ([logits, low_logits], [target, low_target]) if deep_supervision else (logits, target)

    region, boundary = _nnunet_region_loss(deep_supervision), BoundaryLoss(SPACING)
    combined = RegionDiceBCEBoundaryLoss(region, boundary)
    combined.boundary_weight = 0.25
    value = combined(output, tgt)
    expected = region(output, tgt) + 0.25 * boundary(logits, target)
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    assert combined.last_region_loss == pytest.approx(region(output, tgt).item(), rel=1e-6)
    assert combined.last_boundary_loss == pytest.approx(boundary(logits, target).item(), rel=1e-6)
    value.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.any()
    if deep_supervision:
        assert low_logits.grad is not None and low_logits.grad.any()  # Dice+BCE keeps deep supervision

    combined.boundary_weight = 0.0
    assert combined(output, tgt).item() == pytest.approx(region(output, tgt).item(), rel=1e-6)
    assert math.isnan(combined.last_boundary_loss)
    pickle.loads(pickle.dumps(combined))  # trainers and their losses must survive nnU-Net's spawned workers


# ------------------------------------------------------------------------ precomputed maps (the trainer's workers)
@pytest.mark.parametrize("normalize", ["none", "max", 4.0])
@pytest.mark.parametrize("ignore", [False, True])
def test_precomputed_maps_equal_the_loss_own_maps(normalize, ignore, ellipsoid):
    gt = ellipsoid((8, 12, 14), (3, 5, 6))
    regions = np.stack([gt, ndimage.binary_erosion(gt, iterations=2)])
    channels = [*regions, np.pad(np.ones((8, 12, 3), bool), ((0, 0), (0, 0), (0, 11)))] if ignore else list(regions)
    target = torch.from_numpy(np.stack(channels))[None].repeat(2, 1, 1, 1, 1)
    loss = BoundaryLoss(SPACING, normalize=normalize, ignore_channel=ignore)
    maps = batch_signed_distance_maps(target[:, :2], SPACING)  # what the workers hand over: mm, no ignore channel
    logits = torch.randn(2, 2, *gt.shape, requires_grad=True)
    own = loss(logits, target)
    (grad_own,) = torch.autograd.grad(own, logits)
    given = loss(logits, target, distance_maps=maps)
    (grad_given,) = torch.autograd.grad(given, logits)
    assert given.item() == own.item() != 0.0
    assert torch.equal(grad_given, grad_own)
    with pytest.raises(ValueError, match="distance maps"):
        loss(logits, target, distance_maps=maps[:, :1])


def test_composition_uses_given_maps_only_inside_the_block(ellipsoid):
    gt = ellipsoid((8, 12, 14), (3, 5, 6))
    target = target_of(gt, ndimage.binary_erosion(gt, iterations=2))
    logits = torch.randn(target.shape)
    combined = RegionDiceBCEBoundaryLoss(_nnunet_region_loss(False), BoundaryLoss(SPACING), boundary_weight=0.5)
    own = combined(logits, target).item()
    b_own = combined.last_boundary_loss
    maps = batch_signed_distance_maps(target, SPACING)
    with combined.given_distance_maps(maps):
        assert combined(logits, target).item() == own
        assert combined(logits, target, distance_maps=2 * maps).item() == pytest.approx(own + 0.5 * b_own, rel=1e-6)
    with pytest.raises(RuntimeError), combined.given_distance_maps(2 * maps):
        raise RuntimeError
    assert combined(logits, target).item() == own  # the block's maps are gone, also after an error
    assert isinstance(combined.last_region_loss, float) and isinstance(combined.last_boundary_loss, float)


def test_crossover_with_nnunet_deep_supervision_is_about_2_mm():
    """At p = 0.5 the full-resolution BCE (nnU-Net's deep-supervision weight 8/15 for a 6-stage U-Net) and the
    boundary term at weight 0.5 pull equally on a logit at |phi| = 2 * (8/15) / 0.5 = 2.13 mm (docs/losses.md)."""
    weights = np.array([1 / 2**i for i in range(5)])  # nnUNetTrainer._build_loss: 5 outputs, lowest one dropped
    weights[-1] = 0
    weights /= weights.sum()
    assert weights[0] == pytest.approx(8 / 15)
    gt = np.zeros((1, 1, 40), bool)
    gt[..., :20] = True  # half-space: |phi| = 0.25, 0.5, ... mm at 0.25 mm spacing
    spacing = (1.0, 1.0, 0.25)
    target = target_of(gt)
    logits = torch.zeros(target.shape, requires_grad=True)  # p = 0.5 everywhere
    low = [torch.zeros(1, 1, 1, 1, 40 // 2**i) for i in range(1, 5)]  # the other outputs: no gradient to logits
    bce = DeepSupervisionWrapper(torch.nn.BCEWithLogitsLoss(), weights.tolist())
    (g_bce,) = torch.autograd.grad(bce([logits, *low], [target, *[t.round() for t in low]]), logits)
    (g_boundary,) = torch.autograd.grad(0.5 * BoundaryLoss(spacing)(logits, target), logits)
    phi = np.abs(signed_distance_map(gt, spacing)).ravel()
    ratio = (g_boundary.abs() / g_bce.abs()).flatten().numpy()
    np.testing.assert_allclose(ratio, phi / (2 * (8 / 15) / 0.5), rtol=1e-5)
    assert (ratio[phi < 2.1] < 1).all() and (ratio[phi > 2.15] > 1).all()
