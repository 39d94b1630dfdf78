"""Anatomy statistics of real KiTS23 label maps: the targets the procedural phantoms should match (issue 17).

    python benchmarks/anatomy_stats.py --labels ../shared/kits23/labels --out benchmarks/results/anatomy_stats.json

Per case (``kits_plugins.statistics.anatomy.case_anatomy``): scan extent, slice and in-plane spacing; each kidney's
volume, maximum diameter, principal axis lengths and tilt, its offset from the image midline and its height in the
scan; each tumor's and cyst's volume and diameter, each tumor's exophytic share. Then per statistic the median, the
10-90% range, min and max over the cases (``summarize``). Only statistics are written, never voxels: the label
maps stay outside the repository. Label maps hold no body, so positions are relative to the image, not the patient.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from kits_plugins.statistics.anatomy import case_anatomy, summarize  # noqa: E402


def real_records(label_dir: Path, progress: bool = True) -> list[dict]:
    """:func:`case_anatomy` of every ``case_XXXXX.nii.gz`` label map in ``label_dir`` (case id = file name)."""
    from kits_plugins.errors import KitsInputError
    from kits_plugins.synthetic.writer import label_files
    from kits_plugins.utilities.image_io import read_label

    try:
        files = label_files(label_dir)
    except KitsInputError as e:
        raise SystemExit(f"anatomy_stats: {e}") from None
    out = []
    for i, path in enumerate(files, start=1):
        case = path.name[: -len(".nii.gz")]
        t0 = time.perf_counter()
        labels, geometry = read_label(path)
        out.append(case_anatomy(labels, geometry, case))
        if progress:
            print(f"[anatomy_stats {i}/{len(files)}] {case}: {time.perf_counter() - t0:.1f} s", flush=True)
    return out


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--labels", type=Path, required=True, help="folder of KiTS23 label maps case_XXXXX.nii.gz")
    p.add_argument("--out", type=Path, required=True, help="JSON to write")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    records = real_records(args.labels)
    write_json(args.out, {
        "command": shlex.join(["python", "benchmarks/anatomy_stats.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "wall_s": time.perf_counter() - t0,
        "cases": len(records),
        "summary": summarize(records),
        "per_case": records,
    })
    print(f"wrote {args.out} ({len(records)} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
