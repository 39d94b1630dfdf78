"""DICOM Segmentation (SEG) of a KiTS label map on its source CT series, written and read with highdicom.

One BINARY SEG instance per series, segmentation type AUTOMATIC, algorithm "kits-cascade" at the package
version. It references every source instance (ReferencedSeriesSequence, and each frame its source slice), and
copies study, frame of reference and patient identity from the source, as highdicom does; its own series
(SeriesInstanceUID, SeriesNumber) is new.

Segments: segment number = label value. All three (:data:`SEGMENTS`) are always described, so every case has
the same segment table (codes, names, colours) and an absent structure is an empty segment, not a missing one.
Frames empty for a segment are omitted (highdicom's ``omit_empty_frames``): an absent structure has no frames,
which DICOM allows; 3D Slicer then simply lists no segment for it (QIICR/QuantitativeReporting#253), highdicom
and pydicom read it back as empty. An all-background map keeps every frame (a SEG needs at least one).

Codes come from pydicom's DICOM code dictionary (CID 7150 Segmentation Property Categories, CID 7151 / 7159
types); colours are 3D Slicer's GenericAnatomyColors (kidney, mass, cyst), converted to CIELab by highdicom.

Memory: source slices are read without their pixel data (highdicom needs only their attributes); frames are
stored one bit per pixel.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from kits_plugins import __version__
from kits_plugins.constants import CYST, KIDNEY, MAX_LABEL, TUMOR
from kits_plugins.errors import KitsInputError
from kits_plugins.utilities.staging import atomic_path

ALGORITHM_NAME = "kits-cascade"
DEFAULT_SERIES_DESCRIPTION = "kits-cascade KiTS23 segmentation"
#: Added to the source's SeriesNumber for the SEG's own series, unless a series number is given.
SERIES_NUMBER_OFFSET = 1000
#: Type 2 attributes highdicom copies from the source with attribute access; empty when the source lacks them.
_TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                 "StudyDate", "StudyTime", "ReferringPhysicianName")
_REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
             "Modality", "Rows", "Columns", "PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient")


@dataclass(frozen=True)
class SegmentSpec:
    """One KiTS structure as a SEG segment: label value (= segment number), name, SNOMED CT codes, RGB colour."""

    label: int
    name: str
    category: Code
    type: Code
    rgb: tuple[int, int, int]


SEGMENTS: tuple[SegmentSpec, ...] = (
    SegmentSpec(KIDNEY, "kidney", codes.SCT.AnatomicalStructure, codes.SCT.Kidney, (185, 102, 83)),
    SegmentSpec(TUMOR, "tumor", codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm, (144, 238, 144)),
    SegmentSpec(CYST, "cyst", codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Cyst, (205, 205, 100)),
)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _read_header(path: Path) -> pydicom.Dataset:
    """A DICOM file's attributes without its pixel data; KitsInputError naming the file if it is not DICOM."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as e:
        raise KitsInputError(f"{path}: not a readable DICOM file ({_one_line(e)})") from None


def _check_labels(labels: np.ndarray, out_path: Path) -> np.ndarray:
    if labels.ndim != 3 or labels.dtype.kind not in "biu":
        raise KitsInputError(f"{out_path}: label map must be a 3-D integer array, got {labels.ndim}-D {labels.dtype}")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) > MAX_LABEL):
        bad = np.unique(labels[(labels < 0) | (labels > MAX_LABEL)])[:5].tolist()
        raise KitsInputError(f"{out_path}: label map holds values outside 0..{MAX_LABEL}: {bad}")
    return labels.astype(np.uint8, copy=False)


def _check_sources(files: Sequence[Path], shape: tuple[int, ...]) -> list[pydicom.Dataset]:
    """Source headers in ``files`` order, checked: one single-frame slice per label-map slice, same series,
    Rows x Columns equal to the label map's (y, x)."""
    if not files:
        raise KitsInputError("no DICOM source files given for the segmentation")
    if len(files) != shape[0]:
        raise KitsInputError(f"{files[0].parent}: {len(files)} DICOM files but the label map has {shape[0]} slices")
    datasets: list[pydicom.Dataset] = []
    for path in files:
        ds = _read_header(path)
        missing = [k for k in _REQUIRED if k not in ds]
        if missing:
            raise KitsInputError(f"{path}: DICOM image lacks {', '.join(missing)}")
        if int(ds.get("NumberOfFrames", 1) or 1) != 1:
            raise KitsInputError(f"{path}: multi-frame image ({ds.NumberOfFrames} frames); expected one slice a file")
        if (ds.Rows, ds.Columns) != tuple(shape[1:]):
            raise KitsInputError(
                f"{path}: {ds.Rows} x {ds.Columns} pixels (rows x columns) but the label map's slices are "
                f"{shape[1]} x {shape[2]}"
            )
        if datasets and ds.SeriesInstanceUID != datasets[0].SeriesInstanceUID:
            raise KitsInputError(f"{path}: series {ds.SeriesInstanceUID} differs from {files[0].name}'s "
                                 f"{datasets[0].SeriesInstanceUID}; give the files of one series")
        for keyword in _TYPE2_COPIED:  # in memory only: the SEG gets them empty, as DICOM allows
            if keyword not in ds:
                setattr(ds, keyword, None)
        datasets.append(ds)
    return datasets


