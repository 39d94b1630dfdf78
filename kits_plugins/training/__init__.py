"""nnUNetTrainer subclasses of the cascade (importable by nnU-Net's spawned workers)."""
