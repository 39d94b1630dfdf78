"""Speed of `kits evaluate`'s metrics against the straightforward challenge computation, same numbers.

For every shared real KiTS23 label map, a perturbed copy (shifted by one voxel on two axes, its largest cyst -
or tumor where there is none - relabelled kidney, and a 2-voxel shell of kidney grown around the largest
kidney component's slab) plays the prediction. Both
:func:`kits_plugins.evaluation.metrics.compute_case_metrics_straightforward` (the challenge's code path: full
volumes, ``surface_distance`` per HEC) and :func:`kits_plugins.evaluation.metrics.compute_case_metrics`
run on the same in-memory arrays; the JSON has both times, their ratio (``speedup``), the reading time of the
two files (both approaches need it), the ratio including reading, and ``max_abs_diff`` over the six metrics.

    python benchmarks/evaluate_speed.py --out benchmarks/results/evaluate_speed.json [--shared ../shared/kits23]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import cc3d
import numpy as np
from scipy import ndimage

from kits_plugins.evaluation.metrics import (
    METRIC_COLUMNS,
    compute_case_metrics,
    compute_case_metrics_straightforward,
)
from kits_plugins.utilities.image_io import read_label
from kits_plugins.utilities.roi import outer_slices

REPO = Path(__file__).resolve().parents[1]
warnings.filterwarnings("ignore", message="Please import", category=DeprecationWarning)


def perturb(ref: np.ndarray) -> np.ndarray:
    """A plausible imperfect prediction: shifted, one lesion missed, a kidney shell grown (all in the crop)."""
    box = outer_slices(ref, pad=4)
    crop = np.roll(ref[box], (1, -1), axis=(0, 1))
    lesion = 3 if np.any(crop == 3) else 2
    comps, n = cc3d.connected_components(crop == lesion, return_N=True)
    if n:
        largest = 1 + int(np.argmax(np.bincount(comps.ravel())[1:]))
        crop[comps == largest] = 1
    fg = crop > 0
    z = int(np.flatnonzero(fg.any(axis=(1, 2))).mean())  # grow the kidneys on one slab only
    shell = ndimage.binary_dilation(fg[z - 3 : z + 3], iterations=2) & ~fg[z - 3 : z + 3]
    crop[z - 3 : z + 3][shell] = 1
    pred = np.zeros_like(ref)
    pred[box] = crop
    return pred


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output JSON")
    parser.add_argument("--shared", default=str(REPO.parent / "shared" / "kits23"), help="folder with labels/")
    parser.add_argument("--max-cases", type=int, default=None, help="only the first N cases")
    args = parser.parse_args()

    files = sorted((Path(args.shared) / "labels").glob("case_*.nii.gz"))[: args.max_cases]
    if not files:
        raise SystemExit(f"no label maps in {Path(args.shared) / 'labels'}")

    cases = []
    header = f"{'case':<11} {'shape':>16} {'spacing':>20} {'read_s':>7} {'plain_s':>8} {'ours_s':>7} {'speedup':>8} {'max_diff':>9}"
    print(header)
    for f in files:
        t0 = time.perf_counter()
        ref, geom = read_label(f)
        read_s = 2 * (time.perf_counter() - t0)  # prediction and reference are both read in practice
        pred = perturb(ref)
        spacing = geom.spacing_np
        t0 = time.perf_counter()
        plain = compute_case_metrics_straightforward(pred, ref, spacing)
        plain_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ours = compute_case_metrics(pred, ref, spacing)
        ours_s = time.perf_counter() - t0
        diff = max(abs(plain[c] - ours[c]) for c in METRIC_COLUMNS)
        row = {
            "case": f.name[: -len(".nii.gz")],
            "shape": list(ref.shape),
            "spacing_np_mm": [round(s, 5) for s in spacing],
            "read_both_s": read_s,
            "straightforward_s": plain_s,
            "ours_s": ours_s,
            "speedup": plain_s / ours_s,
            "speedup_including_read": (read_s + plain_s) / (read_s + ours_s),
            "max_abs_diff": diff,
            "metrics": ours,
        }
        cases.append(row)
        print(
            f"{row['case']:<11} {str(tuple(ref.shape)):>16} {str(tuple(round(s, 3) for s in spacing)):>20} "
            f"{read_s:7.2f} {plain_s:8.2f} {ours_s:7.2f} {row['speedup']:7.1f}x {diff:9.1e}",
            flush=True,
        )
        del ref, pred

    plain_total = sum(c["straightforward_s"] for c in cases)
    ours_total = sum(c["ours_s"] for c in cases)
    read_total = sum(c["read_both_s"] for c in cases)
    speedups = [c["speedup"] for c in cases]
    summary = {
        "num_cases": len(cases),
        "straightforward_total_s": plain_total,
        "ours_total_s": ours_total,
        "read_total_s": read_total,
        "speedup_total": plain_total / ours_total,
        "speedup_median": float(np.median(speedups)),
        "speedup_min": float(np.min(speedups)),
        "speedup_total_including_read": (read_total + plain_total) / (read_total + ours_total),
        "max_abs_diff": max(c["max_abs_diff"] for c in cases),
    }
    print(
        f"\n{len(cases)} cases: straightforward {plain_total:.1f} s, ours {ours_total:.1f} s -> "
        f"{summary['speedup_total']:.1f}x overall (median {summary['speedup_median']:.1f}x, min "
        f"{summary['speedup_min']:.1f}x; {summary['speedup_total_including_read']:.1f}x including reading), "
        f"max |diff| {summary['max_abs_diff']:.1e}"
    )
    out = {
        "description": "per case: time of the challenge's straightforward per-HEC surface_distance computation on "
        "full volumes vs compute_case_metrics, same in-memory arrays (perturbed reference as prediction), one "
        "process; read_both_s = 2 x reading the reference",
        "machine": {"processor": platform.processor() or platform.machine(), "python": platform.python_version()},
        "command": "python benchmarks/evaluate_speed.py --out benchmarks/results/evaluate_speed.json",
        "summary": summary,
        "cases": cases,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
