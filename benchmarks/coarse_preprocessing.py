"""Stage-221 preprocessing of a whole CT: nnU-Net's ``run_case_npy`` vs the slab-wise ``preprocess_lowres``.

Per case (default case_00065 and case_00142 of ``--shared``/labels; 2.5 mm slices take nnU-Net's separate-z
path, 1 mm slices its 3-D cubic resize), the CT is synthesized from the label map once (int16, as KiTS23
stores it) and each variant runs in a fresh worker process on the float32 CT in nnU-Net order, with the
package's 3d_lowres settings (CT normalisation, order-3 image resampling, 1.965 x 1.953 x 1.953 mm):

- ``stock``: ``DefaultPreprocessor.run_case_npy`` (what ``predict_single_npy_array`` runs first);
- ``slabs``: :func:`kits_plugins.inference.coarse.preprocess_lowres`.

Reported per variant: wall time and the peak RSS above the RSS just before the call (``ru_maxrss``
difference); per case the ratios (slabs over stock) and the largest absolute difference of the outputs.

    python benchmarks/coarse_preprocessing.py --out benchmarks/results/coarse_preprocessing.json \
        [--shared ../shared/kits23] [--cases case_00065 case_00142]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LOWRES_SPACING = [1.965, 1.953125, 1.953125]


def worker(case_dir: str, variant: str) -> dict:
    from types import SimpleNamespace

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from kits_plugins.inference.coarse import preprocess_lowres
    from kits_plugins.testing.plans_builder import minimal_plans
    from kits_plugins.utilities.image_io import Geometry
    from kits_plugins.utilities.orientation import Reorientation

    case = json.loads((Path(case_dir) / "case.json").read_text())
    g = Geometry.from_dict(case["geometry"])
    r = Reorientation.from_geometry(g)
    image = r.to_nnunet(np.load(Path(case_dir) / "ct.npy").astype(np.float32))[None]
    spacing = list(r.spacing_to_nnunet(g.spacing_np))
    pm = PlansManager(minimal_plans("3d_lowres", LOWRES_SPACING, ["CTNormalization"]))
    p = SimpleNamespace(plans_manager=pm, configuration_manager=pm.get_configuration("3d_lowres"),
                        dataset_json={"channel_names": {"0": "CT"}, "labels": {"background": 0, "kidney": 1}})
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    if variant == "stock":
        data = p.configuration_manager.preprocessor_class(verbose=False).run_case_npy(
            image, None, {"spacing": spacing}, pm, p.configuration_manager, p.dataset_json)[0]
    else:
        data = preprocess_lowres(p, image, spacing)[0]
    out = {"time_s": time.perf_counter() - t,
           "peak_above_input_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024,
           "input_mb": image.nbytes / 2**20, "output_shape": list(data.shape)}
    np.save(Path(case_dir) / f"{variant}.npy", data)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "kits23"))
    ap.add_argument("--cases", nargs="+", default=["case_00065", "case_00142"])
    ap.add_argument("--_worker", nargs=2, metavar=("CASE_DIR", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._worker:
        print("BENCH_RESULT " + json.dumps(worker(*args._worker)))
        return 0

    from kits_plugins.synthetic import synthesize_ct_from_label
    from kits_plugins.utilities.image_io import read_label

    results: dict = {"benchmark": "coarse_preprocessing",
                     "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
                     "lowres_spacing": LOWRES_SPACING, "cases": {}}
    for name in args.cases:
        label_path = Path(args.shared) / "labels" / f"{name}.nii.gz"
        if not label_path.is_file():
            print(f"{name}: {label_path} not found, skipped")
            continue
        entry: dict = {}
        with tempfile.TemporaryDirectory(prefix=f"bench_{name}_") as tmp:
            label, g = read_label(label_path)
            np.save(Path(tmp) / "ct.npy", synthesize_ct_from_label(label, g, seed=0))
            (Path(tmp) / "case.json").write_text(json.dumps({"geometry": g.to_dict()}))
            del label
            for variant in ("stock", "slabs"):
                proc = subprocess.run([sys.executable, __file__, "--out", os.devnull, "--_worker", tmp, variant],
                                      capture_output=True, text=True)
                line = [x for x in proc.stdout.splitlines() if x.startswith("BENCH_RESULT ")]
                entry[variant] = json.loads(line[-1][13:]) if line else {"error": proc.stderr[-2000:]}
            if all("time_s" in entry[v] for v in ("stock", "slabs")):
                a, b = np.load(Path(tmp) / "stock.npy"), np.load(Path(tmp) / "slabs.npy")
                entry["max_abs_diff"] = float(np.abs(a - b).max()) if a.shape == b.shape else None
                entry["time_ratio"] = round(entry["slabs"]["time_s"] / entry["stock"]["time_s"], 4)
                entry["memory_ratio"] = round(entry["slabs"]["peak_above_input_mb"]
                                              / entry["stock"]["peak_above_input_mb"], 4)
        entry["shape"], entry["spacing_np"] = list(g.shape), list(g.spacing_np)
        results["cases"][name] = entry
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))

    print(f"{'case':<12}{'variant':<8}{'time s':>8}{'peak above input MB':>21}{'t ratio':>9}{'mem ratio':>10}{'max diff':>10}")
    for name, e in results["cases"].items():
        for v in ("stock", "slabs"):
            r = e[v]
            if "time_s" not in r:
                print(f"{name:<12}{v:<8}  error")
                continue
            ratios = (f"{e['time_ratio']:>9.3f}{e['memory_ratio']:>10.3f}{e['max_abs_diff']:>10.1e}"
                      if v == "slabs" and "time_ratio" in e else "")
            print(f"{name:<12}{v:<8}{r['time_s']:>8.1f}{r['peak_above_input_mb']:>21.0f}{ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
