"""Paired comparisons: mean difference, bootstrap interval and Wilcoxon over the cases both systems have."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import mannwhitneyu, wilcoxon

from kits_plugins.evaluation.comparison import bootstrap_ci95, compare_paired, compare_unpaired, paired_differences


def test_pairs_only_shared_finite_cases_in_case_order():
    a = {"c2": 0.9, "c1": 0.8, "c3": math.nan, "c4": 0.5}
    b = {"c1": 0.7, "c2": 0.95, "c3": 0.6, "c5": 0.1}
    np.testing.assert_allclose(paired_differences(a, b), [0.1, -0.05])


def test_compare_against_scipy_and_numpy():
    rng = np.random.default_rng(3)
    b = {f"case_{i:05d}": float(v) for i, v in enumerate(rng.uniform(0.5, 0.9, 12))}
    a = {c: v + float(rng.normal(0.03, 0.02)) for c, v in b.items()}
    r = compare_paired(a, b, samples=4000, seed=1)
    d = np.array([a[c] - b[c] for c in sorted(a)])
    assert r.n == 12
    assert r.mean_diff == pytest.approx(d.mean())
    assert r.p_wilcoxon == pytest.approx(wilcoxon(d).pvalue)
    assert r.ci95[0] < r.mean_diff < r.ci95[1]
    # the interval of a mean over 12 cases is about +-1.96 standard errors wide
    se = d.std(ddof=1) / math.sqrt(12)
    assert r.ci95[1] - r.ci95[0] == pytest.approx(2 * 1.96 * se, rel=0.25)
    assert compare_paired(a, b, samples=4000, seed=1) == r  # seeded
    assert compare_paired(a, b, samples=4000, seed=2).ci95 != r.ci95


def test_constant_and_zero_differences():
    b = {"x": 0.5, "y": 0.6, "z": 0.7}
    r = compare_paired({c: v + 0.1 for c, v in b.items()}, b)
    assert r.ci95 == pytest.approx((0.1, 0.1))
    zero = compare_paired(b, dict(b))
    assert zero.mean_diff == 0.0 and zero.p_wilcoxon is None


def test_no_pairs():
    r = compare_paired({"a": 1.0}, {"b": 1.0})
    assert r.n == 0 and math.isnan(r.mean_diff) and all(math.isnan(v) for v in r.ci95) and r.p_wilcoxon is None
    assert all(math.isnan(v) for v in bootstrap_ci95(np.array([])))


def test_compare_unpaired_against_scipy_and_numpy():
    """Two different sets of cases (names never matched): difference of means, Mann-Whitney as scipy gives it, and
    an interval about +-1.96 standard errors of a difference of two independent means wide."""
    rng = np.random.default_rng(5)
    a = {f"real_{i}": float(v) for i, v in enumerate(rng.normal(0.70, 0.10, 26))}
    b = {f"case_{i:05d}": float(v) for i, v in enumerate(rng.normal(0.80, 0.10, 24))}
    b["case_99999"] = math.nan  # dropped, like an unfinished metric
    r = compare_unpaired(a, b, samples=4000, seed=1)
    va, vb = np.array(list(a.values())), np.array([v for v in b.values() if math.isfinite(v)])
    assert (r.n_a, r.n_b) == (26, 24)
    assert r.mean_diff == pytest.approx(va.mean() - vb.mean())
    assert r.p_mannwhitney == pytest.approx(mannwhitneyu(va, vb, alternative="two-sided").pvalue)
    assert r.ci95[0] < r.mean_diff < r.ci95[1]
    se = math.sqrt(va.var(ddof=1) / va.size + vb.var(ddof=1) / vb.size)
    assert r.ci95[1] - r.ci95[0] == pytest.approx(2 * 1.96 * se, rel=0.25)
    assert compare_unpaired(a, b, samples=4000, seed=1) == r  # seeded
    shifted = compare_unpaired({c: v + 0.1 for c, v in a.items()}, b, samples=4000, seed=1)
    assert shifted.mean_diff == pytest.approx(r.mean_diff + 0.1)
    assert shifted.ci95 == pytest.approx((r.ci95[0] + 0.1, r.ci95[1] + 0.1))


def test_compare_unpaired_degenerate_sets():
    same = compare_unpaired({"a": 0.5, "b": 0.5}, {"c": 0.5})
    assert same.mean_diff == 0.0 and same.ci95 == (0.0, 0.0) and same.p_mannwhitney is None
    empty = compare_unpaired({"a": math.nan}, {"c": 0.5})
    assert (empty.n_a, empty.n_b) == (0, 1) and math.isnan(empty.mean_diff) and empty.p_mannwhitney is None
