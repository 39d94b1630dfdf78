"""``kits_plugins.synthetic.kits23_statistics``: the distributions procedural phantoms draw from are the measured
ones (``benchmarks/results/anatomy_stats.json``), and drawing from them gives those quantiles."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from kits_plugins.synthetic import kits23_statistics as S

STATS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "anatomy_stats.json"
ROUNDING = {"kidney_height_fraction": 1e-3, "kidney_tilt_deg": 0.1}


def test_summaries_equal_the_committed_measurement():
    measured = json.loads(STATS.read_text())
    for name, summary in S.SUMMARIES.items():
        for key, value in summary.items():
            if not np.isnan(value):
                assert value == pytest.approx(measured["summary"][name][key], abs=ROUNDING.get(name, 0.01)), (name, key)
    per_case = measured["per_case"]
    assert S.KIDNEY_COUNTS == dict(Counter(len(c["kidneys"]) for c in per_case))
    assert S.TUMOR_COUNTS == dict(Counter(len(c["tumors"]) for c in per_case))
    assert S.CYST_COUNTS == dict(Counter(len(c["cysts"]) for c in per_case))


def test_quantiles_draw_their_distribution():
    q = S.Z_EXTENT_MM
    rng = np.random.default_rng(0)
    draws = np.array([q.sample(rng) for _ in range(20000)])
    assert draws.min() >= 213.0 and draws.max() <= 700.0
    assert np.percentile(draws, [10, 50, 90]) == pytest.approx([251.25, 437.5, 513.5], abs=4.0)
    assert S.KIDNEY_TILT_DEG.value(0.0) == 16.2 and S.KIDNEY_TILT_DEG.value(1.0) == 38.7  # central range: no tails
    with pytest.raises(ValueError, match="rise from 0 to 1"):
        S.Quantiles(((0.0, 1.0), (0.5, 2.0)))


def test_counts_are_drawn_with_their_frequencies():
    rng = np.random.default_rng(1)
    draws = Counter(S.sample_count(rng, S.TUMOR_COUNTS) for _ in range(5200))
    assert set(draws) == {1, 2, 3}
    assert draws[1] / 5200 == pytest.approx(23 / 26, abs=0.02)
