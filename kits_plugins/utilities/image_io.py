"""Header-exact NIfTI I/O with SimpleITK.

Arrays are in SimpleITK's numpy order (the file's index axes reversed). ``Geometry`` keeps the header
exactly as SimpleITK reports it (origin, spacing, direction in ITK index order), so writing an array
with the geometry it was read with reproduces the header. Writes are atomic: a temporary file in the
destination folder is renamed at the end (:func:`kits_plugins.utilities.staging.atomic_path`), so an
interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import SupportsFloat, SupportsInt, cast

import numpy as np
import SimpleITK as sitk

from kits_plugins.errors import KitsInputError
from kits_plugins.utilities import gzip_check, staging


def float_triple(values: Iterable[SupportsFloat]) -> tuple[float, float, float]:
    """``tuple(float(v) for v in values)``, typed as the 3-vector of a 3-D header (the length is not checked:
    callers read 3-D images)."""
    return cast("tuple[float, float, float]", tuple(float(v) for v in values))


def int_triple(values: Iterable[SupportsInt]) -> tuple[int, int, int]:
    """``tuple(int(v) for v in values)``, typed as a 3-D size or shape (the length is not checked)."""
    return cast("tuple[int, int, int]", tuple(int(v) for v in values))


@dataclass(frozen=True)
class Geometry:
    """Physical header of a 3D image in SimpleITK convention (index order x, y, z; LPS)."""

    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 values, row-major
    size: tuple[int, int, int]  # SimpleITK size, index order

    @property
    def shape(self) -> tuple[int, int, int]:
        """Numpy array shape (reversed index order)."""
        return int_triple(self.size[::-1])

    @property
    def spacing_np(self) -> tuple[float, float, float]:
        """Spacing in numpy axis order (mm)."""
        return float_triple(self.spacing[::-1])

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    @classmethod
    def from_image(cls, image: sitk.Image) -> Geometry:
        return cls(
            origin=float_triple(image.GetOrigin()),
            spacing=float_triple(image.GetSpacing()),
            direction=tuple(float(v) for v in image.GetDirection()),
            size=int_triple(image.GetSize()),
        )

    def to_dict(self) -> dict:
        return {
            "origin": list(self.origin),
            "spacing": list(self.spacing),
            "direction": list(self.direction),
            "size": list(self.size),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Geometry:
        return cls(
            origin=float_triple(d["origin"]),
            spacing=float_triple(d["spacing"]),
            direction=tuple(float(v) for v in d["direction"]),
            size=int_triple(d["size"]),
        )

    def with_size(self, size_np: tuple[int, ...], start_np: tuple[int, ...] = (0, 0, 0)) -> Geometry:
        """Geometry of a sub-volume whose first voxel is ``start_np`` (numpy order) of this image."""
        index = np.asarray(start_np[::-1], dtype=np.float64)
        d = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        origin = np.asarray(self.origin) + d @ (index * np.asarray(self.spacing))
        return Geometry(
            origin=float_triple(origin),
            spacing=self.spacing,
            direction=self.direction,
            size=int_triple(size_np[::-1]),
        )

    def matches(self, other: Geometry, atol: float = 1e-4) -> bool:
        """Same size and (within ``atol``) the same origin, spacing and direction."""
        return (
            self.size == other.size
            and np.allclose(self.origin, other.origin, atol=atol)
            and np.allclose(self.spacing, other.spacing, atol=atol)
            and np.allclose(self.direction, other.direction, atol=atol)
        )

    def describe_mismatch(self, other: Geometry, atol: float = 1e-4) -> str:
        parts = []
        for name in ("size", "origin", "spacing", "direction"):
            a, b = getattr(self, name), getattr(other, name)
            if name == "size":
                if a != b:
                    parts.append(f"{name} {a} != {b}")
            elif not np.allclose(a, b, atol=atol):
                parts.append(f"{name} {tuple(round(v, 5) for v in a)} != {tuple(round(v, 5) for v in b)}")
        return ", ".join(parts)


def read_geometry(path: str | os.PathLike) -> Geometry:
    """Header only (no voxel data is read); a ``.nii.gz`` whose trailer disagrees with its header is an error."""
    gzip_check.check_before_read(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise KitsInputError(f"{path}: cannot read image header ({str(e).strip().splitlines()[-1]})") from None
    if reader.GetDimension() != 3:
        raise KitsInputError(f"{path}: expected a 3D image, got {reader.GetDimension()}D")
    return Geometry(
        origin=float_triple(reader.GetOrigin()),
        spacing=float_triple(reader.GetSpacing()),
        direction=tuple(float(v) for v in reader.GetDirection()),
        size=int_triple(reader.GetSize()),
    )


class ImageBackedArray(np.ndarray):
    """A numpy view of a SimpleITK image's pixel buffer that keeps the image alive (see ``read_image(view=True)``)."""

    _sitk_image: sitk.Image | None = None


