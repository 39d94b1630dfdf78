"""DICOM CT input: finding series, naming them, checking them from their headers, reading them with SimpleITK.

One series per folder: ``kits predict -i`` takes a folder holding the files of one DICOM series, or a folder
whose immediate subfolders each hold one (:func:`find_dicom_series`). A file is DICOM when it has the ``DICM``
marker at byte 128, or, for names without a suffix or ending ``.dcm`` / ``.dicom`` / ``.ima`` / ``.<digits>``,
when pydicom reads a SeriesInstanceUID from it; other files (and names starting with ``.``) are ignored, and so
is a ``DICOMDIR`` (an index of files).

Every check runs on the headers (pydicom, pixel data skipped) before a voxel is read, and each failure is one
:class:`~kits_plugins.errors.KitsInputError` naming the folder (:func:`check_series`): unreadable or truncated
files, several series in one folder, a modality other than CT, multi-frame files, missing geometry tags, fewer
than 2 slices, mixed image sizes, orientations or pixel spacings, gantry tilt, duplicate, missing or unevenly
spaced slices. The voxels are then read by SimpleITK's series reader in the order of
``ImageSeriesReader.GetGDCMSeriesFileNames`` (sorted by position along the slice normal), with rescale slope and
intercept applied (HU); :func:`series_files` returns that order, so ``array[k]`` came from ``files[k]``.
The geometry is SimpleITK's (origin of the first slice, the header's direction, slice spacing from the first
and last positions), so outputs written with it keep the DICOM grid.

Case ids (:func:`series_case_ids`): ``<PatientID>_<SeriesNumber>`` sanitised (every run of characters other
than letters, digits, ``.``, ``_``, ``-`` becomes ``_``, leading ``.``/``_``/``-`` dropped) when both tags are
present and that name is unique among the inputs (compared ignoring case, for case-insensitive file systems);
otherwise the SeriesInstanceUID. The two forms never collide (a UID holds no ``_``), and one series split over
two folders is an error.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kits_plugins.errors import KitsInputError
from kits_plugins.utilities.image_io import Geometry, float_triple, int_triple
from kits_plugins.utilities.paths import ID_PATTERN, check_id

DICOM_MAGIC = b"DICM"
#: a slice step may differ from the median step by the larger of these before the series is refused
STEP_TOLERANCE_MM = 0.01
STEP_TOLERANCE_REL = 0.01
#: a slice may leave the line through the first slice along the slice normal by the larger of these
#: (the second relative to its distance along the normal) before the series counts as tilted
TILT_TOLERANCE_MM = 0.01
TILT_TOLERANCE_REL = 1e-3
#: largest difference between two slices' direction cosines (ImageOrientationPatient) or pixel spacings (mm)
ORIENTATION_TOLERANCE = 1e-4
SPACING_TOLERANCE_MM = 1e-4
_PROBED_SUFFIXES = ("", ".dcm", ".dicom", ".ima")
_UNDEFINED_LENGTH = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010
_DICOMDIR = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage: an index of files, not an image


@dataclass(frozen=True)
class SliceHeader:
    """What the checks and the case ids need from one DICOM file's header."""

    path: Path
    series_uid: str
    modality: str
    patient_id: str
    series_number: int | None
    description: str
    rows: int | None
    columns: int | None
    frames: int
    position: tuple[float, float, float] | None  # ImagePositionPatient (mm, LPS)
    orientation: tuple[float, ...] | None  # ImageOrientationPatient: row then column direction cosines
    pixel_spacing: tuple[float, float] | None  # PixelSpacing: between rows, between columns (mm)


@dataclass(frozen=True)
class DicomSeries:
    """One checked series found by :func:`find_dicom_series`."""

    folder: Path
    series_uid: str
    patient_id: str
    series_number: int | None
    description: str
    n_slices: int


