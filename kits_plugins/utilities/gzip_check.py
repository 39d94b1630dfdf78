"""Integrity of ``.nii.gz`` (and ``.nii``) files, which ITK reads without complaint when they are damaged.

ITK's NIfTI reader fills whatever a damaged file does not deliver with zeros and ignores inflate and CRC
errors, so a truncated or corrupt ``.nii.gz`` reads "ok" with wrong voxels. Three checks, cheapest first:

- :func:`check_trailer`: gzip magic, the NIfTI header decompressed from the start of the stream, and the gzip
  trailer's ISIZE against ``vox_offset + voxel bytes`` (mod 2**32). Reads 64 KB and 8 bytes; catches
  truncation and appended bytes.
- :func:`check_decoded`: CRC-32 of the header bytes and of the voxel buffer ITK returned, against the
  trailer's CRC. One pass over memory, no second decompression; catches zero-filled and corrupt data.
- :func:`verify_gzip_stream`: full chunked decompression, CRC and length checked, bounded memory. The
  fallback where the fast checks cannot decide (multi-member gzip, buffers that are not the file's bytes)
  and the source of every error message about the stream.

Every failure raises :class:`GzipIntegrityError` with one line naming the file.
"""

from __future__ import annotations

import math
import os
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kits_plugins.errors import KitsInputError

try:  # ISA-L: CRC-32 about 3.5x and inflate about 2x faster than zlib here (benchmarks/gzip_check.py)
    from isal import isal_zlib as _fast_zlib
except ImportError:  # pragma: no cover - isal is a dependency; zlib gives the same results, slower
    _fast_zlib = None  # type: ignore[assignment]  # an optional module: None stands for "not installed"

_crc32 = _fast_zlib.crc32 if _fast_zlib is not None else zlib.crc32
_decompressobj = _fast_zlib.decompressobj if _fast_zlib is not None else zlib.decompressobj
_INFLATE_ERRORS: tuple[type[BaseException], ...] = (zlib.error,)
if _fast_zlib is not None:
    _INFLATE_ERRORS += (_fast_zlib.error,)  # type: ignore[operator]  # isal's stub: an instance; it is the class

GZIP_MAGIC = b"\x1f\x8b"
GZIP_WBITS = 31  # zlib: gzip wrapper, 32 KB window
IN_CHUNK = 1 << 20  # compressed bytes read at a time
HEAD_CHUNK = 1 << 16  # compressed bytes read at a time for the header
OUT_CHUNK = 1 << 22  # largest decompressed piece held in memory
MAX_PREFIX = 1 << 24  # header + extensions decompressed for the CRC; larger vox_offset: full verification

# NIfTI datatype code -> numpy type (little-endian; byte order applied from sizeof_hdr)
NIFTI_DTYPES = {
    2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8",
    256: "i1", 512: "u2", 768: "u4", 1024: "i8", 1280: "u8",
}  # fmt: skip


class GzipIntegrityError(KitsInputError):
    """A truncated or corrupt image file. The message is one line naming the file."""


@dataclass(frozen=True)
class NiftiLayout:
    """Where the voxels of a single-file NIfTI-1/2 are and how they are stored."""

    vox_offset: int
    data_nbytes: int
    dtype: np.dtype | None  # None: a type ITK does not return as stored (complex, RGB, float128)
    scaled: bool  # scl_slope / scl_inter change the values: ITK returns rescaled floats

    @property
    def stream_size(self) -> int:
        """Bytes of the uncompressed file the header asks for."""
        return self.vox_offset + self.data_nbytes


@dataclass(frozen=True)
class TrailerCheck:
    """Result of :func:`check_trailer`, input of :func:`check_decoded`."""

    layout: NiftiLayout | None  # None: not a single-file NIfTI header (then ``verified``)
    prefix: bytes  # the uncompressed bytes before the voxels (header and extensions); b"" if not needed
    crc: int  # CRC-32 in the gzip trailer
    verified: bool  # the whole stream was already decompressed and checked


def _fail(path: str | os.PathLike, problem: str) -> GzipIntegrityError:
    return GzipIntegrityError(f"{path}: truncated or corrupt gzip stream: {problem}")


