"""Shim for ``nnUNet_extTrainer``: nnU-Net imports this folder's modules and looks classes up by name.

The classes stay defined in ``kits_plugins.training.trainers`` (so they pickle under that module path).
"""

from kits_plugins.training.trainers import *  # noqa: F401,F403