def has_dicom_marker(path: str | os.PathLike) -> bool:
    """True if ``path`` has ``DICM`` at byte 128 (a DICOM Part 10 file)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == DICOM_MAGIC


def _probed(path: Path) -> bool:
    """Names worth asking pydicom about when the ``DICM`` marker is missing (old files without a preamble)."""
    suffix = path.suffix.lower()
    return suffix in _PROBED_SUFFIXES or suffix[1:].isdigit()


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _floats(ds: Any, keyword: str, n: int) -> tuple[float, ...] | None:
    value = ds.get(keyword)
    if value is None:
        return None
    try:
        items = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
        values = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        return None
    return values if len(values) == n and all(np.isfinite(values)) else None


def _int(ds: Any, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return None if value is None or str(value).strip() == "" else int(value)
    except (TypeError, ValueError):
        return None


def read_header(path: str | os.PathLike) -> SliceHeader | None:
    """The header of one file, or None when it is no DICOM image file (see the module docstring).

    A file with the ``DICM`` marker that pydicom cannot read, or whose pixel data is cut short, is an error
    naming the file. Pixel data is skipped over, never loaded.
    """
    import pydicom

    path = Path(path)
    marked = has_dicom_marker(path)
    if not marked and not _probed(path):
        return None
    try:
        with warnings.catch_warnings():  # pydicom warns about each oddity it works around (e.g. VR guesses)
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, defer_size=1024, force=not marked)
            uid = _text(ds, "SeriesInstanceUID")
            if not uid:
                storage = str(getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID", ""))
                if marked and storage != _DICOMDIR:
                    raise KitsInputError(f"{path}: cannot read DICOM file (no SeriesInstanceUID (0020,000E))")
                return None
            header = _slice_header(path, ds, uid)
    except KitsInputError:
        raise
    except Exception as e:  # pydicom raises many types for damaged files
        if not marked:
            return None
        raise KitsInputError(f"{path}: cannot read DICOM file ({type(e).__name__}: {e})") from None
    pixels = ds.get_item(_PIXEL_DATA, keep_deferred=True) if _PIXEL_DATA in ds else None  # not loaded
    tell, length = getattr(pixels, "value_tell", None), getattr(pixels, "length", None)
    if tell is not None and length is not None and length != _UNDEFINED_LENGTH:
        if tell + length > path.stat().st_size:
            raise KitsInputError(f"{path}: DICOM file is truncated (pixel data needs {tell + length} bytes, "
                                 f"the file has {path.stat().st_size})")
    return header


def _slice_header(path: Path, ds: Any, uid: str) -> SliceHeader:
    position = _floats(ds, "ImagePositionPatient", 3)
    spacing = _floats(ds, "PixelSpacing", 2)
    return SliceHeader(
        path=path,
        series_uid=uid,
        modality=_text(ds, "Modality"),
        patient_id=_text(ds, "PatientID"),
        series_number=_int(ds, "SeriesNumber"),
        description=_text(ds, "SeriesDescription"),
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        frames=_int(ds, "NumberOfFrames") or 1,
        position=float_triple(position) if position is not None else None,
        orientation=_floats(ds, "ImageOrientationPatient", 6),
        pixel_spacing=(spacing[0], spacing[1]) if spacing is not None else None,
    )


def _candidate_files(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())
    except OSError as e:
        raise KitsInputError(f"{folder}: cannot list folder ({e.strerror})") from None


def folder_headers(folder: str | os.PathLike) -> list[SliceHeader]:
    """Headers of the DICOM files directly in ``folder`` (not its subfolders), sorted by file name."""
    return [h for h in map(read_header, _candidate_files(Path(folder))) if h is not None]


def holds_dicom(folder: str | os.PathLike) -> bool:
    """True if a file directly in ``folder`` is a DICOM series file (stops at the first one; damaged ones count,
    a ``DICOMDIR`` does not)."""
    for p in _candidate_files(Path(folder)):
        try:
            if read_header(p) is not None:
                return True
        except KitsInputError:
            return True
    return False


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True if ``path`` is a DICOM file (marker, or pydicom reads a SeriesInstanceUID from a probed name)."""
    path = Path(path)
    if has_dicom_marker(path):
        return True
    try:
        return read_header(path) is not None
    except KitsInputError:
        return True


def _describe(headers: Sequence[SliceHeader]) -> str:
    h = headers[0]
    number = f"#{h.series_number}" if h.series_number is not None else "no SeriesNumber"
    description = f" {h.description!r}" if h.description else ""
    return f"{number}{description} ({len(headers)} files)"


