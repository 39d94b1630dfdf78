"""Shared fixtures: small generated data, the optional real label maps in ../shared/kits23.

Tests mirror the package: ``kits_plugins/<pkg>/<mod>.py`` is tested in ``tests/<pkg>/test_<mod>.py`` (``cli.py`` in
``tests/test_cli.py``; ``tests/test_architecture.py`` checks whole-package rules). A test that runs one ``kits``
subcommand through ``kits_plugins.cli.main`` goes with the module that implements what it checks, usually the library
module the stage's ``run_<name>`` calls (``kits evaluate`` -> ``tests/evaluation/test_evaluate.py``); only behaviour
written in a ``commands`` module itself goes to ``tests/<pkg>/test_commands.py``. Helpers shared by several test
files are fixtures in the nearest ``conftest.py``; test files never import each other.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
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


@pytest.fixture(scope="session")
def ellipsoid_mask():
    """``ellipsoid_mask(shape, center, radii)``: boolean array, True inside the axis-aligned ellipsoid (voxels)."""

    def _ellipsoid(shape, center, radii):
        grid = np.ogrid[tuple(slice(0, n) for n in shape)]
        return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii)) <= 1.0

    return _ellipsoid


@pytest.fixture(scope="session")
def kidneys_with_tumors(ellipsoid_mask):
    """``kidneys_with_tumors(shape, centers, radii=(6, 7, 4))``: uint8 label map, one kidney (1) per centre with a
    small tumor (2) at its centre."""

    def _label(shape, centers, radii=(6, 7, 4)) -> np.ndarray:
        lab = np.zeros(shape, np.uint8)
        for c in centers:
            lab[ellipsoid_mask(shape, c, radii)] = 1
            lab[ellipsoid_mask(shape, c, (2, 2, 1.5))] = 2
        return lab

    return _label
