"""Paired comparison of two systems' per-case metrics: mean difference, bootstrap confidence interval and Wilcoxon.

Pure functions over ``{caseID: value}`` mappings (what ``kits evaluate`` gives per metric column), so a study or a
user's own script compares any two prediction folders the same way. Only cases both systems have, with finite
values on both sides, are paired; how many is returned with the result.
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