def _one_series(folder: Path, headers: list[SliceHeader]) -> list[SliceHeader]:
    """``headers`` if they are one series, else the several-series error."""
    by_uid: dict[str, list[SliceHeader]] = {}
    for h in headers:
        by_uid.setdefault(h.series_uid, []).append(h)
    if len(by_uid) > 1:
        listed = ", ".join(_describe(hs) for hs in sorted(by_uid.values(), key=lambda hs: hs[0].path.name))
        raise KitsInputError(f"{folder}: holds {len(by_uid)} DICOM series ({listed}); put each series in its own "
                             "subfolder")
    return headers


def _name(h: SliceHeader) -> str:
    return h.path.name


def check_series(folder: str | os.PathLike, headers: Sequence[SliceHeader]) -> list[SliceHeader]:
    """The headers of one series sorted by position along the slice normal, after every check on them
    (the module docstring lists them); each failure is one KitsInputError naming ``folder``."""
    folder = Path(folder)
    if not headers:
        raise KitsInputError(f"{folder}: no DICOM files found")
    headers = _one_series(folder, list(headers))
    for h in headers:
        if h.modality.upper() != "CT":
            raise KitsInputError(f"{folder}: modality {h.modality or '(empty)'} (0008,0060) in {_name(h)}, expected "
                                 "CT")
        if h.frames > 1:
            raise KitsInputError(f"{folder}: {_name(h)} is a multi-frame image ({h.frames} frames); only series of "
                                 "single-slice files are read")
        for value, tag in ((h.position, "ImagePositionPatient (0020,0032)"),
                           (h.orientation, "ImageOrientationPatient (0020,0037)"),
                           (h.pixel_spacing, "PixelSpacing (0028,0030)"), (h.rows, "Rows (0028,0010)"),
                           (h.columns, "Columns (0028,0011)")):
            if value is None:
                raise KitsInputError(f"{folder}: {_name(h)} has no valid {tag}")
    if len(headers) < 2:
        raise KitsInputError(f"{folder}: {len(headers)} slice; a CT series needs at least 2")
    first = headers[0]
    assert first.orientation is not None and first.pixel_spacing is not None  # checked above
    for h in headers[1:]:
        assert h.orientation is not None and h.pixel_spacing is not None
        if (h.rows, h.columns) != (first.rows, first.columns):
            raise KitsInputError(f"{folder}: slices of different sizes ({first.rows}x{first.columns} in {_name(first)}"
                                 f", {h.rows}x{h.columns} in {_name(h)})")
        if not np.allclose(h.orientation, first.orientation, rtol=0, atol=ORIENTATION_TOLERANCE):
            raise KitsInputError(f"{folder}: slices with different orientations (ImageOrientationPatient "
                                 f"{_fmt(first.orientation)} in {_name(first)}, {_fmt(h.orientation)} in {_name(h)})")
        if not np.allclose(h.pixel_spacing, first.pixel_spacing, rtol=0, atol=SPACING_TOLERANCE_MM):
            raise KitsInputError(f"{folder}: slices with different pixel spacings ({_fmt(first.pixel_spacing)} mm in "
                                 f"{_name(first)}, {_fmt(h.pixel_spacing)} mm in {_name(h)})")
    row, col = np.asarray(first.orientation[:3]), np.asarray(first.orientation[3:])
    normal = np.cross(row, col)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3) or abs(float(row @ col)) > 1e-3:
        raise KitsInputError(f"{folder}: ImageOrientationPatient {_fmt(first.orientation)} is not two orthogonal "
                             "unit vectors")
    normal = normal / np.linalg.norm(normal)
    positions = np.asarray([h.position for h in headers], dtype=np.float64)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    headers, positions, along = [headers[i] for i in order], positions[order], along[order]
    _check_tilt(folder, headers, positions - positions[0], along - along[0], normal)
    _check_steps(folder, headers, np.diff(along))
    return headers


def _fmt(values: Sequence[float]) -> str:
    return "\\".join(f"{v:.6g}" for v in values)


