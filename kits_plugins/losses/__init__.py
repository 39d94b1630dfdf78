"""Losses for the cascade trainers: signed distance maps and the Kervadec boundary loss (stage 223)."""

from kits_plugins.losses.boundary import BoundaryLoss, BoundaryWeightSchedule, RegionDiceBCEBoundaryLoss
from kits_plugins.losses.distance import batch_signed_distance_maps, signed_distance_map

__all__ = [
    "BoundaryLoss",
    "BoundaryWeightSchedule",
    "RegionDiceBCEBoundaryLoss",
    "batch_signed_distance_maps",
    "signed_distance_map",
]
