"""``nnUNetPlannerKiTS``: nnU-Net's ``ExperimentPlanner`` with the package's preprocessing choices built in.

Passed as a class (``functools.partial`` carrying the package's options) to nnU-Net's
``plan_experiment_dataset``; nnU-Net looks planners up by name only inside its own package, so it is never
named on nnU-Net's command line. Hooks used:

- ``overwrite_target_spacing`` (nnU-Net's own argument): ``3d_fullres`` and the ``2d`` slice spacing;
- ``determine_resampling``: images get a third-order spline on every axis, segmentations nnU-Net's default;
- ``get_plans_for_configuration``: the U-Net width is scaled *after* nnU-Net sized patch, batch and topology
  for the full-width network (setting ``UNet_base_num_features`` instead would shrink nnU-Net's VRAM
  estimate and enlarge the patch: 96x160x160 -> 160x256x224 for the demo's 221 at the seed spacing);
- ``save_plans``: the coarse stage's configurations (see ``nnUNetPlannerKiTS.save_plans``);
- ``self.dataset_fingerprint`` (read by ``plan_experiment`` only for spacings, shapes and the intensity
  properties it copies into the plans): ``intensity_properties`` replaces a channel's foreground intensity
  properties, the statistics ``CTNormalization`` clips and z-scores with. Stage 223 gets the kidney+masses
  statistics of its CT over its mask channel (``mask_foreground_intensity_properties``; 222's fingerprint's when
  the mask is the ground truth) instead of nnU-Net's statistics over its label (tumor and cyst only).

The mask channel needs no hook: the stage datasets name 223's mask channel ``noNorm``, which nnU-Net maps to
``NoNormalization`` without mask-for-norm; ``planning.check_plans`` verifies it.

Importing this module imports nnU-Net and torch; ``planning`` imports it lazily (and this module does not
import ``planning``: spacings arrive validated).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

from kits_plugins.errors import KitsInputError
from kits_plugins.utilities.processes import worker_pool

# Image resampling the seed used: third-order spline on every axis, no separate-z treatment.
IMAGE_RESAMPLING_KWARGS = {"is_seg": False, "order": 3, "order_z": 3, "force_separate_z": False}


def scaled_features(features: Sequence[int], width: float) -> list[int]:
    """U-Net feature counts times ``width``, rounded, at least 4 per stage (the CPU demo uses 0.25)."""
    if not (width > 0 and math.isfinite(width)):
        raise KitsInputError(f"network width must be a positive number, got {width}")
    return [max(4, int(round(f * width))) for f in features]


def drop_nnunet_cascade(configurations: dict) -> list[str]:
    """Remove nnU-Net's in-dataset cascade (``3d_cascade_fullres``, ``3d_lowres.next_stage``); returns what went.

    No hook: ``ExperimentPlanner.plan_experiment`` adds both whenever it plans 3d_lowres and 3d_fullres. The
    package cascades across datasets, and nnU-Net's validation would export next-stage predictions otherwise.
    """
    removed = []
    if configurations.pop("3d_cascade_fullres", None) is not None:
        removed.append("3d_cascade_fullres")
    if "3d_lowres" in configurations and configurations["3d_lowres"].pop("next_stage", None) is not None:
        removed.append("3d_lowres.next_stage")
    return removed


def fingerprint_intensity_properties(samples: np.ndarray) -> dict[str, float]:
    """One channel's foreground intensity properties from its sampled intensities, computed as
    ``DatasetFingerprintExtractor.run`` computes them (a mirror: ``run`` writes its file and takes its foreground
    from the label; the tests compare both on identical data). Keys sorted as in nnU-Net's fingerprint JSON."""
    percentile_00_5, median, percentile_99_5 = np.percentile(samples, np.array((0.5, 50.0, 99.5)))
    return {
        "max": float(np.max(samples)),
        "mean": float(np.mean(samples)),
        "median": float(median),
        "min": float(np.min(samples)),
        "percentile_00_5": float(percentile_00_5),
        "percentile_99_5": float(percentile_99_5),
        "std": float(np.std(samples)),
    }


