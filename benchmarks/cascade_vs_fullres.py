"""Cascade vs stock nnU-Net full-resolution inference: wall time and peak RSS on CT synthesized from real labels.

Per case (default case_00065, case_00142, case_00151 of ``--shared``/labels), three variants run, each in a
fresh worker process so its peak RSS (``ru_maxrss``) is its own:

(a) ``stock``: one nnUNetPredictor, 3d_fullres at the target spacing 0.786 x 0.78125 x 0.78125 mm over the
    whole CT, region-based KiTS head (kidney, masses, tumor), through ``predict_single_npy_array`` (the same
    preprocessing, sliding window, resampling and segmentation export path ``nnUNetv2_predict`` uses, without
    its worker pool);
(b) ``cascade``: :class:`KiTSCascadePredictor`: stage 221 (3d_lowres, ~2.5x the target spacing) on the whole
    CT (``coarse_boxes``: slab-wise preprocessing, boxes from the low-resolution map), then stages 222 and
    223 (3d_fullres at the target spacing) on the kidney ROIs;
(c) ``oracle``: the cascade with ROI boxes from the ground-truth kidney+masses mask instead of stage 221.

Same network topology on both sides (nnU-Net's 6-stage PlainConvUNet with 128^3 patches as planned for
KiTS) but NARROWED feature widths (``--features``, default 4..64 instead of 32..320) so it runs on a CPU;
weights are random with a fixed seed (timing does not depend on them). Because an untrained stage 221 gives
no meaningful mask, (b) runs stage 221 in full (its time and memory count) and then takes the ROI boxes from
the ground truth, like (c); stage 222's final bias is set so its mask is non-empty and stage 223 always runs.
Mirroring (TTA) is off on both sides by default (``--tta`` turns it on for both). The CT is synthesized once
per case from the label map by the parent process (``kits_plugins.synthetic.synthesize_ct_from_label``,
int16 like real KiTS23 files) and saved as ``.npy``; each worker loads it (stock casts it to float32 as
nnU-Net's readers do; the cascade keeps int16 as ``kits predict``'s ``read_ct`` does), so a worker's peak RSS
is imports + CT + prediction, not the synthesis. Every worker fixes glibc's mmap threshold
(``kits_plugins.utilities.memory``, as ``kits predict`` does) unless ``--default-malloc``. The ground-truth
ROI boxes (15 mm margin, as ``kits predict``) are computed by the parent and passed as JSON. The parent
polls each worker's RSS and stops it above ``--max-rss-gb`` (recorded as an error with the RSS reached).
Results are merged into ``--out`` case by case, so cases can be run (and rerun) separately.

    python benchmarks/cascade_vs_fullres.py --out benchmarks/results/cascade_vs_fullres.json \
        [--shared ../shared/kits23] [--cases case_00065 case_00142 case_00151] [--variants stock cascade oracle]
        [--step-size 0.5] [--max-rss-gb 20] [--default-malloc]
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
TARGET_SPACING = [0.786, 0.78125, 0.78125]
LOWRES_SPACING = [1.965, 1.953125, 1.953125]  # 2.5 x target
STOCK_FEATURES = [32, 64, 128, 256, 320, 320]


# --------------------------------------------------------------------------------------------------- models
def _predictor(config, spacing, channels, labels, rco, features, seed, tta, fg_bias=None, step=0.5):
    """A stock nnUNetPredictor, manually initialised with a random (seeded) PlainConvUNet."""
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from kits_plugins.inference.model_discovery import make_nnunet_predictor
    from kits_plugins.testing.plans_builder import minimal_plans, plain_unet_architecture

    norm = ["CTNormalization"] + ["NoNormalization"] * (len(channels) - 1)
    pm = PlansManager(minimal_plans(config, spacing, norm, plain_unet_architecture(features), dataset_name="bench"))
    cm = pm.get_configuration(config)
    ds = {"channel_names": channels, "labels": labels, "file_ending": ".nii.gz", "numTraining": 1}
    if rco:
        ds["regions_class_order"] = rco
    n_out = pm.get_label_manager(ds).num_segmentation_heads
    torch.manual_seed(seed)
    net = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                 cm.network_arch_init_kwargs_req_import, len(channels), n_out, deep_supervision=False)
    if fg_bias is not None:
        with torch.no_grad():
            net.decoder.seg_layers[-1].bias[1:] += fg_bias
    p = make_nnunet_predictor("cpu", step, tta)
    p.manual_initialization(net, pm, cm, [net.state_dict()], ds, "nnUNetTrainer", (0, 1, 2))
    return p


# ------------------------------------------------------------------------------------------------------ data
def prepare_case(label_path: Path, workdir: Path, seed: int) -> dict:
    """Synthesize the case's CT (int16 .npy) and ground-truth ROI boxes once, for every variant's worker."""
    from kits_plugins.constants import DEFAULT_MARGIN_MM, DEFAULT_MIN_ROI_VOLUME_MM3
    from kits_plugins.synthetic import synthesize_ct_from_label
    from kits_plugins.utilities import roi
    from kits_plugins.utilities.image_io import read_label

    label, g = read_label(label_path)
    boxes = roi.roi_boxes(label > 0, g.spacing_np, DEFAULT_MARGIN_MM, DEFAULT_MIN_ROI_VOLUME_MM3)
    ct = synthesize_ct_from_label(label, g, seed=seed)
    del label
    np.save(workdir / "ct.npy", ct)
    case = {"geometry": g.to_dict(), "boxes": boxes, "ct": str(workdir / "ct.npy"), "ct_dtype": str(ct.dtype)}
    (workdir / "case.json").write_text(json.dumps(case))
    return case


# ---------------------------------------------------------------------------------------------------- worker
def worker(case_json: str, variant: str, features: list[int], tta: bool, seed: int, step: float = 0.5,
           default_malloc: bool = False) -> dict:
    import torch

    from kits_plugins.utilities.memory import return_freed_memory_to_os

    if not default_malloc:  # both sides alike (kits predict does this at startup)
        return_freed_memory_to_os()

    from kits_plugins.inference.cascade import KiTSCascadePredictor
    from kits_plugins.utilities.image_io import Geometry
    from kits_plugins.utilities.orientation import Reorientation

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    case = json.loads(Path(case_json).read_text())
    g = Geometry.from_dict(case["geometry"])
    ct = np.load(case["ct"])  # int16, as stored in KiTS23 files
    if variant == "stock":  # nnUNetv2_predict's readers give float32; kits predict keeps int16 (read_ct)
        ct = ct.astype(np.float32)
    out: dict = {"variant": variant, "shape": list(g.shape), "spacing_np": list(g.spacing_np),
                 "synthesis": "kits_plugins.synthetic.synthesize_ct_from_label"}
    ct_ch = {"0": "CT"}
    binary = {"background": 0, "kidney": 1}
    if variant == "stock":
        kits_regions = {"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2}
        p = _predictor("3d_fullres", TARGET_SPACING, ct_ch, kits_regions, [1, 3, 2], features, seed, tta, step=step)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        r = Reorientation.from_geometry(g)
        seg = p.predict_single_npy_array(r.to_nnunet(ct)[None], {"spacing": list(r.spacing_to_nnunet(g.spacing_np))},
                                         None, None, False)
        seg = r.from_nnunet(seg)
        out["time_s"] = time.perf_counter() - t
        out["labels"] = sorted(int(v) for v in np.unique(seg))
    else:
        coarse = _predictor("3d_lowres", LOWRES_SPACING, ct_ch, binary, None, features, seed, tta, step=step) \
            if variant == "cascade" else None
        fine = _predictor("3d_fullres", TARGET_SPACING, ct_ch, binary, None, features, seed + 1, tta, fg_bias=10.0,
                          step=step)
        masses = _predictor("3d_fullres", TARGET_SPACING, {"0": "CT", "1": "noNorm"},
                            {"background": 0, "masses": [1, 2], "tumor": 1}, [2, 1], features, seed + 2, tta, step=step)
        cascade = KiTSCascadePredictor(coarse, fine, masses, postprocess=True)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        coarse_s = 0.0
        if variant == "cascade":  # run stage 221 for its cost; an untrained model's boxes are meaningless
            out["coarse_boxes_untrained"] = len(cascade.coarse_boxes(ct, g))
            coarse_s = time.perf_counter() - t
        res = cascade.predict_array(ct, g, boxes=case["boxes"])
        out["time_s"] = time.perf_counter() - t
        info = res.info()
        info["coarse"] = round(coarse_s, 3)
        out.update({k: info[k] for k in ("coarse", "fine", "masses", "postprocess", "n_rois", "roi_fraction")})
        out["labels"] = sorted(int(v) for v in np.unique(res.segmentation))
    out["rss_before_predict_mb"] = rss0 / 1024
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _run_worker(cmd: list[str], timeout: int, max_rss_mb: float) -> tuple[str, str, str | None, float]:
    """Run one worker, polling its RSS (Linux /proc); stop it past ``timeout`` s or ``max_rss_mb``."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen, error, start = 0.0, None, time.monotonic()
    with tempfile.TemporaryFile("w+") as so, tempfile.TemporaryFile("w+") as se:
        import threading

        pumps = [threading.Thread(target=lambda a, b: b.write(a.read()), args=(proc.stdout, so)),
                 threading.Thread(target=lambda a, b: b.write(a.read()), args=(proc.stderr, se))]
        for th in pumps:
            th.start()
        while proc.poll() is None:
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
                seen = max(seen, int(next(x for x in status.splitlines() if x.startswith("VmRSS:")).split()[1]) / 1024)
            except (OSError, StopIteration, ValueError):
                pass
            if seen > max_rss_mb:
                error = f"stopped: RSS {seen:.0f} MB exceeded --max-rss-gb ({max_rss_mb / 1024:.0f} GB)"
            elif time.monotonic() - start > timeout:
                error = f"timeout after {timeout} s"
            if error:
                proc.kill()
                break
            time.sleep(0.5)
        proc.wait()
        for th in pumps:
            th.join()
        so.seek(0)
        se.seek(0)
        return so.read(), se.read(), error, seen


