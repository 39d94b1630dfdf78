"""Synthesize a CT-like image for a real KiTS23 label map.

The label is viewed in anatomical order with the file's own direction matrix
(:meth:`Reorientation.to_nnunet`), the kidneys are located there (connected components on a subsampled
grid), the abdomen is laid out around them (spine and ribs behind and between, liver on the patient's
right, spleen on the left, ...) and the rendered CT is written straight into the file-order output array
through the inverse view, so the result has the label's exact voxel grid and orientation.
"""

from __future__ import annotations

import cc3d
import numpy as np

from kits_plugins.synthetic import anatomy as A
from kits_plugins.synthetic.render import coarse_factors, render_ct
from kits_plugins.utilities.image_io import Geometry, float_triple, int_triple
from kits_plugins.utilities.orientation import Reorientation


def kidney_infos(label: np.ndarray, spacing: tuple[float, float, float]) -> list[A.KidneyInfo]:
    """Kidney(+mass) components of an anatomical-order label map (at most two, the big ones), in mm."""
    f = coarse_factors(spacing)
    sub = np.ascontiguousarray(label[:: f[0], :: f[1], :: f[2]] > 0)
    if not sub.any():
        return []
    cc = cc3d.largest_k(sub, k=2, connectivity=26)
    stats = cc3d.statistics(cc)
    counts = stats["voxel_counts"][1:]
    step = np.array([f_ * s for f_, s in zip(f, spacing)])
    out = []
    for i, n in enumerate(counts, start=1):
        if n < 0.05 * counts.max():
            continue
        bb = stats["bounding_boxes"][i]
        center = np.asarray(stats["centroids"][i], dtype=np.float64) * step
        lo = np.array([s.start for s in bb]) * step
        hi = np.array([s.stop - 1 for s in bb]) * step
        out.append(A.KidneyInfo(center=center, z_range=(float(lo[0]), float(hi[0])),
                                half_width=float((hi[2] - lo[2]) / 2), hilum=center.copy(),
                                y_range=(float(lo[1]), float(hi[1])), x_range=(float(lo[2]), float(hi[2]))))  # fmt: skip
    return out


def anatomy_for_label(
    label: np.ndarray, spacing: tuple[float, float, float], rng: np.random.Generator
) -> A.Anatomy:
    """Abdomen laid out around the kidneys of an anatomical-order label map."""
    kidneys = kidney_infos(label, spacing)
    fov = tuple((n - 1) * s for n, s in zip(label.shape, spacing))
    frame = A.frame_from_kidneys(rng, kidneys, fov)
    for k in kidneys:  # vessels enter about a third of the width medially and a little anteriorly
        k.hilum = k.center + np.array([0.0, 5.0, np.sign(frame["x_mid"] - k.center[2]) * 0.35 * k.half_width])
    return A.layout(rng, kidneys, **frame)


def synthesize_ct_from_label(label_file_order: np.ndarray, geometry: Geometry, seed: int) -> np.ndarray:
    """CT (int16, same file-order shape as the label) for a label map with header ``geometry``.

    Deterministic in ``seed``. The label is not modified; anatomy is placed using the direction matrix
    of ``geometry``, so permuted/flipped files (like KiTS23's) get the spine behind the kidneys.
    """
    if label_file_order.ndim != 3 or tuple(label_file_order.shape) != geometry.shape:
        raise ValueError(f"label shape {label_file_order.shape} does not match geometry shape {geometry.shape}")
    r = Reorientation.from_geometry(geometry)
    label = r.to_nnunet(label_file_order)
    spacing = r.spacing_to_nnunet(geometry.spacing_np)
    rng = np.random.default_rng(seed)
    anat = anatomy_for_label(label, spacing, rng)
    ct, _ = render_ct(label, spacing, anat, rng)
    return np.ascontiguousarray(r.from_nnunet(ct))


def resample_label(
    label_file_order: np.ndarray, geometry: Geometry, spacing_anat: tuple[float, float, float]
) -> tuple[np.ndarray, Geometry]:
    """A label map on a grid of ``spacing_anat`` (mm; superior-inferior, anterior-posterior, right-left) over the
    same field of view, resampled as nnU-Net resamples segmentations in preprocessing (``resample_data_or_seg_to_shape``
    with ``is_seg``: each label linearly, separately in z for anisotropic grids), so a phantom made on that grid
    sees what a network trained at that spacing sees. Origin and direction are kept; the spacing is the
    requested one, the shape nnU-Net's ``compute_new_shape``."""
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape, resample_data_or_seg_to_shape

    r = Reorientation.from_geometry(geometry)
    # the requested spacing per file numpy axis: file axis n becomes nnU-Net axis axis_map[n][0]
    target_np = tuple(float(spacing_anat[r.axis_map[n][0]]) for n in range(3))
    new_shape = tuple(int(v) for v in compute_new_shape(label_file_order.shape, geometry.spacing_np, target_np))
    out = resample_data_or_seg_to_shape(label_file_order[None], new_shape, geometry.spacing_np, target_np,
                                        is_seg=True, order=1, order_z=0, force_separate_z=None)[0]
    resampled = Geometry(origin=geometry.origin, spacing=float_triple(target_np[::-1]), direction=geometry.direction,
                         size=int_triple(new_shape[::-1]))
    return np.ascontiguousarray(out.astype(np.uint8)), resampled
