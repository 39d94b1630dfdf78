"""What elastic deformation would cost in the trainers' augmentation, and what the mask perturbation costs.

Elastic deformation is off in nnU-Net v2 (``p_elastic_deform=0``) and in the package's trainers; the ``_elastic``
variants turn it on (``trainers.ELASTIC``). CPU seconds (``time.process_time``, one thread: the cores are shared)
per batch at a KiTS-sized 3d_fullres patch (default 128^3, batch 2) on a CT-like synthetic sample of nnU-Net's
initial patch size (``get_patch_size`` with nnU-Net's 3D rotation range), interleaved repeats with the same seeds
per repeat:

- ``pipeline_default`` / ``pipeline_elastic_variant``: ``nnUNetTrainerKiTSSurface``'s whole training pipeline and
  ``nnUNetTrainerKiTSSurface_elastic``'s (probability 0.2 per sample, so its mean is noisy);
- ``spatial_never_elastic`` / ``spatial_always_elastic``: the ``SpatialTransform`` alone, elastic probability 0 and
  1 (the variant's scale and magnitude): their difference is the cost of one deformed sample;
- ``mask_perturbation``: ``PerturbChannelsTransform`` alone on a patch-sized binary mask (nnU-Net's probabilities).

    python benchmarks/elastic_deformation_cost.py --out benchmarks/results/elastic_deformation_cost.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path


def summary(values: list[float]) -> dict[str, float]:
    """Median, mean and minimum of CPU seconds."""
    return {"median": statistics.median(values), "mean": statistics.fmean(values), "min": min(values)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--patch", type=int, nargs=3, default=[128, 128, 128])
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--shared", default=None, help="unused (no real data needed); kept for the common interface")
    args = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"

    import numpy as np
    import torch
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
    from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size

    from kits_plugins.testing.tiny_datasets import tiny_case
    from kits_plugins.training.trainers import ELASTIC, nnUNetTrainerKiTSSurface, nnUNetTrainerKiTSSurface_elastic
    from kits_plugins.training.transforms import ElasticDeformation, PerturbChannelsTransform, with_elastic_deformation
    from kits_plugins.utilities.labels import encode_masses

    torch.set_num_threads(1)
    patch = tuple(args.patch)
    rotation = (-math.pi / 6, math.pi / 6)  # nnU-Net's 3D rotation range (30 degrees)
    initial = [int(s) for s in get_patch_size(patch, rotation, rotation, rotation, (0.85, 1.25))]
    ct, labels = tiny_case(initial, np.random.default_rng(0))
    image = torch.from_numpy(np.stack([(ct - 100.0) / 100.0, labels > 0]).astype(np.float32))
    seg = torch.from_numpy(encode_masses(labels)[None].astype(np.int16))
    ds_scales = [[0.5**k] * 3 for k in range(5)]

    def pipeline(cls):
        return cls.get_training_transforms(patch, rotation, ds_scales, (0, 1, 2), False, use_mask_for_norm=[False, False],
                                           regions=[(1, 2), (1,)])

    default = pipeline(nnUNetTrainerKiTSSurface)
    always = ElasticDeformation(p=1.0, scale=ELASTIC.scale, magnitude=ELASTIC.magnitude)
    spatial = [next(t for t in ts.transforms if isinstance(t, SpatialTransform))
               for ts in (default, with_elastic_deformation(default, always))]
    mask_patch = spatial[0](image=image.clone(), segmentation=seg.clone())["image"]
    mask_patch[1] = (mask_patch[1] > 0.5).float()
    inputs: dict[str, tuple[Callable[..., dict], torch.Tensor]] = {
        "pipeline_default": (default, image),
        "pipeline_elastic_variant": (pipeline(nnUNetTrainerKiTSSurface_elastic), image),
        "spatial_never_elastic": (spatial[0], image),
        "spatial_always_elastic": (spatial[1], image),
        "mask_perturbation": (PerturbChannelsTransform([1]), mask_patch),
    }

    def batch_seconds(transform: Callable[..., dict], img: torch.Tensor, seed: int) -> float:
        """CPU seconds of ``transform`` on ``args.batch_size`` samples (copies made outside the clock)."""
        np.random.seed(seed)
        torch.manual_seed(seed)
        total = 0.0
        for _ in range(args.batch_size):
            sample = {"image": img.clone(), "segmentation": seg.clone() if img is image else None}
            t0 = time.process_time()
            transform(**sample)
            total += time.process_time() - t0
        return total

    times: dict[str, list[float]] = {k: [] for k in inputs}
    for r in range(args.repeats):
        names = list(inputs)
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order between repeats
            times[name].append(batch_seconds(*inputs[name], seed=r))
        print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in times.items()), flush=True)

    differences = [a - n for a, n in zip(times["spatial_always_elastic"], times["spatial_never_elastic"], strict=True)]
    per_deformed_sample = statistics.fmean(differences) / args.batch_size  # a mean: it feeds an expectation
    expected_extra = ELASTIC.p * args.batch_size * per_deformed_sample
    pipeline_mean = statistics.fmean(times["pipeline_default"])
    result = {
        "command": "python " + " ".join(sys.argv),
        "what": "CPU seconds per batch of augmentation (one thread): surface trainer pipeline, its _elastic variant, "
                "the SpatialTransform without / with elastic deformation on every sample, the mask perturbation",
        "patch_size": list(patch), "initial_patch_size": initial, "batch_size": args.batch_size,
        "repeats": args.repeats, "torch_threads": 1,
        "elastic": {"p": ELASTIC.p, "scale_fraction_of_patch_edge": list(ELASTIC.scale),
                    "magnitude_fraction_of_sigma": list(ELASTIC.magnitude)},
        "per_batch_cpu_seconds": {k: summary(v) for k, v in times.items()},
        "elastic_seconds_per_deformed_sample": per_deformed_sample,
        "elastic_seconds_per_deformed_sample_median": statistics.median(differences) / args.batch_size,
        "elastic_expected_extra_seconds_per_batch": expected_extra,
        "elastic_expected_extra_share_of_pipeline": expected_extra / pipeline_mean,
        "mask_perturbation_share_of_pipeline": statistics.fmean(times["mask_perturbation"]) / pipeline_mean,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"pipeline {pipeline_mean:.2f} s/batch; elastic: {per_deformed_sample:.2f} s per deformed sample, "
          f"+{expected_extra:.2f} s/batch expected at p={ELASTIC.p} ({expected_extra / pipeline_mean:.0%}); "
          f"mask perturbation {result['mask_perturbation_share_of_pipeline']:.0%} of the pipeline")


if __name__ == "__main__":
    main()
