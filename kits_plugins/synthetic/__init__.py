"""Synthetic CT-like KiTS23 cases: procedural phantoms and CT synthesized from real label maps."""
