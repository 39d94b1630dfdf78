#!/usr/bin/env bash
# Device check of the cascade trainers on a CUDA machine (never run by the tests).
#
# Makes tiny synthetic stage datasets 221/222/223, plans them with `kits plan`, trains each trainer for a few
# iterations with `nnUNetv2_train ... -device cuda` and prints, per trainer: final train loss, the surface
# trainer's region/boundary components and boundary weight, and the wall time per training iteration.
# It trains the `_short` variants (subclasses with the production trainers' loss, network and transforms, only the
# schedule differs) because production trainers ignore the KITS_* schedule variables (see trainers.py).
#
# Usage: scripts/gpu_trainer_check.sh [WORKDIR]      (default: a fresh temporary folder)
# Env:   KITS_ITERS (default 20), KITS_VAL_ITERS (5), KITS_EPOCHS (2), NP (preprocessing workers, 4)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${1:-$(mktemp -d -t kits_gpu_check.XXXXXX)}"
mkdir -p "$WORK"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
if [ -x "$REPO/.venv/bin/python" ] && [ -z "${VIRTUAL_ENV:-}" ]; then
  # shellcheck disable=SC1091
  . "$REPO/.venv/bin/activate"
fi
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('GPU:', torch.cuda.get_device_name(0))"

export nnUNet_raw="$WORK/raw" nnUNet_preprocessed="$WORK/preprocessed" nnUNet_results="$WORK/results"
export nnUNet_extTrainer="$REPO/kits_plugins/training/ext_trainers"
export nnUNet_compile="${nnUNet_compile:-false}" nnUNet_n_proc_DA="${nnUNet_n_proc_DA:-4}" nnUNet_def_n_proc="${NP:-4}"
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
  nnUNetv2_train "$1" "$2" 0 -tr "$3" -p kitsPlans -device cuda > "$WORK/train_$3.log" 2>&1 \
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
