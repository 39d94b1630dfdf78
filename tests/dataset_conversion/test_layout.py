"""``kits_plugins.dataset_conversion.layout``: datasets staged by ``kits convert`` / ``kits derive-stages`` get the
umask's permissions (not mkdtemp's 0700), so other users of a shared cluster can read them, and a group-shared
(setgid) raw folder stays group-shared."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from kits_plugins.dataset_conversion.convert_kits23 import convert_kits23
from kits_plugins.dataset_conversion.derive_stages import derive_stages
from kits_plugins.utilities.image_io import Geometry, write_image

SHAPE = (40, 32, 12)  # numpy (file) order, slice axis last as in KiTS23
GEOMETRY = Geometry((-100.0, 30.0, 400.0), (2.5, 1.0, 1.0), (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0), SHAPE[::-1])


def _kits_layout(root: Path, num_cases: int = 2) -> Path:
    """``root/dataset/case_XXXXX/{imaging,segmentation}.nii.gz``: two kidneys (1), a tumor (2) in the first."""
    grid = np.ogrid[tuple(slice(0, n) for n in SHAPE)]
    for i in range(num_cases):
        lab = np.zeros(SHAPE, np.uint8)
        for c in ((10, 16, 6), (30, 16, 6)):
            lab[sum(((g - x) / r) ** 2 for g, x, r in zip(grid, c, (5, 6, 3))) <= 1] = 1
        lab[sum(((g - x) / r) ** 2 for g, x, r in zip(grid, (10, 16, 6), (2, 2, 1.5))) <= 1] = 2
        ct = np.array([-900, 40, 90], np.int16)[lab]
        write_image(ct, GEOMETRY, root / "dataset" / f"case_{i:05d}" / "imaging.nii.gz")
        write_image(lab, GEOMETRY, root / "dataset" / f"case_{i:05d}" / "segmentation.nii.gz")
    return root / "dataset"


@pytest.fixture
def umask():
    """Run the test under a given umask (``umask(value)``), restored afterwards."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def _modes(dataset: Path) -> tuple[set[int], set[int]]:
    """Permission bits of the dataset folder and every folder under it, and of every file under it."""
    dirs = {stat.S_IMODE(dataset.stat().st_mode)}
    files = set()
    for p in dataset.rglob("*"):
        (dirs if p.is_dir() else files).add(stat.S_IMODE(p.stat().st_mode))
    return dirs, files


@pytest.mark.parametrize(("mask", "dir_mode", "file_mode"), [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_converted_and_derived_datasets_follow_the_umask(tmp_path, umask, mask, dir_mode, file_mode):
    umask(mask)
    kits = _kits_layout(tmp_path)
    raw = tmp_path / "raw"
    target, skipped = convert_kits23(kits, raw=raw, num_processes=2)  # validation in worker_pool workers
    assert not skipped and sorted(p.name for p in (target / "imagesTr").iterdir()) == [
        "case_00000_0000.nii.gz", "case_00001_0000.nii.gz"]
    written = derive_stages(raw=raw, margin_mm=4.0, min_volume_mm3=10.0)
    for dataset in (target, *written.values()):
        for sub in ("imagesTr", "labelsTr"):
            assert stat.S_IMODE((dataset / sub).stat().st_mode) == dir_mode, dataset / sub
        dirs, files = _modes(dataset)
        assert dirs == {dir_mode}, dataset
        assert files == {file_mode}, dataset  # hardlinks (source written under the umask) and written files
    assert sorted(written) == [221, 222, 223]
    assert not [p.name for p in raw.iterdir() if p.name.startswith(".")]  # no staging or .old- folder left


def test_setgid_of_a_group_shared_raw_folder_is_kept(tmp_path, umask):
    umask(0o002)
    kits = _kits_layout(tmp_path, num_cases=1)
    raw = tmp_path / "raw"
    raw.mkdir()
    raw.chmod(0o2775)
    (raw / "probe").mkdir()
    if not (raw / "probe").stat().st_mode & stat.S_ISGID:
        pytest.skip("this filesystem does not inherit the setgid bit")
    (raw / "probe").rmdir()
    target, _ = convert_kits23(kits, raw=raw)
    assert stat.S_IMODE(target.stat().st_mode) == 0o2775
    target, _ = convert_kits23(kits, raw=raw, overwrite=True)  # through the .old- swap
    assert stat.S_IMODE(target.stat().st_mode) == 0o2775
    assert stat.S_IMODE((target / "imagesTr").stat().st_mode) == 0o2775
