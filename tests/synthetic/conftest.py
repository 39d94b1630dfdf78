"""Fixtures shared by the tests of ``kits_plugins.synthetic``."""

from __future__ import annotations

import numpy as np
import pytest

from kits_plugins.utilities.image_io import Geometry


@pytest.fixture(scope="session")
def permuted_geometry():
    """``permuted_geometry(shape_np, perm, flips)``: a geometry whose direction permutes and flips the axes."""

    def _permuted_geometry(shape_np, perm, flips) -> Geometry:
        d = np.zeros((3, 3))
        d[np.arange(3), perm] = flips
        return Geometry((-12.5, 30.0, 101.25), (0.9, 1.6, 2.7), tuple(d.ravel()), tuple(shape_np[::-1]))

    return _permuted_geometry
