"""Reading a CT: one policy for every command (``predict``, ``crop-rois``, ``derive-stages``, ``convert``).

A CT is kept as stored when float32 holds its values exactly in at most 4 bytes (KiTS23's int16: half the
memory of float32), else converted to float32. NaN or infinite intensities are rejected, naming the file:
no network output means anything on them. ITK's NIfTI reader turns NaN and inf into 0, so for NIfTI files
stored as floating point the stored values are checked with a reader that keeps them (nibabel, streamed in
chunks); integer CTs, the usual case, pay nothing.

A folder is a DICOM series (:mod:`kits_plugins.utilities.dicom_io`: header checks, then SimpleITK's series
reader, values in HU, int16 where lossless); the same NaN/inf policy applies to it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

import numpy as np

from kits_plugins.errors import KitsInputError
from kits_plugins.utilities.dicom_io import read_dicom_geometry, read_dicom_series
from kits_plugins.utilities.image_io import Geometry, read_geometry, read_image

#: CT types kept as stored by :func:`read_ct`: every value exact in float32, at most 4 bytes
NATIVE_CT_DTYPES = tuple(np.dtype(t) for t in (np.int8, np.uint8, np.int16, np.uint16, np.float32))
NIFTI_SUFFIXES = (".nii", ".nii.gz")
_CHUNK_BYTES = 1 << 24


def is_nifti(path: str | os.PathLike) -> bool:
    return str(path).endswith(NIFTI_SUFFIXES)


def first_nonfinite_slice(array: np.ndarray) -> int | None:
    """Index along axis 0 of the first slice holding NaN or inf (None if all finite); slab-wise, no full-size
    temporary."""
    if array.dtype.kind not in "fc":
        return None
    step = max(1, (1 << 24) // max(1, array[0].size)) if array.ndim > 1 else array.size or 1
    for z in range(0, array.shape[0], step):
        slab = array[z : z + step]
        if not np.isfinite(slab).all():
            return z + int(np.argmin(np.isfinite(slab).reshape(len(slab), -1).all(axis=1)))
    return None


def nifti_first_nonfinite_slice(path: str | os.PathLike) -> int | None:
    """For a NIfTI file stored as floating point: the first slice (numpy axis 0 of SimpleITK's array, the
    file's last index axis) whose *stored* values hold NaN or inf; None if none or if stored as integers."""
    import nibabel as nib
    from nibabel.arrayproxy import ArrayProxy
    from nibabel.openers import ImageOpener

    try:  # nibabel types its result as any image file and the data as any array: here a NIfTI image's file proxy
        proxy = cast(ArrayProxy, cast(nib.Nifti1Image, nib.load(str(path))).dataobj)
    except Exception as e:  # nibabel raises several types for unreadable headers
        raise KitsInputError(f"{path}: cannot read NIfTI header ({e})") from None
    dtype = np.dtype(proxy.dtype)
    if dtype.kind not in "fc":
        return None
    shape = tuple(int(n) for n in proxy.shape)
    per_slice = int(np.prod(shape[:-1] if len(shape) > 1 else (1,)))
    chunk = max(1, _CHUNK_BYTES // dtype.itemsize)
    total = int(np.prod(shape))
    with ImageOpener(str(path)) as f:
        f.seek(int(proxy.offset))
        done = 0
        while done < total:
            n = min(chunk, total - done)
            data = f.read(n * dtype.itemsize)
            values = np.frombuffer(data, dtype=dtype)
            finite = np.isfinite(values)
            if not finite.all():
                return (done + int(np.argmin(finite))) // per_slice
            if len(values) < n:  # short file: the integrity check reports it
                return None
            done += n
    return None


def check_ct_finite(path: str | os.PathLike, array: np.ndarray | None = None) -> None:
    """Reject NaN/inf in the CT ``path`` (``array``: the values already read, checked for non-NIfTI files)."""
    if is_nifti(path):
        z = nifti_first_nonfinite_slice(path)
    else:
        z = first_nonfinite_slice(array) if array is not None else None
    if z is not None:
        raise KitsInputError(f"{path}: CT contains NaN or infinite values (first in slice {z})")


def read_ct(path: str | os.PathLike, view: bool = False) -> tuple[np.ndarray, Geometry]:
    """A CT as stored (see :data:`NATIVE_CT_DTYPES`) or as float32, with its exact header; NaN/inf rejected.

    ``path`` is an image file or a folder holding one DICOM series (:func:`read_dicom_series`).

    ``view=True`` returns SimpleITK's own read-only buffer when the stored type is kept (no copy: for code that
    only crops from the CT); otherwise one copy is made, in the type kept.
    """
    if Path(path).is_dir():
        ct, g = read_dicom_series(path)  # a fresh array, already in a kept type
        check_ct_finite(Path(path), ct)
        return ct, g
    buffer, g = read_image(path, view=True)
    keep = buffer.dtype in NATIVE_CT_DTYPES
    ct = buffer if (view and keep) else np.array(buffer, dtype=buffer.dtype if keep else np.float32)
    del buffer
    if ct.dtype.kind == "f":
        check_ct_finite(Path(path), ct)
    return ct, g


def read_ct_geometry(path: str | os.PathLike) -> Geometry:
    """The header :func:`read_ct` gives for ``path`` (an image file or a DICOM series folder), without the voxels."""
    if Path(path).is_dir():
        return read_dicom_geometry(path)
    return read_geometry(path)


def compact_ct(ct: np.ndarray) -> np.ndarray:
    """CT values as int16 when that is lossless (integers within int16), else float32; never float64.

    Used for every CT crop written (training and inference crops alike): integer CTs in 8 or 16 bit are
    returned unchanged (no copy).
    """
    if ct.dtype in (np.int16, np.uint8, np.int8):
        return ct
    if np.issubdtype(ct.dtype, np.integer):
        if ct.size and ct.min() >= np.iinfo(np.int16).min and ct.max() <= np.iinfo(np.int16).max:
            return ct.astype(np.int16)
        return ct.astype(np.float32)
    lossless = True
    for sl in ct:  # slab by slab: no full-size temporaries
        if not (np.all(sl == np.round(sl)) and sl.min() >= -32768 and sl.max() <= 32767):
            lossless = False
            break
    return ct.astype(np.int16) if lossless else ct.astype(np.float32, copy=False)
