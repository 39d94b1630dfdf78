"""Signed distance maps of binary masks in millimetres, for the boundary loss (Kervadec et al., MIDL 2019).

Convention (used everywhere in this package):

* ``phi(v) = +d(v, M)`` for a voxel ``v`` outside the mask ``M`` and ``phi(v) = -d(v, not M)`` for a voxel inside,
  where ``d`` is the Euclidean distance in mm between voxel *centres* at the given spacing (numpy axis order).
* So the map is negative inside, positive outside and antisymmetric: ``phi(not M) = -phi(M)``.
* The zero level lies on the interface between the two sets: two face-adjacent voxels across the boundary along an
  axis with spacing ``s`` hold ``-s`` and ``+s``, and linear interpolation crosses zero exactly on the face between
  them. No voxel is exactly zero, so every voxel pushes the prediction towards the right side (the perfect
  prediction is the strict minimum of the loss; Kervadec's reference code subtracts one voxel inside, which zeroes the
  inner boundary layer and makes a one-voxel erosion as good as the perfect mask).
* Empty and full masks have no boundary: their map is all zeros (no boundary signal, by definition of this package).
* The array edge is *not* a boundary (``black_border=False``): in a training patch, distances only see the mask
  voxels inside the patch.

Distances come from the ``edt`` package: one multi-label call with labels 1 (outside) and 2 (inside) gives, for every
voxel, the distance to the nearest voxel of the other label, i.e. inside and outside distances in a single pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import edt
import numpy as np
import torch


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim:
        raise ValueError(f"spacing {spacing} has {len(spacing)} values but the mask has {ndim} spatial axes")
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be positive and finite, got {spacing}")
    return spacing


def signed_distance_map(mask: np.ndarray, spacing: Sequence[float], parallel: int = 1) -> np.ndarray:
    """Signed Euclidean distance map (float32, mm) of a binary mask: negative inside, positive outside.

    ``mask``: 1D-3D array, nonzero = inside. ``spacing``: voxel size in mm per numpy axis. ``parallel``: threads
    for ``edt``. Empty or full masks give zeros. See the module docstring for the exact convention.
    """
    mask = np.asarray(mask)
    if mask.ndim not in (1, 2, 3):
        raise ValueError(f"mask must be 1D, 2D or 3D, got shape {mask.shape}")
    spacing = _check_spacing(spacing, mask.ndim)
    inside = mask if mask.dtype == bool else mask != 0
    n_inside = int(np.count_nonzero(inside))
    if n_inside == 0 or n_inside == inside.size:
        return np.zeros(inside.shape, dtype=np.float32)
    # 1 = outside, 2 = inside: every voxel gets the distance to the nearest voxel of the other set (one pass, C order)
    labels = np.add(inside.view(np.uint8), np.uint8(1), order="C", dtype=np.uint8)
    anisotropy = spacing[0] if mask.ndim == 1 else spacing  # edt takes a scalar in 1D
    dist = edt.edt(labels, anisotropy=anisotropy, black_border=False, parallel=parallel)
    dist = np.asarray(dist, dtype=np.float32)
    np.negative(dist, out=dist, where=inside)
    return dist


def sample_signed_distance_maps(inside: np.ndarray, spacing: Sequence[float], parallel: int = 1,
                                out: np.ndarray | None = None) -> np.ndarray:
    """Signed distance maps (float32, mm) of the (c, *spatial) boolean region masks of one sample (into ``out`` if
    given: float32, same shape).

    The per-sample step of ``batch_signed_distance_maps``, also run by the trainer's augmentation workers
    (``kits_plugins.training.transforms.SignedDistanceMapsTransform``), so both give identical maps. A channel equal to
    an earlier channel reuses its map (exact; nested regions often coincide: mass == tumor in a cyst-free patch).
    """
    if inside.ndim < 2:
        raise ValueError(f"masks must be (c, *spatial), got shape {inside.shape}")
    _check_spacing(spacing, inside.ndim - 1)
    out = np.empty(inside.shape, dtype=np.float32) if out is None else out
    for c in range(inside.shape[0]):
        same = next((k for k in range(c) if np.array_equal(inside[k], inside[c])), None)
        out[c] = out[same] if same is not None else signed_distance_map(inside[c], spacing, parallel=parallel)
    return out


def batch_signed_distance_maps(target: torch.Tensor, spacing: Sequence[float], parallel: int = 1) -> torch.Tensor:
    """Signed distance maps of every sample and channel of a (b, c, *spatial) binary target.

    Values > 0.5 (or True) count as inside. Returns float32 on ``target``'s device, without gradient. A channel that
    is absent (all zero) or full in a sample gives all zeros there: no boundary signal, the region loss still trains
    it. ``spacing`` is in the tensor's spatial axis order (for nnU-Net: ``configuration_manager.spacing``).
    Each sample goes through ``sample_signed_distance_maps`` (identical channels share one transform).
    """
    if target.ndim < 3:
        raise ValueError(f"target must be (b, c, *spatial), got shape {tuple(target.shape)}")
    _check_spacing(spacing, target.ndim - 2)
    with torch.no_grad():
        inside = (target if target.dtype == torch.bool else target > 0.5).detach().to("cpu").numpy()
    out = np.empty(inside.shape, dtype=np.float32)
    for b in range(inside.shape[0]):
        sample_signed_distance_maps(inside[b], spacing, parallel=parallel, out=out[b])
    return torch.from_numpy(out).to(target.device, non_blocking=True)
