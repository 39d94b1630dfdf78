"""Fixtures shared by the tests of ``kits_plugins.losses``."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def ellipsoid():
    """``ellipsoid(shape=(12, 24, 24), radii=(3.5, 7.0, 8.0), center=None)``: boolean mask, True inside (voxels);
    centred by default."""

    def ellipsoid(shape=(12, 24, 24), radii=(3.5, 7.0, 8.0), center=None) -> np.ndarray:
        center = [s / 2 - 0.5 for s in shape] if center is None else center
        grid = np.ogrid[tuple(slice(0, s) for s in shape)]
        return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii)) <= 1.0

    return ellipsoid
