"""What procedural phantoms draw their anatomy from: distributions measured on real KiTS23 label maps.

Every number here is a summary of ``benchmarks/results/anatomy_stats.json`` (``python benchmarks/anatomy_stats.py``
on the 26 label maps in ``../shared/kits23/labels``): quantiles of a continuous statistic and frequencies of a count,
never a label map. ``tests/synthetic/test_kits23_statistics.py`` checks that they equal that file.

Kidney sizes, tilt and position are measured on kidney + masses; a procedural kidney is drawn without its masses
(they are added after), so those draw from the central 10-90% range only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Quantiles:
    """A distribution given by quantiles ``((probability, value), ...)`` (ascending, from 0 to 1), drawn by
    linear interpolation of its inverse cumulative distribution."""

    knots: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        p = [k[0] for k in self.knots]
        if p[0] != 0.0 or p[-1] != 1.0 or any(b <= a for a, b in zip(p, p[1:])):
            raise ValueError(f"quantile probabilities must rise from 0 to 1, got {p}")

    def value(self, u: float) -> float:
        """The value at cumulative probability ``u``."""
        return float(np.interp(u, [k[0] for k in self.knots], [k[1] for k in self.knots]))

    def sample(self, rng: np.random.Generator) -> float:
        return self.value(float(rng.random()))


def full_range(s: dict) -> Quantiles:
    """min, 10th percentile, median, 90th percentile, max of a summary (``statistics.anatomy.describe``)."""
    return Quantiles(((0.0, s["min"]), (0.1, s["p10"]), (0.5, s["median"]), (0.9, s["p90"]), (1.0, s["max"])))


def central_range(s: dict) -> Quantiles:
    """10th percentile, median and 90th percentile of a summary as the whole distribution (no tails)."""
    return Quantiles(((0.0, s["p10"]), (0.5, s["median"]), (1.0, s["p90"])))


def _summary(p10: float, median: float, p90: float, lo: float = np.nan, hi: float = np.nan) -> dict:
    return {"min": lo, "p10": p10, "median": median, "p90": p90, "max": hi}


# anatomy_stats.json "summary" (rounded to 0.01 mm, 0.1 degree, 0.001 of the scan)
SUMMARIES = {
    "z_extent_mm": _summary(251.25, 437.5, 513.5, 213.0, 700.0),
    "kidney_height_fraction": _summary(0.316, 0.381, 0.650, 0.220, 0.719),
    "kidney_height_gap_mm": _summary(-14.76, -0.84, 22.03, -44.70, 25.93),
    "kidney_length_mm": _summary(107.84, 126.40, 151.25),
    "kidney_width_mm": _summary(62.13, 68.81, 96.97),
    "kidney_thickness_mm": _summary(44.83, 56.98, 70.93),
    "kidney_tilt_deg": _summary(16.2, 26.2, 38.7),
    "kidney_lateral_offset_mm": _summary(58.24, 74.87, 95.25),
    "kidney_posterior_offset_mm": _summary(9.38, 44.03, 59.79),
}

#: superior-inferior extent of a scan (mm)
Z_EXTENT_MM = full_range(SUMMARIES["z_extent_mm"])
#: height of a kidney's centroid in its scan, as the fraction of the extent above it (0: top slice)
KIDNEY_HEIGHT_FRACTION = full_range(SUMMARIES["kidney_height_fraction"])
#: right kidney's centroid below the left one's (mm; negative: the right one is higher)
KIDNEY_HEIGHT_GAP_MM = full_range(SUMMARIES["kidney_height_gap_mm"])
#: principal-axis lengths of a kidney (mm): longest, middle, shortest
KIDNEY_LENGTH_MM = central_range(SUMMARIES["kidney_length_mm"])
KIDNEY_WIDTH_MM = central_range(SUMMARIES["kidney_width_mm"])
KIDNEY_THICKNESS_MM = central_range(SUMMARIES["kidney_thickness_mm"])
#: angle of a kidney's long axis to the body's long axis (degrees)
KIDNEY_TILT_DEG = central_range(SUMMARIES["kidney_tilt_deg"])
#: kidney centroid from the midline (mm)
KIDNEY_LATERAL_OFFSET_MM = central_range(SUMMARIES["kidney_lateral_offset_mm"])
#: kidney centroid behind the centre of the scan's field of view (mm)
KIDNEY_POSTERIOR_OFFSET_MM = central_range(SUMMARIES["kidney_posterior_offset_mm"])

#: cases per number of kidneys, tumors and cysts among the 26 (anatomy_stats.json "per_case")
KIDNEY_COUNTS = {1: 1, 2: 25}
TUMOR_COUNTS = {1: 23, 2: 1, 3: 2}
CYST_COUNTS = {0: 13, 1: 4, 2: 3, 3: 3, 8: 1, 10: 1, 19: 1}


def sample_count(rng: np.random.Generator, counts: dict[int, int]) -> int:
    """A count drawn with the measured frequencies."""
    values = sorted(counts)
    weights = np.array([counts[v] for v in values], dtype=np.float64)
    return int(values[int(rng.choice(len(values), p=weights / weights.sum()))])


__all__ = ["Quantiles", "full_range", "central_range", "sample_count", "SUMMARIES", "Z_EXTENT_MM",
           "KIDNEY_HEIGHT_FRACTION", "KIDNEY_HEIGHT_GAP_MM", "KIDNEY_LENGTH_MM", "KIDNEY_WIDTH_MM",
           "KIDNEY_THICKNESS_MM", "KIDNEY_TILT_DEG", "KIDNEY_LATERAL_OFFSET_MM", "KIDNEY_POSTERIOR_OFFSET_MM",
           "KIDNEY_COUNTS", "TUMOR_COUNTS", "CYST_COUNTS"]
