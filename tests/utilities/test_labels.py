"""``kits_plugins.utilities.labels``: the label encodings of the stages and how stage outputs combine (and
``compact_ct``'s CT dtype, checked in the same test)."""

from __future__ import annotations

import numpy as np
import pytest

from kits_plugins.utilities.ct_io import compact_ct
from kits_plugins.utilities.labels import (
    combine_stage_outputs,
    decode_masses,
    encode_masses,
    kidney_mask,
    masses_label_lut,
)


def test_label_encodings_and_ct_dtype():
    kits = np.array([0, 1, 2, 3], np.uint8)
    assert encode_masses(kits).tolist() == [0, 0, 1, 2]
    assert decode_masses(encode_masses(kits)).tolist() == [0, 0, 2, 3]
    with pytest.raises(ValueError):
        decode_masses(np.array([3], np.uint8))
    assert kidney_mask(kits).tolist() == [0, 1, 1, 1] and kidney_mask(kits).dtype == np.uint8
    ct16 = np.zeros((2, 2, 2), np.int16)
    assert compact_ct(ct16) is ct16
    assert compact_ct(np.full((2, 2, 2), -1024.0, np.float32)).dtype == np.int16
    assert compact_ct(np.full((2, 2, 2), 0.5, np.float64)).dtype == np.float32
    assert compact_ct(np.full((2, 2, 2), 70000, np.int32)).dtype == np.float32


def test_combine_stage_outputs_restricts_masses_to_fine_mask():
    assert masses_label_lut({"background": 0, "masses": [1, 2], "tumor": 1}).tolist() == [0, 2, 3]
    assert masses_label_lut({"background": 0, "masses": [2, 3], "tumor": 2}).tolist() == [0, 0, 2, 3]
    fine = np.array([0, 1, 1, 1, 0], bool)
    masses = np.array([2, 0, 2, 3, 3], np.uint8)
    assert combine_stage_outputs(fine, masses).tolist() == [0, 1, 2, 3, 0]
    assert combine_stage_outputs(fine, np.array([0, 1, 1, 0, 0], np.uint8)).tolist() == [0, 1, 1, 1, 0]
