"""Cost of the boundary (surface) loss: signed distance maps + loss for a 2 x 128^3 batch with 2 regions.

Compares ``kits_plugins.losses.BoundaryLoss`` (one multi-label ``edt`` call per channel, inside and outside at once)
with the straightforward scipy version (``scipy.ndimage.distance_transform_edt`` with ``sampling``, once for the
outside and once for the inside of every channel), on one core, checks both give the same maps, and puts the cost
next to one CPU forward+backward of an nnU-Net-style PlainConvUNet (measured on a smaller patch, because a 128^3
step on a CPU core is too slow, then scaled linearly in voxels; an estimate, labelled as such in the JSON).

The batch: Dataset223-like regions (mass = tumor+cyst, tumor) in two 128^3 crops of a real KiTS23 label map from
``--shared`` (nnU-Net axis order, native spacing, both crops holding both regions: the worst case, since absent
regions are skipped), or synthetic ellipsoids when the folder is absent.

    python benchmarks/surface_loss_overhead.py --out benchmarks/results/surface_loss_overhead.json \
        [--shared ../shared/kits23] [--case case_00540] [--cyst-free-case case_00513] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import cc3d
import numpy as np
import torch
from scipy import ndimage

from kits_plugins.constants import TARGET_SPACING
from kits_plugins.losses import BoundaryLoss
from kits_plugins.utilities.image_io import read_label
from kits_plugins.utilities.orientation import Reorientation

REPO = Path(__file__).resolve().parents[1]
PATCH = 128


def timed(fn, repeats: int, cpu: bool = False) -> tuple[list[float], object]:
    """Seconds per call: wall clock, or with ``cpu`` this process's CPU time (one-thread work, robust to other
    processes competing for the cores)."""
    clock = time.process_time if cpu else time.perf_counter
    times, result = [], None
    for _ in range(repeats):
        t0 = clock()
        result = fn()
        times.append(clock() - t0)
    return times, result


def crop_around(volume: np.ndarray, center, size: int) -> np.ndarray:
    starts = [int(np.clip(round(c) - size // 2, 0, max(s - size, 0))) for c, s in zip(center, volume.shape)]
    out = volume[tuple(slice(st, st + size) for st in starts)]
    pad = [(0, size - s) for s in out.shape]
    return np.pad(out, pad) if any(p for _, p in pad) else out


def real_batch(label_file: Path) -> tuple[np.ndarray, tuple[float, ...], str]:
    """(2, 2, 128, 128, 128) bool regions (mass, tumor) from two crops around the largest tumor, nnU-Net axis order."""
    label, geometry = read_label(label_file)
    reorient = Reorientation.from_geometry(geometry)
    label = reorient.to_nnunet(label)
    spacing = tuple(float(s) for s in reorient.spacing_to_nnunet(geometry.spacing_np))
    tumors = cc3d.connected_components(label == 2)
    largest = np.argmax(np.bincount(tumors.ravel())[1:]) + 1
    center = np.argwhere(tumors == largest).mean(axis=0)
    crops = [crop_around(label, center, PATCH), crop_around(label, center + np.array([0, 24, 24]), PATCH)]
    batch = np.stack([np.stack([c >= 2, c == 2]) for c in crops])
    return batch, spacing, f"{label_file.name}: two {PATCH}^3 crops around the largest tumor (second shifted 24 voxels in-plane)"


def synthetic_batch() -> tuple[np.ndarray, tuple[float, ...], str]:
    grid = np.ogrid[:PATCH, :PATCH, :PATCH]

    def ell(center, radii):
        return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii)) <= 1

    samples = []
    for shift in (0, 20):
        mass = ell((64, 64 + shift, 60), (25, 30, 28)) | ell((40, 80 + shift, 90), (8, 10, 9))
        tumor = ell((64, 64 + shift, 60), (25, 30, 28))
        samples.append(np.stack([mass, tumor]))
    return np.stack(samples), TARGET_SPACING, "synthetic ellipsoids (no --shared labels found)"


def scipy_maps(target: np.ndarray, spacing) -> np.ndarray:
    """Reference implementation: scipy EDT per channel, outside and inside separately."""
    out = np.zeros(target.shape, dtype=np.float32)
    for b in range(target.shape[0]):
        for c in range(target.shape[1]):
            m = target[b, c]
            if m.any() and not m.all():
                outside = ndimage.distance_transform_edt(~m, sampling=spacing)
                inside = ndimage.distance_transform_edt(m, sampling=spacing)
                out[b, c] = np.where(m, -inside, outside)
    return out


def scipy_loss(logits: torch.Tensor, target: np.ndarray, spacing) -> torch.Tensor:
    return (torch.sigmoid(logits) * torch.from_numpy(scipy_maps(target, spacing))).mean()


def training_step_seconds(patch: int, repeats: int) -> float:
    """Median forward+backward CPU seconds of an nnU-Net default-style 3D PlainConvUNet on a (2, 1, patch^3) batch."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    n_stages = int(np.log2(patch // 4)) + 1  # nnU-Net stops at a 4-voxel bottleneck
    features = [min(32 * 2**i, 320) for i in range(n_stages)]
    net = PlainConvUNet(1, n_stages, features, torch.nn.Conv3d, 3, [1] + [2] * (n_stages - 1), 2, 2, 2,
                        conv_bias=True, norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                        nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=True)
    x = torch.randn(2, 1, patch, patch, patch)

    def step():
        net.zero_grad()
        out = net(x)
        sum(o.float().mean() for o in out).backward()

    step()  # warm-up
    times, _ = timed(step, repeats, cpu=True)
    return statistics.median(times)


