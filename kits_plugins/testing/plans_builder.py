"""Minimal nnU-Net plans for models made outside ``nnUNetv2_plan_and_preprocess``.

The benchmarks run nnU-Net's predictor on randomly initialised networks and the tests on fixed-weight
ones; both need a plans dict that ``PlansManager`` accepts, with one configuration and the package's
conventions (``NibabelIOWithReorient``, ``DefaultPreprocessor``, nnU-Net's default resampling). Real
models get their plans from ``kits plan`` (:mod:`kits_plugins.planning`).
"""

from __future__ import annotations

from collections.abc import Sequence

#: CT intensity statistics used when none are given (roughly abdominal soft tissue)
DEFAULT_CT_PROPERTIES = {"max": 3000.0, "mean": 100.0, "median": 100.0, "min": -1000.0,
                         "percentile_00_5": -200.0, "percentile_99_5": 400.0, "std": 80.0}


def plain_unet_architecture(features_per_stage: Sequence[int]) -> dict:
    """nnU-Net's 3-D ``PlainConvUNet`` as planned for 128^3 patches (3x3x3 kernels, stride 2 after the first
    stage, instance norm, leaky ReLU); ``features_per_stage`` sets the depth and widths."""
    n = len(features_per_stage)
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": n,
            "features_per_stage": list(features_per_stage),
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * n,
            "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
            "n_conv_per_stage": [2] * n,
            "n_conv_per_stage_decoder": [2] * (n - 1),
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def minimal_plans(
    configuration: str,
    spacing: Sequence[float],
    normalization_schemes: Sequence[str],
    architecture: dict | None = None,
    patch_size: Sequence[int] = (128, 128, 128),
    data_order: int = 3,
    seg_order: int = 1,
    transpose_forward: Sequence[int] = (0, 1, 2),
    intensity_properties: dict | None = None,
    median_shape: Sequence[int] = (400, 512, 512),
    dataset_name: str = "kits",
) -> dict:
    """A plans dict with one ``configuration`` (``spacing`` in nnU-Net order, one normalisation scheme per
    input channel). Images are resampled with order ``data_order`` (the package plans order 3), labels and
    probabilities with ``seg_order``; slice-axis handling is nnU-Net's automatic choice. ``architecture``
    defaults to :func:`plain_unet_architecture` with nnU-Net's KiTS widths (32 .. 320)."""
    n_channels = len(normalization_schemes)
    resampling = {"is_seg": False, "order": data_order, "order_z": 0, "force_separate_z": None}
    config = {
        "data_identifier": f"kitsPlans_{configuration}",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": list(patch_size),
        "median_image_size_in_voxels": list(median_shape),
        "spacing": list(spacing),
        "normalization_schemes": list(normalization_schemes),
        "use_mask_for_norm": [False] * n_channels,
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": resampling,
        "resampling_fn_seg_kwargs": {**resampling, "is_seg": True, "order": seg_order},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {**resampling, "order": seg_order},
        "architecture": architecture or plain_unet_architecture([32, 64, 128, 256, 320, 320]),
        "batch_dice": False,
    }
    backward = sorted(range(len(transpose_forward)), key=lambda i: transpose_forward[i])
    return {
        "dataset_name": dataset_name,
        "plans_name": "kitsPlans",
        "original_median_spacing_after_transp": list(spacing),
        "original_median_shape_after_transp": list(median_shape),
        "image_reader_writer": "NibabelIOWithReorient",
        "transpose_forward": [int(i) for i in transpose_forward],
        "transpose_backward": backward,
        "configurations": {configuration: config},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            str(c): dict(intensity_properties or DEFAULT_CT_PROPERTIES) for c in range(n_channels)
        },
    }