def mask_foreground_intensity_properties(
    dataset_name_or_id: str | int, image_channel: int, mask_channel: int, num_processes: int = 1
) -> dict[str, float]:
    """nnU-Net's fingerprint statistics of input channel ``image_channel`` over the voxels where input channel
    ``mask_channel`` is > 0, instead of where the label is.

    Each case goes through nnU-Net's own ``DatasetFingerprintExtractor.analyze_case`` with the image channel as
    the only image and the mask channel as the segmentation: same reader, cropping, seed (1234) and number of
    samples per case (``num_foreground_voxels_for_intensitystats // cases``). For 223 (CT, kidney+masses mask)
    this is exactly what nnU-Net computes for 222 (the same CT crops, labelled kidney+masses) whenever the mask
    channel equals 222's label. ``num_processes`` > 1 analyses cases in spawned workers.
    """
    extractor = DatasetFingerprintExtractor(dataset_name_or_id, num_processes)
    cases = list(extractor.dataset.values())
    reader = determine_reader_writer_from_dataset_json(extractor.dataset_json, cases[0]["images"][0])
    num_samples = int(extractor.num_foreground_voxels_for_intensitystats // len(cases))
    args = ([[c["images"][image_channel]] for c in cases], [c["images"][mask_channel] for c in cases],
            [reader] * len(cases), [num_samples] * len(cases))
    analyze = DatasetFingerprintExtractor.analyze_case
    if num_processes > 1:
        with worker_pool(min(num_processes, len(cases))) as pool:
            sampled = [r[2][0] for r in pool.map(analyze, *args)]
    else:
        sampled = [r[2][0] for r in map(analyze, *args)]
    samples = np.concatenate(sampled)  # as nnU-Net's run: cases in the dataset's order
    if samples.size == 0:
        raise KitsInputError(f"{extractor.dataset_name}: input channel {mask_channel} is empty in every case; "
                             f"no voxels to compute channel {image_channel}'s intensity statistics over")
    return fingerprint_intensity_properties(samples)


class nnUNetPlannerKiTS(ExperimentPlanner):
    """nnU-Net's default planner plus third-order image resampling, a scaled U-Net width, optionally other
    intensity properties for some channels and, for the coarse stage, a ``3d_lowres`` at the requested spacing
    without nnU-Net's in-dataset cascade."""

    def __init__(
        self,
        dataset_name_or_id: str | int,
        gpu_memory_target_in_gb: float = 8,
        preprocessor_name: str = "DefaultPreprocessor",
        plans_name: str = "nnUNetPlans",
        overwrite_target_spacing: Sequence[float] | None = None,
        suppress_transpose: bool = False,
        *,
        coarse_spacing: Sequence[float] | None = None,
        keep_nnunet_lowres: bool = True,
        network_width: float = 1.0,
        intensity_properties: Mapping[int, Mapping[str, float]] | None = None,
    ):
        """``coarse_spacing`` (reader order, mm) makes this the coarse stage: its ``3d_lowres`` spacing, used
        when nnU-Net plans no 3d_lowres or ``keep_nnunet_lowres`` is False. ``network_width`` scales the
        U-Net's feature counts. ``intensity_properties`` (channel -> properties) replaces the fingerprint's
        foreground intensity properties of those channels, and so the plans'. The other arguments are
        ``ExperimentPlanner``'s."""
        target = None if overwrite_target_spacing is None else [float(v) for v in overwrite_target_spacing]
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name, target,
                         suppress_transpose)
        scaled_features([32], network_width)  # validate early
        self.replace_intensity_properties(intensity_properties or {})
        self.coarse_spacing = None if coarse_spacing is None else tuple(float(s) for s in coarse_spacing)
        self.keep_nnunet_lowres = keep_nnunet_lowres
        self.network_width = float(network_width)

    def replace_intensity_properties(self, intensity_properties: Mapping[int, Mapping[str, float]]) -> None:
        """Set channels' foreground intensity properties in the loaded fingerprint (not in its file), which
        ``plan_experiment`` copies into the plans: the statistics each channel's normalization uses."""
        per_channel = self.dataset_fingerprint["foreground_intensity_properties_per_channel"]
        for channel, properties in intensity_properties.items():
            if str(channel) not in per_channel:
                raise KitsInputError(f"{self.dataset_name}: no input channel {channel} for intensity properties")
            per_channel[str(channel)] = {k: float(v) for k, v in sorted(properties.items())}

    def determine_resampling(self, *args, **kwargs):
        """nnU-Net's resampling functions; images with a third-order spline on every axis (nnU-Net's default
        ``order_z 0`` with automatic separate-z is nearest neighbour across thick CT slices)."""
        data_fn, _, seg_fn, seg_kwargs = super().determine_resampling(*args, **kwargs)
        return data_fn, dict(IMAGE_RESAMPLING_KWARGS), seg_fn, seg_kwargs

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier: str,
                                    approximate_n_voxels_dataset: float, _cache: dict) -> dict:
        """nnU-Net's configuration (sized for the full-width U-Net), then its feature counts times the width."""
        plan = super().get_plans_for_configuration(spacing, median_shape, data_identifier,
                                                   approximate_n_voxels_dataset, _cache)
        if self.network_width != 1.0:
            arch = plan["architecture"]["arch_kwargs"]
            arch["features_per_stage"] = scaled_features(arch["features_per_stage"], self.network_width)
        return plan

    def plan_coarse_configuration(self, coarse_spacing: Sequence[float], transpose_forward: Sequence[int]) -> dict:
        """``3d_lowres`` at ``coarse_spacing`` (reader order): nnU-Net's patch, topology and batch size for the
        dataset's median shape at that spacing, computed as ``plan_experiment`` computes it for 3d_fullres."""
        fp = self.dataset_fingerprint
        spacing = [float(v) for v in coarse_spacing]
        new_shapes = [compute_new_shape(s, sp, spacing) for sp, s in zip(fp["spacings"], fp["shapes_after_crop"])]
        median_t = np.median(new_shapes, 0)[list(transpose_forward)]
        n_voxels = float(np.prod(median_t, dtype=np.float64) * self.dataset_json["numTraining"])
        spacing_t = np.array([float(coarse_spacing[i]) for i in transpose_forward])
        cfg = self.get_plans_for_configuration(spacing_t, median_t, self.generate_data_identifier("3d_lowres"),
                                               n_voxels, {})
        cfg["batch_dice"] = False
        return cfg

    def save_plans(self, plans: dict) -> None:
        """For the coarse stage, finish its configurations, then let nnU-Net write the plans.

        ``plan_experiment`` has no hook between building the plans and writing them, and it hardcodes both the
        in-dataset cascade and its lowres spacing search (run only for images much larger than a patch). So
        here the cascade is dropped, and ``3d_lowres`` is (re)planned at ``coarse_spacing`` unless nnU-Net
        planned one and ``keep_nnunet_lowres``. ``3d_fullres`` stays as nnU-Net planned it (its ``batch_dice``
        included, which nnU-Net sets by whether it planned a 3d_lowres).
        """
        if self.coarse_spacing is not None:
            configs = plans["configurations"]
            drop_nnunet_cascade(configs)
            if not (self.keep_nnunet_lowres and "3d_lowres" in configs):
                why = "nnU-Net planned none (images small)" if self.keep_nnunet_lowres else "requested"
                configs["3d_lowres"] = self.plan_coarse_configuration(self.coarse_spacing, plans["transpose_forward"])
                patch = [int(p) for p in configs["3d_lowres"]["patch_size"]]
                print(f"{self.dataset_name} {self.plans_identifier}: 3d_lowres at {self.coarse_spacing} mm ({why}), "
                      f"patch {patch}")
        super().save_plans(plans)
