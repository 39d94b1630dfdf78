"""Fingerprint, planning and preprocessing of the stage datasets at the package's target spacing."""
