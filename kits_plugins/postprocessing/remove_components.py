"""Connected-component postprocessing of KiTS label maps (pure array functions).

Rules, applied in this order on a uint8 map with labels 0 background, 1 kidney, 2 tumor, 3 cyst:

1. **Kidneys.** A kidney is a 26-connected component of the foreground (kidney + tumor + cyst together),
   because a kidney largely replaced by a tumor is still one organ and the challenge scores
   "kidney_and_mass" as one region. A foreground component that contains kidney voxels (label 1) and is
   smaller than ``min_volume_mm3[1]`` is removed entirely (set to 0), lesions included.
2. **Outside the kidneys.** With ``remove_outside_kidney`` (default), a foreground component without any
   kidney voxel, i.e. tumor/cyst that touches no kept kidney voxel even through other masses, is set to 0.
3. **Small masses.** 26-connected components of tumor (label 2) and of cyst (label 3), each label
   separately, smaller than ``min_volume_mm3[2]`` / ``[3]`` are relabelled. A small component is decided at the
   mass level: when the mass it belongs to (tumor and cyst together, 26-connected) also holds kept voxels of
   the other mass label, it takes that label (a small tumor fragment on a cyst becomes cyst: the mass keeps
   its extent instead of getting a kidney-labelled hole). Otherwise its voxels become kidney (1) when they lie
   in a kept kidney component (inside the organ, so the kidney_and_mass region does not change) and background
   (0) otherwise (only possible with ``remove_outside_kidney=False``).

Sizes are given in mm3 and converted to voxel counts with the voxel volume of the map being processed, so
the same defaults mean the same physical size at any spacing (connectivity and voxel volume do not depend
on the axis order, so ``spacing`` may be in any order). All work happens inside the foreground bounding
box with cc3d; there are no Python loops over voxels.

Removed tumors/cysts that still have at least the seed's voxel count (200 / 50) are logged as warnings and
flagged in the report: on fine native grids the mm3 thresholds can delete true small lesions (see
docs/postprocessing.md for the measured effect on real ground truth).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Final

import cc3d
import numpy as np

from kits_plugins.constants import (
    BACKGROUND,
    CYST,
    DEFAULT_MIN_VOLUME_MM3,
    KIDNEY,
    LABEL_NAMES,
    MAX_LABEL,
    SEED_MIN_VOXELS_AT_TARGET,
    TUMOR,
)
from kits_plugins.utilities.roi import outer_slices

CONNECTIVITY: Final = 26
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RemovedComponent:
    """One connected component that postprocessing removed or relabelled."""

    label: int  # its label before postprocessing (for rule 1: 1, the whole kidney component)
    reason: str  # "small_kidney", "outside_kidney", "small_tumor" or "small_cyst"
    voxels: int
    volume_mm3: float
    new_label: int  # what its voxels became (0, or 1 for small masses inside a kidney)
    mass_voxels: int = 0  # tumor + cyst voxels removed with it (rules 1 and 2)
    exceeds_seed_voxels: bool = False  # small mass with at least the seed's voxel count (see below)


@dataclass
class PostprocessReport:
    """What :func:`postprocess_with_report` changed; ``removed`` lists components in rule order."""

    voxel_volume_mm3: float
    min_voxels: dict[int, int]
    removed: list[RemovedComponent] = field(default_factory=list)
    emptied: bool = False  # the map had foreground and none is left (every kidney removed)

    def largest_removed(self, label: int | None = None) -> RemovedComponent | None:
        items = [r for r in self.removed if label is None or r.label == label]
        return max(items, key=lambda r: r.voxels, default=None)

    def summary(self) -> str:
        """One line: number and largest size of removed components per reason."""
        if not self.removed:
            return "nothing removed"
        parts = []
        for reason in ("small_kidney", "outside_kidney", "small_tumor", "small_cyst"):
            items = [r for r in self.removed if r.reason == reason]
            if items:
                big = max(items, key=lambda r: r.voxels)
                parts.append(f"{reason}: {len(items)} (largest {big.voxels} vox, {big.volume_mm3:.1f} mm3)")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return {
            "voxel_volume_mm3": self.voxel_volume_mm3,
            "min_voxels": {LABEL_NAMES[k]: v for k, v in self.min_voxels.items()},
            "removed": [asdict(r) for r in self.removed],
            "emptied": self.emptied,
        }


def min_volume_to_voxels(min_volume_mm3: Mapping[int, float], spacing: Sequence[float]) -> dict[int, int]:
    """Per-label minimum voxel count: the smallest count whose volume reaches the minimum in mm3.

    A component is kept when ``voxels * voxel_volume >= min_volume_mm3`` (a tiny tolerance absorbs float
    rounding, so the defaults give exactly 20000/200/50 voxels at the target spacing).
    """
    voxel_volume = float(np.prod(np.asarray(spacing, dtype=np.float64)))
    if len(spacing) != 3 or not voxel_volume > 0:
        raise ValueError(f"spacing must be 3 positive values, got {tuple(spacing)}")
    out = {}
    for label, mm3 in min_volume_mm3.items():
        if label not in (KIDNEY, TUMOR, CYST):
            raise ValueError(f"min_volume_mm3 keys must be 1 (kidney), 2 (tumor) or 3 (cyst), got {label}")
        if mm3 is None or mm3 <= 0:
            out[label] = 0
        else:
            out[label] = int(math.ceil(float(mm3) / voxel_volume * (1 - 1e-9)))
    return out


def _check_seg(seg: np.ndarray) -> None:
    if seg.ndim != 3:
        raise ValueError(f"expected a 3D label map, got shape {seg.shape}")
    if not np.issubdtype(seg.dtype, np.integer):
        raise ValueError(f"expected an integer label map, got dtype {seg.dtype}")


def _postprocess_crop(
    crop: np.ndarray, min_voxels: Mapping[int, int], remove_outside_kidney: bool, voxel_volume: float
) -> list[RemovedComponent]:
    """Apply the rules to ``crop`` (uint8, modified in place); return what was removed."""
    removed: list[RemovedComponent] = []

    # Rules 1 and 2: components of kidney + masses.
    organs, n_organs = cc3d.connected_components(crop != 0, connectivity=CONNECTIVITY, return_N=True)
    stats = cc3d.statistics(organs)
    organ_voxels = stats["voxel_counts"]
    has_kidney = np.zeros(n_organs + 1, dtype=bool)
    has_kidney[organs[crop == KIDNEY]] = True
    small = organ_voxels < min_voxels.get(KIDNEY, 0)
    drop = (has_kidney & small) | (~has_kidney & remove_outside_kidney)
    drop[0] = False
    for i in np.flatnonzero(drop):
        n = int(organ_voxels[i])
        box = stats["bounding_boxes"][i]
        values = crop[box][organs[box] == i]
        masses = int(np.count_nonzero(values >= TUMOR))
        if has_kidney[i]:
            label, reason = KIDNEY, "small_kidney"
        else:  # outside: report the component by its highest label (tumor if it has any tumor voxel)
            label, reason = int(values.max()), "outside_kidney"
        removed.append(RemovedComponent(label, reason, n, n * voxel_volume, BACKGROUND, mass_voxels=masses))
    if drop.any():
        crop[drop[organs]] = BACKGROUND
    # Kidney components that are kept (a relabelled small mass inside one becomes kidney).
    in_kidney = has_kidney & ~drop

    # Rule 3: small tumor and cyst components, each label separately (cc3d.dust finds them), all decided on the
    # map as rules 1 and 2 left it.
    smalls: dict[int, np.ndarray] = {}
    for label in (TUMOR, CYST):
        threshold = min_voxels.get(label, 0)
        mask = crop == label
        if threshold <= 1 or not mask.any():
            continue
        components = cc3d.connected_components(mask, connectivity=CONNECTIVITY)
        small_only = cc3d.dust(components, threshold=threshold, connectivity=CONNECTIVITY, precomputed_ccl=True,
                               invert=True)
        if small_only.any():
            smalls[label] = small_only
    if not smalls:
        return removed
    # The mass (tumor + cyst, 26-connected) each small component belongs to, and which masses hold kept voxels
    # of each label: a small tumor inside a mass with a kept cyst becomes cyst (and vice versa), not kidney.
    mass_ids, n_masses = cc3d.connected_components(crop >= TUMOR, connectivity=CONNECTIVITY, return_N=True)
    mass_has: dict[int, np.ndarray] = {}
    for label in (TUMOR, CYST):
        kept = crop == label
        if label in smalls:
            kept &= smalls[label] == 0
        mass_has[label] = np.zeros(n_masses + 1, dtype=bool)
        mass_has[label][mass_ids[kept]] = True
    for label, reason in ((TUMOR, "small_tumor"), (CYST, "small_cyst")):
        if label not in smalls:
            continue
        small_only = smalls[label]
        other = CYST if label == TUMOR else TUMOR
        sel = small_only != 0
        ids, counts = np.unique(small_only[sel], return_counts=True)
        # Each small component lies inside exactly one organ and one mass component: map it through any voxel.
        organ_of = np.zeros(int(ids.max()) + 1, dtype=organs.dtype)
        organ_of[small_only[sel]] = organs[sel]
        mass_of = np.zeros(int(ids.max()) + 1, dtype=mass_ids.dtype)
        mass_of[small_only[sel]] = mass_ids[sel]
        new_label_of = np.where(
            mass_has[other][mass_of], other, np.where(in_kidney[organ_of], KIDNEY, BACKGROUND)
        ).astype(np.uint8)
        crop[sel] = new_label_of[small_only[sel]]
        for cid, cnt in zip(ids, counts):
            removed.append(
                RemovedComponent(
                    label, reason, int(cnt), int(cnt) * voxel_volume, int(new_label_of[cid]),
                    exceeds_seed_voxels=bool(cnt >= SEED_MIN_VOXELS_AT_TARGET[label]),
                )
            )
    return removed


def postprocess_with_report(
    seg: np.ndarray,
    spacing: Sequence[float],
    min_volume_mm3: Mapping[int, float] | None = None,
    remove_outside_kidney: bool = True,
    in_place: bool = False,
) -> tuple[np.ndarray, PostprocessReport]:
    """:func:`postprocess_segmentation` that also returns a :class:`PostprocessReport` of what it removed."""
    _check_seg(seg)
    thresholds = dict(DEFAULT_MIN_VOLUME_MM3)
    if min_volume_mm3 is not None:
        thresholds.update(min_volume_mm3)
    min_voxels = min_volume_to_voxels(thresholds, spacing)
    voxel_volume = float(np.prod(np.asarray(spacing, dtype=np.float64)))
    out = seg if in_place else seg.copy()
    if out.dtype != np.uint8:
        out = out.astype(np.uint8)
    report = PostprocessReport(voxel_volume_mm3=voxel_volume, min_voxels=min_voxels)
    box = outer_slices(out)
    if box is None:
        return out, report
    crop = out[box]  # a view: changes go straight into ``out``
    if int(crop.max()) > MAX_LABEL:
        raise ValueError(f"labels must be 0-{MAX_LABEL}, found {int(crop.max())}")
    report.removed = _postprocess_crop(crop, min_voxels, remove_outside_kidney, voxel_volume)
    report.emptied = bool(report.removed) and not crop.any()
    if report.emptied:
        logger.warning(
            "postprocessing removed every kidney component (%s): the label map is now empty; check the "
            "thresholds (--min-kidney-mm3 %.1f) against this scan", report.summary(), thresholds[KIDNEY],
        )
    for r in report.removed:
        if r.exceeds_seed_voxels:
            logger.warning(
                "postprocessing removed a %s component of %d voxels (%.1f mm3, below %.1f mm3): at this fine "
                "spacing it has at least the seed's %d voxels, so it may be a true lesion (relabelled %s)",
                LABEL_NAMES[r.label], r.voxels, r.volume_mm3, thresholds[r.label],
                SEED_MIN_VOXELS_AT_TARGET[r.label], LABEL_NAMES[r.new_label],
            )
    return out, report


def postprocess_segmentation(
    seg: np.ndarray,
    spacing: Sequence[float],
    min_volume_mm3: Mapping[int, float] | None = None,
    remove_outside_kidney: bool = True,
    in_place: bool = False,
) -> np.ndarray:
    """Remove small kidneys, masses outside the kidneys and small tumors/cysts (see the module docstring).

    Args:
        seg: 3D integer label map with labels 0-3 (any axis order).
        spacing: voxel size in mm in the same axis order as ``seg`` (only its product is used).
        min_volume_mm3: per-label minimum component volume {1: kidney(+masses), 2: tumor, 3: cyst}; missing
            labels take :data:`DEFAULT_MIN_VOLUME_MM3`, 0 or None disables that rule.
        remove_outside_kidney: remove tumor/cyst components that touch no kept kidney.
        in_place: modify ``seg`` itself when it is uint8 (saves one copy of the volume); by default the
            input is left untouched and a new uint8 array is returned.

    Returns:
        The postprocessed uint8 label map, same shape.
    """
    return postprocess_with_report(seg, spacing, min_volume_mm3, remove_outside_kidney, in_place)[0]


# ----------------------------------------------------------------------------------------------------------
# nnU-Net postprocessing.pkl entry point
# ----------------------------------------------------------------------------------------------------------


def nnunet_postprocessing_fn(
    segmentation: np.ndarray,
    min_voxels: Mapping[int, int] | None = None,
    remove_outside_kidney: bool = True,
) -> np.ndarray:
    """The same rules with thresholds in voxels, in the form nnU-Net's postprocessing.pkl expects.

    nnU-Net calls every function of a postprocessing.pkl as ``fn(segmentation, **kwargs)`` and passes no
    spacing, so the thresholds are fixed voxel counts (see :func:`kits_plugins.postprocessing.nnunet_export`).
    The input is not modified. Keys may be ints or strings ("1", "2", "3"). nnU-Net's readers return the
    segmentation as float32, so a float map with whole values 0-3 is accepted; the result is uint8.
    """
    if not np.issubdtype(segmentation.dtype, np.integer):
        segmentation = segmentation.astype(np.uint8)  # whole label values: exact
    given = {int(k): int(v) for k, v in (min_voxels or {}).items()}
    min_voxels = {label: given.get(label, n) for label, n in SEED_MIN_VOXELS_AT_TARGET.items()}
    # Thresholds in voxels == thresholds in mm3 at a 1 mm3 voxel.
    return postprocess_segmentation(
        segmentation, (1.0, 1.0, 1.0), {k: float(v) for k, v in min_voxels.items()}, remove_outside_kidney
    )
