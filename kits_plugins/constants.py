"""Constants shared by every stage: labels, evaluation regions, dataset ids, target spacing."""

from __future__ import annotations

import math

# KiTS23 label values in the reference segmentations.
BACKGROUND, KIDNEY, TUMOR, CYST = 0, 1, 2, 3
LABEL_NAMES = {0: "background", 1: "kidney", 2: "tumor", 3: "cyst"}
MAX_LABEL = 3

# Hierarchical evaluation classes (HECs) of the challenge, with Surface Dice tolerances in mm.
HEC_LABELS = {"kidney_and_mass": (1, 2, 3), "mass": (2, 3), "tumor": (2,)}
HEC_TOLERANCES_MM = {
    "kidney_and_mass": 1.0330772532390826,
    "mass": 1.1328796488598762,
    "tumor": 1.1498198361434828,
}

# Dataset ids and names of the raw dataset and the three stage datasets.
RAW_DATASET_ID = 220
RAW_DATASET_NAME = "Dataset220_KiTS2023"
COARSE_DATASET_ID, FINE_DATASET_ID, MASSES_DATASET_ID = 221, 222, 223
STAGE_DATASET_NAMES = {
    221: "Dataset221_KiTS2023Coarse",
    222: "Dataset222_KiTS2023Kidney",
    223: "Dataset223_KiTS2023Masses",
}

# The seed's target spacing in nnU-Net's numpy axis order after NibabelIOWithReorient, i.e.
# (superior-inferior, anterior-posterior, right-left) in millimetres.
TARGET_SPACING = (0.786, 0.78125, 0.78125)

# Plans identifier used for every stage.
PLANS_NAME = "kitsPlans"

# Reader/writer nnU-Net uses for every dataset this package writes (see README, "Orientation").
READER_WRITER = "NibabelIOWithReorient"

# Default kidney ROI margin (mm) around each kidney component.
DEFAULT_MARGIN_MM = 15.0
# Connected components of kidney+masses smaller than this (mm3) do not get a ROI of their own.
DEFAULT_MIN_ROI_VOLUME_MM3 = 2000.0

FILE_ENDING = ".nii.gz"

# Postprocessing: the seed's minimum component sizes (20000 kidney+masses, 200 tumor, 50 cyst voxels) at the
# target spacing, as volumes in mm3 (kits_plugins.postprocessing converts them at each file's own spacing).
SEED_MIN_VOXELS_AT_TARGET: dict[int, int] = {KIDNEY: 20000, TUMOR: 200, CYST: 50}
TARGET_VOXEL_VOLUME_MM3: float = math.prod(TARGET_SPACING)
DEFAULT_MIN_VOLUME_MM3: dict[int, float] = {
    label: n * TARGET_VOXEL_VOLUME_MM3 for label, n in SEED_MIN_VOXELS_AT_TARGET.items()
}
