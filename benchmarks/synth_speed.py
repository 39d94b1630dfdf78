"""Speed and memory of `kits synth`: a procedural 128x256x256 case and CT for the largest real label map.

    python benchmarks/synth_speed.py --out benchmarks/results/synth_speed.json [--shared ../shared/kits23]

Targets (issue 2): procedural case < 2 s; 512 x 512 x 1059 label map (case_00151) < 60 s and < 4 GB.
Each from-labels measurement runs in a fresh process so its peak RSS is its own. Wall and CPU time are
both reported: on a shared machine the load average (also recorded) inflates wall time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _timed(fn, *args):
    w, c = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - w, time.process_time() - c


def procedural(n: int) -> dict:
    from kits_plugins.synthetic.phantom import make_case
    from kits_plugins.synthetic.writer import write_case

    make_case(100)  # warm-up (imports, allocator)
    gen_w, gen_c, wr_w = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(n):
            (ct, label, geom), w, c = _timed(make_case, seed)
            gen_w.append(w)
            gen_c.append(c)
            _, w, _ = _timed(write_case, tmp, f"case_{seed:05d}", ct, label, geom)
            wr_w.append(w)
    return {
        "shape_zyx": [128, 256, 256],
        "spacing_zyx": [3.0, 1.5625, 1.5625],
        "cases": n,
        "generate_wall_s": gen_w,
        "generate_cpu_s": gen_c,
        "write_wall_s": wr_w,
        "generate_wall_median_s": statistics.median(gen_w),
        "generate_cpu_median_s": statistics.median(gen_c),
        "write_wall_median_s": statistics.median(wr_w),
        "target_s": 2.0,
        "ratio_generate_wall_to_target": statistics.median(gen_w) / 2.0,
        "ratio_generate_cpu_to_target": statistics.median(gen_c) / 2.0,
    }


def _from_labels_child(path: str, queue) -> None:
    from kits_plugins.synthetic.from_labels import synthesize_ct_from_label
    from kits_plugins.synthetic.writer import IMAGING
    from kits_plugins.utilities.image_io import read_label, write_image

    t = {}
    (label, geom), t["read_wall_s"], _ = _timed(read_label, path)
    ct, t["synth_wall_s"], t["synth_cpu_s"] = _timed(synthesize_ct_from_label, label, geom, 0)
    with tempfile.TemporaryDirectory() as tmp:
        _, t["write_wall_s"], _ = _timed(write_image, ct, geom, Path(tmp) / IMAGING)
    t["shape_np"] = list(geom.shape)
    t["spacing_np"] = list(geom.spacing_np)
    t["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    queue.put(t)


def from_labels(path: Path) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_from_labels_child, args=(str(path), q))
    w = time.perf_counter()
    p.start()
    t = q.get()
    p.join()
    t["total_wall_s_incl_start"] = time.perf_counter() - w
    t["case"] = path.name.split(".")[0]
    t["end_to_end_wall_s"] = t["read_wall_s"] + t["synth_wall_s"] + t["write_wall_s"]
    t["target_s"], t["target_rss_gb"] = 60.0, 4.0
    t["ratio_end_to_end_wall_to_target"] = t["end_to_end_wall_s"] / 60.0
    t["ratio_synth_wall_to_target"] = t["synth_wall_s"] / 60.0
    t["ratio_rss_to_target"] = t["peak_rss_gb"] / 4.0
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "kits23")
    ap.add_argument("--cases", type=int, default=5, help="procedural cases to time")
    ap.add_argument("--label-cases", nargs="*", default=["case_00065", "case_00151"])
    args = ap.parse_args()
    res = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_start": os.getloadavg()},
        "procedural": procedural(args.cases),
        "from_labels": [],
    }
    for c in args.label_cases:
        f = args.shared / "labels" / f"{c}.nii.gz"
        if f.exists():
            res["from_labels"].append(from_labels(f))
        else:
            print(f"skipping {c}: {f} not found")
    res["machine"]["load_avg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))

    p = res["procedural"]
    print(f"{'measurement':48s} {'wall s':>8s} {'cpu s':>8s} {'target':>8s} {'RSS GB':>7s}")
    print(f"{'procedural 128x256x256 generate (median)':48s} {p['generate_wall_median_s']:8.2f} "
          f"{p['generate_cpu_median_s']:8.2f} {'< 2 s':>8s} {'':>7s}")  # fmt: skip
    print(f"{'procedural 128x256x256 write (median)':48s} {p['write_wall_median_s']:8.2f} {'':>8s} {'':>8s} {'':>7s}")
    for t in res["from_labels"]:
        shape = "x".join(map(str, t["shape_np"]))
        print(f"{t['case'] + ' ' + shape + ' synthesize':48s} {t['synth_wall_s']:8.2f} {t['synth_cpu_s']:8.2f} "
              f"{'':>8s} {t['peak_rss_gb']:7.2f}")  # fmt: skip
        print(f"{t['case'] + ' read+synthesize+write':48s} {t['end_to_end_wall_s']:8.2f} {'':>8s} {'< 60 s':>8s} "
              f"{'< 4':>7s}")  # fmt: skip
    print(f"load average start/end: {res['machine']['load_avg_start']} / {res['machine']['load_avg_end']}")


if __name__ == "__main__":
    main()