def compare(batch: np.ndarray, spacing, repeats: int) -> dict:
    """Time scipy's per-channel EDT + loss against BoundaryLoss (1 and 2 threads) on one batch; check equality."""
    target = torch.from_numpy(batch)
    logits = torch.randn(batch.shape, generator=torch.Generator().manual_seed(0))
    loss = BoundaryLoss(spacing)
    scipy_cpu, ours_cpu, scipy_wall, ours_wall = [], [], [], []
    for _ in range(repeats):  # interleaved, so that both see the same load on the shared cores
        times, ref = timed(lambda: scipy_loss(logits, batch, spacing), 1, cpu=True)
        scipy_cpu += times
        times, value = timed(lambda: loss(logits, target), 1, cpu=True)
        ours_cpu += times
        scipy_wall += timed(lambda: scipy_loss(logits, batch, spacing), 1)[0]
        ours_wall += timed(lambda: loss(logits, target), 1)[0]
    ours_wall_2, _ = timed(lambda: BoundaryLoss(spacing, parallel=2)(logits, target), repeats)
    maps = loss.distance_maps(target)
    med = statistics.median

    def summary(times):
        return {"median": med(times), "min": min(times), "all": times}

    return {
        "region_voxels_per_sample_channel": batch.reshape(batch.shape[0] * batch.shape[1], -1).sum(1).tolist(),
        "distinct_channels_per_sample": [len({c.tobytes() for c in sample}) for sample in batch],
        "scipy_cpu_seconds": summary(scipy_cpu),
        "scipy_wall_seconds": summary(scipy_wall),
        "ours_cpu_seconds_1_thread": summary(ours_cpu),
        "ours_wall_seconds_1_thread": summary(ours_wall),
        "ours_wall_seconds_2_threads": summary(ours_wall_2),
        "speedup_vs_scipy": min(scipy_cpu) / min(ours_cpu),
        "speedup_vs_scipy_median_cpu": med(scipy_cpu) / med(ours_cpu),
        "speedup_vs_scipy_median_wall": med(scipy_wall) / med(ours_wall),
        "max_abs_map_difference_mm": float((maps - torch.from_numpy(scipy_maps(batch, spacing))).abs().max()),
        "abs_loss_difference": abs(float(value) - float(ref)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="JSON file to write")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "kits23", help="KiTS23 shared folder")
    parser.add_argument("--case", default="case_00540",
                        help="label map for the main batch (default: tumor and cyst, 1 mm slices: 4 distinct maps)")
    parser.add_argument("--cyst-free-case", default="case_00513",
                        help="label map for the second batch (no cyst: mass == tumor, one map per sample reused)")
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats (median and min are reported)")
    parser.add_argument("--step-patch", type=int, default=64, help="patch edge for the measured training step")
    args = parser.parse_args()
    torch.set_num_threads(1)
    med = statistics.median

    scenarios = {}
    for name, case in (("main", args.case), ("cyst_free", args.cyst_free_case)):
        label_file = args.shared / "labels" / f"{case}.nii.gz"
        if label_file.is_file():
            batch, spacing, source = real_batch(label_file)
        elif name == "main":
            batch, spacing, source = synthetic_batch()
        else:
            continue
        if name == "main":
            main_batch = (batch, spacing)
        print(f"[{name}] batch {tuple(batch.shape)} from {source}; spacing {spacing} mm")
        scenarios[name] = {"source": source, "spacing_mm": list(spacing), **compare(batch, spacing, args.repeats)}
    main_run = scenarios["main"]
    ours_1 = main_run["ours_cpu_seconds_1_thread"]["min"]

    batch, spacing = main_batch
    p = args.step_patch
    small_target = torch.from_numpy(np.ascontiguousarray(batch[:, :, 32:32 + p, 32:32 + p, 32:32 + p]))
    small_logits = torch.randn(small_target.shape)
    small_times, _ = timed(lambda: BoundaryLoss(spacing)(small_logits, small_target), args.repeats, cpu=True)
    step_small = training_step_seconds(p, max(1, args.repeats // 2))
    scale = (PATCH / p) ** 3
    step_est = step_small * scale

    result = {
        "batch_shape": [2, 2, PATCH, PATCH, PATCH],
        "regions": ["mass (tumor+cyst)", "tumor"],
        "repeats": args.repeats,
        "torch_threads": 1,
        "speedup_vs_scipy": main_run["speedup_vs_scipy"],
        "timing": "speedup_vs_scipy and the goal use this process's CPU time, minimum over interleaved repeats "
                  "(every library on one thread), because the 2 cores were shared with other jobs; medians and "
                  "wall-clock figures are in the scenarios",
        "ours_cpu_seconds_1_thread_min": ours_1,
        "scipy_cpu_seconds_per_channel_min": main_run["scipy_cpu_seconds"]["min"] / 4,
        "goal": "speedup >= 7 and ours < 0.3 s on one core",
        "goal_met": bool(main_run["speedup_vs_scipy"] >= 7 and ours_1 < 0.3),
        "scenarios": scenarios,
        "training_step": {
            "what": f"CPU time of one forward+backward, nnU-Net default-style PlainConvUNet, batch 2 x 1 x {p}^3, 1 thread",
            "measured_step_seconds": step_small,
            "measured_loss_seconds_same_patch": med(small_times),
            "measured_share_same_patch": med(small_times) / (step_small + med(small_times)),
            "estimated_step_seconds_128": step_est,
            "estimated_share_128": ours_1 / (step_est + ours_1),
            "note": f"128^3 step = measured {p}^3 step x {scale:.0f} (linear in voxels): an estimate, CPU only; "
                    "on a GPU the step is far shorter and the CPU distance maps weigh more (not measured here)",
        },
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"{'scenario':<10}{'method':<32}{'cpu min':>8}{'cpu med':>8}{'wall med':>9}{'speedup':>9}")
    for name, run in scenarios.items():
        for label, key in (("scipy EDT (in+out per channel)", "scipy"), ("edt multi-label, 1 thread", "ours")):
            cpu_t = run[f"{key}_cpu_seconds" + ("_1_thread" if key == "ours" else "")]
            wall_t = run[f"{key}_wall_seconds" + ("_1_thread" if key == "ours" else "")]
            ratio = f"{run['speedup_vs_scipy']:>8.1f}x" if key == "ours" else ""
            print(f"{name if key == 'scipy' else '':<10}{label:<32}{cpu_t['min']:>8.3f}{cpu_t['median']:>8.3f}"
                  f"{wall_t['median']:>9.3f}{ratio}")
        print(f"{'':<10}{'edt multi-label, 2 threads':<32}{'':>16}{run['ours_wall_seconds_2_threads']['median']:>9.3f}")
        print(f"{'':<10}max |map difference| {run['max_abs_map_difference_mm']:.2e} mm, "
              f"|loss difference| {run['abs_loss_difference']:.2e}")
    print(f"goal (>= 7x and < 0.3 s on one core, CPU time): {result['goal_met']}")
    ts = result["training_step"]
    print(f"training step {p}^3: {step_small:.2f} s, loss {ts['measured_loss_seconds_same_patch']:.3f} s "
          f"(share {ts['measured_share_same_patch']:.1%}); 128^3 estimate: step {step_est:.1f} s, "
          f"share {ts['estimated_share_128']:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
