"""Render a CT volume (int16 HU) from a label map and an :class:`~kits_plugins.synthetic.anatomy.Anatomy`.

Works in anatomical (nnU-Net) order. The smooth background (body, organs, bones) is computed on a grid
of about 1.6 mm and linearly upsampled slab by slab; the kidneys, tumours and cysts are rendered from the
label map at full resolution inside their bounding box (cortex/medulla from the distance to the kidney
surface, heterogeneous tumours with necrotic cores, hypodense cysts). A point-spread blur, partial-volume
blur along thick slices and white noise come last. Memory stays at a few slab-sized float32 buffers
plus the int16 output, so a 512 x 512 x 1059 label map renders in well under 4 GB.
"""

from __future__ import annotations

from collections.abc import Sequence

import cc3d
import edt
import numpy as np
from scipy import ndimage

from kits_plugins.synthetic import anatomy as A
from kits_plugins.synthetic.shapes import grid_axes, sample_noise_at, smooth_noise, upsample_axis
from kits_plugins.utilities.roi import outer_slices

BACKGROUND_MM = 1.6  # background grid pitch (mm)
THICK_SLICE_MM = 2.0  # from this slice spacing on, blur along the slice axis (partial volume)
HU_MIN, HU_MAX = -1024, 3071
_CHUNK_VOXELS = 1 << 24


def coarse_factors(spacing: Sequence[float]) -> tuple[int, ...]:
    """Integer subsampling per axis that puts the background grid near :data:`BACKGROUND_MM`."""
    return tuple(max(1, int(round(BACKGROUND_MM / s))) for s in spacing)


