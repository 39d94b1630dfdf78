"""Connected-component postprocessing of KiTS label maps (``kits postprocess``).

Pure array functions live in :mod:`.remove_components`, file handling in :mod:`.files`, and the export to
nnU-Net's ``postprocessing.pkl`` in :mod:`.nnunet_export`.
"""

from kits_plugins.postprocessing.remove_components import (
    DEFAULT_MIN_VOLUME_MM3,
    PostprocessReport,
    RemovedComponent,
    postprocess_segmentation,
    postprocess_with_report,
)

__all__ = [
    "DEFAULT_MIN_VOLUME_MM3",
    "PostprocessReport",
    "RemovedComponent",
    "postprocess_segmentation",
    "postprocess_with_report",
]
