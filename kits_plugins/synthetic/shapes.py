"""Small geometric building blocks for the phantoms, all in millimetres on rectilinear grids.

A grid is described by its per-axis coordinates in mm (``axes = (z_mm, y_mm, x_mm)``, 1D float32 arrays);
shapes are evaluated by broadcasting those 1D arrays, so a shape costs a handful of array operations on
the voxels of its bounding box only. Nothing here touches files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

Axes = tuple[np.ndarray, ...]  # (z_mm, y_mm, x_mm)


def rotation(axis: Sequence[float], angle: float) -> np.ndarray:
    """3x3 rotation matrix about ``axis`` by ``angle`` radians (Rodrigues)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def grid_axes(shape: Sequence[int], spacing: Sequence[float], step: Sequence[int] = (1, 1, 1)) -> Axes:
    """Coordinates (mm) of every ``step``-th voxel centre along each axis (voxel 0 at 0 mm).

    With step f > 1 the grid has ``ceil(n / f) + 1`` points, so the last one lies at or beyond the last
    voxel and :func:`upsample_axis` covers the whole fine grid.
    """
    out = []
    for n, s, f in zip(shape, spacing, step):
        m = n if f == 1 else -(-n // f) + 1
        out.append(np.arange(m, dtype=np.float32) * np.float32(f * s))
    return tuple(out)


def upsample_axis(a: np.ndarray, axis: int, f: int, n_out: int) -> np.ndarray:
    """Linear upsampling by the integer factor ``f`` along ``axis`` (point i*f of the output = point i)."""
    if f == 1:
        return a
    n = a.shape[axis]
    lo = [slice(None)] * a.ndim
    hi = [slice(None)] * a.ndim
    lo[axis], hi[axis] = slice(0, n - 1), slice(1, n)
    a_lo = np.expand_dims(a[tuple(lo)], axis + 1)
    w_shape = [1] * (a.ndim + 1)
    w_shape[axis + 1] = f
    w = (np.arange(f, dtype=np.float32) / np.float32(f)).reshape(w_shape)
    out = (np.expand_dims(a[tuple(hi)], axis + 1) - a_lo) * w
    out += a_lo
    shape = list(a.shape)
    shape[axis] = (n - 1) * f
    out = out.reshape(shape)
    keep = [slice(None)] * a.ndim
    keep[axis] = slice(0, n_out)
    return out[tuple(keep)]


def window(
    axes: Axes, lo_mm: Sequence[float] | np.ndarray, hi_mm: Sequence[float] | np.ndarray
) -> tuple[slice, ...] | None:
    """Index slices of the grid points whose coordinates lie in [lo_mm, hi_mm] per axis (None if empty)."""
    sl = []
    for a, lo, hi in zip(axes, lo_mm, hi_mm):
        i0 = int(np.searchsorted(a, lo, side="left"))
        i1 = int(np.searchsorted(a, hi, side="right"))
        if i1 <= i0:
            return None
        sl.append(slice(i0, i1))
    return tuple(sl)


def sub_axes(axes: Axes, sl: tuple[slice, ...]) -> Axes:
    return tuple(a[s] for a, s in zip(axes, sl))


@dataclass
class Ellipsoid:
    """Rotated ellipsoid with an optional lobulated surface.

    ``rot`` columns are the local axes in (z, y, x) mm; ``axes`` the semi-axes (mm) along them.
    ``lobes`` holds (amplitude, direction) pairs: the surface radius is scaled by
    ``1 + sum(amp * cos(k * angle to direction))``-like bumps, which makes organs and tumours less perfect.
    """

    center: np.ndarray
    semi: np.ndarray
    rot: np.ndarray = field(default_factory=lambda: np.eye(3))
    lobes: list[tuple[float, np.ndarray]] = field(default_factory=list)

    @property
    def radius(self) -> float:
        return float(np.max(self.semi) * (1 + sum(abs(a) for a, _ in self.lobes)))

    def window(self, axes: Axes, margin: float = 1.0) -> tuple[slice, ...] | None:
        r = self.radius * margin
        return window(axes, self.center - r, self.center + r)

    def local(self, axes: Axes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Local coordinates (mm) of the grid points along the ellipsoid's axes (broadcast 3D arrays)."""
        dz = (axes[0] - np.float32(self.center[0]))[:, None, None]
        dy = (axes[1] - np.float32(self.center[1]))[None, :, None]
        dx = (axes[2] - np.float32(self.center[2]))[None, None, :]
        r = self.rot.astype(np.float32)
        return tuple(dz * r[0, k] + dy * r[1, k] + dx * r[2, k] for k in range(3))

    def norm2(self, axes: Axes) -> np.ndarray:
        """Squared normalised radius: < 1 inside (float32, shape of the grid)."""
        u, v, w = self.local(axes)
        a, b, c = (np.float32(s) for s in self.semi)
        f = (u / a) ** 2 + (v / b) ** 2 + (w / c) ** 2
        if self.lobes:
            length = np.sqrt(u * u + v * v + w * w) + np.float32(1e-3)
            bump = np.ones_like(f)
            for amp, d in self.lobes:
                cos = (u * np.float32(d[0]) + v * np.float32(d[1]) + w * np.float32(d[2])) / length
                bump += np.float32(amp) * (np.float32(2) * cos * cos - np.float32(1))
            f /= bump * bump
        return f


def random_lobes(rng: np.random.Generator, n: int, amplitude: float) -> list[tuple[float, np.ndarray]]:
    """``n`` random surface bumps of up to ``amplitude`` (relative radius)."""
    out = []
    for _ in range(n):
        d = rng.normal(size=3)
        out.append((float(rng.uniform(-amplitude, amplitude)), d / np.linalg.norm(d)))
    return out


def interp_axis(arr: np.ndarray, axis: int, pos: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``arr`` along ``axis`` at fractional index positions ``pos`` (clamped)."""
    n = arr.shape[axis]
    pos = np.clip(np.asarray(pos, dtype=np.float32), 0, n - 1)
    i0 = np.minimum(pos.astype(np.int64), max(n - 2, 0))
    w = (pos - i0).astype(np.float32)
    i1 = np.minimum(i0 + 1, n - 1)
    shape = [1] * arr.ndim
    shape[axis] = -1
    w = w.reshape(shape)
    a0 = np.take(arr, i0, axis=axis)
    a1 = np.take(arr, i1, axis=axis)
    a1 -= a0
    a1 *= w
    a0 += a1
    return a0


def sample_separable(arr: np.ndarray, positions: Sequence[np.ndarray]) -> np.ndarray:
    """Trilinear sampling of ``arr`` on the rectilinear grid given by fractional index ``positions`` per axis.

    Axes are processed so that the array grows as late as possible (cheapest order).
    """
    out = arr
    ratios = [len(p) / max(s, 1) for p, s in zip(positions, arr.shape)]
    for axis in np.argsort(ratios):
        p = positions[axis]
        if len(p) == out.shape[axis] and np.array_equal(p, np.arange(len(p))):
            continue
        out = interp_axis(out, int(axis), p)
    return out.astype(np.float32, copy=False)


def smooth_noise(
    rng: np.random.Generator, extent_mm: Sequence[float], size_mm: float, oversample: int = 1
) -> tuple[np.ndarray, float]:
    """Unit-variance random field with blobs about ``size_mm`` across, covering ``extent_mm``.

    Returns (lattice, pitch); sample it anywhere with :func:`sample_noise`. The lattice pitch is
    ``size_mm / 2 / oversample`` and it is smoothed with sigma = ``oversample`` lattice units, so
    ``oversample`` > 1 gives rounder blobs (linear interpolation of a coarse lattice looks faceted).
    """
    pitch = size_mm / 2 / oversample
    shape = tuple(int(np.ceil(e / pitch)) + 4 for e in extent_mm)
    f = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), float(oversample), mode="wrap")
    f /= max(float(f.std()), 1e-6)
    return f, float(pitch)


def sample_noise(noise: tuple[np.ndarray, float], axes: Axes) -> np.ndarray:
    """Sample a :func:`smooth_noise` field at the grid points ``axes`` (mm)."""
    f, pitch = noise
    return sample_separable(f, [a / np.float32(pitch) + 2 for a in axes])


def sample_noise_at(noise: tuple[np.ndarray, float], points_mm: Sequence[np.ndarray]) -> np.ndarray:
    """Sample a :func:`smooth_noise` field at scattered points (three 1D coordinate arrays, mm)."""
    f, pitch = noise
    pos = np.stack([np.asarray(p, dtype=np.float32) / np.float32(pitch) + 2 for p in points_mm])
    return ndimage.map_coordinates(f, pos, order=1, mode="nearest", prefilter=False).astype(np.float32, copy=False)


def disk2d(y: np.ndarray, x: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    """2D ellipse mask on the (y, x) grid given by 1D coordinate arrays (mm)."""
    return (((y - cy) / ry) ** 2)[:, None] + (((x - cx) / rx) ** 2)[None, :] < 1


def segment_distance(axes: Axes, p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """Distance (mm) from every grid point to the segment p0-p1 (all in (z, y, x) mm)."""
    d = (p1 - p0).astype(np.float32)
    length2 = float(d @ d) + 1e-6
    rel = [(a - np.float32(p)) for a, p in zip(axes, p0)]
    rz, ry, rx = rel[0][:, None, None], rel[1][None, :, None], rel[2][None, None, :]
    t = np.clip((rz * d[0] + ry * d[1] + rx * d[2]) / np.float32(length2), 0, 1)
    return np.sqrt((rz - t * d[0]) ** 2 + (ry - t * d[1]) ** 2 + (rx - t * d[2]) ** 2)