def render_kidneys(
    label: np.ndarray,
    spacing: Sequence[float],
    intens: A.Intensities,
    scale: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """HU (float32) and tissue ids (uint8) of the labelled voxels of a label box; 0 where label == 0.

    Cortex is the outer ``~5 mm`` of kidney+masses (distance transform), medulla the deeper parenchyma
    broken into pyramids by a smooth random field; each tumour gets its own enhancement and texture and
    large ones sometimes a necrotic core; each cyst its own water-like density. Work is done on the list
    of labelled voxels only (random fields are sampled at those points).
    """
    sp = tuple(float(s) for s in spacing)
    hu, tex = intens.hu, intens.texture
    extent = tuple(n * p + 1 for n, p in zip(label.shape, sp))
    idx = np.flatnonzero(label)
    lv = label.ravel()[idx]
    pts = [i.astype(np.float32) * np.float32(p) for i, p in zip(np.unravel_index(idx, label.shape), sp)]
    depth = edt.edt(label > 0, anisotropy=sp, black_border=True, parallel=1).ravel()[idx]
    tc = max(rng.uniform(4, 7) * scale, 1.05 * min(sp))
    lob_noise = smooth_noise(rng, extent, 10 * scale + 2, oversample=2)
    tis = np.zeros(idx.shape, np.uint8)
    kidney = lv == 1
    tis[kidney] = A.CORTEX
    deep = np.flatnonzero(kidney & (depth > tc))
    lob = sample_noise_at(lob_noise, [p[deep] for p in pts])
    tis[deep[lob > -0.5]] = A.MEDULLA
    del depth, lob, deep
    field = sample_noise_at(smooth_noise(rng, extent, 4.0), pts)
    vals = hu[tis] + field * tex[tis]

    tumor = np.flatnonzero(lv == 2)
    if tumor.size:
        box = outer_slices(label == 2)
        assert box is not None  # there are tumour voxels
        sub = np.ascontiguousarray(label[box] == 2)
        cc_box, n = cc3d.connected_components(sub, connectivity=26, return_N=True)
        tdepth_box = edt.edt(sub, anisotropy=sp, black_border=True, parallel=1)
        # map each tumour voxel (in idx order) to its position in the tumour box
        tpos = np.ravel_multi_index(
            tuple(np.round(p[tumor] / np.float32(q)).astype(np.int64) - b.start for p, q, b in zip(pts, sp, box)),
            sub.shape,
        )
        cc = cc_box.ravel()[tpos]
        tdepth = tdepth_box.ravel()[tpos]
        del cc_box, tdepth_box, sub
        base = np.concatenate([[0], rng.uniform(*intens.tumor_range, n)]).astype(np.float32)
        amp = np.concatenate([[0], rng.uniform(8, 25, n)]).astype(np.float32)
        necro_frac = np.concatenate([[2.0], np.where(rng.random(n) < 0.5, rng.uniform(0.45, 0.65, n), 2.0)])
        het = sample_noise_at(smooth_noise(rng, extent, 6 * scale + 3, oversample=2), [p[tumor] for p in pts])
        maxd = np.zeros(n + 1, np.float32)
        np.maximum.at(maxd, cc, tdepth)
        necro_frac[maxd < 10 * scale + 2] = 2.0  # only tumours thicker than ~2 cm get a necrotic core
        nec = tdepth > (necro_frac * maxd)[cc]
        tv = base[cc] + amp[cc] * het
        tv[nec] = hu[A.NECROSIS] + field[tumor[nec]] * tex[A.NECROSIS]
        vals[tumor] = tv
        tis[tumor] = np.where(nec, A.NECROSIS, A.TUMOR)
    cyst = np.flatnonzero(lv == 3)
    if cyst.size:
        box = outer_slices(label == 3)
        assert box is not None  # there are cyst voxels
        sub = np.ascontiguousarray(label[box] == 3)
        cc_box, n = cc3d.connected_components(sub, connectivity=26, return_N=True)
        cpos = np.ravel_multi_index(
            tuple(np.round(p[cyst] / np.float32(q)).astype(np.int64) - b.start for p, q, b in zip(pts, sp, box)),
            sub.shape,
        )
        base = np.concatenate([[0], rng.uniform(*intens.cyst_range, n)]).astype(np.float32)
        vals[cyst] = base[cc_box.ravel()[cpos]] + field[cyst] * tex[A.CYST]
        tis[cyst] = A.CYST
    out_hu = np.zeros(label.shape, np.float32)
    out_tis = np.zeros(label.shape, np.uint8)
    out_hu.ravel()[idx] = vals
    out_tis.ravel()[idx] = tis
    return out_hu, out_tis


def render_ct(
    label: np.ndarray,
    spacing: Sequence[float],
    anat: A.Anatomy,
    rng: np.random.Generator,
    return_tissue: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """CT (int16, anatomical order, C-contiguous) for ``label`` (anatomical order, may be a strided view).

    ``return_tissue`` also returns the tissue-id map (only when the background grid is the full grid,
    i.e. every spacing >= ~1.1 mm; used by tests).
    """
    shape = tuple(int(n) for n in label.shape)
    sp = tuple(float(s) for s in spacing)
    f = coarse_factors(sp)
    if return_tissue and f != (1, 1, 1):
        raise ValueError(f"tissue maps need spacing >= {BACKGROUND_MM / 1.5:.2f} mm on every axis, got {sp}")
    axes_c = grid_axes(shape, sp, f)
    cshape = tuple(len(a) for a in axes_c)
    mask_c = np.zeros(cshape, bool)
    sub = label[:: f[0], :: f[1], :: f[2]]
    mask_c[: sub.shape[0], : sub.shape[1], : sub.shape[2]] = sub > 0
    del sub
    tis_c, hu_c = A.render_background(anat, axes_c, mask_c, rng)

    # kidney box from the coarse mask (cheap), grown by a few voxels for the blur
    cbox = outer_slices(mask_c, pad=1)
    del mask_c
    box = kid_hu = kid_tis = None
    if cbox is not None:
        box = tuple(slice(max(b.start * k - 4, 0), min((b.stop - 1) * k + 5, n)) for b, k, n in zip(cbox, f, shape))
        kid_hu, kid_tis = render_kidneys(np.ascontiguousarray(label[box]), sp, anat.intensities,
                                         anat.scale, rng)  # fmt: skip
    tissue = None
    if return_tissue:
        tissue = tis_c
        if box is not None:
            assert kid_tis is not None  # rendered with box
            tissue[box][kid_tis > 0] = kid_tis[kid_tis > 0]
    del tis_c

    out = np.empty(shape, np.int16)
    sigma = [anat.intensities.psf_mm / s for s in sp]
    thick = sp[0] >= THICK_SLICE_MM
    if thick:
        sigma[0] = 0.45  # partial volume across thick slices (voxels)
    halo = 3
    chunk = max(f[0], (_CHUNK_VOXELS // (shape[1] * shape[2])) // f[0] * f[0])
    for z0 in range(0, shape[0], chunk):
        z1 = min(z0 + chunk, shape[0])
        h0, h1 = max(z0 - halo, 0), min(z1 + halo, shape[0])
        c0 = h0 // f[0]
        c1 = min(-(-h1 // f[0]) + 1, cshape[0])
        hu = hu_c[c0:c1]
        hu = upsample_axis(hu, 1, f[1], shape[1])
        hu = upsample_axis(hu, 2, f[2], shape[2])
        hu = upsample_axis(hu, 0, f[0], (h1 - c0 * f[0]))[h0 - c0 * f[0] :]
        hu = np.array(hu, dtype=np.float32, copy=True) if np.shares_memory(hu, hu_c) else hu
        region = None
        if box is not None and box[0].start < h1 and box[0].stop > h0:
            zs = slice(max(box[0].start, h0), min(box[0].stop, h1))
            region = (slice(zs.start - h0, zs.stop - h0), box[1], box[2])
            kz = slice(zs.start - box[0].start, zs.stop - box[0].start)
            assert kid_hu is not None and kid_tis is not None  # rendered with box
            m = kid_tis[kz] > 0
            hv = hu[region]
            hv[m] = kid_hu[kz][m]
        for axis in range(3):
            if axis == 0 and thick:
                ndimage.gaussian_filter1d(hu, sigma[axis], axis=axis, output=hu, truncate=3.0)
            elif region is not None:
                hu[region] = ndimage.gaussian_filter1d(hu[region], sigma[axis], axis=axis, truncate=3.0)
        keep = hu[z0 - h0 : z0 - h0 + (z1 - z0)]
        noise = rng.standard_normal(keep.shape, dtype=np.float32)
        noise *= np.float32(anat.intensities.noise_sd)
        keep += noise
        del noise
        np.clip(keep, HU_MIN, HU_MAX, out=keep)
        np.rint(keep, out=keep)
        out[z0:z1] = keep
    return out, tissue
