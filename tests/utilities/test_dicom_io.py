"""DICOM CT input: series read back voxel- and geometry-exact in position order (oblique too, HU rescale applied),
``read_ct`` / ``read_ct_geometry`` on a series folder, every header check as one error naming the folder, and
discovery (series folder, folder of series, case ids, mixed inputs) through ``find_ct_inputs``."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pydicom
import pytest

from kits_plugins.errors import KitsInputError
from kits_plugins.inference.stage_io import find_ct_inputs
from kits_plugins.testing.dicom_series import write_dicom_series
from kits_plugins.utilities import dicom_io
from kits_plugins.utilities.ct_io import read_ct, read_ct_geometry
from kits_plugins.utilities.dicom_io import DicomSeries, read_dicom_geometry, read_dicom_series, series_files
from kits_plugins.utilities.image_io import Geometry, write_image

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def _oblique() -> tuple[float, ...]:
    """Rotated about all three axes; right-handed (third column = first x second), as a DICOM series is."""
    a, b, c = 0.4, -0.25, 0.7
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    d = rz @ ry @ rx
    assert np.allclose(np.cross(d[:, 0], d[:, 1]), d[:, 2])
    return tuple(float(v) for v in d.ravel())


def _geometry(direction=IDENTITY, n_slices=6) -> Geometry:
    return Geometry((-20.5, 35.25, 110.125), (0.75, 0.7, 2.5), direction, (9, 7, n_slices))


def _ct(g: Geometry, seed=0) -> np.ndarray:
    """Values distinct per slice (so a slice read from the wrong file shows), within int16."""
    return np.random.default_rng(seed).integers(-1024, 2000, g.shape).astype(np.int16)


def _series(folder: Path, g: Geometry | None = None, seed=0, **kwargs) -> tuple[np.ndarray, list[Path]]:
    g = g or _geometry()
    ct = _ct(g, seed)
    return ct, write_dicom_series(ct, g, folder, **kwargs)


def _raises(folder: Path, text: str, fn=read_dicom_series):
    """``fn(folder)`` raises one KitsInputError line naming ``folder`` and containing ``text``."""
    with pytest.raises(KitsInputError) as info:
        fn(folder)
    message = str(info.value)
    assert str(folder) in message and text in message and "\n" not in message, message
    return message


# ------------------------------------------------------------------------------------------------------ reading
@pytest.mark.parametrize("direction", [IDENTITY, (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0), _oblique()],
                         ids=["identity", "flipped", "oblique"])
def test_series_reads_back_values_and_geometry(tmp_path, direction):
    g = _geometry(direction)
    ct, files = _series(tmp_path / "s", g)
    array, got = read_dicom_series(tmp_path / "s")
    assert array.dtype == np.int16 and np.array_equal(array, ct)
    assert got.size == g.size and got.matches(g, atol=1e-6)  # DS strings hold 10 significant digits
    assert series_files(tmp_path / "s") == files
    assert read_dicom_geometry(tmp_path / "s") == got  # headers only, exactly what the pixel read gives
    ct2, g2 = read_ct(tmp_path / "s")  # the one CT policy dispatches a series folder
    assert g2 == got and ct2.dtype == np.int16 and np.array_equal(ct2, ct)
    assert read_ct_geometry(tmp_path / "s") == got


def test_slices_are_ordered_by_position_not_by_name(tmp_path):
    g = _geometry(_oblique())
    ct, files = _series(tmp_path / "s", g)
    renamed = []
    for k, f in enumerate(files):  # names now sort in the reverse of the position order, without a suffix
        renamed.append(f.rename(tmp_path / "s" / f"IM{len(files) - k:03d}"))
    got = series_files(tmp_path / "s")
    assert got == renamed  # position order
    array, _ = read_dicom_series(tmp_path / "s")
    assert np.array_equal(array, ct)
    for k, f in enumerate(got):  # the contract of DICOM SEG writers: array[k] comes from files[k]
        assert np.array_equal(array[k], pydicom.dcmread(f).pixel_array)


def test_rescale_intercept_is_applied(tmp_path):
    g = _geometry()
    ct, files = _series(tmp_path / "s", g, extra_tags={"0028|1052": "-1024"})
    stored = pydicom.dcmread(files[0]).pixel_array
    assert np.array_equal(stored.astype(int), ct[0].astype(int) + 1024)  # stored values differ from HU
    array, _ = read_dicom_series(tmp_path / "s")
    assert array.dtype == np.int16 and np.array_equal(array, ct)


def test_other_files_are_ignored_and_a_file_without_preamble_is_read(tmp_path):
    ct, files = _series(tmp_path / "s")
    (tmp_path / "s" / "README.txt").write_text("exported by the scanner")
    (tmp_path / "s" / ".DS_Store").write_bytes(b"\0" * 300)
    (tmp_path / "s" / "notes").write_text("no DICOM here")
    data = files[3].read_bytes()
    assert data[128:132] == b"DICM"
    files[3].unlink()
    (tmp_path / "s" / "old_0003.dcm").write_bytes(data[132:])  # no preamble, no DICM marker
    array, _ = read_dicom_series(tmp_path / "s")
    assert np.array_equal(array, ct)
    assert [f.name for f in series_files(tmp_path / "s")][3] == "old_0003.dcm"


# ------------------------------------------------------------------------------------------------------- checks
def test_modality_other_than_ct(tmp_path):
    _series(tmp_path / "s", modality="MR")
    _raises(tmp_path / "s", "modality MR (0008,0060) in slice_0000.dcm, expected CT")


def test_gantry_tilt(tmp_path):
    g = _geometry()
    shift = np.tan(np.radians(15.0)) * g.spacing[2]  # each slice 15 degrees off the normal, along y
    tags = {k: {"0020|0032": f"{g.origin[0]:.10g}\\{g.origin[1] + k * shift:.10g}\\{g.origin[2] + k * 2.5:.10g}"}
            for k in range(6)}
    _series(tmp_path / "s", g, slice_tags=tags)
    message = _raises(tmp_path / "s", "slice positions are not along the normal of ImageOrientationPatient")
    assert "gantry tilt of about 15.00 degrees" in message


def test_tiny_position_noise_is_not_a_tilt(tmp_path):
    g = _geometry()
    tags = {3: {"0020|0032": f"{g.origin[0] + 0.004:.10g}\\{g.origin[1]:.10g}\\{g.origin[2] + 3 * 2.5 + 0.004:.10g}"}}
    ct, _ = _series(tmp_path / "s", g, slice_tags=tags)
    assert np.array_equal(read_dicom_series(tmp_path / "s")[0], ct)


def test_missing_slice(tmp_path):
    _, files = _series(tmp_path / "s")
    files[2].unlink()
    _raises(tmp_path / "s", "1 slice(s) missing between slice_0001.dcm and slice_0003.dcm (slices 1 and 2 in position "
                            "order, 5.000 mm apart; median step 2.500 mm)")


def test_uneven_slice_spacing(tmp_path):
    g = _geometry()
    tags = {3: {"0020|0032": f"{g.origin[0]:.10g}\\{g.origin[1]:.10g}\\{g.origin[2] + 3 * 2.5 + 0.5:.10g}"}}
    _series(tmp_path / "s", g, slice_tags=tags)
    _raises(tmp_path / "s", "uneven slice spacing between slice_0002.dcm and slice_0003.dcm (slices 2 and 3 in "
                            "position order, 3.000 mm apart; median step 2.500 mm)")


def test_duplicate_slices(tmp_path):
    g = _geometry()
    tags = {3: {"0020|0032": f"{g.origin[0]:.10g}\\{g.origin[1]:.10g}\\{g.origin[2] + 2 * 2.5:.10g}"}}
    _series(tmp_path / "s", g, slice_tags=tags)
    _raises(tmp_path / "s", "slice_0002.dcm and slice_0003.dcm are at the same position")


def test_fewer_than_two_slices(tmp_path):
    _series(tmp_path / "s", _geometry(n_slices=1))
    _raises(tmp_path / "s", "1 slice; a CT series needs at least 2")


def test_mixed_sizes_and_orientations(tmp_path):
    uid = "1.2.826.0.1.3680043.8.498.77"
    _series(tmp_path / "a", _geometry(n_slices=3), series_uid=uid)
    small = Geometry((-20.5, 35.25, 117.625), (0.75, 0.7, 2.5), IDENTITY, (9, 5, 2))
    _series(tmp_path / "a", small, series_uid=uid, prefix="small")
    _raises(tmp_path / "a", "slices of different sizes (7x9 in slice_0000.dcm, 5x9 in small_0000.dcm)")
    _series(tmp_path / "b", _geometry(n_slices=3), series_uid=uid)
    _series(tmp_path / "b", _geometry(_oblique(), n_slices=2), series_uid=uid, prefix="tilted")
    _raises(tmp_path / "b", "slices with different orientations (ImageOrientationPatient 1\\0\\0\\0\\1\\0 in "
                            "slice_0000.dcm")


def test_several_series_in_one_folder(tmp_path):
    _series(tmp_path / "s", series_number=3, extra_tags={"0008|103e": "arterial"})
    _series(tmp_path / "s", _geometry(n_slices=4), series_number=4, extra_tags={"0008|103e": "venous"}, prefix="b")
    _raises(tmp_path / "s", "holds 2 DICOM series (#4 'venous' (4 files), #3 'arterial' (6 files)); put each series "
                            "in its own subfolder")


def test_unreadable_and_truncated_files(tmp_path):
    _, files = _series(tmp_path / "s")
    data = files[1].read_bytes()
    files[1].write_bytes(data[:-40])
    _raises(tmp_path / "s", f"{files[1]}: DICOM file is truncated (pixel data needs {len(data)} bytes, the file has "
                            f"{len(data) - 40})")
    files[1].write_bytes(data[:132] + b"\x02\x00\x00\x00UL\xff\xff")  # the file meta group cut inside a tag
    _raises(tmp_path / "s", f"{files[1]}: cannot read DICOM file")


def test_checks_run_before_the_voxels_are_read(tmp_path, monkeypatch):
    import SimpleITK as sitk

    _series(tmp_path / "s", modality="MR")

    def fail(self):
        raise AssertionError("pixel data read")

    monkeypatch.setattr(sitk.ImageSeriesReader, "Execute", fail)
    _raises(tmp_path / "s", "modality MR")


def test_no_dicom_files(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "a.txt").write_text("x")
    _raises(tmp_path / "s", "no DICOM files found")
    assert dicom_io.find_dicom_series(tmp_path / "s") == []


# ---------------------------------------------------------------------------------------------------- discovery
def _info(uid, patient="P", number: int | None = 1) -> DicomSeries:
    return DicomSeries(Path(f"/in/{uid}"), uid, patient, number, "", 2)


def test_case_id_rule():
    ids = dicom_io.series_case_ids([
        _info("1.2.1", "KITS 0042/a", 7),  # sanitised
        _info("1.2.2", "P1", 2), _info("1.2.3", "p1", 2),  # same name ignoring case: both get their UID
        _info("1.2.4", "", 3), _info("1.2.5", "P9", None), _info("1.2.6", "***", 1),  # a tag missing or empty
        _info("1.2.7", "P1", 3),
    ])
    assert ids == ["KITS_0042_a_7", "1.2.2", "1.2.3", "1.2.4", "1.2.5", "1.2.6", "P1_3"]
    assert all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", i) for i in ids)
    with pytest.raises(KitsInputError, match=r"/in/1.2.1: series 1.2.1 is also in /in/1.2.1; put all files of a "
                                             "series in one folder"):
        dicom_io.series_case_ids([_info("1.2.1"), _info("1.2.1")])


def test_find_ct_inputs_on_a_series_folder_and_a_folder_of_series(tmp_path):
    root = tmp_path / "dicom"
    _series(root / "a", patient_id="KITS-0001", series_number=2)
    assert find_ct_inputs(root / "a") == [("KITS-0001_2", root / "a")]
    _series(root / "b", patient_id="KITS-0001", series_number=3)
    _series(root / "c", patient_id="KITS-0002", series_number=5, series_uid="1.2.826.0.1.3680043.8.498.5")
    _series(root / "d", patient_id="KITS-0002", series_number=5, series_uid="1.2.826.0.1.3680043.8.498.6")
    (root / "empty").mkdir()  # subfolders without DICOM files are not inputs
    (root / "report.txt").write_text("x")
    assert find_ct_inputs(root) == [
        ("1.2.826.0.1.3680043.8.498.5", root / "c"), ("1.2.826.0.1.3680043.8.498.6", root / "d"),
        ("KITS-0001_2", root / "a"), ("KITS-0001_3", root / "b"),
    ]
    _series(root / "e", modality="MR")  # every series is checked at discovery, before any work
    with pytest.raises(KitsInputError, match=re.escape(f"{root / 'e'}: modality MR (0008,0060)")):
        find_ct_inputs(root)


def test_find_ct_inputs_refusals(tmp_path):
    _, files = _series(tmp_path / "s")
    with pytest.raises(KitsInputError, match=re.escape(f"{files[0]}: a single DICOM file; give the folder")):
        find_ct_inputs(files[0])
    _series(tmp_path / "s" / "sub", seed=1)
    with pytest.raises(KitsInputError, match=re.escape(f"{tmp_path / 's'}: holds DICOM files and subfolders with "
                                                       "DICOM files (sub, ...)")):
        find_ct_inputs(tmp_path / "s")
    g = _geometry()
    write_image(_ct(g), g, tmp_path / "mixed" / "case_00001_0000.nii.gz")
    _series(tmp_path / "mixed" / "series")
    with pytest.raises(KitsInputError, match=re.escape(f"{tmp_path / 'mixed'}: holds NIfTI CTs (1) and DICOM files (in "
                                                       f"{tmp_path / 'mixed' / 'series'}); give them as separate "
                                                       "inputs")):
        find_ct_inputs(tmp_path / "mixed")
    (tmp_path / "none").mkdir()
    with pytest.raises(KitsInputError, match="no CT found .* and DICOM series in the folder or its subfolders"):
        find_ct_inputs(tmp_path / "none")


def test_nifti_inputs_are_unchanged(tmp_path):
    g = _geometry()
    write_image(_ct(g), g, tmp_path / "in" / "case_00002_0000.nii.gz")
    write_image(_ct(g), g, tmp_path / "in" / "case_00002_0001.nii.gz")
    (tmp_path / "in" / "dataset.json").write_text("{}")
    assert find_ct_inputs(tmp_path / "in") == [("case_00002", tmp_path / "in" / "case_00002_0000.nii.gz")]
    assert find_ct_inputs(tmp_path / "in" / "case_00002_0000.nii.gz")[0][0] == "case_00002"


def test_the_series_writer_keeps_the_locale(tmp_path):
    """GDCM's writer sets the process locale to "C"; the test helper restores it (later UTF-8 reads depend on it)."""
    import locale

    before = locale.setlocale(locale.LC_ALL, None)
    g = Geometry((0.0, 0.0, 0.0), (1.0, 1.0, 2.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (4, 4, 3))
    write_dicom_series(np.zeros((3, 4, 4), np.int16), g, tmp_path / "s")
    assert locale.setlocale(locale.LC_ALL, None) == before
