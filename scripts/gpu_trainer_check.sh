#!/usr/bin/env bash
# Device check of the cascade trainers on a CUDA machine (never run by the tests).
#
# Part "trainers": makes tiny synthetic stage datasets 221/222/223, plans them with `kits plan`, trains each trainer
# for a few iterations with `nnUNetv2_train ... -device cuda` and prints, per trainer: final train loss, the surface
# trainer's region/boundary components and boundary weight, and the wall time per training iteration. It trains the
# `_short` variants (subclasses with the production trainers' loss, network and transforms, only the schedule
# differs) because production trainers ignore the KITS_* schedule variables (see trainers.py).
#
# Part "timing": iteration time at nnU-Net's default 3d_fullres patch size for KiTS (128^3, batch 2, 6-stage U-Net
# 32-320) on a synthetic stage-223 dataset of 5 cases of 160^3 voxels, nnU-Net's data augmentation workers (DA, default 12):
# nnU-Net's plain region trainer (`nnUNetTrainer`: region Dice+BCE) against `nnUNetTrainerKiTSSurface` with the
# boundary term on (weight 0.5) and its distance maps in the workers, and the same with the maps computed in the main
# process (`distance_maps_in_workers = False`, the code before the maps moved to the workers). Per trainer: median and
# mean milliseconds per iteration (waiting for the batch + train_step, which ends with a device sync), the median wait
# for the batch, and whether the batch's maps arrive pinned.
#
# Usage: scripts/gpu_trainer_check.sh [WORKDIR]      (default: a fresh temporary folder)
# Env:   PARTS ("trainers timing"), KITS_ITERS (default 20), KITS_VAL_ITERS (5), KITS_EPOCHS (2), NP (preprocessing
#        workers, 4); timing: DA (augmentation workers, 12), TIMING_ITERS (60), TIMING_WARMUP (15), TIMING_PATCH (128),
#        DEVICE (cuda; "cpu" only for a dry run of the script's logic, e.g. TIMING_PATCH=32 DA=2 TIMING_ITERS=3)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${1:-$(mktemp -d -t kits_gpu_check.XXXXXX)}"
mkdir -p "$WORK"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
if [ -x "$REPO/.venv/bin/python" ] && [ -z "${VIRTUAL_ENV:-}" ]; then
  # shellcheck disable=SC1091
  . "$REPO/.venv/bin/activate"
fi
PARTS="${PARTS:-trainers timing}"
export DEVICE="${DEVICE:-cuda}"
if [ "$DEVICE" = cuda ]; then
  python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('GPU:', torch.cuda.get_device_name(0))"
fi
export nnUNet_extTrainer="$REPO/kits_plugins/training/ext_trainers"
export nnUNet_compile="${nnUNet_compile:-false}" nnUNet_def_n_proc="${NP:-4}"

if [[ " $PARTS " == *" trainers "* ]]; then
export nnUNet_raw="$WORK/raw" nnUNet_preprocessed="$WORK/preprocessed" nnUNet_results="$WORK/results"
export nnUNet_n_proc_DA="${nnUNet_n_proc_DA:-4}"
export KITS_EPOCHS="${KITS_EPOCHS:-2}" KITS_ITERS="${KITS_ITERS:-20}" KITS_VAL_ITERS="${KITS_VAL_ITERS:-5}"

# 1. tiny stage datasets: files of 96 x 96 x 48 voxels (slice axis last, KiTS23 direction) at 1.0 x 1.0 x 2.5 mm
python - <<'EOF'
import os
from kits_plugins.testing.tiny_datasets import write_tiny_stage_dataset
for d in (221, 222, 223):
    write_tiny_stage_dataset(os.environ["nnUNet_raw"], d, num_cases=5, shape=(96, 96, 48), spacing=(2.5, 1.0, 1.0), seed=d)
EOF

# 2. plan + preprocess at 1.5 x 1.0 x 1.0 mm (S-I, A-P, R-L); 221 gets 3d_lowres at 3.0 x 2.0 x 2.0 mm
python -m kits_plugins.cli plan -d 221 222 223 --target-spacing 1.5 1.0 1.0 --coarse-spacing 3.0 2.0 2.0 -np "${NP:-4}"

