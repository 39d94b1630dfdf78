"""Procedural KiTS-like cases: bean-shaped kidneys with tumours and cysts inside a synthetic abdomen.

Shapes and spacings are given in anatomical (nnU-Net) order ``(z, y, x)`` = (inferior->superior,
posterior->anterior, patient left->right), exactly as on the ``kits synth --shape/--spacing`` command line.
All anatomy is defined in millimetres, so another shape/spacing with the same field of view shows the same
body at another resolution (a field of view too small for an adult abdomen gets a uniformly scaled-down
body, see :func:`~kits_plugins.synthetic.anatomy.fit_scale`). Arrays are returned in the file order of
the real KiTS23 images (SimpleITK numpy order with KiTS23's permuted direction, slice axis last).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cc3d
import numpy as np
from scipy import ndimage

from kits_plugins.synthetic import DEFAULT_SHAPE, DEFAULT_SPACING
from kits_plugins.synthetic import anatomy as A
from kits_plugins.synthetic import kits23_statistics as S
from kits_plugins.synthetic.render import render_ct
from kits_plugins.synthetic.shapes import Axes, Ellipsoid, grid_axes, random_lobes, sub_axes
from kits_plugins.utilities.image_io import Geometry, float_triple, int_triple
from kits_plugins.utilities.orientation import Reorientation

# Direction matrix of the KiTS23 images (row-major, SimpleITK): slice axis is the last numpy axis.
KITS_DIRECTION = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0)


def kits_geometry(shape_zyx: tuple[int, int, int], spacing_zyx: tuple[float, float, float]) -> Geometry:
    """Header of a KiTS23-style file holding an anatomical-order volume of ``shape_zyx`` / ``spacing_zyx``."""
    r = Reorientation.from_direction(KITS_DIRECTION)
    file_shape = [0, 0, 0]
    file_spacing = [0.0, 0.0, 0.0]
    for file_axis, (nn_axis, _flip) in enumerate(r.axis_map):
        file_shape[file_axis] = int(shape_zyx[nn_axis])
        file_spacing[file_axis] = float(spacing_zyx[nn_axis])
    return Geometry((0.0, 0.0, 0.0), float_triple(file_spacing[::-1]), KITS_DIRECTION, int_triple(file_shape[::-1]))


@dataclass
class KidneyModel:
    """Bean-shaped kidney: bent ellipsoid with a medial hilum notch (renal sinus)."""

    center: np.ndarray
    rot: np.ndarray  # columns: long axis (superior), lateral, anterior-ish, in (z, y, x)
    semi: np.ndarray  # (long, lateral, antero-posterior) semi-axes, mm
    bend: float
    notch: Ellipsoid  # in world coordinates
    pelvis: Ellipsoid

    def local_point(self, p: np.ndarray) -> np.ndarray:
        return self.center + self.rot @ p

    def inside(self, axes: Axes) -> tuple[np.ndarray, np.ndarray]:
        """(parenchyma mask, sinus mask) on the grid ``axes``."""
        e = Ellipsoid(self.center, self.semi, self.rot)
        u, v, w = e.local(axes)
        a, b, c = (np.float32(x) for x in self.semi)
        vb = v - np.float32(self.bend) * b * (1 - (u / a) ** 2)
        outer = (u / a) ** 2 + (vb / b) ** 2 + (w / c) ** 2 < 1
        sinus = outer & (self.notch.norm2(axes) < 1)
        return outer & ~sinus, sinus

    def info(self, scale: float) -> A.KidneyInfo:
        top = self.center[0] + self.semi[0] * abs(self.rot[0, 0]) + self.semi[1] * abs(self.rot[0, 1])
        bottom = 2 * self.center[0] - top
        return A.KidneyInfo(
            center=self.center, z_range=(float(bottom), float(top)), half_width=float(self.semi[1] * 1.1),
            hilum=self.notch.center, sinus=[self.notch], pelvis=self.pelvis,
            y_range=(float(self.center[1] - self.semi[1]), float(self.center[1] + self.semi[1])),
        )  # fmt: skip


#: a bent ellipsoid is fuller than a kidney of the same principal-axis lengths (measured on the 26 label maps:
#: median volume 205 ml at 126 x 69 x 57 mm): its width and thickness are drawn this much smaller, which brings the
#: procedural volumes to the real ones (benchmarks/phantom_realism.py)
BEAN_FULLNESS = 0.9
#: the masses and the bend move a kidney's centroid outwards: its centre is drawn this much (mm) nearer the midline
#: than the measured centroid offsets
CENTROID_SHIFT_MM = 6.0


def _kidney(rng: np.random.Generator, center: np.ndarray, side: int, s: float) -> KidneyModel:
    """One kidney; ``side`` = +1 patient right (larger x), -1 left. Its three axis lengths (correlated: one size
    draw) and the tilt of its long axis come from the KiTS23 distributions (:mod:`.kits23_statistics`)."""
    u0, v0, w0 = np.array([1.0, 0, 0]), np.array([0, 0, float(side)]), np.array([0, 1.0, 0])
    tilt = np.radians(S.KIDNEY_TILT_DEG.sample(rng))
    towards = rng.uniform(0.4, 1.2)  # how the tilt splits between medial and posterior
    beta = tilt * np.cos(towards)  # upper pole medially
    gamma = tilt * np.sin(towards)  # upper pole posteriorly
    alpha = rng.uniform(0.3, 0.7)  # hilum turned anteriorly
    u1 = np.cos(beta) * u0 - np.sin(beta) * v0
    v1 = np.sin(beta) * u0 + np.cos(beta) * v0
    u2 = np.cos(gamma) * u1 - np.sin(gamma) * w0
    w2 = np.sin(gamma) * u1 + np.cos(gamma) * w0
    v3 = np.cos(alpha) * v1 - np.sin(alpha) * w2
    w3 = np.sin(alpha) * v1 + np.cos(alpha) * w2
    rot = np.stack([u2, v3, w3], axis=1)
    size = rng.random()
    semi = np.array([q.value(float(np.clip(size + rng.normal(0, 0.15), 0, 1))) / 2 for q in
                     (S.KIDNEY_LENGTH_MM, S.KIDNEY_WIDTH_MM, S.KIDNEY_THICKNESS_MM)]) * s
    semi[1:] *= BEAN_FULLNESS
    bend = float(rng.uniform(0.08, 0.2))
    a, b, c = semi
    notch_c = np.array([0.0, -(1 - bend) * b - 0.1 * b, 0.1 * c])
    notch = Ellipsoid(center + rot @ notch_c, np.array([0.42 * a, 0.62 * b, 0.55 * c]), rot)
    pelvis = Ellipsoid(center + rot @ (notch_c + np.array([0, 0.25 * b, 0])), np.array([0.22 * a, 0.3 * b, 0.25 * c]), rot)
    return KidneyModel(center, rot, semi, bend, notch, pelvis)


def _lesion(rng: np.random.Generator, k: KidneyModel, kind: int, s: float) -> Ellipsoid:
    """A tumour (kind 2) or cyst (kind 3) centred in/on kidney ``k`` so that it overlaps the parenchyma."""
    a, b, c = k.semi
    if kind == 2:
        diam = float(np.clip(rng.lognormal(np.log(35), 0.6), 10, 100)) * s
        mode = rng.choice(3, p=[0.4, 0.35, 0.25])  # exophytic, mixed, endophytic
        rho = (rng.uniform(0.85, 1.0), rng.uniform(0.55, 0.85), rng.uniform(0.1, 0.5))[mode]
        radius = min(diam / 2, 0.85 * a, (0.9 * c) if mode == 2 else 1e9)
    else:
        diam = float(np.clip(rng.lognormal(np.log(12), 0.55), 5, 40)) * s
        rho = rng.uniform(0.55, 1.0)
        radius = min(diam / 2, 0.6 * a)
    for _ in range(20):  # avoid centring lesions in the renal sinus
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        local = rho * d * k.semi
        local[1] += k.bend * b * (1 - (local[0] / a) ** 2)
        p = k.local_point(local)
        if k.notch.norm2(tuple(np.array([q], np.float32) for q in p))[0, 0, 0] >= 1:
            break
    if kind == 2:
        semi = radius * rng.uniform(0.8, 1.2, 3)
        lobes = random_lobes(rng, int(rng.integers(1, 4)), 0.12)
    else:
        semi = radius * rng.uniform(0.9, 1.1, 3)
        lobes = []
    rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    return Ellipsoid(p, semi, rot, lobes)


def _paint_label(label: np.ndarray, axes: Axes, e: Ellipsoid, value: int) -> None:
    sl = e.window(axes)
    if sl is not None:
        label[sl][e.norm2(sub_axes(axes, sl)) < 1] = value


def _drop_detached_lesions(label: np.ndarray) -> None:
    """Tumour/cyst components not touching kidney (26-neighbourhood) become background."""
    lesions = label >= 2
    if not lesions.any():
        return
    box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in ndimage.find_objects(label.astype(bool).view(np.uint8))[0])
    sub = label[box]
    cc, n = cc3d.connected_components(sub >= 2, connectivity=26, return_N=True)
    near = ndimage.binary_dilation(sub == 1, structure=np.ones((3, 3, 3), bool))
    keep = np.zeros(n + 1, bool)
    keep[np.unique(cc[near & (sub >= 2)])] = True
    keep[0] = True
    sub[~keep[cc]] = 0


@dataclass
class Phantom:
    """A procedural case in anatomical order (ct int16, label uint8, tissue ids uint8 or None)."""

    ct: np.ndarray
    label: np.ndarray
    tissue: np.ndarray | None
    spacing: tuple[float, float, float]
    anatomy: A.Anatomy


def make_phantom(
    seed: int,
    shape_zyx: Sequence[int] = DEFAULT_SHAPE,
    spacing_zyx: Sequence[float] = DEFAULT_SPACING,
    return_tissue: bool = False,
    kits23_extent: bool = False,
) -> Phantom:
    """Procedural case in anatomical order; deterministic in ``seed`` (see module docstring).

    ``kits23_extent``: the scan's superior-inferior extent and the kidneys' height in it are drawn from real KiTS23
    scans (:mod:`.kits23_statistics`; the number of slices is the extent over the slice spacing, ``shape_zyx[0]`` is
    not used) and the body keeps its adult size wherever the scan ends; otherwise the kidneys sit mid-volume."""
    shape = tuple(int(v) for v in shape_zyx)
    sp = tuple(float(v) for v in spacing_zyx)
    if len(shape) != 3 or min(shape) < 8 or len(sp) != 3 or min(sp) <= 0:
        raise ValueError(f"need a 3D shape >= 8 voxels per axis and positive spacing, got {shape_zyx}, {spacing_zyx}")
    rng = np.random.default_rng(seed)
    if kits23_extent:
        shape = (max(8, int(round(S.Z_EXTENT_MM.sample(rng) / sp[0])) + 1), shape[1], shape[2])
    s = A.fit_scale(shape, sp, axial_only=kits23_extent)
    fov = np.array([(n - 1) * v for n, v in zip(shape, sp)])
    cz, cy, cx = fov / 2
    body_a = rng.uniform(140, 175) * s
    ap = rng.uniform(200, 260) * s
    b_post = 0.45 * ap
    # kidneys behind the centre of the field of view as in KiTS23; the spine beside them, the back behind it
    y_kidney = cy - S.KIDNEY_POSTERIOR_OFFSET_MM.sample(rng) * s
    y_spine = y_kidney + rng.uniform(-8, 12) * s
    body_cy = y_spine + b_post - rng.uniform(68, 85) * s
    x_mid = cx + rng.normal(0, 4) * s
    if kits23_extent:  # the height (from the top slice) of the kidneys' mean centroid, kept inside the scan
        z_kidney = float(np.clip(fov[0] * (1 - S.KIDNEY_HEIGHT_FRACTION.sample(rng)), 60 * s, fov[0] - 60 * s))
    else:
        z_kidney = cz + rng.normal(0, 10) * s
    gap = S.KIDNEY_HEIGHT_GAP_MM.sample(rng) * s  # the right kidney this far below the left one
    n_kidneys = S.sample_count(rng, S.KIDNEY_COUNTS)
    sides = [-1, 1] if n_kidneys == 2 else [int(rng.choice([-1, 1]))]
    models = []
    for side in sides:
        c = np.array([
            z_kidney + (gap / 2 if side < 0 else -gap / 2) * (n_kidneys == 2),
            y_kidney + rng.uniform(-6, 6) * s,
            x_mid + side * (S.KIDNEY_LATERAL_OFFSET_MM.sample(rng) - CENTROID_SHIFT_MM) * s,
        ])  # fmt: skip
        models.append(_kidney(rng, c, side, s))

    axes = grid_axes(shape, sp)
    label = np.zeros(shape, np.uint8)
    for k in models:
        e = Ellipsoid(k.center, k.semi * 1.05)
        sl = e.window(axes)
        assert sl is not None  # kidneys are placed inside the field of view
        parenchyma, _ = k.inside(sub_axes(axes, sl))
        label[sl][parenchyma] = 1
    n_tumors = S.sample_count(rng, S.TUMOR_COUNTS)
    n_cysts = S.sample_count(rng, S.CYST_COUNTS)
    lesions = [(3, models[int(rng.integers(len(models)))]) for _ in range(n_cysts)]
    lesions += [(2, models[int(rng.integers(len(models)))]) for _ in range(n_tumors)]
    for kind, k in lesions:
        _paint_label(label, axes, _lesion(rng, k, kind, s), kind)
    _drop_detached_lesions(label)

    kidneys = [k.info(s) for k in models]
    anat = A.layout(rng, kidneys, s, x_mid, y_spine, z_kidney, body_cy, body_a, ap - b_post, b_post)
    anat.intensities = A.vary_appearance(anat.intensities, rng)
    ct, tissue = render_ct(label, sp, anat, rng, return_tissue=return_tissue)
    return Phantom(ct=ct, label=label, tissue=tissue, spacing=sp, anatomy=anat)


def make_case(
    seed: int,
    shape_zyx: Sequence[int] = DEFAULT_SHAPE,
    spacing_zyx: Sequence[float] = DEFAULT_SPACING,
    kits23_extent: bool = False,
) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """One procedural case as (CT int16, label uint8, geometry), arrays in KiTS23 file order.

    ``shape_zyx``/``spacing_zyx`` are in anatomical order (superior-inferior, anterior-posterior,
    right-left), as on the command line; the returned arrays are in the file's SimpleITK numpy order
    (slice axis last, KiTS23 direction), ready for :func:`~kits_plugins.synthetic.writer.write_case`.
    """
    ph = make_phantom(seed, shape_zyx, spacing_zyx, kits23_extent=kits23_extent)
    geom = kits_geometry(ph.label.shape, ph.spacing)
    r = Reorientation.from_geometry(geom)
    ct = np.ascontiguousarray(r.from_nnunet(ph.ct))
    label = np.ascontiguousarray(r.from_nnunet(ph.label))
    return ct, label, geom


__all__ = ["make_case", "make_phantom", "kits_geometry", "Phantom", "KITS_DIRECTION"]
