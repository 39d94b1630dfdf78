"""kits-cascade: a coarse-to-fine nnU-Net v2 cascade for KiTS23 (kidney, tumor, cyst)."""

__version__ = "0.1.0"
