"""One CT policy: kept as stored when float32 holds it exactly, else float32; NaN/inf rejected in every format
(ITK's NIfTI reader turns NaN and inf into 0, so NIfTI floats are checked on their stored values)."""

from __future__ import annotations

import numpy as np
import pytest

from kits_plugins.errors import KitsInputError
from kits_plugins.utilities.ct_io import first_nonfinite_slice, nifti_first_nonfinite_slice, read_ct
from kits_plugins.utilities.image_io import Geometry, read_image, write_image

GEOMETRY = Geometry((1.0, -2.0, 3.0), (0.75, 0.625, 2.5), (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0), (11, 9, 40))


def _ct(dtype=np.float32) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(40, 200, GEOMETRY.shape).round().astype(dtype)


def test_int16_kept_float64_becomes_float32(tmp_path):
    ct = _ct(np.int16)
    write_image(ct, GEOMETRY, tmp_path / "a.nii.gz")
    a, g = read_ct(tmp_path / "a.nii.gz")
    assert a.dtype == np.int16 and g == GEOMETRY and np.array_equal(a, ct)
    write_image(ct.astype(np.float64), GEOMETRY, tmp_path / "b.nii.gz")
    b, _ = read_ct(tmp_path / "b.nii.gz")
    assert b.dtype == np.float32 and np.array_equal(b, ct)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_rejected_in_every_format_naming_file_and_slice(tmp_path, suffix, bad_value):
    ct = _ct()
    ct[27, 3, 5] = bad_value
    path = tmp_path / f"c{suffix}"
    write_image(ct, GEOMETRY, path)
    if suffix.startswith(".nii"):  # the reason for the extra check: ITK's reader hides the value
        assert np.isfinite(read_image(path)[0]).all()
    with pytest.raises(KitsInputError, match=rf"c{suffix.replace('.', '[.]')}: CT contains NaN or infinite values "
                                             r"\(first in slice 27\)"):
        read_ct(path)


def test_float_nifti_without_nan_passes_and_integer_nifti_is_not_scanned(tmp_path, monkeypatch):
    write_image(_ct(), GEOMETRY, tmp_path / "f.nii.gz")
    assert nifti_first_nonfinite_slice(tmp_path / "f.nii.gz") is None
    assert read_ct(tmp_path / "f.nii.gz")[0].dtype == np.float32
    write_image(_ct(np.int16), GEOMETRY, tmp_path / "i.nii.gz")
    import kits_plugins.utilities.ct_io as ct_io

    def fail(*a, **k):
        raise AssertionError("an integer CT must not be scanned")

    monkeypatch.setattr(ct_io, "nifti_first_nonfinite_slice", fail)
    assert read_ct(tmp_path / "i.nii.gz")[0].dtype == np.int16


def test_first_nonfinite_slice_on_arrays():
    a = np.zeros((300, 100, 100), np.float32)
    assert first_nonfinite_slice(a) is None
    a[233, 99, 0] = np.nan
    assert first_nonfinite_slice(a) == 233
    assert first_nonfinite_slice(np.zeros((3, 3, 3), np.int16)) is None
