"""The measurement rules of ``kits statistics`` as plain constants (no imports: ``kits --help`` reads the defaults).

Their meaning is in :mod:`kits_plugins.statistics.measurements`.
"""

from __future__ import annotations

from typing import Final

#: components of kidney+masses, tumor and cyst are 26-connected (as postprocessing counts them)
CONNECTIVITY: Final = 26
#: kidney+masses components under this volume are fragments, not kidneys
DEFAULT_MIN_KIDNEY_ML: Final = 1.0
#: tumor/cyst components under this volume are not listed (0: all)
DEFAULT_MIN_LESION_ML: Final = 0.0
#: CT voxels above this value are the body whose centroid gives the patient's midline
BODY_THRESHOLD_HU: Final = -500.0
#: a kidney component with at least this share of its voxels on each side of the midline is a horseshoe
HORSESHOE_MIN_FRACTION: Final = 0.2
