"""KiTS-layout folders generated for the tests of ``kits_plugins.dataset_conversion`` (KiTS23's permuted direction),
and their conversion into Dataset220."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kits_plugins.dataset_conversion.convert_kits23 import convert_kits23
from kits_plugins.utilities.image_io import Geometry, write_image

KITS_DIRECTION = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0)
SHAPE = (56, 36, 16)  # numpy (file) order; the last axis is the slice axis as in KiTS23
SPACING = (2.5, 0.8, 0.8)  # SimpleITK index order: slice spacing first


@pytest.fixture(scope="session")
def case_geometry():
    """``case_geometry(origin=...)``: the geometry of the generated cases."""

    def _geometry(origin=(-120.0, 35.5, 410.0)) -> Geometry:
        return Geometry(origin, SPACING, KITS_DIRECTION, SHAPE[::-1])

    return _geometry


@pytest.fixture(scope="session")
def make_label(ellipsoid_mask):
    """``make_label(kind="two")``: a label map of the generated cases."""

    def make_label(kind: str = "two") -> np.ndarray:
        """Kidneys with tumor (2) and cyst (3). kind: two | solitary | border | close (boxes merge)."""
        lab = np.zeros(SHAPE, np.uint8)
        centers = {
            "two": [(10, 18, 8), (46, 18, 8)],
            "solitary": [(28, 18, 8)],
            "border": [(2, 18, 14), (46, 18, 8)],
            "close": [(20, 18, 8), (30, 18, 8)],
        }[kind]
        for c in centers:
            lab[ellipsoid_mask(SHAPE, c, (4, 5, 2.5))] = 1
        c = centers[0]
        lab[ellipsoid_mask(SHAPE, c, (1.5, 2, 1.2))] = 2
        lab[ellipsoid_mask(SHAPE, (c[0], c[1] + 3, c[2]), (1, 1, 1))] = 3
        return lab

    return make_label


@pytest.fixture(scope="session")
def make_ct():
    """``make_ct(label, seed=0)``: an int16 CT-like image of a label map."""

    def make_ct(label: np.ndarray, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        ct = np.array([-900, 40, 90, 10], np.int16)[label] + rng.integers(-20, 20, label.shape).astype(np.int16)
        return ct

    return make_ct


@pytest.fixture(scope="session")
def make_kits_dir(make_label, make_ct, case_geometry):
    """``make_kits_dir(root, kinds=...)``: ``root/kits23/dataset/case_XXXXX/{imaging,segmentation}.nii.gz``, one case
    per kind of ``make_label``."""

    def make_kits_dir(root: Path, kinds=("two", "solitary", "border", "close")) -> Path:
        kits = root / "kits23" / "dataset"
        for i, kind in enumerate(kinds):
            case = kits / f"case_{i:05d}"
            lab = make_label(kind)
            g = case_geometry(origin=(-120.0 + i, 35.5, 410.0 - 2 * i))
            write_image(make_ct(lab, i), g, case / "imaging.nii.gz")
            write_image(lab, g, case / "segmentation.nii.gz")
        return kits

    return make_kits_dir


@pytest.fixture(scope="package")
def raw_with_220(tmp_path_factory, make_kits_dir):
    """A KiTS-layout folder of four cases and its conversion into Dataset220 (built once for this folder's tests)."""
    root = tmp_path_factory.mktemp("conv")
    kits = make_kits_dir(root)
    raw = root / "raw"
    target, skipped = convert_kits23(kits.parent, raw=raw)
    assert not skipped
    return kits, raw, target


@pytest.fixture(scope="session")
def link_raw():
    """``link_raw(folder, raw, *datasets)``: a new raw folder ``folder`` whose ``datasets`` (folder names) are symlinks
    to those of ``raw``, so a test derives into it without touching (or reading outputs of) other tests."""

    def link_raw(folder: Path, raw: Path, *datasets: str) -> Path:
        folder.mkdir(parents=True)
        for name in datasets:
            (folder / name).symlink_to(raw / name, target_is_directory=True)
        return folder

    return link_raw
