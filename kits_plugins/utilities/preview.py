"""Quick-look PNGs: an axial slice through each kidney, CT in an abdominal window with the labels overlaid.

One drawing routine serves both uses: the workflow's and the demo's figures (CT, ground truth, prediction:
:func:`save_case_png`) and a prediction alone (CT, prediction: :func:`save_prediction_png`, for
``kits predict --preview``). Slices are shown in radiological convention (patient's right on the viewer's left,
anterior up), whatever the file's direction matrix, by going through nnU-Net's (S-I, A-P, R-L) order; each panel
is marked R and L. matplotlib (Agg backend) is imported only when a PNG is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cc3d
import numpy as np

from kits_plugins.utilities.image_io import Geometry
from kits_plugins.utilities.orientation import Reorientation
from kits_plugins.utilities.staging import atomic_path

LABEL_COLOURS = {1: (0.2, 0.8, 0.2), 2: (0.95, 0.2, 0.2), 3: (1.0, 0.85, 0.1)}  # kidney, tumor, cyst
#: inches per panel (width) and per row (height); PNGs are written at :data:`DPI`
PANEL_WIDTH_IN, ROW_HEIGHT_IN, DPI = 10.0 / 3.0, 3.9, 90


def _overlay(ct_slice: np.ndarray, seg_slice: np.ndarray | None, alpha: float = 0.45) -> np.ndarray:
    """RGB image: CT in an abdominal window (W400/L40) with labels blended in colour (none when ``seg_slice`` is
    None)."""
    grey = np.clip((ct_slice.astype(np.float32) + 160.0) / 400.0, 0.0, 1.0)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    if seg_slice is not None:
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


def axial_panels(
    ct: np.ndarray, labels: Sequence[np.ndarray | None], geometry: Geometry, slice_labels: np.ndarray | None = None
) -> tuple[list[int], list[list[np.ndarray]], float]:
    """The RGB panels drawn: for each axial slice through a kidney of ``slice_labels`` (default: the last label
    map), one panel per entry of ``labels`` (None: the CT alone). Arrays are in file order (SimpleITK numpy order,
    any direction); panels are in radiological convention (row 0 anterior, column 0 the patient's right).
    Returns (slice indices in nnU-Net order, panels per slice, display aspect = row spacing / column spacing)."""
    r = Reorientation.from_geometry(geometry)
    ct_nn = r.to_nnunet(ct)
    labels_nn = [None if lab is None else r.to_nnunet(lab) for lab in labels]
    chooser = r.to_nnunet(slice_labels) if slice_labels is not None else next(
        (lab for lab in reversed(labels_nn) if lab is not None), np.zeros(ct_nn.shape, np.uint8)
    )
    sp = r.spacing_to_nnunet(geometry.spacing_np)
    slices = kidney_slices(chooser)
    # anterior up (flip A-P rows), patient's right on the viewer's left (flip R-L columns)
    views = [(z, slice(None, None, -1), slice(None, None, -1)) for z in slices]
    panels = [[_overlay(ct_nn[v], None if lab is None else lab[v]) for lab in labels_nn] for v in views]
    return slices, panels, sp[1] / sp[2]


def _save_panels(
    ct: np.ndarray,
    columns: Sequence[tuple[str, np.ndarray | None]],
    geometry: Geometry,
    out_png: str | Path,
    title: str,
    slice_labels: np.ndarray | None,
) -> Path:
    """Draw ``columns`` (name, label map or None) for each kidney slice into one PNG of
    ``PANEL_WIDTH_IN * columns x ROW_HEIGHT_IN * slices`` inches at :data:`DPI`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    slices, panels, aspect = axial_panels(ct, [lab for _, lab in columns], geometry, slice_labels)
    n_cols = len(columns)
    fig, axes = plt.subplots(
        len(slices), n_cols, figsize=(PANEL_WIDTH_IN * n_cols, ROW_HEIGHT_IN * len(slices)), squeeze=False
    )
    for row, (z, row_panels) in enumerate(zip(slices, panels)):
        for col, ((name, _), img) in enumerate(zip(columns, row_panels)):
            ax = axes[row, col]
            ax.imshow(img, aspect=aspect, interpolation="nearest")
            ax.set_title(f"{name} (axial {z})", fontsize=9)
            for x, text in ((0.02, "R"), (0.98, "L")):
                ax.text(x, 0.5, text, transform=ax.transAxes, color="white", fontsize=8,
                        ha="left" if text == "R" else "right", va="center")
            ax.axis("off")
    handles = [Patch(color=c, label=n) for n, c in zip(("kidney", "tumor", "cyst"), LABEL_COLOURS.values())]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97), h_pad=2.0)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_png, keep_suffix=True) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    plt.close(fig)
    return out_png


def save_case_png(
    ct: np.ndarray, gt: np.ndarray, pred: np.ndarray, geometry: Geometry, out_png: str | Path, title: str = ""
) -> Path:
    """Write one PNG per case: rows = slices through each kidney of the ground truth; columns = CT, ground truth,
    prediction (arrays in file order with ``geometry``). Atomic."""
    columns = [("CT", None), ("ground truth", gt), ("prediction", pred)]
    return _save_panels(ct, columns, geometry, out_png, title, slice_labels=gt)


def save_prediction_png(
    ct: np.ndarray, labels: np.ndarray, geometry: Geometry, out_png: str | Path, title: str = ""
) -> Path:
    """Write the preview of a prediction: rows = slices through each kidney of ``labels``; columns = CT, CT with
    the labels overlaid (arrays in file order with ``geometry``). Atomic."""
    return _save_panels(ct, [("CT", None), ("prediction", labels)], geometry, out_png, title, slice_labels=labels)