def segment_descriptions() -> list[hd.seg.SegmentDescription]:
    """The three segments of every SEG this package writes (segment number = label), algorithm identified."""
    algorithm = hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME, family=codes.cid7162.ArtificialIntelligence, version=__version__
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=s.label,
            segment_label=s.name,
            segmented_property_category=s.category,
            segmented_property_type=s.type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            anatomic_regions=None if s.label == KIDNEY else [codes.SCT.Kidney],
            display_color=hd.color.CIELabColor.from_rgb(*s.rgb),
        )
        for s in SEGMENTS
    ]


def write_dicom_seg(
    labels: np.ndarray,
    source_files: Sequence[str | os.PathLike],
    out_path: str | os.PathLike,
    *,
    series_description: str = DEFAULT_SERIES_DESCRIPTION,
    series_number: int | None = None,
    omit_empty_frames: bool = True,
) -> Path:
    """Write ``labels`` (numpy order z, y, x; 0 background, 1 kidney, 2 tumor, 3 cyst; ``labels[k]`` segments
    the slice in ``source_files[k]``, rows y, columns x) as a DICOM SEG at ``out_path`` (atomically); returns
    it. ``series_number`` defaults to the source's + :data:`SERIES_NUMBER_OFFSET`. ``omit_empty_frames=False``
    keeps every (slice, segment) frame, for readers that cannot handle omitted frames (larger files)."""
    out_path = Path(out_path)
    labels = _check_labels(np.asarray(labels), out_path)
    files = [Path(f) for f in source_files]
    sources = _check_sources(files, labels.shape)
    if series_number is None:
        series_number = SERIES_NUMBER_OFFSET + int(sources[0].get("SeriesNumber", 0) or 0)
    try:
        seg = _segmentation(labels, sources, series_description, series_number, omit_empty_frames)
    except ValueError as e:  # highdicom's checks of the sources (e.g. two slices at one position)
        raise KitsInputError(f"{files[0].parent}: cannot build a DICOM SEG on these files ({_one_line(e)})") from None
    with atomic_path(out_path) as tmp:
        pydicom.dcmwrite(tmp, seg, enforce_file_format=True)
    return out_path


def _segmentation(
    labels: np.ndarray, sources: list[pydicom.Dataset], series_description: str, series_number: int,
    omit_empty_frames: bool,
) -> hd.seg.Segmentation:
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=labels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(),
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=ALGORITHM_NAME,
        manufacturer_model_name=ALGORITHM_NAME,
        software_versions=__version__,
        device_serial_number="0",
        series_description=series_description,
        content_label="KITS",
        content_description="kidney, tumor and cyst (KiTS23 labels 1, 2, 3)",
        # an all-background map keeps its frames (highdicom would, with a warning)
        omit_empty_frames=omit_empty_frames and bool(labels.any()),
    )


def _label_of_type(code: pydicom.Dataset) -> int | None:
    for s in SEGMENTS:
        if code.CodingSchemeDesignator == s.type.scheme_designator and code.CodeValue == s.type.value:
            return s.label
    return None


def read_dicom_seg(seg_path: str | os.PathLike, source_files: Sequence[str | os.PathLike]) -> np.ndarray:
    """The label map (uint8, z, y, x in ``source_files`` order) of a SEG referencing those files; segments map
    to labels by their segmented property type (:data:`SEGMENTS`), not their number."""
    seg_path = Path(seg_path)
    try:
        seg = hd.seg.segread(seg_path)
    except (InvalidDicomError, OSError, ValueError, AttributeError, KeyError, EOFError) as e:
        raise KitsInputError(f"{seg_path}: not a readable DICOM Segmentation ({_one_line(e)})") from None
    lut = np.zeros(max(int(d.SegmentNumber) for d in seg.SegmentSequence) + 1, dtype=np.uint8)
    for d in seg.SegmentSequence:
        label = _label_of_type(d.SegmentedPropertyTypeCodeSequence[0])
        if label is None and int(d.SegmentNumber) != 0:  # 0: a LABELMAP SEG's background
            t = d.SegmentedPropertyTypeCodeSequence[0]
            raise KitsInputError(f"{seg_path}: segment {d.SegmentNumber} ({d.SegmentLabel}) has type "
                                 f"{t.CodingSchemeDesignator} {t.CodeValue} '{t.CodeMeaning}', not kidney/tumor/cyst")
        lut[int(d.SegmentNumber)] = label or 0
    referenced = {sop for _, _, sop in seg.get_source_image_uids()}
    uids = []
    for path in (Path(f) for f in source_files):
        uid = _read_header(path).get("SOPInstanceUID")
        if uid not in referenced:
            raise KitsInputError(f"{seg_path}: does not reference {path} (SOPInstanceUID {uid})")
        uids.append(uid)
    if not uids:
        raise KitsInputError(f"{seg_path}: no DICOM source files given")
    try:
        pixels = seg.get_pixels_by_source_instance(
            uids, combine_segments=True, relabel=False, assert_missing_frames_are_empty=True, dtype=np.uint16
        )
    except (ValueError, RuntimeError) as e:  # e.g. overlapping segments, frames that do not match their sources
        raise KitsInputError(f"{seg_path}: cannot read it as a label map of these source files ({_one_line(e)})") from None
    return lut[pixels]
