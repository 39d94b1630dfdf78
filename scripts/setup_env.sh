#!/usr/bin/env bash
# Idempotent setup: creates .venv (or $KITS_VENV) and installs kits-cascade with its test tools.
# PyTorch: GPU users install the build for their CUDA into the venv first (see README); if torch is
# already importable it is left alone. Otherwise we install the torch/torchvision pair that matches
# (torchvision must match torch, or nnU-Net's trainer lookup fails on `torchvision::nms`).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${KITS_VENV:-.venv}"
PY="${PYTHON:-python3}"
TORCH_SPEC="${KITS_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
STAMP="$VENV/.kits-installed"
want="$(cat pyproject.toml scripts/setup_env.sh | sha256sum | cut -c1-16)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    exit 0
fi
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "[setup] creating $VENV with $("$PY" --version)"
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
    echo "[setup] installing $TORCH_SPEC (a few minutes)"
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip install -q $TORCH_SPEC
fi
echo "[setup] installing kits-cascade and test tools"
"$VENV/bin/python" -m pip install -q -e ".[dev]"
echo "$want" > "$STAMP"
echo "[setup] done: $VENV"