# 3. train each trainer for a few iterations on the GPU
run() {  # dataset configuration trainer
  local t0 t1
  t0=$(date +%s.%N)
  nnUNetv2_train "$1" "$2" 0 -tr "$3" -p kitsPlans -device "$DEVICE" > "$WORK/train_$3.log" 2>&1 \
    || { echo "FAILED: $3 (see $WORK/train_$3.log)"; tail -30 "$WORK/train_$3.log"; exit 1; }
  t1=$(date +%s.%N)
  echo "$3: nnUNetv2_train wall time $(python -c "print(round($t1 - $t0, 1))") s"
}
run 221 3d_lowres nnUNetTrainerKiTSCoarse_short
run 222 3d_fullres nnUNetTrainerKiTSFine_short
run 223 3d_fullres nnUNetTrainerKiTSSurface_short

# 4. summary from the checkpoints' logging
python - <<'EOF'
import glob, os
import numpy as np, torch
iters, val_iters = int(os.environ["KITS_ITERS"]), int(os.environ["KITS_VAL_ITERS"])
print(f"\n{'trainer':32s} {'loss':>8s} {'region':>8s} {'boundary':>9s} {'w':>5s} {'s/epoch':>8s} {'ms/iter':>8s}")
for ckpt_file in sorted(glob.glob(os.path.join(os.environ["nnUNet_results"], "*", "*", "fold_0", "checkpoint_final.pth"))):
    ck = torch.load(ckpt_file, map_location="cpu", weights_only=False)
    log = ck["logging"]
    epoch_s = np.array(log["epoch_end_timestamps"]) - np.array(log["epoch_start_timestamps"])
    # last epoch (after cudnn autotuning); train + validation iterations share the epoch time
    ms_iter = 1000 * epoch_s[-1] / (iters + val_iters)
    region = log.get("train_region_losses", [float("nan")])[-1]
    boundary = log.get("train_boundary_losses", [float("nan")])[-1]
    w = log.get("boundary_weights", [float("nan")])[-1]
    print(f"{ck['trainer_name']:32s} {log['train_losses'][-1]:8.4f} {region:8.4f} {boundary:9.4f} {w:5.2f} "
          f"{epoch_s[-1]:8.2f} {ms_iter:8.1f}")
    assert np.isfinite(log["train_losses"]).all(), f"non-finite loss in {ckpt_file}"
print(f"\nworkdir: {os.environ['nnUNet_results']}")
EOF
grep -h "boundary loss distance maps" "$WORK"/results/*/nnUNetTrainerKiTSSurface_short__*/fold_0/training_log_*.txt | head -1 || true
fi

if [[ " $PARTS " == *" timing "* ]]; then
# 5. iteration time at the default patch size: synthetic 223 cases of 160^3 voxels at 1 mm, planned at 1 mm (no
#    resampling), then the 3d_fullres plan set to nnU-Net's KiTS configuration: patch 128^3, batch 2, 6-stage U-Net
T="$WORK/patch128"
export nnUNet_raw="$T/raw" nnUNet_preprocessed="$T/preprocessed" nnUNet_results="$T/results"
export nnUNet_n_proc_DA="${DA:-12}" TIMING_ITERS="${TIMING_ITERS:-60}" TIMING_WARMUP="${TIMING_WARMUP:-15}"
export TIMING_PATCH="${TIMING_PATCH:-128}"
unset KITS_EPOCHS KITS_ITERS KITS_VAL_ITERS KITS_BOUNDARY_SCHEDULE  # production trainers: no warning lines
mkdir -p "$T"
python - <<'EOF'
import os
from kits_plugins.testing.tiny_datasets import write_tiny_stage_dataset
edge = int(os.environ["TIMING_PATCH"]) * 5 // 4
write_tiny_stage_dataset(os.environ["nnUNet_raw"], 223, num_cases=5, shape=(edge,) * 3, spacing=(1.0, 1.0, 1.0), seed=5)
EOF
python -m kits_plugins.cli plan -d 223 --target-spacing 1.0 1.0 1.0 -np "${NP:-4}" > "$T/plan.log" 2>&1 \
  || { echo "FAILED: kits plan (see $T/plan.log)"; tail -30 "$T/plan.log"; exit 1; }
