"""Typed access to what an initialised ``nnUNetPredictor`` holds.

``nnUNetPredictor.__init__`` sets ``plans_manager``, ``configuration_manager``, ``dataset_json`` and
``label_manager`` to None (unannotated) and ``manual_initialization`` fills them in, so a type checker reads
them as always None. These functions return the attribute with the type ``manual_initialization`` gives it;
every predictor this package passes around is initialised
(:func:`kits_plugins.inference.model_discovery.load_stage_predictor`). Nothing is checked or copied: each
function reads its one attribute, no more. nnU-Net is imported for type checking only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.label_handling.label_handling import LabelManager
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager


def plans_manager(predictor: nnUNetPredictor) -> PlansManager:
    return cast("PlansManager", predictor.plans_manager)


def configuration_manager(predictor: nnUNetPredictor) -> ConfigurationManager:
    return cast("ConfigurationManager", predictor.configuration_manager)


def dataset_json(predictor: nnUNetPredictor) -> dict[str, Any]:
    return cast("dict[str, Any]", predictor.dataset_json)


def label_manager(predictor: nnUNetPredictor) -> LabelManager:
    return cast("LabelManager", predictor.label_manager)