def is_nifti_gz(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(".nii.gz")


def is_nifti(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(".nii")


def parse_nifti_header(raw: bytes) -> NiftiLayout | None:
    """Voxel offset, size and type from the first 348 (NIfTI-1) or 540 (NIfTI-2) bytes of a single file.

    None where ``raw`` is not a single-file NIfTI header (no ``n+1``/``n+2`` magic, odd dims): nothing to compare.
    """
    for order in "<>":
        sizeof_hdr = struct.unpack(order + "i", raw[:4])[0] if len(raw) >= 4 else 0
        if sizeof_hdr == 348 and len(raw) >= 348 and raw[344:348] == b"n+1\0":
            dim = struct.unpack(order + "8h", raw[40:56])
            datatype, bitpix = struct.unpack(order + "2h", raw[70:74])
            vox_offset, slope, inter = struct.unpack(order + "3f", raw[108:120])
            break
        if sizeof_hdr == 540 and len(raw) >= 540 and raw[4:8] == b"n+2\0":
            datatype, bitpix = struct.unpack(order + "2h", raw[12:16])
            dim = struct.unpack(order + "8q", raw[16:80])
            (vox_offset,) = struct.unpack(order + "q", raw[168:176])
            slope, inter = struct.unpack(order + "2d", raw[176:192])
            break
    else:
        return None
    ndim = dim[0]
    if not 1 <= ndim <= 7 or any(d < 0 for d in dim[1 : ndim + 1]) or bitpix <= 0 or bitpix % 8:
        return None
    if not math.isfinite(vox_offset) or vox_offset < sizeof_hdr:  # not a valid single file: nothing to compare
        return None
    nvox = math.prod(int(d) for d in dim[1 : ndim + 1])
    code = NIFTI_DTYPES.get(datatype)
    dtype = np.dtype(order + code) if code is not None and np.dtype(code).itemsize * 8 == bitpix else None
    finite_slope = np.isfinite(slope) and slope != 0  # 0 or NaN: no scaling (NIfTI standard, nifticlib)
    scaled = bool((finite_slope and slope != 1) or (np.isfinite(inter) and inter != 0))
    return NiftiLayout(int(vox_offset), nvox * bitpix // 8, dtype, scaled)


def _decompressed_prefix(path: str | os.PathLike, n: int) -> bytes:
    """The first ``n`` uncompressed bytes (fewer if the stream ends); reads only as much of the file as needed."""
    d, out = _decompressobj(GZIP_WBITS), bytearray()
    with open(path, "rb") as f:
        while len(out) < n and not d.eof:
            data = d.unconsumed_tail or f.read(HEAD_CHUNK)
            if not data:
                break
            out += d.decompress(data, n - len(out))
    return bytes(out)


def _needed(head: bytes) -> str:
    layout = parse_nifti_header(head)
    return f" of the {layout.stream_size}" if layout is not None else ""


def verify_gzip_stream(path: str | os.PathLike) -> int:
    """Decompress the whole file in chunks (bounded memory), checking every member's CRC-32 and length.

    Accepts multi-member streams (bgzip, concatenation) and zero padding after a member, as gzip and Python's
    gzip (nibabel, so nnU-Net) do; rejects any other trailing bytes, and a NIfTI stream shorter than its header
    says. Returns the number of uncompressed bytes.
    """
    total, members, head = 0, 0, b""
    with open(path, "rb") as f:
        data = f.read(IN_CHUNK)
        if data[:2] != GZIP_MAGIC:
            raise _fail(path, "no gzip magic at the start of the file")
        while data:
            d = _decompressobj(GZIP_WBITS)
            try:
                while not d.eof:
                    if not data:
                        data = f.read(IN_CHUNK)
                        if not data:
                            raise _fail(path, f"the file ends inside gzip member {members + 1}, after {total}"
                                              f"{_needed(head)} uncompressed bytes")  # fmt: skip
                    out = d.decompress(data, OUT_CHUNK)
                    if len(head) < 540:
                        head += out[: 540 - len(head)]
                    total += len(out)
                    data = d.unconsumed_tail
            except _INFLATE_ERRORS as e:
                check = any(k in str(e).lower() for k in ("checksum", "data check", "length check"))
                what = "does not match the CRC-32 or length in its trailer" if check else "does not decompress"
                raise _fail(path, f"gzip member {members + 1} {what} ({e})") from None
            members += 1
            data = d.unused_data.lstrip(b"\0")
            while not data:  # zero padding (or nothing) up to the end of the file
                block = f.read(IN_CHUNK)
                if not block:
                    break
                data = block.lstrip(b"\0")
            if len(data) == 1:
                data += f.read(IN_CHUNK)
            if data and data[:2] != GZIP_MAGIC:
                raise _fail(path, f"bytes that are not gzip data follow gzip member {members}")
    layout = parse_nifti_header(head)
    if layout is not None and total < layout.stream_size:
        raise _fail(path, f"{total} uncompressed bytes, the NIfTI header needs {layout.stream_size}")
    return total


def check_trailer(path: str | os.PathLike) -> TrailerCheck:
    """Free check (64 KB read): gzip magic, NIfTI header, trailer ISIZE = header's size mod 2**32.

    A mismatch, or a start that is not a NIfTI header, is decided by :func:`verify_gzip_stream` (a valid
    multi-member gzip has its last member's size there), so the error always says what is wrong with the stream.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        magic = f.read(2)
        f.seek(max(0, size - 8))
        tail = f.read(8)
    if magic != GZIP_MAGIC:
        raise _fail(path, "no gzip magic at the start of the file")
    if size < 18:
        raise _fail(path, f"{size} bytes, shorter than an empty gzip stream")
    crc, isize = struct.unpack("<II", tail)
    try:
        head = _decompressed_prefix(path, 540)
    except _INFLATE_ERRORS:
        head = b""
    layout = parse_nifti_header(head)
    if layout is None or isize != layout.stream_size % 2**32:
        # a start that does not decompress to a NIfTI header, or a size that disagrees: the whole stream decides
        verify_gzip_stream(path)
        return TrailerCheck(layout, b"", crc, True)
    prefix = head[: layout.vox_offset] if layout.vox_offset <= len(head) else b""
    if not prefix and layout.vox_offset <= MAX_PREFIX:  # long header extensions
        try:
            prefix = _decompressed_prefix(path, layout.vox_offset)
        except _INFLATE_ERRORS:
            prefix = b""  # check_decoded falls back to the full verification
    return TrailerCheck(layout, prefix, crc, False)


def buffer_is_file_data(layout: NiftiLayout | None, prefix: bytes, array: np.ndarray) -> bool:
    """Whether ``array``'s bytes are the file's voxel bytes: same type and byte order, no rescaling, contiguous."""
    return (
        layout is not None
        and len(prefix) == layout.vox_offset
        and layout.dtype is not None
        and not layout.scaled
        and layout.dtype.byteorder in ("=", "|", {"little": "<", "big": ">"}[sys.byteorder])
        and array.dtype == layout.dtype
        and array.nbytes == layout.data_nbytes
        and array.flags.c_contiguous
    )


def check_decoded(path: str | os.PathLike, trailer: TrailerCheck, array: np.ndarray) -> None:
    """CRC-32 of header + the voxels ITK decoded must equal the trailer's CRC (one pass over ``array``).

    Where ``array`` cannot be matched to the file's bytes, or the CRC differs, :func:`verify_gzip_stream`
    decides (and names the problem); a stream it accepts is accepted.
    """
    if trailer.verified:
        return
    if buffer_is_file_data(trailer.layout, trailer.prefix, array):
        if _crc32(array, _crc32(trailer.prefix)) == trailer.crc:
            return
    verify_gzip_stream(path)


def check_nifti_size(path: str | os.PathLike) -> None:
    """An uncompressed ``.nii`` must hold the bytes its header asks for (ITK zero-fills a short file)."""
    with open(path, "rb") as f:
        layout = parse_nifti_header(f.read(540))
    size = os.path.getsize(path)
    if layout is not None and size < layout.stream_size:
        raise GzipIntegrityError(f"{path}: truncated NIfTI file: {size} bytes, the header needs {layout.stream_size}")


def check_before_read(path: str | os.PathLike) -> TrailerCheck | None:
    """The free checks for a file about to be read: trailer of a ``.nii.gz``, size of a ``.nii``; None otherwise
    (other formats, or a file that cannot be opened: the reader reports that)."""
    path = Path(path)
    try:
        if is_nifti_gz(path):
            return check_trailer(path)
        if is_nifti(path):
            check_nifti_size(path)
    except OSError:
        return None
    return None


def check_after_read(path: str | os.PathLike, trailer: TrailerCheck | None, array: np.ndarray) -> None:
    """The CRC check of what was read (``trailer`` from :func:`check_before_read`; None: nothing to check)."""
    if trailer is not None:
        check_decoded(path, trailer, array)
