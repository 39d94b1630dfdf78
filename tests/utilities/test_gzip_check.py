"""Truncated or corrupt ``.nii.gz`` files are errors naming the file (ITK alone zero-fills them silently).

Images are about 1 MB compressed: below ~256 KB, ITK's header read happens to inflate the whole stream and
notices some damage itself, which would hide the checks under test.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from kits_plugins.cli import main
from kits_plugins.errors import KitsInputError
from kits_plugins.utilities import gzip_check
from kits_plugins.utilities.gzip_check import (
    GzipIntegrityError,
    check_before_read,
    check_trailer,
    parse_nifti_header,
    verify_gzip_stream,
)
from kits_plugins.utilities.image_io import Geometry, read_geometry, read_image, read_label, write_image

SHAPE = (40, 96, 128)  # numpy order; int16 noise: 983 KB uncompressed, ~790 KB compressed
KITS_DIRECTION = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0)


def _geometry(shape=SHAPE) -> Geometry:
    return Geometry((-120.0, 35.5, 410.0), (2.5, 0.8, 0.8), KITS_DIRECTION, tuple(shape[::-1]))


def _noise(dtype=np.int16, shape=SHAPE, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(0, 100, shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -1000), min(info.max, 1000), shape, endpoint=True).astype(dtype)


def _damaged(src: Path, name: str, data: bytes) -> Path:
    out = src.parent / name
    out.write_bytes(data)
    return out


def _flip(raw: bytes, at: int, n: int = 1, mask: int = 0x55) -> bytes:
    return raw[:at] + bytes(b ^ mask for b in raw[at : at + n]) + raw[at + n :]


def _assert_error(fn, path: Path, *args, match: str = "truncated or corrupt gzip stream") -> str:
    with pytest.raises(KitsInputError, match=match) as e:
        fn(path, *args)
    msg = str(e.value)
    assert str(path) in msg and len(msg.splitlines()) == 1, msg
    return msg


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory) -> tuple[Path, np.ndarray]:
    d = tmp_path_factory.mktemp("gz")
    array = _noise()
    write_image(array, _geometry(), d / "ct.nii.gz")
    return d / "ct.nii.gz", array


@pytest.fixture()
def no_full_verification(monkeypatch):
    """Fail if the slow path runs: a valid ITK-written file must pass on the trailer and the CRC alone."""

    def forbidden(path):
        raise AssertionError(f"full verification of {path}")

    monkeypatch.setattr(gzip_check, "verify_gzip_stream", forbidden)


@pytest.fixture()
def full_verifications(monkeypatch) -> list[Path]:
    calls: list[Path] = []
    real = gzip_check.verify_gzip_stream

    def spy(path):
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(gzip_check, "verify_gzip_stream", spy)
    return calls


# ------------------------------------------------------------------------------------------ valid files


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_valid_files_pass_on_trailer_and_crc_alone(tmp_path, dtype, no_full_verification):
    array = _noise(dtype)
    f = tmp_path / "x.nii.gz"
    write_image(array, _geometry(), f)
    out, g = read_image(f)
    assert np.array_equal(out, array) and g.size == _geometry().size
    view, _ = read_image(f, view=True)  # still SimpleITK's own buffer, no copy
    assert view._sitk_image is not None and np.array_equal(view, array)
    read_geometry(f)
    t = check_trailer(f)
    assert not t.verified and t.layout.vox_offset == 352 and t.layout.data_nbytes == array.nbytes
    assert t.layout.stream_size == len(gzip.decompress(f.read_bytes())) == t.layout.vox_offset + array.nbytes


def test_verify_gzip_stream_counts_the_uncompressed_bytes(ct_file):
    f, array = ct_file
    assert verify_gzip_stream(f) == 352 + array.nbytes


def test_header_parsing_agrees_with_nibabel_nifti1_and_nifti2(tmp_path):
    array = _noise(np.int16, (6, 7, 8))
    for cls, name in ((nib.Nifti1Image, "a.nii.gz"), (nib.Nifti2Image, "b.nii.gz")):
        nib.save(cls(array, np.eye(4)), tmp_path / name)
        proxy = nib.load(tmp_path / name).dataobj
        layout = parse_nifti_header(gzip.decompress((tmp_path / name).read_bytes())[:540])
        assert layout.vox_offset == proxy.offset and layout.data_nbytes == array.nbytes
        assert layout.dtype == np.dtype("<i2") and not layout.scaled
        assert verify_gzip_stream(tmp_path / name) == layout.stream_size
    assert np.array_equal(read_image(tmp_path / "a.nii.gz")[0], array.T)  # SimpleITK 2.5 reads no NIfTI-2
    assert parse_nifti_header(b"\0" * 540) is None


# ------------------------------------------------------------------------------------------ truncation


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(lambda n: n // 2, id="half"),
        pytest.param(lambda n: n - 8, id="no-trailer"),
        pytest.param(lambda n: n - 5, id="inside-crc"),
        pytest.param(lambda n: n - 1, id="inside-isize"),
        pytest.param(lambda n: n * 9 // 10, id="90pct"),
        pytest.param(lambda n: 200, id="inside-nifti-header"),
        pytest.param(lambda n: 12, id="inside-gzip-header"),
    ],
)
def test_truncated_files_are_errors_naming_the_file(ct_file, cut):
    f, _ = ct_file
    raw = f.read_bytes()
    bad = _damaged(f, "cut.nii.gz", raw[: cut(len(raw))])
    _assert_error(read_geometry, bad)  # the free trailer check is enough
    _assert_error(read_image, bad)
    _assert_error(read_label, bad, 1000, match="gzip stream")
    _assert_error(verify_gzip_stream, bad)


def test_truncation_message_says_how_much_is_missing(ct_file):
    f, array = ct_file
    raw = f.read_bytes()
    msg = _assert_error(read_image, _damaged(f, "cut.nii.gz", raw[: len(raw) // 2]))
    assert "ends inside gzip member 1" in msg and f"of the {352 + array.nbytes} uncompressed bytes" in msg


def test_gzip_stream_shorter_than_the_header_says(ct_file):
    """A NIfTI cut *before* compression: a valid gzip stream, too short; ITK would zero-fill the end."""
    f, _ = ct_file
    raw = gzip.decompress(f.read_bytes())
    bad = _damaged(f, "short.nii.gz", gzip.compress(raw[:-1000], compresslevel=1))
    _assert_error(read_geometry, bad, match="uncompressed bytes, the NIfTI header needs")
    _assert_error(read_image, bad, match="uncompressed bytes, the NIfTI header needs")


def test_too_short_and_not_gzip(tmp_path, ct_file):
    f, _ = ct_file
    raw = f.read_bytes()
    _assert_error(read_image, _damaged(f, "tiny.nii.gz", raw[:5]))
    plain = _damaged(f, "plain.nii.gz", gzip.decompress(raw))  # uncompressed data under a .gz name
    _assert_error(read_geometry, plain, match="no gzip magic")


# ------------------------------------------------------------------------------------------ corruption


@pytest.mark.parametrize("n", [1, 50])
def test_bytes_flipped_mid_stream_are_caught_by_the_crc(ct_file, n, full_verifications):
    f, _ = ct_file
    raw = f.read_bytes()
    bad = _damaged(f, "flipped.nii.gz", _flip(raw, len(raw) // 2, n))
    read_geometry(bad)  # header and trailer are intact: only the data can tell
    assert sitk.ReadImage(str(bad)) is not None  # and ITK alone reads it without complaint
    _assert_error(read_image, bad)
    assert full_verifications == [bad]  # the CRC differed; the full pass names the problem


def test_crc_byte_flipped(ct_file):
    f, array = ct_file
    raw = f.read_bytes()
    bad = _damaged(f, "crc.nii.gz", _flip(raw, len(raw) - 7, mask=0x01))
    read_geometry(bad)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(bad))), array)  # the data itself is fine
    _assert_error(read_image, bad)


def test_isize_byte_flipped(ct_file):
    f, _ = ct_file
    raw = f.read_bytes()
    _assert_error(read_geometry, _damaged(f, "isize.nii.gz", _flip(raw, len(raw) - 3, mask=0x01)))


def test_appended_junk_rejected_zero_padding_accepted(ct_file):
    """As Python's gzip (nibabel, hence nnU-Net's reader) does: zeros after a member are padding, other bytes
    are an error (ITK would read either)."""
    f, array = ct_file
    raw = f.read_bytes()
    junk = _damaged(f, "junk.nii.gz", raw + b"appended junk")
    _assert_error(read_geometry, junk, match="not gzip data follow gzip member 1")
    _assert_error(read_image, junk)
    padded = _damaged(f, "padded.nii.gz", raw + bytes(4096))
    assert np.array_equal(read_image(padded)[0], array)


def test_multi_member_gzip_accepted(ct_file, full_verifications):
    """Concatenated members (bgzip, pigz, cat a.gz b.gz) are valid gzip: the trailer holds only the last
    member's size, so the full verification decides, once."""
    f, array = ct_file
    raw = gzip.decompress(f.read_bytes())
    cut = len(raw) // 3
    multi = _damaged(f, "multi.nii.gz", gzip.compress(raw[:cut]) + gzip.compress(raw[cut:]))
    read_geometry(multi)
    out, _ = read_image(multi)
    assert np.array_equal(out, array)
    assert full_verifications == [multi, multi]  # read_geometry and read_image, each once
    blocks = b"".join(gzip.compress(raw[i : i + 65280]) for i in range(0, len(raw), 65280)) + gzip.compress(b"")
    assert verify_gzip_stream(_damaged(f, "bgzip_like.nii.gz", blocks)) == len(raw)
    bad = bytearray(gzip.compress(raw[:cut]) + gzip.compress(raw[cut:]))
    bad[len(bad) // 4] ^= 0x55  # damage in the first member
    _assert_error(read_image, _damaged(f, "multi_bad.nii.gz", bytes(bad)))


# ------------------------------------------------------------------------------- buffers that are not the file


def _nibabel_file(path: Path, array: np.ndarray, slope: float = 1.0, inter: float = 0.0, order: str = "<") -> Path:
    """A NIfTI-1 written by nibabel in byte order ``order``, its scl_slope/scl_inter set in the header bytes
    (nibabel recomputes scaling on save)."""
    header = nib.Nifti1Header(endianness=order)
    nib.save(nib.Nifti1Image(array, np.diag([0.8, 0.8, 2.5, 1.0]), header=header), path)
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[112:120] = np.array([slope, inter], dtype=order + "f4").tobytes()
    path.write_bytes(gzip.compress(bytes(raw)))
    return path


@pytest.mark.parametrize(
    "kind",
    ["scl_slope", "big_endian"],
)
def test_fallback_when_the_buffer_is_not_the_file_bytes(tmp_path, kind, full_verifications):
    """ITK returns rescaled floats (scl_slope != 1) and native byte order: the CRC of its buffer cannot be
    compared, so the stream is verified in full instead."""
    array = _noise(np.int16, SHAPE[::-1])  # nibabel order (x, y, z)
    if kind == "scl_slope":
        f = _nibabel_file(tmp_path / "scaled.nii.gz", array, slope=2.0, inter=-5.0)
        expected = array.T.astype(np.float32) * 2 - 5
    else:
        f = _nibabel_file(tmp_path / "big.nii.gz", array, order=">")
        expected = array.T
    layout = check_trailer(f).layout
    assert layout.scaled == (kind == "scl_slope") and layout.dtype.byteorder == ("=" if kind == "scl_slope" else ">")
    out, _ = read_image(f)
    assert np.allclose(out, expected) and full_verifications == [f]
    raw = f.read_bytes()
    _assert_error(read_image, _damaged(f, "cut.nii.gz", raw[: len(raw) // 2]))
    _assert_error(read_image, _damaged(f, "crc.nii.gz", _flip(raw, len(raw) - 7, mask=0x01)))


# ------------------------------------------------------------------------------------------ other formats


def test_uncompressed_nifti_size_checked_other_formats_untouched(tmp_path, monkeypatch):
    array = _noise(np.int16, (20, 30, 40))
    nii, mha = tmp_path / "a.nii", tmp_path / "a.mha"
    write_image(array, _geometry(array.shape), nii, compress=False)
    write_image(array, _geometry(array.shape), mha)
    assert check_before_read(nii) is None and check_before_read(mha) is None
    for f in (nii, mha):
        assert np.array_equal(read_image(f)[0], array)
    raw = nii.read_bytes()
    cut = _damaged(nii, "cut.nii", raw[: len(raw) - 100])
    _assert_error(read_image, cut, match=r"truncated NIfTI file: \d+ bytes, the header needs")
    _assert_error(read_geometry, cut, match="truncated NIfTI file")

    def forbidden(*args):
        raise AssertionError("gzip check on a non-gzip file")

    for name in ("check_trailer", "check_decoded", "verify_gzip_stream", "check_nifti_size"):
        monkeypatch.setattr(gzip_check, name, forbidden)
    read_image(mha)
    read_geometry(mha)


def test_error_type_and_zlib_fallback(ct_file, monkeypatch):
    """The checks give the same answers with the standard library's zlib (isal missing)."""
    f, array = ct_file
    assert issubclass(GzipIntegrityError, KitsInputError)
    monkeypatch.setattr(gzip_check, "_crc32", zlib.crc32)
    monkeypatch.setattr(gzip_check, "_decompressobj", zlib.decompressobj)
    assert np.array_equal(read_image(f)[0], array)
    raw = f.read_bytes()
    _assert_error(read_image, _damaged(f, "zcrc.nii.gz", _flip(raw, len(raw) - 7, mask=0x01)), match="data check")
    _assert_error(read_image, _damaged(f, "zmid.nii.gz", _flip(raw, len(raw) // 2, 50)))


# ------------------------------------------------------------------------------------------ commands


def _kits_layout(root: Path, n: int = 2) -> Path:
    kits = root / "kits23" / "dataset"
    for i in range(n):
        label = np.zeros(SHAPE, np.uint8)
        label[10:30, 20:60, 30:90] = 1
        label[15:20, 30:40, 40:50] = 2
        write_image(_noise(seed=i), _geometry(), kits / f"case_{i:05d}" / "imaging.nii.gz")
        write_image(label, _geometry(), kits / f"case_{i:05d}" / "segmentation.nii.gz")
    return kits


@pytest.mark.parametrize("damage", ["truncated", "crc"])
def test_kits_convert_refuses_a_damaged_ct(tmp_path, capsys, damage):
    kits = _kits_layout(tmp_path)
    ct = kits / "case_00001" / "imaging.nii.gz"
    raw = ct.read_bytes()
    ct.write_bytes(raw[: len(raw) // 2] if damage == "truncated" else _flip(raw, len(raw) - 7, mask=0x01))
    raw_dir = tmp_path / "raw"
    assert main(["convert", str(kits), "--raw", str(raw_dir), "-np", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert err.startswith(f"kits convert: error: {ct}: truncated or corrupt gzip stream: ")
    assert not raw_dir.exists() or not any(raw_dir.iterdir())  # no dataset, no staging folder
    assert main(["convert", str(kits), "--raw", str(raw_dir), "-np", "1", "--skip-invalid"]) == 0
    assert sorted(p.name for p in (raw_dir / "Dataset220_KiTS2023" / "imagesTr").iterdir()) == [
        "case_00000_0000.nii.gz"
    ]


def test_kits_evaluate_refuses_a_truncated_reference(tmp_path, capsys):
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    rng = np.random.default_rng(0)
    for i in range(2):
        label = rng.integers(0, 4, SHAPE, dtype=np.uint8)  # noise: ~0.5 MB compressed
        write_image(label, _geometry(), pred_dir / f"case_{i:05d}.nii.gz")
        write_image(label, _geometry(), ref_dir / f"case_{i:05d}.nii.gz")
    ref = ref_dir / "case_00001.nii.gz"
    raw = ref.read_bytes()
    ref.write_bytes(raw[: len(raw) * 3 // 4])
    out = tmp_path / "eval.csv"
    assert main(["evaluate", str(pred_dir), str(ref_dir), "-o", str(out), "-np", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(ref) in err and "truncated or corrupt gzip stream" in err
    assert not out.exists()
