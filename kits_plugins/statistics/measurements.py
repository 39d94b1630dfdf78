"""Per-kidney and per-lesion measurements of a KiTS label map in physical units (pure array functions).

Arrays are in SimpleITK's numpy order (z, y, x) with a :class:`~kits_plugins.utilities.image_io.Geometry`;
every position goes through the direction matrix (oblique directions included) into patient coordinates, LPS in
mm (+x towards the patient's left, +y posterior, +z superior). Volumes are voxel counts times the voxel volume, in
ml; intensities are the CT's values (HU).

The rules (constants in :mod:`kits_plugins.statistics.rules`):

- Components are 26-connected (:data:`CONNECTIVITY`, as postprocessing counts them). A kidney is a component of
  labels 1-3 (the kidney with its masses); a lesion is a component of tumor (2) or of cyst (3), each label on its
  own. Every lesion lies inside exactly one kidney component (same connectivity), which is the kidney it belongs to.
- Kidney components under ``min_kidney_ml`` (default :data:`DEFAULT_MIN_KIDNEY_ML`) are not reported as kidneys but
  counted as fragments in the totals (their lesions are reported with no kidney); lesions under ``min_lesion_ml``
  (default 0: every lesion) are counted in the totals only. Totals count every voxel of the map.
- Side: the patient's midline is the LPS x of the centroid of the CT's body (voxels above
  :data:`BODY_THRESHOLD_HU`) when a CT is given, else the x of the image centre in physical space. A kidney whose
  centroid lies at larger x is left, else right; a component with at least :data:`HORSESHOE_MIN_FRACTION` of its
  voxels on each side of the midline is reported as ``horseshoe``. One kidney alone is placed by the same rule.
- Maximum 3-D diameter: the largest distance between two points of the component's surface, the centres of the
  voxel faces between the component and the rest, in physical space (the convex hull's vertices are compared,
  ``scipy.spatial.ConvexHull``). For a sphere of diameter d it lies within one voxel diagonal of d (between the
  voxel-centre hull, about one voxel short, and the voxel-corner hull, up to a diagonal long); a single voxel
  measures its largest edge.
- HU: mean and population standard deviation of the CT over the structure's voxels (a kidney: all of labels 1-3).
  Values are rounded for the files: ml to 1e-5, mm to 1e-3, HU to 0.01.
- Kidneys are numbered ``kidney_1`` ... by decreasing volume, lesions ``tumor_1`` ... / ``cyst_1`` ... likewise (ties
  by centroid), so ids do not depend on the array layout.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Final

import numpy as np

from kits_plugins.constants import CYST, KIDNEY, LABEL_NAMES, MAX_LABEL, TUMOR
from kits_plugins.errors import KitsInputError
from kits_plugins.statistics.rules import (
    BODY_THRESHOLD_HU,
    CONNECTIVITY,
    DEFAULT_MIN_KIDNEY_ML,
    DEFAULT_MIN_LESION_ML,
    HORSESHOE_MIN_FRACTION,
)
from kits_plugins.utilities.image_io import Geometry
from kits_plugins.utilities.roi import outer_slices

KIDNEY_REGION_LABEL: Final = "kidney_and_mass"  # the region of labels 1-3 (the challenge's HEC name)
_BRUTE_FORCE_POINTS = 64  # below this many surface points, all pairs are compared without a hull
_CHUNK = 1024


def index_to_lps(index_np: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Continuous voxel indices in numpy order, shape (N, 3) or (3,) -> LPS positions in mm (same shape):
    ``origin + direction @ (spacing * index)`` in SimpleITK's index order."""
    index = np.asarray(index_np, dtype=np.float64)
    return np.asarray(geometry.origin) + index[..., ::-1] @ _index_matrix(geometry).T


def _index_matrix(geometry: Geometry) -> np.ndarray:
    """3x3 matrix from an index step (SimpleITK order) to a physical displacement in mm."""
    d = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
    return d * np.asarray(geometry.spacing, dtype=np.float64)[None, :]


