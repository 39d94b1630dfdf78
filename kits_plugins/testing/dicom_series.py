"""Write a CT volume as a DICOM series with SimpleITK, for tests of DICOM input and DICOM SEG output.

One file per slice along SimpleITK's third index axis (numpy axis 0), with the tags a CT series reader needs:
modality, study / series / frame-of-reference UIDs, patient id, series number, image orientation and position,
pixel spacing, slice thickness, instance number, rescale 1 / 0. The direction's third column must be the cross
product of the first two (a right-handed, DICOM-like direction), else a reader builds another (flipped) grid.
"""

from __future__ import annotations

import contextlib
import locale
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from kits_plugins.utilities.image_io import Geometry, to_sitk

UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's example root for generated UIDs


def new_uid(seed: int) -> str:
    return f"{UID_ROOT}{int(time.time())}.{os.getpid()}.{seed}"



@contextlib.contextmanager
def kept_locale() -> Iterator[None]:
    """GDCM's DICOM writer sets the process locale to "C" (measured: Python's preferred encoding becomes ASCII and
    a later ``read_text()`` of UTF-8 fails); restore it."""
    saved = locale.setlocale(locale.LC_ALL, None)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def write_dicom_series(
    array: np.ndarray,
    geometry: Geometry,
    folder: str | os.PathLike,
    modality: str = "CT",
    patient_id: str = "ANON0001",
    series_number: int = 1,
    series_uid: str | None = None,
    study_uid: str | None = None,
    extra_tags: Mapping[str, str] | None = None,
    prefix: str = "slice",
    slice_tags: Mapping[int, Mapping[str, str]] | None = None,
) -> list[Path]:
    """``array`` (int16, numpy order z, y, x) with ``geometry`` -> ``folder/<prefix>_NNNN.dcm``; returns the files
    in slice order. ``extra_tags`` ("gggg|eeee" -> value) overrides or adds tags on every slice, ``slice_tags``
    (slice index -> tags) on single slices, after every other tag (e.g. "0020|0032" to fake a tilt or a gap)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    image = to_sitk(np.asarray(array, dtype=np.int16), geometry)
    d = geometry.direction
    orientation = "\\".join(f"{v:.10g}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    series_uid = series_uid or new_uid(series_number)
    study_uid = study_uid or new_uid(10_000 + series_number)
    frame_uid = new_uid(20_000 + series_number)
    common = {
        "0008|0060": modality,
        "0008|0016": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
        "0010|0010": "Phantom^Test",
        "0010|0020": patient_id,
        "0020|000d": study_uid,
        "0020|000e": series_uid,
        "0020|0052": frame_uid,
        "0020|0011": str(series_number),
        "0008|103e": "kits-cascade test series",
        "0020|0037": orientation,
        "0018|0050": f"{geometry.spacing[2]:.10g}",
        "0028|1053": "1",
        "0028|1052": "0",
        **dict(extra_tags or {}),
    }
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    files = []
    for k in range(image.GetDepth()):
        s = image[:, :, k]
        for tag, value in common.items():
            s.SetMetaData(tag, value)
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        s.SetMetaData("0020|0032", "\\".join(f"{v:.10g}" for v in position))
        s.SetMetaData("0020|0013", str(k + 1))
        s.SetMetaData("0008|0018", f"{series_uid}.{k + 1}")
        for tag, value in (slice_tags or {}).get(k, {}).items():
            s.SetMetaData(tag, value)
        path = folder / f"{prefix}_{k:04d}.dcm"
        writer.SetFileName(str(path))
        with kept_locale():
            writer.Execute(s)
        files.append(path)
    return files
