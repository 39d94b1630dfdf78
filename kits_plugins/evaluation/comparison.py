"""Comparison of per-case metrics: paired (two systems on the same cases: mean difference, bootstrap confidence
interval, Wilcoxon) and unpaired (one system on two sets of cases: difference of means, two-sample bootstrap,
Mann-Whitney).

Pure functions over ``{caseID: value}`` mappings (what ``kits evaluate`` gives per metric column), so a study or a
user's own script compares any two prediction folders the same way. Only cases both systems have, with finite
values on both sides, are paired; how many is returned with the result. Unpaired comparisons use each side's finite
values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

DEFAULT_BOOTSTRAP_SAMPLES = 10_000


@dataclass(frozen=True)
class PairedComparison:
    """``a`` minus ``b`` over the paired cases: the mean, its 95% percentile-bootstrap interval over cases and the
    two-sided paired Wilcoxon signed-rank p-value (None where undefined: no pairs, or every difference zero)."""

    n: int
    mean_diff: float
    ci95: tuple[float, float]
    p_wilcoxon: float | None


def paired_differences(a: Mapping[str, float], b: Mapping[str, float]) -> np.ndarray:
    """``a[c] - b[c]`` for the cases both have, with finite values on both sides, in sorted case order."""
    cases = sorted(c for c in a.keys() & b.keys() if math.isfinite(a[c]) and math.isfinite(b[c]))
    return np.array([a[c] - b[c] for c in cases], dtype=np.float64)


def bootstrap_ci95(diffs: np.ndarray, samples: int = DEFAULT_BOOTSTRAP_SAMPLES, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of ``diffs`` over ``samples`` resamplings of the cases (seeded)."""
    if diffs.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, diffs.size, size=(samples, diffs.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return (float(lo), float(hi))


def wilcoxon_p(diffs: np.ndarray) -> float | None:
    """Two-sided paired Wilcoxon signed-rank p-value (scipy, zero differences dropped as in Wilcoxon's test);
    None when no difference is non-zero."""
    from scipy.stats import wilcoxon

    if not np.any(diffs != 0):
        return None
    return float(wilcoxon(diffs, zero_method="wilcox", alternative="two-sided").pvalue)


def compare_paired(a: Mapping[str, float], b: Mapping[str, float], samples: int = DEFAULT_BOOTSTRAP_SAMPLES,
                   seed: int = 0) -> PairedComparison:
    """Compare system ``a`` against system ``b`` on one metric (per-case values)."""
    d = paired_differences(a, b)
    mean = float(d.mean()) if d.size else math.nan
    return PairedComparison(n=int(d.size), mean_diff=mean, ci95=bootstrap_ci95(d, samples, seed),
                            p_wilcoxon=wilcoxon_p(d))


@dataclass(frozen=True)
class UnpairedComparison:
    """mean(``a``) minus mean(``b``) for two independent sets of cases: the difference, its 95% percentile-bootstrap
    interval (each set resampled on its own) and the two-sided Mann-Whitney U p-value (None where a set is empty or
    every value is equal)."""

    n_a: int
    n_b: int
    mean_diff: float
    ci95: tuple[float, float]
    p_mannwhitney: float | None


def compare_unpaired(a: Mapping[str, float], b: Mapping[str, float], samples: int = DEFAULT_BOOTSTRAP_SAMPLES,
                     seed: int = 0) -> UnpairedComparison:
    """Compare one metric on two different sets of cases (e.g. the same models on real-label and procedural
    phantoms), where no case pairs with another."""
    from scipy.stats import mannwhitneyu

    va = np.array([v for v in a.values() if math.isfinite(v)], dtype=np.float64)
    vb = np.array([v for v in b.values() if math.isfinite(v)], dtype=np.float64)
    if va.size == 0 or vb.size == 0:
        return UnpairedComparison(int(va.size), int(vb.size), math.nan, (math.nan, math.nan), None)
    rng = np.random.default_rng(seed)
    diffs = (va[rng.integers(0, va.size, size=(samples, va.size))].mean(axis=1)
             - vb[rng.integers(0, vb.size, size=(samples, vb.size))].mean(axis=1))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    both = np.concatenate([va, vb])
    p = None if np.all(both == both[0]) else float(mannwhitneyu(va, vb, alternative="two-sided").pvalue)
    return UnpairedComparison(int(va.size), int(vb.size), float(va.mean() - vb.mean()), (float(lo), float(hi)), p)