def _check_tilt(folder: Path, headers: Sequence[SliceHeader], offsets: np.ndarray, along: np.ndarray,
                normal: np.ndarray) -> None:
    lateral = np.linalg.norm(offsets - along[:, None] * normal[None, :], axis=1)
    excess = lateral - np.maximum(TILT_TOLERANCE_MM, TILT_TOLERANCE_REL * np.abs(along))
    k = int(np.argmax(excess))
    if excess[k] > 0:
        angle = float(np.degrees(np.arctan2(lateral[k], abs(along[k]))))
        raise KitsInputError(f"{folder}: slice positions are not along the normal of ImageOrientationPatient "
                             f"(gantry tilt of about {angle:.2f} degrees: {_name(headers[k])} is {lateral[k]:.3f} mm off "
                             f"the line through {_name(headers[0])}); tilted series are not supported, resample it to "
                             "untilted slices first")


def _check_steps(folder: Path, headers: Sequence[SliceHeader], steps: np.ndarray) -> None:
    """Steps between consecutive slices (mm along the normal, sorted): no duplicates, none missing, even."""
    for k, s in enumerate(steps):
        if s <= STEP_TOLERANCE_MM:
            raise KitsInputError(f"{folder}: {_name(headers[k])} and {_name(headers[k + 1])} are at the same position "
                                 f"({s:.4f} mm apart): duplicate slices")
    median = float(np.median(steps))
    tolerance = max(STEP_TOLERANCE_MM, STEP_TOLERANCE_REL * median)
    for k, s in enumerate(steps):
        if abs(s - median) <= tolerance:
            continue
        pair = (f"{_name(headers[k])} and {_name(headers[k + 1])} (slices {k} and {k + 1} in position order, "
                f"{s:.3f} mm apart; median step {median:.3f} mm)")
        multiple = round(s / median)
        if multiple >= 2 and abs(s - multiple * median) <= tolerance * multiple:
            raise KitsInputError(f"{folder}: {multiple - 1} slice(s) missing between {pair}")
        raise KitsInputError(f"{folder}: uneven slice spacing between {pair}")


def checked_headers(folder: str | os.PathLike) -> list[SliceHeader]:
    """The headers of the one series in ``folder``, checked and sorted by position (:func:`check_series`)."""
    return check_series(folder, folder_headers(folder))


def series_files(folder: str | os.PathLike) -> list[Path]:
    """The files of the series in ``folder`` in the order SimpleITK reads them: slice ``k`` of
    :func:`read_dicom_series`'s array comes from ``files[k]``. Every header check runs first."""
    import SimpleITK as sitk

    folder = Path(folder)
    headers = checked_headers(folder)
    try:
        listed = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), headers[0].series_uid)
    except RuntimeError as e:
        raise KitsInputError(f"{folder}: cannot list the DICOM series ({_last_line(e)})") from None
    files = [Path(p) for p in listed]
    expected = [h.path.name for h in headers]
    if [f.name for f in files] != expected:
        missing = sorted(set(expected) - {f.name for f in files})
        detail = f"cannot read {', '.join(missing[:5])}" if missing else "sorts the slices differently"
        raise KitsInputError(f"{folder}: SimpleITK/GDCM {detail} ({len(files)} of {len(expected)} files listed)")
    return [folder / f.name for f in files]


def _last_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[-1] if lines else type(e).__name__


def _narrow(array: np.ndarray) -> np.ndarray:
    """HU values as int16 where that is lossless (and 8/16-bit integers or float32 as read), else float32."""
    if array.dtype in (np.int8, np.uint8, np.int16, np.uint16, np.float32):
        return np.array(array)
    info = np.iinfo(np.int16)
    if array.size and (np.issubdtype(array.dtype, np.integer) or np.all(np.isfinite(array))):
        lo, hi = array.min(), array.max()
        if lo >= info.min and hi <= info.max and (array.dtype.kind in "iu" or np.array_equal(array, np.round(array))):
            return array.astype(np.int16)
    return array.astype(np.float32)


