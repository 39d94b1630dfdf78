"""Fixtures shared by the tests of ``kits_plugins.utilities``."""

from __future__ import annotations

import numpy as np
import pytest

from kits_plugins.utilities.image_io import Geometry


@pytest.fixture(scope="session")
def random_nifti_geometry():
    """``random_nifti_geometry(rng, shape)``: a random axis permutation and flips, origin and spacing float32-exact
    (as headers read from NIfTI are)."""

    def _random_geometry(rng, shape) -> Geometry:
        perm, sign = rng.permutation(3), rng.choice([-1.0, 1.0], 3)
        d = np.zeros((3, 3))
        d[np.arange(3), perm] = sign
        f32 = lambda v: tuple(float(np.float32(x)) for x in v)  # noqa: E731  (headers read from NIfTI are float32)
        return Geometry(f32((-17.3, 102.9, 55.1)), f32((0.8, 1.1, 2.5)), tuple(d.ravel()), tuple(shape[::-1]))

    return _random_geometry
