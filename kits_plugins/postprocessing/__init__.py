"""Connected-component postprocessing of KiTS label maps (``kits postprocess``).

Pure array functions live in :mod:`.remove_components`, file handling in :mod:`.files`, and the export to
nnU-Net's ``postprocessing.pkl`` in :mod:`.nnunet_export`. The names below are imported lazily, so that
``kits --help`` (which reads the default thresholds from :mod:`kits_plugins.constants`) loads no array library.
"""

from __future__ import annotations

from kits_plugins.constants import DEFAULT_MIN_VOLUME_MM3

_LAZY = ("PostprocessReport", "RemovedComponent", "postprocess_segmentation", "postprocess_with_report")


def __getattr__(name: str):
    if name in _LAZY:
        from kits_plugins.postprocessing import remove_components

        return getattr(remove_components, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DEFAULT_MIN_VOLUME_MM3", *_LAZY]
