"""The label encodings of every dataset and their arithmetic: the only place that knows them.

- KiTS23 label maps (``Dataset220`` and every output): 0 background, 1 kidney, 2 tumor, 3 cyst
  (:mod:`kits_plugins.constants`), trained as nnU-Net regions kidney+masses / masses / tumor.
- Stage 221 and 222: binary kidney+masses (:func:`kidney_mask`).
- Stage 223: 0 background or kidney, 1 tumor, 2 cyst, trained as regions masses (1, 2) and tumor (1) with
  ``regions_class_order`` (2, 1) (nnU-Net 2.8 requires consecutive label values, so the KiTS values 2 and 3
  cannot be kept). :func:`encode_masses` writes it; :func:`masses_label_lut` decodes any stage-223 dataset's
  labels (from its dataset.json) back to KiTS values; :func:`combine_stage_outputs` merges 222 and 223.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from kits_plugins.constants import CYST, KIDNEY, TUMOR
from kits_plugins.errors import KitsInputError

# dataset.json labels (nnU-Net region syntax) and region order of each dataset.
RAW_LABELS: dict[str, int | tuple[int, ...]] = {"background": 0, "kidney": (1, 2, 3), "masses": (2, 3), "tumor": 2}
RAW_REGIONS_CLASS_ORDER = (1, 3, 2)
BINARY_LABELS = {"background": 0, "kidney": 1}
MASSES_LABELS: dict[str, int | tuple[int, ...]] = {"background": 0, "masses": (1, 2), "tumor": 1}
MASSES_REGIONS_CLASS_ORDER = (2, 1)
MASSES_CHANNELS = {0: "CT", 1: "noNorm"}  # 'noNorm' -> nnU-Net's NoNormalization for the binary mask

# KiTS label value -> Dataset223 label value (kidney parenchyma is background for the masses regions).
_KITS_TO_MASSES = np.array([0, 0, 1, 2], dtype=np.uint8)


def kidney_mask(label: np.ndarray) -> np.ndarray:
    """Binary kidney+masses map (uint8 0/1) of a KiTS label map or a coarse prediction (any value > 0)."""
    return (label > 0).view(np.uint8)


def encode_masses(label: np.ndarray) -> np.ndarray:
    """KiTS labels (0-3) -> Dataset223 labels: 0 background or kidney, 1 tumor, 2 cyst (uint8)."""
    return _KITS_TO_MASSES[label]


def masses_label_lut(labels: Mapping) -> np.ndarray:
    """Lookup table: stage-223 label value -> KiTS label (0, 2 tumor, 3 cyst), from its dataset.json labels.

    The value of ``tumor`` becomes 2, a ``cyst`` label or the other values of the ``masses`` region
    become 3, anything else 0. Covers this package's encoding (:data:`MASSES_LABELS`: 1 tumor, 2 cyst) and
    KiTS-valued encodings (``masses [2, 3]``, ``tumor 2``).
    """

    def values(v) -> list[int]:
        return [int(x) for x in v] if isinstance(v, (list, tuple)) else [int(v)]

    if "tumor" not in labels:
        raise KitsInputError(f"stage 223 dataset.json labels {dict(labels)} have no 'tumor' entry")
    tumor = values(labels["tumor"])
    cyst = values(labels["cyst"]) if "cyst" in labels else [v for v in values(labels.get("masses", [])) if v not in tumor]
    lut = np.zeros(max([*tumor, *cyst, 0]) + 1, dtype=np.uint8)
    lut[cyst] = CYST
    lut[tumor] = TUMOR
    return lut


def decode_masses(prediction: np.ndarray, labels: Mapping = MASSES_LABELS) -> np.ndarray:
    """Stage-223 labels (encoded as ``labels``, default :data:`MASSES_LABELS`) -> KiTS values 0, 2, 3 (uint8)."""
    lut = masses_label_lut(labels)
    if prediction.size and (prediction.min() < 0 or prediction.max() >= len(lut)):
        raise ValueError(f"stage-223 labels hold 0-{len(lut) - 1}; got values up to {prediction.max()}")
    return lut[prediction]


def combine_stage_outputs(fine_mask: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """Final labels of one ROI from the fine kidney+masses mask (222) and the masses map (223, in KiTS
    values 2 tumor / 3 cyst, see :func:`decode_masses`).

    Kidney (1) wherever the fine mask is set; tumor (2) and cyst (3) from stage 223 where it predicts
    them *inside* the fine mask. Masses outside the fine mask are dropped: stage 222 is the model trained
    for the kidney+masses extent (the kidney_and_mass HEC), 223 only subdivides it, and a mass must lie
    in a kidney. Any other value 223 may return (e.g. a kidney region) stays kidney.
    """
    if fine_mask.shape != masses.shape:
        raise ValueError(f"fine mask {fine_mask.shape} and masses {masses.shape} differ in shape")
    fine_mask = fine_mask.astype(bool, copy=False)
    out = fine_mask.astype(np.uint8) * np.uint8(KIDNEY)
    lesion = fine_mask & ((masses == TUMOR) | (masses == CYST))
    out[lesion] = masses[lesion]
    return out
