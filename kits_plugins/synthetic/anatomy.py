"""Abdominal anatomy around the kidneys: layout (in mm) and the background tissue map.

Everything here works in nnU-Net's anatomical array order (axis 0 = inferior->superior, axis 1 =
posterior->anterior, axis 2 = patient left->right, i.e. ``Reorientation.to_nnunet`` order) with
coordinates in millimetres measured from the centre of voxel (0, 0, 0). The layout is computed from the
kidneys (their centres, extents and hila), so the same code dresses a procedural phantom and a real
KiTS23 label map: spine and ribs behind and between the kidneys, liver on the right above the right
kidney, spleen on the left, aorta/IVC in front of the spine, bowel in front, lung bases above the
diaphragm. Kidneys, tumours and cysts themselves are rendered from the label map (see ``render.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import edt
import numpy as np

from kits_plugins.synthetic.shapes import (
    Axes,
    Ellipsoid,
    disk2d,
    random_lobes,
    rotation,
    sample_noise,
    segment_distance,
    smooth_noise,
    sub_axes,
    window,
)
from kits_plugins.utilities.roi import outer_slices

# Tissue classes of the phantom (uint8 ids); HU and texture are drawn per case in ``draw_intensities``.
AIR, FAT, MUSCLE, BONE, CORTICAL_BONE, DISC, CSF, LIVER, SPLEEN, FLUID, ARTERY, VEIN = range(12)
BOWEL, GAS, LUNG, HEART, CORTEX, MEDULLA, TUMOR, NECROSIS, CYST = range(12, 21)
N_TISSUES = 21
TISSUE_NAMES = {
    AIR: "air", FAT: "fat", MUSCLE: "muscle", BONE: "bone", CORTICAL_BONE: "cortical_bone", DISC: "disc",
    CSF: "csf", LIVER: "liver", SPLEEN: "spleen", FLUID: "fluid", ARTERY: "artery", VEIN: "vein",
    BOWEL: "bowel", GAS: "gas", LUNG: "lung", HEART: "heart", CORTEX: "renal_cortex", MEDULLA: "renal_medulla",
    TUMOR: "tumor", NECROSIS: "necrosis", CYST: "cyst",
}  # fmt: skip


@dataclass
class KidneyInfo:
    """What the layout needs to know about one kidney (mm, anatomical order)."""

    center: np.ndarray  # (z, y, x)
    z_range: tuple[float, float]  # inferior, superior pole
    half_width: float  # max lateral half extent
    hilum: np.ndarray  # where the renal vessels enter
    y_range: tuple[float, float] = (0.0, 0.0)  # posterior, anterior extent
    x_range: tuple[float, float] | None = None  # right-left extent (label maps); None: center +- half_width
    sinus: list[Ellipsoid] = field(default_factory=list)  # procedural renal sinus (fat) ...
    pelvis: Ellipsoid | None = None  # ... and renal pelvis (urine), background label


@dataclass
class Intensities:
    """Per-case CT numbers (HU) and texture amplitudes (HU) per tissue, plus acquisition noise."""

    hu: np.ndarray  # float32 [N_TISSUES]
    texture: np.ndarray  # float32 [N_TISSUES]
    noise_sd: float  # white noise added last
    tumor_range: tuple[float, float] = (50.0, 130.0)
    cyst_range: tuple[float, float] = (0.0, 18.0)
    psf_mm: float = 0.6  # point spread of label-derived edges (reconstruction kernel: larger is smoother)
    phase: str = "corticomedullary"


def draw_intensities(rng: np.random.Generator) -> Intensities:
    """Contrast-enhanced abdominal CT numbers, varied per case (phase, fat, noise).

    Cortex is always brighter than medulla (corticomedullary to early nephrographic phase) and liver,
    spleen, bowel wall, IVC and tumours overlap the renal parenchyma range, so intensity alone does not
    find kidneys.
    """
    hu = np.zeros(N_TISSUES, np.float32)
    tex = np.zeros(N_TISSUES, np.float32)
    cortex = rng.uniform(150, 210)
    medulla = cortex - rng.uniform(35, 80)
    values = {
        AIR: (-1000, 0), FAT: (rng.uniform(-115, -85), 10), MUSCLE: (rng.uniform(40, 60), 8),
        BONE: (rng.uniform(420, 560), 50), CORTICAL_BONE: (rng.uniform(850, 1150), 80), DISC: (rng.uniform(70, 100), 10),
        CSF: (rng.uniform(10, 30), 5), LIVER: (rng.uniform(medulla - 15, medulla + 25), 7), SPLEEN: (rng.uniform(medulla, cortex), 12),
        FLUID: (rng.uniform(0, 20), 4), ARTERY: (rng.uniform(160, 300), 12), VEIN: (rng.uniform(100, 170), 10),
        BOWEL: (rng.uniform(20, 60), 22), GAS: (rng.uniform(-960, -820), 60), LUNG: (rng.uniform(-880, -800), 35),
        HEART: (rng.uniform(110, 220), 15), CORTEX: (cortex, 8), MEDULLA: (medulla, 8), TUMOR: (90, 0),
        NECROSIS: (rng.uniform(10, 35), 6), CYST: (rng.uniform(2, 15), 3),
    }  # fmt: skip
    for k, (h, t) in values.items():
        hu[k], tex[k] = h, t
    return Intensities(hu=hu, texture=tex, noise_sd=float(rng.uniform(9.0, 15.0)))


#: contrast phases of procedural cases and how often each is drawn. KiTS19/21 scans are late-arterial
#: (corticomedullary), the look ``draw_intensities`` makes; KiTS23 added nephrographic-phase cases
#: (https://kits-challenge.org). No KiTS case is unenhanced, so no procedural one is.
PHASES = {"corticomedullary": 0.7, "nephrographic": 0.3}
#: share of procedural cases whose bowel lumen holds positive oral contrast (150-350 HU) instead of gas
ORAL_CONTRAST_RATE = 0.3


def vary_appearance(intens: Intensities, rng: np.random.Generator) -> Intensities:
    """``intens`` in a randomly drawn contrast phase (:data:`PHASES`), with a noise level and a reconstruction
    kernel sharpness drawn over the range of clinical abdominal CT (procedural cases only; ``--from-labels``
    keeps :func:`draw_intensities`' look, the yardstick of issue 17). White noise of 8-18 HU (with the tissue
    texture, soft-tissue noise of about 10-22 HU, as clinical abdominal CT at its own resolution: nnU-Net resamples
    to a coarse grid by spline interpolation without anti-aliasing, which largely keeps per-voxel noise).

    - nephrographic: cortex and medulla enhance alike (medulla within 0-20 HU of the cortex), the liver and veins
      a little more, arteries less; tumours stay below the parenchyma;
    - in either phase, positive oral contrast in the bowel lumen (:data:`ORAL_CONTRAST_RATE`): bright loops that
      an enhancing-kidney detector must not take for kidney.
    """
    names = list(PHASES)
    phase = names[int(rng.choice(len(names), p=np.array([PHASES[n] for n in names]) / sum(PHASES.values())))]
    hu = intens.hu.copy()
    tumor_range = intens.tumor_range
    if phase == "nephrographic":
        cortex = rng.uniform(140, 200)
        hu[CORTEX], hu[MEDULLA] = cortex, cortex - rng.uniform(0, 20)
        hu[LIVER] = rng.uniform(95, 130)
        hu[SPLEEN] = rng.uniform(100, 130)
        hu[ARTERY] = rng.uniform(140, 200)
        hu[VEIN] = rng.uniform(130, 180)
        tumor_range = (40.0, 110.0)
    if rng.random() < ORAL_CONTRAST_RATE:  # positive oral contrast fills the bowel lumen instead of gas
        hu[GAS] = rng.uniform(150, 350)
    return Intensities(hu=hu, texture=intens.texture, noise_sd=float(rng.uniform(8.0, 18.0)),
                       tumor_range=tumor_range, cyst_range=intens.cyst_range,
                       psf_mm=float(rng.uniform(0.4, 1.2)), phase=phase)


@dataclass
class Anatomy:
    """Layout of one synthetic abdomen (mm, anatomical order)."""

    scale: float
    x_mid: float  # mid-sagittal plane
    y_spine: float  # centre of the vertebral bodies
    z_kidney: float  # reference level (kidney centres)
    vb_radius: float
    body_center_y: float
    body_a: float  # lateral semi-axis
    body_b_ant: float
    body_b_post: float
    body_taper: float  # relative lateral growth per 100 mm towards the pelvis
    fat_mm: float  # subcutaneous fat
    wall_mm: float  # abdominal wall muscle
    vertebra_period: float
    vertebra_phase: float
    disc_mm: float
    rib_z_low: float
    rib_period: float
    rib_thick: float
    rib_slope: float
    dome_right: tuple[float, float, float]  # (z_top, y, x) of the right hemidiaphragm
    dome_left: tuple[float, float, float]
    dome_k: float
    aorta: tuple[float, float, float]  # (y, x, r)
    ivc: tuple[float, float, float, float]  # (y, x, ry, rx)
    liver: list[Ellipsoid]
    gallbladder: Ellipsoid | None
    liver_cysts: list[Ellipsoid]
    spleen: Ellipsoid
    heart: Ellipsoid
    kidneys: list[KidneyInfo]
    perirenal_fat_mm: float
    bowel_fraction: float
    gas_fraction: float
    intensities: Intensities


def fit_scale(shape: tuple[int, int, int], spacing: tuple[float, float, float], axial_only: bool = False) -> float:
    """Uniform scale (<= 1) that fits an adult abdomen into the field of view.

    A 384 x 400 x 400 mm field (the default) holds the body at scale 1; smaller fields (tiny test volumes)
    get a proportionally smaller body so the whole anatomy is still visible. ``axial_only``: only the
    in-plane field counts (a scan whose length is drawn from real scans shows an adult body, cut where it ends).
    """
    fov = [(n - 1) * s for n, s in zip(shape, spacing)]
    return float(min(1.0, fov[1] / 270.0, fov[2] / 380.0, 1.0 if axial_only else fov[0] / 260.0))


def _dome_z(anat: Anatomy, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Height (mm) of the diaphragm over the (y, x) grid: the higher of two paraboloid domes."""
    right, left = (zt - anat.dome_k * (((y - cy) ** 2)[:, None] + ((x - cx) ** 2)[None, :])
                   for zt, cy, cx in (anat.dome_right, anat.dome_left))
    return np.maximum(right, left).astype(np.float32)