def midline_x_mm(geometry: Geometry, ct: np.ndarray | None = None) -> tuple[float, str]:
    """LPS x of the patient's midline and how it was found: ``"ct_body"`` (the centroid of the CT's voxels above
    :data:`BODY_THRESHOLD_HU`) or ``"image_centre"`` (no CT, or no body voxel)."""
    if ct is not None:
        body = ct > BODY_THRESHOLD_HU
        n = int(np.count_nonzero(body))
        if n:
            mean_index = [
                float(np.dot(np.count_nonzero(body, axis=tuple(b for b in range(3) if b != a)), np.arange(body.shape[a])))
                / n
                for a in range(3)
            ]
            return float(index_to_lps(np.asarray(mean_index), geometry)[0]), "ct_body"
    centre = (np.asarray(geometry.shape, dtype=np.float64) - 1.0) / 2.0
    return float(index_to_lps(centre, geometry)[0]), "image_centre"


def surface_points_mm(mask: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Centres of the faces between ``mask`` voxels and the rest (array border included), as physical
    displacements in mm from voxel (0, 0, 0) of ``mask`` (only spacing and direction of ``geometry`` are used)."""
    padded = np.pad(np.asarray(mask, dtype=bool), 1)
    points = []
    for a in range(3):
        lo = padded[tuple(slice(None, -1) if b == a else slice(None) for b in range(3))]
        hi = padded[tuple(slice(1, None) if b == a else slice(None) for b in range(3))]
        faces = np.stack(np.nonzero(lo != hi), axis=1).astype(np.float64) - 1.0
        faces[:, a] += 0.5
        points.append(faces)
    index = np.concatenate(points)
    return index[:, ::-1] @ _index_matrix(geometry).T


def max_pairwise_distance(points: np.ndarray) -> float:
    """Largest distance between two of ``points`` (N, 3): over the convex hull's vertices (joggled when the
    points are flat), all pairs for small or degenerate sets."""
    from scipy.spatial import ConvexHull, QhullError
    from scipy.spatial.distance import cdist

    points = np.asarray(points, dtype=np.float64)
    if len(points) < 2:
        return 0.0
    if len(points) > _BRUTE_FORCE_POINTS:
        for options in (None, "QJ"):
            try:
                points = points[ConvexHull(points, qhull_options=options).vertices]
                break
            except (QhullError, ValueError):
                continue
    best = 0.0
    for start in range(0, len(points), _CHUNK):
        best = max(best, float(cdist(points[start : start + _CHUNK], points, "sqeuclidean").max()))
    return float(np.sqrt(best))


def max_diameter_mm(mask: np.ndarray, geometry: Geometry) -> float:
    """Maximum 3-D diameter (mm) of the voxels of ``mask``: the largest distance between two surface points
    (:func:`surface_points_mm`); 0 for an empty mask."""
    if not np.any(mask):
        return 0.0
    return max_pairwise_distance(surface_points_mm(mask, geometry))


@dataclass
class Kidney:
    """One kidney component (labels 1-3). Volumes in ml, lengths in mm, HU over all its voxels."""

    id: str
    side: str  # "left", "right" or "horseshoe"
    volume_ml: float  # labels 1-3
    parenchyma_ml: float  # label 1
    tumor_ml: float
    cyst_ml: float
    max_diameter_mm: float
    centroid_lps_mm: list[float]
    fraction_left: float  # share of its voxels on the patient's left of the midline
    hu_mean: float | None = None
    hu_std: float | None = None
    tumors: list[str] = field(default_factory=list)
    cysts: list[str] = field(default_factory=list)


@dataclass
class Lesion:
    """One tumor or cyst component; ``kidney`` is the id of the kidney component holding it (None: a fragment)."""

    id: str
    label: str  # "tumor" or "cyst"
    label_value: int
    volume_ml: float
    max_diameter_mm: float
    centroid_lps_mm: list[float]
    kidney: str | None
    side: str | None
    hu_mean: float | None = None
    hu_std: float | None = None


@dataclass
class CaseStatistics:
    """Everything measured on one case; :meth:`to_dict` is the JSON written per case."""

    case: str
    geometry: Geometry
    midline_x_mm: float
    midline_source: str
    min_kidney_ml: float
    min_lesion_ml: float
    kidneys: list[Kidney]
    lesions: list[Lesion]
    totals: dict[str, float | int]
    has_ct: bool

    def to_dict(self) -> dict[str, Any]:
        geometry = self.geometry.to_dict() | {"voxel_volume_mm3": self.geometry.voxel_volume_mm3}
        return {
            "case": self.case,
            "units": {"volume": "ml", "length": "mm", "intensity": "HU", "coordinates": "LPS mm"},
            "geometry": geometry,
            "rules": {
                "connectivity": CONNECTIVITY,
                "min_kidney_ml": self.min_kidney_ml,
                "min_lesion_ml": self.min_lesion_ml,
                "midline_x_mm": _round(self.midline_x_mm, 3),
                "midline_source": self.midline_source,
                "horseshoe_min_fraction": HORSESHOE_MIN_FRACTION,
                "hu": "mean and population standard deviation of the CT over the structure's voxels"
                if self.has_ct else "no CT given",
            },
            "kidneys": [asdict(k) for k in self.kidneys],
            "lesions": [asdict(les) for les in self.lesions],
            "totals": self.totals,
        }


def _round(value: float, digits: int) -> float:
    return round(float(value), digits)


def _hu(ct: np.ndarray | None, sl: tuple[slice, ...], mask: np.ndarray) -> tuple[float | None, float | None]:
    if ct is None:
        return None, None
    values = ct[sl][mask].astype(np.float64)
    return _round(values.mean(), 2), _round(values.std(), 2)


def component_masks(mask: np.ndarray) -> tuple[np.ndarray, list[tuple[int, tuple[slice, ...], np.ndarray]]]:
    """Labelled components of ``mask`` and, per component: its label, bounding slices and the boolean mask in
    them."""
    import cc3d
    from scipy.ndimage import find_objects

    if not mask.size:
        return np.zeros(mask.shape, np.uint32), []
    cc = cc3d.connected_components(mask, connectivity=CONNECTIVITY)
    out = []
    for i, sl in enumerate(find_objects(cc), start=1):
        if sl is not None:
            out.append((i, sl, cc[sl] == i))
    return cc, out


def centroid_index(sl: tuple[slice, ...], sub: np.ndarray) -> tuple[np.ndarray, int]:
    idx = np.nonzero(sub)
    start = np.array([s.start for s in sl], dtype=np.float64)
    return np.array([i.mean() for i in idx]) + start, len(idx[0])


def check_labels(labels: np.ndarray, source: str) -> None:
    """KitsInputError naming ``source`` if ``labels`` holds values outside 0-3."""
    if labels.size and (labels.min() < 0 or labels.max() > MAX_LABEL):
        bad = np.unique(labels[(labels < 0) | (labels > MAX_LABEL)])[:10]
        raise KitsInputError(f"{source}: labels outside 0-{MAX_LABEL}: {bad.tolist()}")


def case_statistics(
    labels: np.ndarray,
    geometry: Geometry,
    ct: np.ndarray | None = None,
    case: str = "case",
    min_kidney_ml: float = DEFAULT_MIN_KIDNEY_ML,
    min_lesion_ml: float = DEFAULT_MIN_LESION_ML,
) -> CaseStatistics:
    """Kidneys, lesions and totals of one KiTS label map (numpy order, ``geometry`` its header; ``ct`` in HU on the
    same grid, optional). The rules are in this module's docstring."""
    if tuple(labels.shape) != geometry.shape:
        raise ValueError(f"{case}: label shape {labels.shape} does not match the geometry's {geometry.shape}")
    if ct is not None and ct.shape != labels.shape:
        raise ValueError(f"{case}: CT shape {ct.shape} does not match the label map's {labels.shape}")
    if labels.dtype.kind not in "iub":
        raise ValueError(f"{case}: label map of type {labels.dtype}; expected integers")
    check_labels(labels, case)
    voxel_ml = geometry.voxel_volume_mm3 / 1000.0
    midline, midline_source = midline_x_mm(geometry, ct)
    # measure inside the box of the labelled voxels, with that box's own header (kidneys are a small part of a CT)
    box = outer_slices(labels) or tuple(slice(0, 0) for _ in range(3))
    inner = geometry.with_size(labels[box].shape, tuple(b.start for b in box))
    labels = labels[box]
    ct = None if ct is None else ct[box]
    counts = [0] + [int(np.count_nonzero(labels == v)) for v in range(1, MAX_LABEL + 1)]
    # x (LPS) of a voxel is affine in its numpy index: x = origin_x + index_np . x_per_index
    x_per_index = _index_matrix(inner)[0, ::-1]

    kidney_cc, kidney_parts = component_masks(labels > 0)
    found = []
    fragments = [0, 0]
    for i, sl, sub in kidney_parts:
        centre_index, n = centroid_index(sl, sub)
        if n * voxel_ml < min_kidney_ml:
            fragments[0] += 1
            fragments[1] += n
            continue
        centroid = index_to_lps(centre_index, inner)
        idx = np.stack(np.nonzero(sub), axis=1) + np.array([s.start for s in sl])
        fraction_left = float(np.mean(inner.origin[0] + idx @ x_per_index > midline))
        if min(fraction_left, 1.0 - fraction_left) >= HORSESHOE_MIN_FRACTION:
            side = "horseshoe"
        else:
            side = "left" if centroid[0] > midline else "right"
        in_kidney = np.bincount(labels[sl][sub], minlength=MAX_LABEL + 1)
        hu_mean, hu_std = _hu(ct, sl, sub)
        found.append((n, centroid, i, Kidney(
            id="", side=side, volume_ml=_round(n * voxel_ml, 5),
            parenchyma_ml=_round(in_kidney[KIDNEY] * voxel_ml, 5),
            tumor_ml=_round(in_kidney[TUMOR] * voxel_ml, 5), cyst_ml=_round(in_kidney[CYST] * voxel_ml, 5),
            max_diameter_mm=_round(max_diameter_mm(sub, inner), 3),
            centroid_lps_mm=[round(float(c), 3) for c in centroid], fraction_left=round(fraction_left, 4),
            hu_mean=hu_mean, hu_std=hu_std,
        )))
    found.sort(key=lambda f: (-f[0], *np.round(f[1], 3)))
    kidneys: list[Kidney] = []
    kidney_of_cc: dict[int, Kidney] = {}
    for number, (_n, _c, i, kidney) in enumerate(found, start=1):
        kidney.id = f"kidney_{number}"
        kidneys.append(kidney)
        kidney_of_cc[i] = kidney

    lesions: list[Lesion] = []
    small_lesions = 0
    for value in (TUMOR, CYST):
        name = LABEL_NAMES[value]
        _cc, parts = component_masks(labels == value)
        measured = []
        for _i, sl, sub in parts:
            centre_index, n = centroid_index(sl, sub)
            if n * voxel_ml < min_lesion_ml:
                small_lesions += 1
                continue
            first = tuple(int(k[0]) + s.start for k, s in zip(np.nonzero(sub), sl))
            owner = kidney_of_cc.get(int(kidney_cc[first]))
            centroid = index_to_lps(centre_index, inner)
            hu_mean, hu_std = _hu(ct, sl, sub)
            measured.append((n, centroid, owner, Lesion(
                id="", label=name, label_value=value, volume_ml=_round(n * voxel_ml, 5),
                max_diameter_mm=_round(max_diameter_mm(sub, inner), 3),
                centroid_lps_mm=[round(float(c), 3) for c in centroid],
                kidney=None if owner is None else owner.id, side=None if owner is None else owner.side,
                hu_mean=hu_mean, hu_std=hu_std,
            )))
        measured.sort(key=lambda m: (-m[0], *np.round(m[1], 3)))
        for number, (_n, _c, owner, lesion) in enumerate(measured, start=1):
            lesion.id = f"{name}_{number}"
            lesions.append(lesion)
            if owner is not None:
                (owner.tumors if value == TUMOR else owner.cysts).append(lesion.id)

    totals: dict[str, float | int] = {
        f"{KIDNEY_REGION_LABEL}_ml": round(float(sum(counts)) * voxel_ml, 5),
        "parenchyma_ml": round(float(counts[KIDNEY]) * voxel_ml, 5),
        "tumor_burden_ml": round(float(counts[TUMOR]) * voxel_ml, 5),
        "cyst_ml": round(float(counts[CYST]) * voxel_ml, 5),
        "kidneys": len(kidneys),
        "tumors": sum(les.label_value == TUMOR for les in lesions),
        "cysts": sum(les.label_value == CYST for les in lesions),
        "fragments": fragments[0],
        "fragments_ml": round(fragments[1] * voxel_ml, 5),
        "lesions_below_min_lesion_ml": small_lesions,
    }
    return CaseStatistics(
        case=case, geometry=geometry, midline_x_mm=midline, midline_source=midline_source,
        min_kidney_ml=min_kidney_ml, min_lesion_ml=min_lesion_ml, kidneys=kidneys, lesions=lesions, totals=totals,
        has_ct=ct is not None,
    )
