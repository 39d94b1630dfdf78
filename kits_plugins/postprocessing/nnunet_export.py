"""Write our postprocessing as an nnU-Net ``postprocessing.pkl``.

nnU-Net's ``nnUNetv2_apply_postprocessing -i IN -o OUT -pp_pkl_file postprocessing.pkl`` loads a pickled
``(functions, kwargs)`` pair and calls ``segmentation = fn(segmentation, **kwargs)`` for each pair on every
file (nnunetv2.postprocessing.remove_connected_components.apply_postprocessing). The pickle stores our
function by its import path, so ``kits_plugins`` must be importable wherever nnU-Net applies it.

Limitation: nnU-Net passes only the label array, not the spacing, so the mm3 thresholds are converted to
voxel counts once, at the ``spacing`` given here. They are exact for maps at that spacing (the default,
the target spacing, reproduces the seed's 20000/200/50 voxels); predictions that nnU-Net writes at each
case's native spacing are better postprocessed with ``kits postprocess``, which converts per file.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path

from kits_plugins.constants import LABEL_NAMES, TARGET_SPACING
from kits_plugins.postprocessing.remove_components import (
    DEFAULT_MIN_VOLUME_MM3,
    min_volume_to_voxels,
    nnunet_postprocessing_fn,
)
from kits_plugins.utilities.staging import atomic_write_bytes


def nnunet_postprocessing_spec(
    spacing: Sequence[float] = TARGET_SPACING,
    min_volume_mm3: Mapping[int, float] | None = None,
    remove_outside_kidney: bool = True,
) -> tuple[list, list[dict]]:
    """The ``(pp_fns, pp_fn_kwargs)`` pair nnU-Net's ``apply_postprocessing_to_folder`` takes."""
    thresholds = dict(DEFAULT_MIN_VOLUME_MM3)
    if min_volume_mm3 is not None:
        thresholds.update(min_volume_mm3)
    min_voxels = min_volume_to_voxels(thresholds, spacing)
    return [nnunet_postprocessing_fn], [{"min_voxels": min_voxels, "remove_outside_kidney": bool(remove_outside_kidney)}]


def export_postprocessing_pkl(
    out_path: str | os.PathLike,
    spacing: Sequence[float] = TARGET_SPACING,
    min_volume_mm3: Mapping[int, float] | None = None,
    remove_outside_kidney: bool = True,
) -> Path:
    """Write ``postprocessing.pkl`` (and a readable ``postprocessing.json`` next to it); return the pkl path.

    Both files are written atomically. The json mirrors what nnU-Net's own ``determine_postprocessing``
    writes (function names and kwargs) plus the spacing and mm3 thresholds the voxel counts come from.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fns, kwargs = nnunet_postprocessing_spec(spacing, min_volume_mm3, remove_outside_kidney)
    thresholds = dict(DEFAULT_MIN_VOLUME_MM3)
    if min_volume_mm3 is not None:
        thresholds.update(min_volume_mm3)
    info = {
        "postprocessing_fns": [f"{f.__module__}.{f.__qualname__}" for f in fns],
        "postprocessing_kwargs": [{**k, "min_voxels": {str(a): b for a, b in k["min_voxels"].items()}} for k in kwargs],
        "spacing_mm": [float(s) for s in spacing],
        "min_volume_mm3": {LABEL_NAMES[k]: float(v or 0) for k, v in thresholds.items()},
    }
    atomic_write_bytes(out_path, pickle.dumps((fns, kwargs)))
    atomic_write_bytes(out_path.with_suffix(".json"), json.dumps(info, indent=2).encode())
    return out_path