def layout(
    rng: np.random.Generator,
    kidneys: list[KidneyInfo],
    scale: float,
    x_mid: float,
    y_spine: float,
    z_kidney: float,
    body_center_y: float,
    body_a: float,
    body_b_ant: float,
    body_b_post: float,
) -> Anatomy:
    """Place every organ relative to the spine, body outline and kidneys (all mm)."""
    s = scale
    vb = rng.uniform(16, 21) * s
    dome_r = (z_kidney + rng.uniform(85, 115) * s, body_center_y + 0.1 * body_b_ant, x_mid + 0.45 * body_a)
    dome_l = (z_kidney + rng.uniform(75, 105) * s, body_center_y, x_mid - 0.45 * body_a)
    right_k = [k for k in kidneys if k.center[2] > x_mid]
    left_k = [k for k in kidneys if k.center[2] <= x_mid]
    # Liver: big right lobe reaching down in front of/lateral to the right kidney, smaller left lobe.
    z_top_r = right_k[0].z_range[1] if right_k else z_kidney + 50 * s
    lz = rng.uniform(75, 95) * s
    liver_c = np.array([z_top_r + rng.uniform(-5, 25) * s, body_center_y + rng.uniform(-0.15, 0.1) * body_b_ant,
                        x_mid + rng.uniform(0.42, 0.55) * body_a])  # fmt: skip
    liver = [
        Ellipsoid(liver_c, np.array([lz, 0.85 * body_b_ant, rng.uniform(0.42, 0.52) * body_a]),
                  rotation((0, 1, 0), rng.uniform(-0.25, 0.0)), random_lobes(rng, 3, 0.08)),
        Ellipsoid(liver_c + np.array([rng.uniform(5, 30) * s, 0.55 * body_b_ant, -0.45 * body_a]),
                  np.array([rng.uniform(40, 60) * s, 0.4 * body_b_ant, rng.uniform(0.35, 0.5) * body_a]),
                  rotation((1, 0, 0), rng.uniform(-0.3, 0.3)), random_lobes(rng, 2, 0.1)),
    ]  # fmt: skip
    gallbladder = None
    if rng.random() < 0.8:
        gallbladder = Ellipsoid(
            liver_c + np.array([-0.6 * lz, 0.45 * body_b_ant, -0.25 * body_a]),
            np.array([rng.uniform(28, 40), rng.uniform(12, 18), rng.uniform(12, 18)]) * s,
            rotation((0, 1, 0), rng.uniform(-0.5, 0.5)),
        )
    liver_cysts = []
    for _ in range(int(rng.integers(0, 3))):
        r = rng.uniform(4, 12) * s
        p = liver_c + rng.uniform(-0.5, 0.5, 3) * liver[0].semi
        liver_cysts.append(Ellipsoid(p, np.array([r, r, r])))
    z_top_l = left_k[0].z_range[1] if left_k else z_kidney + 55 * s
    spleen = Ellipsoid(
        np.array([z_top_l + rng.uniform(-10, 15) * s, y_spine + rng.uniform(0, 25) * s,
                  x_mid - rng.uniform(0.58, 0.7) * body_a]),
        np.array([rng.uniform(45, 60), rng.uniform(35, 45), rng.uniform(18, 26)]) * s,
        rotation((1, 0, 0), rng.uniform(0.3, 0.7)) @ rotation((0, 1, 0), rng.uniform(-0.2, 0.2)),
        random_lobes(rng, 2, 0.1),
    )  # fmt: skip
    heart = Ellipsoid(
        np.array([max(dome_r[0], dome_l[0]) + 45 * s, body_center_y + 0.25 * body_b_ant, x_mid - 20 * s]),
        np.array([70, 55, 75]) * s,
    )
    return Anatomy(
        scale=s, x_mid=x_mid, y_spine=y_spine, z_kidney=z_kidney, vb_radius=vb,
        body_center_y=body_center_y, body_a=body_a, body_b_ant=body_b_ant, body_b_post=body_b_post,
        body_taper=rng.uniform(0.0, 0.06), fat_mm=rng.uniform(8, 35) * s, wall_mm=rng.uniform(9, 15) * s,
        vertebra_period=rng.uniform(28, 34) * s, vertebra_phase=rng.uniform(0, 40), disc_mm=rng.uniform(6, 9) * s,
        rib_z_low=z_kidney - rng.uniform(-10, 20) * s, rib_period=rng.uniform(26, 34) * s,
        rib_thick=rng.uniform(8, 11), rib_slope=rng.uniform(0.25, 0.4),
        dome_right=dome_r, dome_left=dome_l, dome_k=0.006 / s,
        aorta=(y_spine + vb + rng.uniform(10, 16) * s, x_mid - rng.uniform(8, 18) * s, rng.uniform(9, 13) * s),
        ivc=(y_spine + vb + rng.uniform(8, 14) * s, x_mid + rng.uniform(20, 30) * s,
             rng.uniform(7, 11) * s, rng.uniform(11, 16) * s),
        liver=liver, gallbladder=gallbladder, liver_cysts=liver_cysts, spleen=spleen, heart=heart,
        kidneys=kidneys, perirenal_fat_mm=rng.uniform(5, 14) * s, bowel_fraction=rng.uniform(0.5, 0.75), gas_fraction=rng.uniform(0.05, 0.25),
        intensities=draw_intensities(rng),
    )  # fmt: skip


