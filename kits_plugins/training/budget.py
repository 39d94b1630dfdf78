"""Training compute as network voxel-passes, and schedules that spend a given budget.

A voxel-pass is one voxel of one training patch through one forward and backward pass: a training of E epochs of
I iterations with batch size B and patch P costs ``E * I * B * prod(P)``. Comparing systems at equal voxel-passes
(not epochs) keeps a three-network cascade from getting three times the training of one network.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: iterations per epoch a schedule aims for (nnU-Net's 250 is for GPUs; CPU studies use fewer, more frequent epochs)
MAX_ITERATIONS_PER_EPOCH = 50


@dataclass(frozen=True)
class Schedule:
    """Epochs x training iterations per epoch."""

    epochs: int
    iterations_per_epoch: int

    @property
    def iterations(self) -> int:
        return self.epochs * self.iterations_per_epoch


def patch_voxel_passes(batch_size: int, patch_size: Sequence[int]) -> int:
    """Voxel-passes of one training iteration."""
    return int(batch_size) * math.prod(int(p) for p in patch_size)


def voxel_passes(schedule: Schedule, batch_size: int, patch_size: Sequence[int]) -> int:
    return schedule.iterations * patch_voxel_passes(batch_size, patch_size)


def schedule_for_iterations(iterations: int, max_per_epoch: int = MAX_ITERATIONS_PER_EPOCH) -> Schedule:
    """About ``iterations`` training iterations in equal epochs of at most ``max_per_epoch``: the fewest epochs (up
    to twice the minimum) that hit the count exactly, else the closest product (off by at most half the epochs)."""
    if iterations < 1:
        raise ValueError(f"a schedule needs at least one iteration, got {iterations}")
    epochs = math.ceil(iterations / max_per_epoch)
    best: Schedule | None = None
    for e in range(epochs, 2 * epochs + 1):
        i = round(iterations / e)
        if not 1 <= i <= max_per_epoch:
            continue
        candidate = Schedule(e, i)
        if best is None or abs(candidate.iterations - iterations) < abs(best.iterations - iterations):
            best = candidate
        if best.iterations == iterations:
            break
    assert best is not None  # e = epochs always gives 1 <= i <= max_per_epoch
    return best


def split_budget(budget: float, shares: Sequence[float], iteration_costs: Sequence[int]) -> list[Schedule]:
    """Schedules for networks that share ``budget`` voxel-passes in ``shares`` (normalised), network k costing
    ``iteration_costs[k]`` voxel-passes per iteration. Rounding to whole iterations is carried forward, so the
    last network absorbs what the earlier ones over- or under-spent and the total stays within half an iteration
    of the last network of ``budget``."""
    if len(shares) != len(iteration_costs) or not shares:
        raise ValueError("one share and one iteration cost per network")
    if budget <= 0 or any(s <= 0 for s in shares) or any(c <= 0 for c in iteration_costs):
        raise ValueError("budget, shares and iteration costs must be positive")
    total_share = float(sum(shares))
    out: list[Schedule] = []
    spent = 0.0
    planned = 0.0
    for share, cost in zip(shares, iteration_costs):
        planned += budget * share / total_share
        schedule = schedule_for_iterations(max(1, round((planned - spent) / cost)))
        out.append(schedule)
        spent += schedule.iterations * cost
    return out
