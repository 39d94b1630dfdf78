"""Synthetic CT-like KiTS23 cases: procedural phantoms and CT synthesized from real label maps.

Public API (imported lazily so ``kits --help`` stays fast)::

    make_case(seed, shape_zyx=DEFAULT_SHAPE, spacing_zyx=DEFAULT_SPACING) -> (ct int16, label uint8, Geometry)
    synthesize_ct_from_label(label_file_order, geometry, seed) -> ct int16
    write_case(out_dir, case_id, ct, label, geometry) -> Path
    synthesize_dataset(out_dir, n_cases, seed, shape_zyx, spacing_zyx, first_case=0, progress=True) -> [Path]
    synthesize_from_labels(out_dir, label_dir, seed=0, progress=True) -> [Path]

Shapes/spacings are in anatomical order (superior-inferior, anterior-posterior, right-left); returned
arrays are in KiTS23 file order (SimpleITK numpy order, slice axis last).
"""

from __future__ import annotations

DEFAULT_SHAPE = (128, 256, 256)
DEFAULT_SPACING = (3.0, 1.5625, 1.5625)

_LAZY = {
    "make_case": "phantom",
    "make_phantom": "phantom",
    "kits_geometry": "phantom",
    "synthesize_ct_from_label": "from_labels",
    "write_case": "writer",
    "synthesize_dataset": "writer",
    "synthesize_from_labels": "writer",
    "case_seed": "writer",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DEFAULT_SHAPE", "DEFAULT_SPACING", *_LAZY]
