"""How far the procedural phantoms' anatomy is from real KiTS23 label maps, statistic by statistic (issue 17).
Trains nothing.

    python benchmarks/phantom_realism.py --labels ../shared/kits23/labels \
        --out benchmarks/results/phantom_realism.json [--cases 100] [--seed 0] [--figure PNG]
        [--shape Z Y X] [--spacing Z Y X] [--fixed-extent]

The procedural cases are ``kits synth``'s (``make_case`` with the seeds ``kits synth --seed S`` uses), by default at
the demo's shape and spacing with KiTS23 scan lengths (``demo.yaml``: ``kits synth --kits23-extent``); the real ones are the label maps in ``--labels``. Both go through the
same measurement (``kits_plugins.statistics.anatomy.case_anatomy``). Per statistic the JSON gives the real median
and 10-90% range beside the procedural one, whether the procedural median falls inside the real 10-90% range, and
the two-sample Kolmogorov-Smirnov distance. The figure shows both samples of every statistic.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from benchmarks.anatomy_stats import real_records, write_json  # noqa: E402
from kits_plugins.statistics.anatomy import describe, statistic_values  # noqa: E402
from kits_plugins.utilities.staging import atomic_write_bytes  # noqa: E402


def procedural_records(n: int, seed: int, shape: tuple[int, int, int], spacing: tuple[float, float, float],
                       kits23_extent: bool = False) -> list[dict]:
    from kits_plugins.statistics.anatomy import case_anatomy
    from kits_plugins.synthetic.phantom import make_case
    from kits_plugins.synthetic.writer import case_seed

    out = []
    for i in range(n):
        _ct, label, geometry = make_case(case_seed(seed, i), shape, spacing, kits23_extent)
        out.append(case_anatomy(label, geometry, f"case_{i:05d}"))
    return out


def compare(real: list[dict], procedural: list[dict]) -> dict[str, dict]:
    """Per statistic: both descriptions, the procedural median inside the real 10-90% range, and the KS distance."""
    from scipy.stats import ks_2samp

    rv, pv = statistic_values(real), statistic_values(procedural)
    out = {}
    for name in rv:
        r, p = describe(rv[name]), describe(pv[name])
        inside = None
        if r["n"] and p["n"]:
            inside = bool(r["p10"] <= p["median"] <= r["p90"])  # type: ignore[operator]
        ks = float(ks_2samp(rv[name], pv[name]).statistic) if rv[name] and pv[name] else None
        out[name] = {"real": r, "procedural": p, "procedural_median_in_real_10_90": inside, "ks_distance": ks}
    return out


def figure(real: list[dict], procedural: list[dict], comparison: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rv, pv = statistic_values(real), statistic_values(procedural)
    names = list(comparison)
    cols = 6
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.4 * rows))
    rng = np.random.default_rng(0)
    for ax, name in zip(axes.flat, names):
        for k, (values, color) in enumerate(((rv[name], "tab:blue"), (pv[name], "tab:orange"))):
            if values:
                ax.scatter(k + rng.uniform(-0.2, 0.2, len(values)), values, s=6, color=color, alpha=0.6)
                ax.hlines(np.median(values), k - 0.3, k + 0.3, color="k")
        ax.set_xticks([0, 1], ["real", "procedural"], fontsize=7)
        ks = comparison[name]["ks_distance"]
        ax.set_title(f"{name}\nKS {ks:.2f}" if ks is not None else name, fontsize=7)
        ax.tick_params(axis="y", labelsize=6)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(f"anatomy: {len(real)} real KiTS23 label maps (blue) vs {len(procedural)} procedural phantoms "
                 "(orange); bars are medians", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    from kits_plugins.demo.pipeline import demo_defaults

    synthetic = demo_defaults()["synthetic"]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--labels", type=Path, required=True, help="folder of KiTS23 label maps case_XXXXX.nii.gz")
    p.add_argument("--out", type=Path, required=True, help="JSON to write")
    p.add_argument("--figure", type=Path, help="PNG to write (default: --out with .png)")
    p.add_argument("--cases", type=int, default=100, help="procedural cases (default 100)")
    p.add_argument("--seed", type=int, default=0, help="kits synth --seed of the procedural cases (default 0)")
    p.add_argument("--shape", type=int, nargs=3, default=synthetic["shape"], metavar=("Z", "Y", "X"),
                   help=f"procedural shape, anatomical order (default the demo's {synthetic['shape']})")
    p.add_argument("--spacing", type=float, nargs=3, default=synthetic["spacing"], metavar=("Z", "Y", "X"),
                   help=f"procedural spacing in mm (default the demo's {synthetic['spacing']})")
    p.add_argument("--fixed-extent", action="store_true",
                   help="the --shape's Z slices for every case instead of KiTS23 scan extents (kits synth without "
                   f"--kits23-extent; the demo uses {'KiTS23 extents' if synthetic.get('kits23_extent') else 'the shape'})")
    args = p.parse_args(argv)
    kits23_extent = not args.fixed_extent
    t0 = time.perf_counter()
    real = real_records(args.labels, progress=False)
    procedural = procedural_records(args.cases, args.seed, tuple(args.shape), tuple(args.spacing), kits23_extent)
    comparison = compare(real, procedural)
    fig = args.figure or args.out.with_suffix(".png")
    figure(real, procedural, comparison, fig)
    inside = [n for n, c in comparison.items() if c["procedural_median_in_real_10_90"]]
    write_json(args.out, {
        "command": shlex.join(["python", "benchmarks/phantom_realism.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "wall_s": time.perf_counter() - t0,
        "real_cases": len(real),
        "procedural": {"cases": args.cases, "seed": args.seed, "shape_zyx": list(args.shape),
                       "spacing_zyx": list(args.spacing), "kits23_extent": kits23_extent},
        "statistics_with_procedural_median_in_real_10_90": f"{len(inside)} of {len(comparison)}",
        "comparison": comparison,
        "figure": str(fig),
    })
    w = max(len(n) for n in comparison)
    print(f"{'statistic':<{w}}  {'real median [p10, p90]':>28}  {'procedural median [p10, p90]':>30}  KS")
    for name, c in comparison.items():
        r, q = c["real"], c["procedural"]
        cell = lambda d: "n/a" if d["median"] is None else f"{d['median']:.3g} [{d['p10']:.3g}, {d['p90']:.3g}]"  # noqa: E731
        ks = "n/a" if c["ks_distance"] is None else f"{c['ks_distance']:.2f}"
        print(f"{name:<{w}}  {cell(r):>28}  {cell(q):>30}  {ks}")
    print(f"procedural median inside the real 10-90% range: {len(inside)} of {len(comparison)} statistics")
    print(f"wrote {args.out} and {fig}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