def crosses_midline(kidney: KidneyInfo, x_mid: float) -> bool:
    """Whether a kidney (with its masses) reaches across the body's midline, where the spine would be. A kidney
    beside the spine, even one whose tumour bulges to within a few mm of the midline, does not: the spine then
    stays between the kidneys, as in the real scans."""
    lo, hi = kidney.x_range or (kidney.center[2] - kidney.half_width, kidney.center[2] + kidney.half_width)
    return lo < x_mid < hi


def frame_from_kidneys(
    rng: np.random.Generator, kidneys: list[KidneyInfo], fov_mm: tuple[float, float, float]
) -> dict[str, float]:
    """Spine level and body outline for given kidneys (used for real label maps; scale 1)."""
    cz, cy, cx = (f / 2 for f in fov_mm)
    if len(kidneys) >= 2 and abs(kidneys[0].center[2] - kidneys[1].center[2]) > 80:
        x_mid = float((kidneys[0].center[2] + kidneys[1].center[2]) / 2)
    else:
        x_mid = cx
    if kidneys:
        y_spine = float(np.mean([k.center[1] for k in kidneys]) + rng.uniform(0, 12))
        z_kidney = float(np.mean([k.center[0] for k in kidneys]))
        lateral = max(abs(k.center[2] - x_mid) + k.half_width for k in kidneys)
        for k in kidneys:  # a kidney over the midline (horseshoe, a mass across it): the spine goes behind it
            if crosses_midline(k, x_mid):
                y_spine = min(y_spine, k.y_range[0] - 30.0)
    else:
        y_spine, z_kidney, lateral = cy - 40.0, cz, 120.0
    body_a = max(rng.uniform(140, 175), lateral + rng.uniform(30, 50))
    y_post = y_spine - rng.uniform(70, 90)
    if kidneys:  # the back must lie well behind the kidneys
        y_post = min(y_post, min(k.y_range[0] for k in kidneys) - 35.0)
    ap = rng.uniform(200, 250)
    if kidneys:  # ... and the belly well in front of them
        ap = max(ap, max(k.y_range[1] for k in kidneys) - y_post + 70.0)
    b_post = 0.45 * ap
    return dict(scale=1.0, x_mid=x_mid, y_spine=y_spine, z_kidney=z_kidney, body_center_y=y_post + b_post,
                body_a=body_a, body_b_ant=ap - b_post, body_b_post=b_post)  # fmt: skip


