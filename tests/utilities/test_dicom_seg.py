"""DICOM SEG of a label map on its CT series: voxel-exact round trip (highdicom), the SEG's references, codes,
colours and geometry read with pydicom, empty segments, and one-line errors naming the file."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from kits_plugins import __version__
from kits_plugins.errors import KitsInputError
from kits_plugins.testing.dicom_series import write_dicom_series
from kits_plugins.utilities.dicom_seg import SEGMENTS, read_dicom_seg, segment_descriptions, write_dicom_seg
from kits_plugins.utilities.image_io import Geometry

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def _oblique_geometry() -> Geometry:
    """6 slices of 16 x 20, rotated about two axes, right-handed (third column = first x second)."""
    a, b = 0.3, -0.2
    rot_y = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    rot_x = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    d = rot_y @ rot_x
    assert np.allclose(np.cross(d[:, 0], d[:, 1]), d[:, 2])
    return Geometry((12.5, -40.25, 103.0), (0.8, 0.7, 2.5), tuple(float(v) for v in d.ravel()), (20, 16, 6))


@pytest.fixture
def series(tmp_path):
    g = _oblique_geometry()
    ct = np.random.default_rng(0).integers(-200, 300, g.shape).astype(np.int16)
    return write_dicom_series(ct, g, tmp_path / "ct", patient_id="KITS0042", series_number=7), g


def _labels(shape, present=(1, 2, 3)) -> np.ndarray:
    """Asymmetric structures (no axis flip or transpose maps one onto another)."""
    lab = np.zeros(shape, np.uint8)
    if 1 in present:
        lab[1:5, 2:10, 3:14] = 1
    if 2 in present:
        lab[2:4, 4:7, 5:9] = 2
        lab[5, 0, 19] = 2
    if 3 in present:
        lab[3, 8:10, 10:13] = 3
    return lab


@pytest.mark.parametrize("present", [(1, 2, 3), (1, 2), ()], ids=["all", "no-cyst", "empty"])
def test_round_trip_voxel_exact_and_references(series, tmp_path, present):
    files, _ = series
    labels = _labels((6, 16, 20), present)
    out = write_dicom_seg(labels, files, tmp_path / "out" / "case.dcm")
    assert out == tmp_path / "out" / "case.dcm" and [p.name for p in out.parent.iterdir()] == ["case.dcm"]
    back = read_dicom_seg(out, files)
    assert back.dtype == np.uint8 and back.shape == labels.shape and np.array_equal(back, labels)

    seg, src = pydicom.dcmread(out), pydicom.dcmread(files[0])
    assert seg.Modality == "SEG" and seg.SOPClassUID == SEG_STORAGE and seg.SegmentationType == "BINARY"
    assert seg.BitsAllocated == 1
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
    referenced = {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {pydicom.dcmread(f).SOPInstanceUID for f in files}
    assert seg.StudyInstanceUID == src.StudyInstanceUID and seg.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert seg.PatientID == "KITS0042" and seg.PatientName == src.PatientName
    assert seg.SeriesInstanceUID != src.SeriesInstanceUID and seg.SeriesNumber == 1007
    assert seg.SeriesDescription == "kits-cascade KiTS23 segmentation"

    # all three segments described whatever is present; frames only where a segment has voxels (all if none)
    assert [s.SegmentNumber for s in seg.SegmentSequence] == [1, 2, 3]
    frame_segments = [f.SegmentIdentificationSequence[0].ReferencedSegmentNumber
                      for f in seg.PerFrameFunctionalGroupsSequence]
    if present:
        expected = sorted((v, k) for v in present for k in range(6) if (labels[k] == v).any())
        frame_uids = [f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
                      for f in seg.PerFrameFunctionalGroupsSequence]
        slice_of = {pydicom.dcmread(f).SOPInstanceUID: k for k, f in enumerate(files)}
        assert sorted(zip(frame_segments, [slice_of[u] for u in frame_uids])) == expected
    else:
        assert sorted(frame_segments) == sorted([1, 2, 3] * 6)


def test_segment_codes_colours_and_algorithm(series, tmp_path):
    files, _ = series
    seg = pydicom.dcmread(write_dicom_seg(_labels((6, 16, 20)), files, tmp_path / "seg.dcm"))
    expected = {
        1: ("kidney", ("SCT", "91723000"), ("SCT", "64033007"), (185, 102, 83)),
        2: ("tumor", ("SCT", "49755003"), ("SCT", "108369006"), (144, 238, 144)),
        3: ("cyst", ("SCT", "49755003"), ("SCT", "367643001"), (205, 205, 100)),
    }
    for s in seg.SegmentSequence:
        name, category, kind, rgb = expected[s.SegmentNumber]
        cat, typ = s.SegmentedPropertyCategoryCodeSequence[0], s.SegmentedPropertyTypeCodeSequence[0]
        assert s.SegmentLabel == name
        assert (cat.CodingSchemeDesignator, cat.CodeValue) == category
        assert (typ.CodingSchemeDesignator, typ.CodeValue) == kind
        assert hd.color.CIELabColor.from_dicom_value(s.RecommendedDisplayCIELabValue).to_rgb() == rgb
        assert s.SegmentAlgorithmType == "AUTOMATIC" and s.SegmentAlgorithmName == "kits-cascade"
        algorithm = s.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "kits-cascade" and algorithm.AlgorithmVersion == __version__
        if name != "kidney":
            assert s.AnatomicRegionSequence[0].CodeValue == "64033007"
    assert seg.SoftwareVersions == __version__
    assert [(s.type.value, s.type.meaning) for s in SEGMENTS] == [
        ("64033007", "Kidney"), ("108369006", "Neoplasm"), ("367643001", "Cyst")]


def test_frame_positions_equal_source_slice_positions(series, tmp_path):
    files, g = series
    seg = pydicom.dcmread(write_dicom_seg(_labels((6, 16, 20)), files, tmp_path / "seg.dcm"))
    sources = {(ds := pydicom.dcmread(f)).SOPInstanceUID: ds for f in files}
    shared = seg.SharedFunctionalGroupsSequence[0]
    orientation = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
    d = np.reshape(g.direction, (3, 3))
    assert np.allclose(orientation, [*d[:, 0], *d[:, 1]], atol=1e-9)
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == [0.7, 0.8]  # row, column spacing
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(position, [float(v) for v in sources[uid].ImagePositionPatient], atol=1e-6)
    # and those are the slices of the geometry the series was written with
    for k, f in enumerate(files):
        expected = np.asarray(g.origin) + d @ (np.array([0, 0, k]) * np.asarray(g.spacing))
        assert np.allclose([float(v) for v in pydicom.dcmread(f).ImagePositionPatient], expected, atol=1e-6)


def test_read_maps_segments_by_type_not_number(series, tmp_path):
    """A SEG numbering cyst 1, kidney 2, tumor 3 (another tool's order) reads back as KiTS labels."""
    files, _ = series
    labels = _labels((6, 16, 20))
    by_label = {s.label: d for s, d in zip(SEGMENTS, segment_descriptions())}
    order = (3, 1, 2)
    descriptions = []
    for number, label in enumerate(order, 1):
        d = by_label[label]
        d.SegmentNumber = number
        descriptions.append(d)
    renumbered = np.zeros_like(labels)
    for number, label in enumerate(order, 1):
        renumbered[labels == label] = number
    seg = hd.seg.Segmentation(
        source_images=[pydicom.dcmread(f) for f in files], pixel_array=renumbered, segmentation_type="BINARY",
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=5,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="other", manufacturer_model_name="other",
        software_versions="1", device_serial_number="1",
    )
    seg.save_as(tmp_path / "other.dcm")
    assert np.array_equal(read_dicom_seg(tmp_path / "other.dcm", files), labels)

    seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue = codes.SCT.Liver.value
    seg.save_as(tmp_path / "liver.dcm")
    with pytest.raises(KitsInputError, match=r"liver\.dcm: segment 1 \(cyst\) has type SCT 10200004 .*not kidney"):
        read_dicom_seg(tmp_path / "liver.dcm", files)


def _one_line_error(call, pattern):
    with pytest.raises(KitsInputError, match=pattern) as e:
        call()
    assert "\n" not in str(e.value)


def test_bad_labels_and_shapes_refused_with_nothing_written(series, tmp_path):
    files, _ = series
    out = tmp_path / "out" / "seg.dcm"
    bad = _labels((6, 16, 20))
    bad[2, 3, 4], bad[0, 0, 0] = 4, 7
    _one_line_error(lambda: write_dicom_seg(bad, files, out), r"seg\.dcm: label map holds values outside 0\.\.3: \[4, 7\]")
    _one_line_error(lambda: write_dicom_seg(_labels((6, 16, 20)).astype(np.float32), files, out),
                    r"seg\.dcm: label map must be a 3-D integer array, got 3-D float32")
    _one_line_error(lambda: write_dicom_seg(np.zeros((5, 16, 20), np.uint8), files, out),
                    r"ct: 6 DICOM files but the label map has 5 slices")
    _one_line_error(lambda: write_dicom_seg(np.ones((6, 20, 16), np.uint8), files, out),
                    r"slice_0000\.dcm: 16 x 20 pixels \(rows x columns\) but the label map's slices are 20 x 16")
    files[3].write_text("not a DICOM file\n")
    _one_line_error(lambda: write_dicom_seg(_labels((6, 16, 20)), files, out),
                    r"slice_0003\.dcm: not a readable DICOM file")
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_mixed_series_and_unreferenced_sources_refused(series, tmp_path):
    files, g = series
    other = write_dicom_series(np.zeros(g.shape, np.int16), g, tmp_path / "other", series_number=8)
    _one_line_error(lambda: write_dicom_seg(_labels((6, 16, 20)), [*files[:5], other[5]], tmp_path / "s.dcm"),
                    r"other/slice_0005\.dcm: series .* differs from slice_0000\.dcm's")
    seg = write_dicom_seg(_labels((6, 16, 20)), files, tmp_path / "s.dcm")
    _one_line_error(lambda: read_dicom_seg(seg, other), r"s\.dcm: does not reference .*other/slice_0000\.dcm")
    _one_line_error(lambda: read_dicom_seg(files[0].with_name("missing.dcm"), files),
                    r"missing\.dcm: not a readable DICOM Segmentation")
