"""Paired comparison of two ``demo_transfer.py`` results on the same label maps (e.g. two demos' models).

    python benchmarks/compare_transfer_runs.py A.json B.json [--out FILE]

Both runs predicted phantoms made from the same label maps with the same seed, so each case pairs with itself: the
script reports A minus B per metric (``compare_paired``: mean difference, bootstrap 95% interval over cases,
Wilcoxon), over the cases both hold. One trained model per run: the interval covers the cases, not the training
noise (docs/synthetic.md, "How much one retraining of stage 222 moves the result").
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

METRICS = ("Dice_kidney", "Dice_masses")


def load_per_case(path: Path) -> dict[str, dict[str, float]]:
    try:
        rows = json.loads(path.read_text())["per_case"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"compare_transfer_runs: {path}: not a demo_transfer.py result ({e.__class__.__name__}: {e})"
                         ) from None
    return rows


def compare(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]]) -> dict[str, dict]:
    """A minus B per metric over the shared cases."""
    from kits_plugins.evaluation.comparison import compare_paired

    out = {}
    for m in METRICS:
        r = compare_paired({c: v[m] for c, v in a.items()}, {c: v[m] for c, v in b.items()})
        out[m] = {"n": r.n, "mean_a": sum(a[c][m] for c in a.keys() & b.keys()) / max(r.n, 1),
                  "mean_b": sum(b[c][m] for c in a.keys() & b.keys()) / max(r.n, 1), "mean_diff": r.mean_diff,
                  "ci95": list(r.ci95), "p_wilcoxon": r.p_wilcoxon,
                  "a_better": sum(a[c][m] > b[c][m] for c in a.keys() & b.keys())}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a", type=Path, help="demo_transfer.py result JSON (minuend)")
    p.add_argument("b", type=Path, help="demo_transfer.py result JSON (subtrahend)")
    p.add_argument("--out", type=Path, help="JSON to write")
    args = p.parse_args(argv)
    a, b = load_per_case(args.a), load_per_case(args.b)
    if not a.keys() & b.keys():
        raise SystemExit(f"compare_transfer_runs: {args.a} and {args.b} share no case")
    result = {"command": shlex.join(["python", "benchmarks/compare_transfer_runs.py",
                                     *(sys.argv[1:] if argv is None else argv)]),
              "a": str(args.a), "b": str(args.b), "a_minus_b": compare(a, b)}
    for m, r in result["a_minus_b"].items():
        p_text = "n/a" if r["p_wilcoxon"] is None else f"{r['p_wilcoxon']:.3f}"
        print(f"{m:<12} A {r['mean_a']:.3f}, B {r['mean_b']:.3f}, A-B {r['mean_diff']:+.3f} [{r['ci95'][0]:+.3f}, "
              f"{r['ci95'][1]:+.3f}] over {r['n']} cases, A better in {r['a_better']} (Wilcoxon p {p_text})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(f".{args.out.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