def render_background(
    anat: Anatomy, axes: Axes, kidney_mask: np.ndarray | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Tissue map (uint8) and HU (float32) of everything but the kidneys on the grid ``axes``.

    ``kidney_mask`` (same grid, label > 0) gets a perirenal fat envelope; the kidneys themselves are
    painted later at full resolution.
    """
    z, y, x = axes
    shape = (len(z), len(y), len(x))
    s = anat.scale
    tis = np.zeros(shape, np.uint8)
    t3 = tis  # alias for readability of painter steps below

    # Body outline, subcutaneous fat, abdominal wall muscle, visceral fat: nested ellipses (flatter
    # behind), widening slightly towards the pelvis; each is an x-interval per (z, y) row.
    adx = np.abs(x - np.float32(anat.x_mid))[None, None, :]
    dy = y - anat.body_center_y
    grow = (1 + anat.body_taper * np.clip((anat.z_kidney - z) / 100, -1, 2)).astype(np.float32)
    cavity = np.empty(shape, bool)
    for inset, value in ((0.0, FAT), (anat.fat_mm, MUSCLE), (anat.fat_mm + anat.wall_mm, FAT)):
        b = np.where(dy < 0, anat.body_b_post - inset, anat.body_b_ant - inset).astype(np.float32)
        half = (anat.body_a - inset) * np.sqrt(np.clip(1 - (dy / b) ** 2, 0, None))  # (y,)
        np.less(adx, (grow[:, None] * half[None, :])[:, :, None], out=cavity)
        np.copyto(t3, np.uint8(value), where=cavity)
    ys = anat.y_spine

    # Psoas (grows towards the pelvis), quadratus lumborum, paraspinal muscles.
    psoas_top = anat.z_kidney + 45 * s
    r_ps = np.clip(4 * s + (psoas_top - z) * 0.2, 0, 30 * s).astype(np.float32)
    k_ql = int(np.searchsorted(z, anat.z_kidney + 30 * s))
    zp = np.flatnonzero(r_ps > 2 * s)
    win = window(axes, (-1e9, ys - 40 * s, anat.x_mid - 100 * s), (1e9, ys + 40 * s, anat.x_mid + 100 * s))
    for side in (-1, 1):
        if zp.size and win is not None:
            wz = slice(int(zp[0]), int(zp[-1]) + 1)
            yy, xx = y[win[1]], x[win[2]]
            rp = r_ps[wz]
            cx = anat.x_mid + side * (anat.vb_radius + 0.8 * rp + 2 * s)
            e = ((xx[None, :] - cx[:, None]) / rp[:, None]) ** 2  # (z, x)
            e = e[:, None, :] + (((yy - (ys + 0.1 * anat.vb_radius)) ** 2)[None, :] / (0.8 * rp[:, None]) ** 2)[:, :, None]
            t3[wz, win[1], win[2]][e < 1] = MUSCLE
        t3[:k_ql, disk2d(y, x, ys - 38 * s, anat.x_mid + side * 58 * s, 12 * s, 22 * s)] = MUSCLE
        t3[:, disk2d(y, x, ys - anat.vb_radius - 32 * s, anat.x_mid + side * 24 * s, 24 * s, 22 * s)] = MUSCLE

    # Lung bases above the diaphragm, heart in front; liver, gallbladder, spleen below it.
    dome = _dome_z(anat, y, x)
    above = z[:, None, None] > dome[None]
    medi = disk2d(y, x, anat.body_center_y + 0.3 * anat.body_b_ant, anat.x_mid, 0.7 * anat.body_b_ant, 45 * s)
    chest = cavity & above
    t3[chest & ~medi[None]] = LUNG
    t3[chest & medi[None]] = FAT
    del chest
    _paint(t3, axes, anat.heart, HEART, where=lambda sl: cavity[sl] & above[sl])

    below = cavity & ~above
    # Bowel: random blobby loops (some with gas) in front of the retroperitoneum.
    front = (y > ys - 10 * s)[None, :, None]
    allowed = below & front
    sl = outer_slices(allowed)
    if sl is not None:
        # one smooth field: loops where it is high, gas in the lumen where it is highest
        sub = sub_axes(axes, sl)
        extent = tuple(float(a[-1] - a[0]) + 1 for a in sub)
        fb = sample_noise(smooth_noise(rng, extent, 30 * s + 8, oversample=2), tuple(a - a[0] for a in sub))
        al = allowed[sl]
        vals = fb[::3, ::3, ::3][al[::3, ::3, ::3]]
        if vals.size:
            thr = np.quantile(vals, [1 - anat.bowel_fraction, 1 - anat.bowel_fraction * anat.gas_fraction])
            view = t3[sl]
            view[al & (fb > thr[0])] = BOWEL
            view[al & (fb > thr[1])] = GAS
        del fb, al
    for e in anat.liver:
        _paint(t3, axes, e, LIVER, where=lambda sl: below[sl])
    for e in anat.liver_cysts:
        _paint(t3, axes, e, FLUID, where=lambda sl: t3[sl] == LIVER)
    if anat.gallbladder is not None:
        _paint(t3, axes, anat.gallbladder, FLUID, where=lambda sl: below[sl])
    _paint(t3, axes, anat.spleen, SPLEEN, where=lambda sl: below[sl])

    # Perirenal fat around kidneys (and masses) from the label itself.
    if kidney_mask is not None and kidney_mask.any():
        _perirenal_fat(t3, axes, kidney_mask, anat.perirenal_fat_mm)
    for k in anat.kidneys:
        for e in k.sinus:
            _paint(t3, axes, e, FAT)
        if k.pelvis is not None:
            _paint(t3, axes, k.pelvis, FLUID)

    # Great vessels in front of the spine, renal vessels from each hilum.
    ay, ax, ar = anat.aorta
    t3[:, disk2d(y, x, ay, ax, ar, ar)] = ARTERY
    iy, ix, iry, irx = anat.ivc
    t3[: int(np.searchsorted(z, anat.dome_right[0])), disk2d(y, x, iy, ix, iry, irx)] = VEIN
    for k in anat.kidneys:
        for target, radius, value in ((np.array([k.hilum[0], ay, ax]), 3.0 * s, ARTERY),
                                      (np.array([k.hilum[0] - 8 * s, iy, ix]), 4.5 * s, VEIN)):  # fmt: skip
            lo, hi = np.minimum(k.hilum, target) - radius - 1, np.maximum(k.hilum, target) + radius + 1
            sl = window(axes, lo, hi)
            if sl is not None:
                d = segment_distance(sub_axes(axes, sl), k.hilum, target)
                view = t3[sl]
                view[(d < radius) & (view != AIR)] = value

    _paint_spine_and_ribs(anat, axes, t3, cavity)

    # HU with tissue-dependent texture (correlated noise) inside the body.
    it = anat.intensities
    hu = it.hu[t3]
    sl = outer_slices(t3 != AIR)
    if sl is not None:
        sub = sub_axes(axes, sl)
        extent = tuple(float(a[-1] - a[0]) + 1 for a in sub)
        tex = sample_noise(smooth_noise(rng, extent, 8.0), tuple(a - a[0] for a in sub))
        tex *= it.texture[t3[sl]]
        hu[sl] += tex
    return t3, hu


def _paint(tis: np.ndarray, axes: Axes, e: Ellipsoid, value: int, where=None) -> None:
    """Set ``value`` inside ellipsoid ``e`` (optionally only where ``where(slices)`` is true)."""
    sl = e.window(axes)
    if sl is None:
        return
    m = e.norm2(sub_axes(axes, sl)) < 1
    if where is not None:
        m &= where(sl)
    tis[sl][m] = value


def _perirenal_fat(tis: np.ndarray, axes: Axes, mask: np.ndarray, margin_mm: float) -> None:
    spacing = [float(a[1] - a[0]) if len(a) > 1 else 1.0 for a in axes]
    idx = np.nonzero(mask.any(axis=(1, 2)))[0], np.nonzero(mask.any(axis=(0, 2)))[0], np.nonzero(mask.any(axis=(0, 1)))[0]
    pad = [int(np.ceil(margin_mm / sp)) + 1 for sp in spacing]
    sl = tuple(slice(max(int(i[0]) - p, 0), min(int(i[-1]) + p + 1, n)) for i, p, n in zip(idx, pad, mask.shape))
    dist = edt.edt(~mask[sl], anisotropy=tuple(spacing), black_border=False, parallel=1)
    view = tis[sl]
    env = (dist < margin_mm) & (view != AIR) & (view != LUNG)
    view[env] = FAT


def _paint_rows(t3: np.ndarray, zmask: np.ndarray, mask2d: np.ndarray, value: int) -> None:
    """Set ``value`` on the slices ``zmask`` (1D) inside the in-plane mask ``mask2d``."""
    iz = np.flatnonzero(zmask)
    iy, ix = np.nonzero(mask2d)
    if iz.size and iy.size:
        t3[iz[:, None], iy[None, :], ix[None, :]] = value


def _paint_spine_and_ribs(anat: Anatomy, axes: Axes, t3: np.ndarray, cavity: np.ndarray) -> None:
    z, y, x = axes
    s, ys, xm, r = anat.scale, anat.y_spine, anat.x_mid, anat.vb_radius
    phase = np.mod(z - anat.vertebra_phase, anat.vertebra_period)
    disc = phase < anat.disc_mm
    bone_z = ~disc
    spinous_z = (phase > anat.disc_mm + 0.15 * anat.vertebra_period) & (phase < anat.disc_mm + 0.75 * anat.vertebra_period)
    body = disk2d(y, x, ys, xm, r, 1.15 * r)
    inner = disk2d(y, x, ys, xm, r - 2.5 * s, 1.15 * r - 2.5 * s)
    cy = ys - r - 9 * s
    canal = disk2d(y, x, cy, xm, 8 * s, 9 * s)
    arch = disk2d(y, x, cy, xm, 14 * s, 15 * s) & ~canal
    spinous = ((np.abs(x - xm) < 3.5 * s)[None, :] & ((y > cy - 35 * s) & (y < cy - 10 * s))[:, None])
    transverse = ((np.abs(y - cy - 2 * s) < 3.5 * s)[:, None] & ((np.abs(x - xm) > 8 * s) & (np.abs(x - xm) < 36 * s))[None, :])  # noqa: E501
    _paint_rows(t3, disc, body, DISC)
    _paint_rows(t3, bone_z, body, CORTICAL_BONE)
    _paint_rows(t3, bone_z, inner, BONE)
    t3[:, canal] = CSF
    _paint_rows(t3, bone_z, arch, CORTICAL_BONE)
    _paint_rows(t3, spinous_z, spinous | transverse, CORTICAL_BONE)

    # Ribs: cross-sections of curved bands hugging the inside of the abdominal wall, descending anteriorly;
    # the lowest ribs only reach the flanks, higher ones further round.
    inset = anat.fat_mm + anat.wall_mm
    a = anat.body_a - inset
    dy = y - anat.body_center_y
    b = np.where(dy < 0, anat.body_b_post - inset, anat.body_b_ant - inset).astype(np.float32)
    nx_ = ((x - xm) / a)[None, :]
    ny_ = (dy / b)[:, None]
    rho = np.sqrt(nx_**2 + ny_**2)
    m = min(a, float(b.min()))
    band = (rho > 1 + 1 * s / m) & (rho < 1 + (1 + anat.rib_thick * 0.8) * s / m)
    band &= np.abs(x - xm)[None, :] > r + 25 * s
    phi = np.arctan2(np.abs(nx_), -ny_) * np.ones_like(rho)  # 0 behind, pi in front
    iy, ix = np.nonzero(band)
    if len(iy) == 0:
        return
    arc = phi[iy, ix] * 0.5 * (a + float(b.mean()))
    zr = z[:, None] + anat.rib_slope * arc[None, :]
    k = (zr - anat.rib_z_low) / anat.rib_period
    on = (k > 0) & (k < 10) & (np.mod(k, 1.0) < anat.rib_thick * s / anat.rib_period)
    reach = np.minimum(1.2 + 0.3 * np.floor(k), 2.4)  # lower ribs stop further back; cartilage in front
    ph = phi[iy, ix][None, :]
    zi, pi = np.nonzero(on & (ph < reach))
    t3[zi, iy[pi], ix[pi]] = BONE
    zi, pi = np.nonzero(on & (ph >= reach) & (ph < reach + 0.5) & (k > 2))
    t3[zi, iy[pi], ix[pi]] = DISC
