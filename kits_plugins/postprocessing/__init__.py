"""Connected-component postprocessing of KiTS label maps."""