python - <<'EOF'
import glob, json, os
from kits_plugins.testing.plans_builder import plain_unet_architecture
(plans_file,) = glob.glob(os.path.join(os.environ["nnUNet_preprocessed"], "Dataset223_*", "kitsPlans.json"))
plans = json.load(open(plans_file))
n = int(os.environ["TIMING_PATCH"])
config = plans["configurations"]["3d_fullres"]
widths = [32, 64, 128, 256, 320, 320][: max(3, n.bit_length() - 2)]  # 128 -> 6 stages (4-voxel bottleneck)
config.update(patch_size=[n] * 3, batch_size=2, architecture=plain_unet_architecture(widths))
json.dump(plans, open(plans_file, "w"), indent=1)
print(f"3d_fullres plan: patch {config['patch_size']}, batch 2, {len(widths)}-stage U-Net {widths}")
EOF
python - <<'EOF'
import os, statistics, time
import numpy as np, torch
from nnunetv2.run.run_training import get_trainer_from_args
from kits_plugins.training.transforms import DISTANCE_MAPS_KEY

device = torch.device(os.environ["DEVICE"])
iters, warmup = int(os.environ["TIMING_ITERS"]), int(os.environ["TIMING_WARMUP"])

def sync():
    if device.type == "cuda":
        torch.cuda.synchronize()

def time_trainer(name, maps_in_workers=None):
    """ms per iteration (batch wait + train_step) after warm-up; the surface trainer at boundary weight 0.5."""
    tr = get_trainer_from_args("223", "3d_fullres", 0, name, "kitsPlans", device=device)
    surface = maps_in_workers is not None
    if surface:
        tr.distance_maps_in_workers = maps_in_workers
    tr.on_train_start()
    tr.on_epoch_start()
    tr.on_train_epoch_start()
    if surface:
        tr.loss.boundary_weight = 0.5  # the term on, whatever the schedule says at epoch 0
    total, wait, boundary, pinned = [], [], [], None
    sync()
    for i in range(warmup + iters):
        t0 = time.perf_counter()
        batch = next(tr.dataloader_train)
        t1 = time.perf_counter()
        if DISTANCE_MAPS_KEY in batch:
            pinned = bool(batch[DISTANCE_MAPS_KEY].is_pinned() and batch["data"].is_pinned())
        out = tr.train_step(batch)  # ends with loss.cpu(): the step has run on the device
        sync()
        t2 = time.perf_counter()
        if i >= warmup:
            total.append(t2 - t0)
            wait.append(t1 - t0)
            boundary.append(out.get("boundary_loss", float("nan")))
    tr.on_train_end()  # checkpoint, workers shut down
    label = name + ("" if not surface else " (maps in workers)" if maps_in_workers else " (maps in main process)")
    return {"label": label, "median_ms": 1000 * statistics.median(total), "mean_ms": 1000 * statistics.fmean(total),
            "wait_ms": 1000 * statistics.median(wait), "pinned": pinned,
            "boundary": float(np.nanmean(boundary)) if surface else float("nan")}

rows = [time_trainer("nnUNetTrainer"), time_trainer("nnUNetTrainerKiTSSurface", True),
        time_trainer("nnUNetTrainerKiTSSurface", False)]
print(f"\niteration time, patch {os.environ['TIMING_PATCH']}^3, batch 2, {os.environ['nnUNet_n_proc_DA']} DA "
      f"workers, {iters} iterations after {warmup} warm-up, device {device}")
print(f"{'trainer':50s} {'median ms':>9s} {'mean ms':>8s} {'wait ms':>8s} {'x plain':>7s} {'maps pinned':>11s} "
      f"{'boundary':>9s}")
for r in rows:
    print(f"{r['label']:50s} {r['median_ms']:9.1f} {r['mean_ms']:8.1f} {r['wait_ms']:8.1f} "
          f"{r['median_ms'] / rows[0]['median_ms']:7.2f} {str(r['pinned']):>11s} {r['boundary']:9.4f}")
assert rows[1]["pinned"] or device.type != "cuda", "the worker maps did not arrive pinned"
assert np.isfinite(rows[1]["boundary"]) and np.isfinite(rows[2]["boundary"])
EOF
fi