def read_image(
    path: str | os.PathLike, dtype: np.dtype | type | None = None, view: bool = False
) -> tuple[np.ndarray, Geometry]:
    """Read a 3D single-component image as a numpy array (SimpleITK order) and its geometry.

    ``dtype`` converts on read (e.g. ``np.float32`` for CT) with a single copy; None keeps the stored type.
    ``view=True`` returns SimpleITK's own buffer without any copy (for read-only use of large volumes).
    A truncated or corrupt ``.nii.gz`` (ITK zero-fills it silently) is an error: see ``gzip_check``.
    """
    trailer = gzip_check.check_before_read(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise KitsInputError(f"{path}: cannot read image ({str(e).strip().splitlines()[-1]})") from None
    if image.GetDimension() != 3:
        raise KitsInputError(f"{path}: expected a 3D image, got {image.GetDimension()}D with size {image.GetSize()}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise KitsInputError(f"{path}: expected a single-component image, got {image.GetNumberOfComponentsPerPixel()}")
    geometry = Geometry.from_image(image)
    buffer = sitk.GetArrayViewFromImage(image)
    gzip_check.check_after_read(path, trailer, buffer)
    if dtype is not None and buffer.dtype != dtype:
        return buffer.astype(dtype), geometry
    if not view:
        return buffer.copy(), geometry
    array = buffer.view(ImageBackedArray)
    array._sitk_image = image
    return array, geometry


def read_label(path: str | os.PathLike, max_label: int = 3, view: bool = False) -> tuple[np.ndarray, Geometry]:
    """Read a label map as uint8 and check its values lie in 0..max_label (``view`` as in :func:`read_image`)."""
    array, geom = read_image(path, view=view)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise KitsInputError(f"{path}: label map has non-integer values")
    lo, hi = array.min(), array.max()
    if lo < 0 or hi > max_label:
        bad = np.unique(array[(array < 0) | (array > max_label)])[:10]
        raise KitsInputError(f"{path}: labels outside 0-{max_label}: {bad.tolist()}")
    return array.astype(np.uint8, copy=False), geom


def to_sitk(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    if array.ndim != 3:
        raise ValueError(f"expected a 3D array, got shape {array.shape}")
    if tuple(array.shape) != geometry.shape:
        raise ValueError(f"array shape {array.shape} does not match geometry shape {geometry.shape}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetOrigin(geometry.origin)
    image.SetSpacing(geometry.spacing)
    image.SetDirection(geometry.direction)
    return image


def atomic_write_sitk(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> None:
    """Write via a temporary file in the same folder and rename, so readers never see partial files."""
    with staging.atomic_path(path, keep_suffix=True) as tmp:
        sitk.WriteImage(image, tmp, useCompression=compress)


def write_image(array: np.ndarray, geometry: Geometry, path: str | os.PathLike, compress: bool = True) -> None:
    """Write ``array`` (SimpleITK numpy order) with exactly ``geometry``; atomic."""
    atomic_write_sitk(to_sitk(array, geometry), path, compress=compress)


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike, link: bool = True) -> None:
    """Hardlink ``src`` to ``dst`` where possible, else copy through a temporary name."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    with staging.atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
