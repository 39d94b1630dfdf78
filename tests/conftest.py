"""Shared fixtures: small generated data, the optional real label maps in ../shared/kits23."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("nnUNet_def_n_proc", "2")
os.environ.setdefault("nnUNet_n_proc_DA", "2")
os.environ.setdefault("nnUNet_compile", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_KITS = Path(os.environ.get("KITS_SHARED", REPO.parent / "shared" / "kits23"))


def shared_labels() -> list[Path]:
    d = SHARED_KITS / "labels"
    return sorted(d.glob("case_*.nii.gz")) if d.is_dir() else []


@pytest.fixture(scope="session")
def shared_label_files() -> list[Path]:
    files = shared_labels()
    if not files:
        pytest.skip(f"real KiTS23 label maps not found in {SHARED_KITS / 'labels'} (optional ../shared)")
    return files