# ------------------------------------------------------------------------------------------------------ main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "kits23"))
    ap.add_argument("--cases", nargs="+", default=["case_00065", "case_00142", "case_00151"])
    ap.add_argument("--variants", nargs="+", default=["stock", "cascade", "oracle"],
                    choices=["stock", "cascade", "oracle"])
    ap.add_argument("--features", nargs="+", type=int, default=[4, 8, 16, 32, 64, 64])
    ap.add_argument("--tta", action="store_true", help="mirroring on both sides (8x slower)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--step-size", type=float, default=0.5,
                    help="sliding-window tile step (fraction of the patch), all stages on both sides; 0.5 = nnU-Net")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per variant and case")
    ap.add_argument("--max-rss-gb", type=float, default=20.0, help="stop a worker whose RSS exceeds this")
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc's dynamic mmap threshold on (default: fixed 128 KiB on both sides)")
    ap.add_argument("--_worker", nargs=2, metavar=("CASE_JSON", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._worker:
        print("BENCH_RESULT " + json.dumps(worker(args._worker[0], args._worker[1], args.features, args.tta, args.seed,
                                                  args.step_size, args.default_malloc)))
        return 0

    import torch

    out_path = Path(args.out)
    previous = json.loads(out_path.read_text()) if out_path.is_file() and out_path.stat().st_size else {}
    results: dict = {
        "benchmark": "cascade_vs_fullres",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "device": "cpu",
                    "torch_threads": int(os.environ.get("BENCH_THREADS", "2")), "torch": torch.__version__},
        "network": {"class": "PlainConvUNet", "patch_size": [128, 128, 128], "features_per_stage": args.features,
                    "stock_nnunet_features_per_stage": STOCK_FEATURES,
                    "note": "narrowed feature widths for CPU; same topology on both sides; random fixed weights"},
        "target_spacing": TARGET_SPACING, "lowres_spacing": LOWRES_SPACING, "tta": args.tta,
        "notes": "cascade (b) runs stage 221 in full (KiTSCascadePredictor.coarse_boxes) but takes ROI boxes from "
                 "the ground truth (untrained model); oracle (c) skips stage 221. Wall time and peak RSS of one "
                 "worker process per variant; the CT (synthesized once per case, int16 .npy) is loaded before timing "
                 "starts, as float32 for stock (what nnU-Net's readers give) and as stored (int16) for the cascade "
                 "(what kits predict's read_ct keeps); rss_before_predict_mb is imports + CT + models. Each case "
                 "records its tile_step_size (all stages, both sides), allocator setting and command.",
        "cases": previous.get("cases", {}),
    }
    for case in args.cases:
        label = Path(args.shared) / "labels" / f"{case}.nii.gz"
        if not label.is_file():
            print(f"{case}: {label} not found, skipped")
            continue
        entry: dict = {"tile_step_size": args.step_size,
                       "allocator": "glibc default" if args.default_malloc else
                       "glibc M_MMAP_THRESHOLD fixed at 128 KiB in every variant (kits predict sets it too)",
                       "run": f"python benchmarks/cascade_vs_fullres.py --out {args.out} --cases {case} "
                              f"--step-size {args.step_size} --variants {' '.join(args.variants)}"
                              + (" --default-malloc" if args.default_malloc else "")}
        with tempfile.TemporaryDirectory(prefix=f"bench_{case}_") as tmp:
            t = time.perf_counter()
            prepare_case(label, Path(tmp), args.seed)
            print(f"{case}: CT synthesized in {time.perf_counter() - t:.0f} s")
            for variant in args.variants:
                cmd = [sys.executable, __file__, "--out", os.devnull, "--_worker", str(Path(tmp) / "case.json"),
                       variant, "--features", *map(str, args.features), "--seed", str(args.seed),
                       "--step-size", str(args.step_size)] + (["--tta"] if args.tta else []) \
                    + (["--default-malloc"] if args.default_malloc else [])
                stdout, stderr, error, seen = _run_worker(cmd, args.timeout, args.max_rss_gb * 1024)
                line = [x for x in stdout.splitlines() if x.startswith("BENCH_RESULT ")]
                if line:
                    entry[variant] = json.loads(line[-1][len("BENCH_RESULT "):])
                else:
                    entry[variant] = {"error": error or (stderr or stdout)[-2000:], "max_rss_seen_mb": round(seen)}
                print(f"{case} {variant}: {entry[variant].get('time_s', entry[variant].get('error'))} s, "
                      f"{entry[variant].get('peak_rss_mb', seen)} MB", flush=True)
        a = entry.get("stock", {})
        for v in ("cascade", "oracle"):
            b = entry.get(v, {})
            if "time_s" in a and "time_s" in b:
                entry[f"{v}_time_ratio"] = round(b["time_s"] / a["time_s"], 4)
                entry[f"{v}_rss_ratio"] = round(b["peak_rss_mb"] / a["peak_rss_mb"], 4)
        if "cascade_time_ratio" in entry:
            entry["time_ratio"], entry["rss_ratio"] = entry["cascade_time_ratio"], entry["cascade_rss_ratio"]
        results["cases"][case] = entry
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(results, indent=1))

    print(f"\n{'case':<12}{'step':>5} {'variant':<9}{'time s':>9}{'peak MB':>10}{'ROIs':>6}{'ROI %':>7}"
          f"{'t ratio':>9}{'rss ratio':>10}")
    for case, entry in results["cases"].items():
        for v in ("stock", "cascade", "oracle"):
            r = entry.get(v, {})
            if "time_s" not in r:
                print(f"{case:<12}{entry.get('tile_step_size', '-')!s:>5} {v:<9}  {r.get('error', 'not run')[:60]}")
                continue
            tr = entry.get(f"{v}_time_ratio", 1.0 if v == "stock" else float("nan"))
            rr = entry.get(f"{v}_rss_ratio", 1.0 if v == "stock" else float("nan"))
            print(f"{case:<12}{entry.get('tile_step_size', '-')!s:>5} {v:<9}{r['time_s']:>9.1f}{r['peak_rss_mb']:>10.0f}"
                  f"{r.get('n_rois', '-')!s:>6}{100 * r.get('roi_fraction', 1.0):>7.1f}{tr:>9.3f}{rr:>10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
