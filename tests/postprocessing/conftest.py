"""Small generated label maps shared by the tests of ``kits_plugins.postprocessing``."""

from __future__ import annotations

import numpy as np
import pytest

from kits_plugins.utilities.image_io import Geometry

# KiTS-like header: permuted direction (slice axis last in numpy order), anisotropic, non-zero origin.
GEOM_DIRECTION = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0)


@pytest.fixture(scope="session")
def base_map():
    """``base_map(shape=(40, 40, 40))``: a label map with one kidney."""

    def base_map(shape=(40, 40, 40)) -> np.ndarray:
        """One kidney of 12^3 = 1728 voxels at [5:17]^3."""
        seg = np.zeros(shape, np.uint8)
        seg[5:17, 5:17, 5:17] = 1
        return seg

    return base_map


@pytest.fixture(scope="session")
def reasons():
    """``reasons(report)``: the reason of each removed component."""

    def reasons(report) -> list[str]:
        return [r.reason for r in report.removed]

    return reasons


@pytest.fixture(scope="session")
def kits_geometry():
    """``kits_geometry(shape_np)``: a KiTS-like header for a label map of that numpy shape."""

    def kits_geometry(shape_np) -> Geometry:
        return Geometry(
            origin=(-12.5, 30.25, 101.0), spacing=(2.5, 0.8, 0.7), direction=GEOM_DIRECTION, size=tuple(shape_np[::-1])
        )

    return kits_geometry


@pytest.fixture(scope="session")
def demo_case(base_map):
    """``demo_case()``: the kidney of ``base_map`` with a small tumor, a cyst outside it and a speck."""

    def demo_case() -> np.ndarray:
        seg = base_map()
        seg[6:9, 6:9, 6:8] = 2  # 18 voxels * 1.4 mm3 = 25.2 mm3
        seg[30:33, 30:33, 30:33] = 3  # outside
        seg[20, 20, 20] = 1  # speck
        return seg

    return demo_case
