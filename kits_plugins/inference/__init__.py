"""The cascade predictor built on nnU-Net's nnUNetPredictor."""
