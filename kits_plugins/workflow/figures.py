"""Quick-look PNGs: an axial slice through each kidney with CT, ground truth and prediction.

Slices are shown in radiological convention (patient's right on the viewer's left, anterior up),
whatever the file's direction matrix, by going through nnU-Net's (S-I, A-P, R-L) order.
"""

from __future__ import annotations

from pathlib import Path

import cc3d
import numpy as np

from kits_plugins.utilities.image_io import Geometry
from kits_plugins.utilities.orientation import Reorientation

LABEL_COLOURS = {1: (0.2, 0.8, 0.2), 2: (0.95, 0.2, 0.2), 3: (1.0, 0.85, 0.1)}  # kidney, tumor, cyst


def _overlay(ct_slice: np.ndarray, seg_slice: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB image: CT in an abdominal window (W400/L40) with labels blended in colour."""
    grey = np.clip((ct_slice.astype(np.float32) + 160.0) / 400.0, 0.0, 1.0)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for label, colour in LABEL_COLOURS.items():
        m = seg_slice == label
        rgb[m] = (1 - alpha) * rgb[m] + alpha * np.asarray(colour, dtype=np.float32)
    return rgb


def kidney_slices(label_nn: np.ndarray, max_slices: int = 2) -> list[int]:
    """Axial slice index (nnU-Net order, axis 0) through the centre of each of the largest kidneys."""
    fg = label_nn > 0
    if not fg.any():
        return [label_nn.shape[0] // 2]
    cc = cc3d.connected_components(fg, connectivity=26)
    stats = cc3d.statistics(cc)
    order = np.argsort(stats["voxel_counts"][1:])[::-1][:max_slices] + 1
    return sorted({int(round(stats["centroids"][i][0])) for i in order})


def save_case_png(
    ct: np.ndarray, gt: np.ndarray, pred: np.ndarray, geometry: Geometry, out_png: str | Path, title: str = ""
) -> Path:
    """Write one PNG per case: rows = slices through each kidney; columns = CT, ground truth, prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    r = Reorientation.from_geometry(geometry)
    ct_nn, gt_nn, pred_nn = (r.to_nnunet(a) for a in (ct, gt, pred))
    sp = r.spacing_to_nnunet(geometry.spacing_np)
    aspect = sp[1] / sp[2]
    slices = kidney_slices(gt_nn)
    fig, axes = plt.subplots(len(slices), 3, figsize=(10, 3.9 * len(slices)), squeeze=False)
    for row, z in enumerate(slices):
        # anterior up (flip A-P rows), patient's right on the viewer's left (flip R-L columns)
        view = (z, slice(None, None, -1), slice(None, None, -1))
        panels = [
            (_overlay(ct_nn[view], np.zeros_like(gt_nn[view])), "CT"),
            (_overlay(ct_nn[view], gt_nn[view]), "ground truth"),
            (_overlay(ct_nn[view], pred_nn[view]), "prediction"),
        ]
        for col, (img, name) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(img, aspect=aspect, interpolation="nearest")
            ax.set_title(f"{name} (axial {z})", fontsize=9)
            ax.axis("off")
    handles = [Patch(color=c, label=n) for n, c in zip(("kidney", "tumor", "cyst"), LABEL_COLOURS.values())]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97), h_pad=2.0)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png
