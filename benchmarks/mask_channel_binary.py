"""How much of stage 223's kidney-mask input channel stays binary through training augmentation, and how often the
train-as-you-infer perturbation changes it.

Baseline: nnU-Net's stock ``nnUNetTrainer.get_training_transforms``; ours: ``nnUNetTrainerKiTSSurface``'s. Both
run in the same process on the same nnU-Net dataloader over a small synthetic 223 dataset (written with
``kits_plugins.testing.tiny_datasets`` and planned with ``kits plan``'s Python API), same seeds. ``perturbed_fraction``:
share of samples whose mask channel differs from the same sample's mask just before ``PerturbChannelsTransform``
(moved by the spatial transform, thresholded, mirrored), recorded in the same pipeline.

    python benchmarks/mask_channel_binary.py --out benchmarks/results/mask_channel_binary.json [--batches 50]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--batches", type=int, default=50)
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--shared", default=None, help="unused (no real data needed); kept for the common interface")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="kits_maskbench_"))
    os.environ.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "pre"),
                      nnUNet_results=str(root / "results"), nnUNet_n_proc_DA="0", nnUNet_def_n_proc="1",
                      nnUNet_compile="false")
    from kits_plugins.training.commands import trainer_path

    os.environ["nnUNet_extTrainer"] = str(trainer_path())

    import numpy as np
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from kits_plugins.planning.planning import plan_and_preprocess
    from kits_plugins.testing.tiny_datasets import write_tiny_stage_dataset
    from kits_plugins.training.transforms import PerturbChannelsTransform

    torch.set_num_threads(1)
    write_tiny_stage_dataset(root / "raw", 223, num_cases=args.cases, seed=223)
    plan_and_preprocess([223], target_spacing=(2.0, 1.5, 1.5), num_processes=1)
    tr = get_trainer_from_args("223", "3d_fullres", "all", "nnUNetTrainerKiTSSurface", "kitsPlans",
                               device=torch.device("cpu"))
    tr.initialize()
    dl, _ = tr.get_dataloaders()
    before: list = []  # each sample's mask channel just before the perturbation

    def record(**data_dict) -> dict:
        before.append(data_dict["image"][1].clone())
        return data_dict

    ts = dl.data_loader.transforms.transforms
    ts.insert(next(i for i, t in enumerate(ts) if isinstance(t, PerturbChannelsTransform)), record)

    def non_binary_fraction(perturbation: bool = True) -> tuple[float, int, int]:
        """Non-binary share of mask voxels; samples, and samples whose mask the perturbation changed."""
        torch.manual_seed(0)
        np.random.seed(0)
        before.clear()
        bad = total = samples = changed = 0
        for _ in range(args.batches):
            mask = next(dl)["data"][:, 1]
            bad += int(((mask != 0) & (mask != 1)).sum())
            total += mask.numel()
            samples += len(mask)
            if perturbation:
                changed += sum(not torch.equal(m, b) for m, b in zip(mask, before[-len(mask):], strict=True))
        return bad / total, samples, changed

    ours, samples, perturbed = non_binary_fraction()
    rot, dummy_2d, _, mirror = tr.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    dl.data_loader.transforms = nnUNetTrainer.get_training_transforms(
        tr.configuration_manager.patch_size, rot, tr._get_deep_supervision_scales(), mirror, dummy_2d,
        use_mask_for_norm=tr.configuration_manager.use_mask_for_norm, regions=tr.label_manager.foreground_regions)
    stock = non_binary_fraction(perturbation=False)[0]
    result = {
        "command": "python " + " ".join(sys.argv),
        "what": "fraction of kidney-mask (input channel 1) voxels that are not exactly 0 or 1 after augmentation",
        "batches": args.batches, "batch_size": int(tr.batch_size), "patch_size": list(tr.configuration_manager.patch_size),
        "cases": args.cases, "stock_nnunet_transforms": stock, "nnUNetTrainerKiTSSurface": ours,
        "non_binary_ratio_ours_over_stock": ours / stock if stock else None,
        "perturbed_fraction": perturbed / samples,
        "perturbed_what": "share of samples whose mask channel nnU-Net's cascade perturbation changed "
                          "(nnUNetTrainerKiTSSurface, same batches)",
        "samples": samples, "perturbed_samples": perturbed,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"non-binary mask voxels: stock nnU-Net {stock:.1%}, nnUNetTrainerKiTSSurface {ours:.1%}; "
          f"perturbed masks {perturbed}/{samples} = {perturbed / samples:.1%}")


if __name__ == "__main__":
    main()
