"""The README's accuracy-study tables (markdown) from a study's JSON, so the figures there come from the committed
result:

    python benchmarks/study_tables.py benchmarks/results/accuracy_study.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from kits_plugins.evaluation.metrics import METRIC_COLUMNS as COLUMNS  # noqa: E402

HEADERS = tuple(m.replace("_", " ") for m in COLUMNS)


def tables(result: dict) -> str:
    """Means per system (with voxel-passes and wall times), then every paired difference with its interval."""
    n = len(result["settings"]["split"]["test"])
    lines = ["| system | voxel-passes | training / prediction wall (s) | " + " | ".join(HEADERS) + " |",
             "|---" * (3 + len(COLUMNS)) + "|"]
    for name, s in result["systems"].items():
        lines.append(f"| {name} | {s['voxel_passes']:.4g} | {s['train_wall_s']:.0f} / {s['predict_wall_s']:.0f} | "
                     + " | ".join(f"{s['mean'][m]:.3f}" for m in COLUMNS) + " |")
    lines += ["", f"| difference ({n} test cases) | " + " | ".join(HEADERS) + " |", "|---" * (1 + len(COLUMNS)) + "|"]
    pairs: dict[tuple[str, str], dict[str, dict]] = {}
    for c in result["comparisons"]:
        pairs.setdefault((c["a"], c["b"]), {})[c["metric"]] = c
    for (a, b), by_metric in pairs.items():
        cells = []
        for m in COLUMNS:
            c = by_metric[m]
            p = "n/a" if c["p_wilcoxon"] is None else f"{c['p_wilcoxon']:.3f}"
            cells.append(f"{c['mean_diff']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}] p={p}")
        lines.append(f"| {a} − {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("json", type=Path, help="the study's JSON (accuracy_study.py --out)")
    args = p.parse_args(argv)
    try:
        result = json.loads(args.json.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"study_tables: {args.json}: {e}") from None
    print(tables(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
