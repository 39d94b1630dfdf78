"""Training budgets as voxel-passes: schedules that spend them, split over a cascade's networks."""

from __future__ import annotations

import math

import pytest

from kits_plugins.training.budget import (
    MAX_ITERATIONS_PER_EPOCH,
    Schedule,
    patch_voxel_passes,
    schedule_for_iterations,
    split_budget,
    voxel_passes,
)


def test_voxel_passes_count_batch_and_patch_voxels():
    assert patch_voxel_passes(2, [112, 160, 128]) == 2 * 112 * 160 * 128
    assert voxel_passes(Schedule(3, 25), 2, (4, 5, 6)) == 75 * 2 * 120


@pytest.mark.parametrize("n", [1, 7, 50, 51, 100, 137, 250, 997, 1000, 4096])
def test_schedule_hits_the_count_or_comes_within_half_its_epochs(n):
    s = schedule_for_iterations(n)
    assert 1 <= s.iterations_per_epoch <= MAX_ITERATIONS_PER_EPOCH
    assert abs(s.iterations - n) <= s.epochs / 2
    if n <= MAX_ITERATIONS_PER_EPOCH:
        assert s == Schedule(1, n)


def test_schedule_prefers_an_exact_split():
    assert schedule_for_iterations(100) == Schedule(2, 50)
    assert schedule_for_iterations(102).iterations == 102  # 3 x 34
    with pytest.raises(ValueError):
        schedule_for_iterations(0)


def test_split_budget_follows_the_shares_and_keeps_the_total():
    costs = [1_179_648, 655_360, 655_360]
    budget = 2.0e9
    plan = split_budget(budget, [0.2, 0.4, 0.4], costs)
    spent = [s.iterations * c for s, c in zip(plan, costs)]
    assert abs(sum(spent) - budget) / budget < 0.01
    assert spent[0] / budget == pytest.approx(0.2, abs=0.01)
    assert spent[1] / budget == pytest.approx(0.4, abs=0.01)


def test_split_budget_carries_rounding_to_the_last_network():
    # shares of 420: 131.25, 131.25, 157.5. Alone, the second would round 1.3125 iterations to 1; carried forward
    # it makes up for the first one's 31.25 (round(162.5 / 100) = 2), and the last spends exactly what remains
    costs = [100, 100, 10]
    plan = split_budget(420, [1, 1, 1.2], costs)
    spent = sum(s.iterations * c for s, c in zip(plan, costs))
    assert spent == 420
    assert [s.iterations for s in plan] == [1, 2, 12]


def test_split_budget_refuses_nonsense():
    with pytest.raises(ValueError):
        split_budget(100, [1, 1], [10])
    with pytest.raises(ValueError):
        split_budget(0, [1], [10])
    with pytest.raises(ValueError):
        split_budget(100, [1, -1], [10, 10])
    assert math.isclose(sum(s.iterations for s in split_budget(1000, [1], [10])), 100)