def read_dicom_series(folder: str | os.PathLike) -> tuple[np.ndarray, Geometry]:
    """The series in ``folder`` as (array in numpy order z, y, x with ``array[k]`` from ``series_files(folder)[k]``,
    its geometry as SimpleITK reads it). Values are HU (rescale slope and intercept applied), int16 where
    lossless, else as read in 8/16 bit or float32. Every header check runs before the voxels are read."""
    import SimpleITK as sitk

    folder = Path(folder)
    files = series_files(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise KitsInputError(f"{folder}: cannot read DICOM series ({_last_line(e)})") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise KitsInputError(f"{folder}: expected a 3D grayscale series, got {image.GetDimension()}D with "
                             f"{image.GetNumberOfComponentsPerPixel()} component(s) per pixel")
    geometry = Geometry.from_image(image)
    array = _narrow(sitk.GetArrayViewFromImage(image))
    del image
    return array, geometry


def read_dicom_geometry(folder: str | os.PathLike) -> Geometry:
    """The geometry :func:`read_dicom_series` gives, from the headers only: origin, in-plane spacing and direction
    of the first file (as SimpleITK reads it), slice spacing = distance of the first and last positions / (n - 1),
    as ITK's series reader computes it."""
    import SimpleITK as sitk

    folder = Path(folder)
    files = series_files(folder)
    infos = []
    for f in (files[0], files[-1]):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(f))
        try:
            reader.ReadImageInformation()
        except RuntimeError as e:
            raise KitsInputError(f"{f}: cannot read DICOM header ({_last_line(e)})") from None
        infos.append(reader)
    first, last = infos
    distance = float(np.linalg.norm(np.asarray(last.GetOrigin()) - np.asarray(first.GetOrigin())))
    spacing = first.GetSpacing()
    size = first.GetSize()
    return Geometry(
        origin=float_triple(first.GetOrigin()),
        spacing=float_triple((spacing[0], spacing[1], distance / (len(files) - 1))),
        direction=tuple(float(v) for v in first.GetDirection()),
        size=int_triple((size[0], size[1], len(files))),
    )


# ------------------------------------------------------------------------------------------------- discovery
def dicom_folders(path: str | os.PathLike) -> list[Path]:
    """``[path]`` if ``path`` holds DICOM files itself, else its immediate subfolders that do (sorted); a folder
    holding DICOM files and subfolders with DICOM files is ambiguous, an error."""
    path = Path(path)
    subfolders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    with_dicom = [p for p in subfolders if holds_dicom(p)]
    if holds_dicom(path):
        if with_dicom:
            raise KitsInputError(f"{path}: holds DICOM files and subfolders with DICOM files ({with_dicom[0].name}, "
                                 "...); give either one series folder or a folder of series folders")
        return [path]
    return with_dicom


def find_dicom_series(path: str | os.PathLike) -> list[DicomSeries]:
    """The series of ``path`` (a series folder or a folder of series folders), each checked
    (:func:`check_series`); empty if there is no DICOM file there."""
    found = []
    for folder in dicom_folders(path):
        headers = check_series(folder, folder_headers(folder))
        h = headers[0]
        found.append(DicomSeries(folder, h.series_uid, h.patient_id, h.series_number, h.description, len(headers)))
    return found


def sanitise_id(text: str) -> str:
    """``text`` as a plain name: runs of characters other than letters, digits, ``.``, ``_``, ``-`` become ``_``,
    leading ``.``, ``_``, ``-`` are dropped, at most 200 characters ('' if nothing is left)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.strip()).lstrip("._-")[:200]


def series_case_ids(series: Sequence[DicomSeries]) -> list[str]:
    """One case id per series (the rule is in the module docstring), each checked with
    :func:`~kits_plugins.utilities.paths.check_id`; one series found in two folders is an error."""
    where: dict[str, Path] = {}
    for s in series:
        if s.series_uid in where:
            raise KitsInputError(f"{s.folder}: series {s.series_uid} is also in {where[s.series_uid]}; put all "
                                 "files of a series in one folder")
        where[s.series_uid] = s.folder
    candidates = []
    for s in series:
        patient = sanitise_id(s.patient_id)
        name = sanitise_id(f"{patient}_{s.series_number}") if patient and s.series_number is not None else ""
        candidates.append(name if ID_PATTERN.fullmatch(name) else "")
    counts = Counter(c.lower() for c in candidates if c)
    return [check_id(c if c and counts[c.lower()] == 1 else s.series_uid, s.folder)
            for c, s in zip(candidates, series)]
