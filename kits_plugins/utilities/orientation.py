"""Map arrays between file order (SimpleITK numpy order) and nnU-Net's ``NibabelIOWithReorient`` order.

The datasets this package writes are read by nnU-Net with ``NibabelIOWithReorient`` (as nnU-Net's own
KiTS23 converter does): the image is reoriented to RAS and transposed, so nnU-Net's numpy axes are
(superior-inferior, anterior-posterior, right-left) whatever the file's direction matrix. Our own code
reads and writes with SimpleITK (exact headers). These pure functions convert between the two orders
with views only (transposes and flips), computed from the direction matrix alone, exactly as nibabel's
``io_orientation`` / ``as_reoriented`` do it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

if TYPE_CHECKING:
    from kits_plugins.utilities.image_io import Geometry

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Reorientation:
    """Axis permutation and flips from file order to nnU-Net order (and back)."""

    ornt: np.ndarray  # nibabel orientation of the file's index axes (i, j, k)

    @classmethod
    def from_direction(cls, direction: Sequence[float], spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> Reorientation:
        """From a SimpleITK direction (9 values, row-major) and spacing (index order)."""
        d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
        affine = np.eye(4)
        affine[:3, :3] = _LPS_TO_RAS @ d @ np.diag(np.asarray(spacing, dtype=np.float64))
        return cls(io_orientation(affine))

    @classmethod
    def from_geometry(cls, geometry: Geometry) -> Reorientation:
        return cls.from_direction(geometry.direction, geometry.spacing)

    def to_nnunet(self, array: np.ndarray) -> np.ndarray:
        """File-order array (SimpleITK numpy order, optional leading channel axis) -> nnU-Net order (view)."""
        if array.ndim == 4:
            return np.stack([self.to_nnunet(a) for a in array])
        return apply_orientation(array.transpose(), self.ornt).transpose()

    def from_nnunet(self, array: np.ndarray) -> np.ndarray:
        """nnU-Net-order array -> file order (view). Inverse of :meth:`to_nnunet`."""
        if array.ndim == 4:
            return np.stack([self.from_nnunet(a) for a in array])
        back = ornt_transform(axcodes2ornt("RAS"), self.ornt)
        return apply_orientation(array.transpose(), back).transpose()

    def spacing_to_nnunet(self, spacing_np: Sequence[float]) -> tuple[float, float, float]:
        """Spacing in file numpy order -> spacing in nnU-Net numpy order."""
        index_spacing = np.asarray(spacing_np, dtype=np.float64)[::-1]  # (i, j, k)
        ras = np.empty(3)
        for axis, (target, _flip) in enumerate(self.ornt):
            ras[int(target)] = index_spacing[axis]
        return float(ras[2]), float(ras[1]), float(ras[0])

    @property
    def axis_map(self) -> tuple[tuple[int, bool], ...]:
        """For each file numpy axis: (the nnU-Net numpy axis it becomes, whether it is flipped)."""
        out = []
        for n in range(3):
            target, flip = self.ornt[2 - n]
            out.append((2 - int(target), bool(flip < 0)))
        return tuple(out)

    def box_to_nnunet(self, box: Sequence[Sequence[int]], shape_np: Sequence[int]) -> list[list[int]]:
        """A half-open box in file order (on an array of ``shape_np``) -> the same voxels' box in nnU-Net order."""
        out: list[list[int]] = [[0, 0]] * 3
        for (a, b), n, (target, flipped) in zip(box, shape_np, self.axis_map):
            out[target] = [int(n) - int(b), int(n) - int(a)] if flipped else [int(a), int(b)]
        return out

    def box_from_nnunet(self, box: Sequence[Sequence[int]], shape_nn: Sequence[int]) -> list[list[int]]:
        """A half-open box in nnU-Net order (on an array of ``shape_nn``) -> the same voxels' box in file order."""
        out = []
        for target, flipped in self.axis_map:
            a, b = (int(v) for v in box[target])
            out.append([int(shape_nn[target]) - b, int(shape_nn[target]) - a] if flipped else [a, b])
        return out
