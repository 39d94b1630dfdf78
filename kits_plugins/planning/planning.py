"""Fingerprint, plan and preprocess the stage datasets at the package's target spacing.

Planning goes through nnU-Net's own extension points, so the written ``kitsPlans.json`` is final (never edited
afterwards): nnU-Net's ``plan_experiment_dataset`` with the package's planner class
(``kits_plugins.planning.planner.nnUNetPlannerKiTS``, see there for the hooks) gives

- every full-resolution configuration (``3d_fullres``, its ``2d`` slice spacing) the target spacing
  (nnU-Net's ``overwrite_target_spacing``);
- images a third-order spline on every axis (``order 3``, ``order_z 3``, ``force_separate_z False``),
  segmentations nnU-Net's default;
- the U-Net feature counts times ``network_width``, applied after nnU-Net sized patch and batch;
- the coarse stage (221) a ``3d_lowres`` at the requested coarse spacing (else nnU-Net's own, else 2 x target)
  and no in-dataset cascade (``3d_cascade_fullres``, ``next_stage``): the package cascades across datasets.
  ``plan_experiment`` has no hook for either, so the planner finishes them in ``save_plans``, between nnU-Net
  building the plans and writing them.

Binary mask input channels (223's kidney mask, channel 1) are not normalized because the stage datasets name
them ``noNorm`` in dataset.json. 223's CT (channel 0) is normalized with the intensity statistics over its
kidney+masses mask channel, as 222's CT is over its kidney+masses label, not with nnU-Net's statistics over 223's
label (tumor and cyst only): both stages see the same ROI through the same CT window. ``check_plans`` verifies all
of it after planning; a violation is an error.

Spacings are in nnU-Net's numpy axis order. The stage datasets declare ``NibabelIOWithReorient``, so the
three numbers are (superior-inferior, anterior-posterior, right-left) in mm.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import load_json

from kits_plugins.constants import COARSE_DATASET_ID, MASSES_DATASET_ID, PLANS_NAME, TARGET_SPACING
from kits_plugins.errors import KitsInputError
from kits_plugins.utilities.staging import atomic_write_bytes

# Configurations preprocessed per stage when none are requested: the coarse stage trains 3d_lowres on the
# full CT, the ROI stages train 3d_fullres.
DEFAULT_CONFIGURATIONS: dict[int, tuple[str, ...]] = {
    COARSE_DATASET_ID: ("3d_lowres",),
}
FALLBACK_CONFIGURATIONS: tuple[str, ...] = ("3d_fullres",)

# Input channels that hold binary masks (dataset id -> channel indices): named noNorm in dataset.json, so
# nnU-Net does not normalize them; check_plans verifies it.
MASK_CHANNELS: dict[int, tuple[int, ...]] = {MASSES_DATASET_ID: (1,)}

# The CT input channel of every stage dataset.
CT_CHANNEL = 0
# Datasets whose CT intensity statistics (CTNormalization's clipping window, mean and std) are taken over an input
# mask channel instead of the label (dataset id -> mask channel): 223's labels mark only tumor and cyst, its mask
# channel kidney+masses, the voxels 222's label marks in the same crops.
INTENSITY_MASK_CHANNEL: dict[int, int] = {MASSES_DATASET_ID: 1}

# Factor applied to the target spacing for the coarse configuration when nnU-Net plans none and no
# explicit coarse spacing is given.
DEFAULT_COARSE_FACTOR = 2.0


def _require_nnunet_paths() -> tuple[Path, Path]:
    """nnUNet_raw and nnUNet_preprocessed from the environment (nnU-Net reads them lazily)."""
    missing = [k for k in ("nnUNet_raw", "nnUNet_preprocessed") if not os.environ.get(k)]
    if missing:
        raise KitsInputError(f"environment variable(s) {', '.join(missing)} not set (nnU-Net's data folders)")
    return Path(os.environ["nnUNet_raw"]), Path(os.environ["nnUNet_preprocessed"])


def _as_spacing(spacing: Sequence[float], what: str) -> tuple[float, float, float]:
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise KitsInputError(f"{what} must be three positive numbers in mm, got {tuple(spacing)}")
    return values


def dataset_name(dataset_id: int) -> str:
    """nnU-Net dataset name of ``dataset_id`` (KitsInputError naming nnUNet_raw if it does not exist)."""
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    raw, _ = _require_nnunet_paths()
    try:
        return convert_id_to_dataset_name(int(dataset_id))
    except RuntimeError:
        raise KitsInputError(f"{raw}: no dataset with id {dataset_id} (run `kits derive-stages` first)") from None


def transposed(spacing: Sequence[float], transpose_forward: Sequence[int]) -> list[float]:
    """Spacing in nnU-Net's reader order -> the plans' (transposed) order."""
    return [float(spacing[i]) for i in transpose_forward]


def coarse_spacing_for(target_spacing: Sequence[float], coarse_spacing: Sequence[float] | None) -> tuple[float, ...]:
    """The coarse configuration's spacing: explicit, else ``DEFAULT_COARSE_FACTOR`` x target."""
    if coarse_spacing is not None:
        return _as_spacing(coarse_spacing, "coarse spacing")
    return tuple(float(s) * DEFAULT_COARSE_FACTOR for s in target_spacing)


def plans_file(dataset_id: int, plans_name: str = PLANS_NAME) -> Path:
    """Path of the plans JSON of ``dataset_id``."""
    _, pre = _require_nnunet_paths()
    return pre / dataset_name(dataset_id) / f"{plans_name}.json"


def refresh_splits(dataset_id: int) -> bool:
    """Make ``$nnUNet_preprocessed``'s ``splits_final.json`` the one ``kits derive-stages`` wrote into the raw
    dataset. nnU-Net's planner copies it only when none exists and asserts that an existing one agrees: after the
    stage datasets are derived again (``--overwrite``, other ROIs and so other crop ids) the old split is stale and
    planning would stop on a bare AssertionError. Returns True when a stale split was replaced."""
    raw, pre = _require_nnunet_paths()
    name = dataset_name(dataset_id)
    source, target = raw / name / "splits_final.json", pre / name / "splits_final.json"
    if not source.is_file() or not target.is_file() or load_json(str(source)) == load_json(str(target)):
        return False
    atomic_write_bytes(target, source.read_bytes())
    print(f"{name}: replaced {target} (from an earlier kits derive-stages) with {source}")
    return True


def check_intensity_properties(plans: dict, intensity_properties: Mapping[int, Mapping[str, float]]) -> list[str]:
    """Problems of the plans' foreground intensity properties (what CTNormalization clips and z-scores with)
    against the expected ones per channel (empty list: all equal)."""
    problems = []
    in_plans = plans.get("foreground_intensity_properties_per_channel", {})
    for channel, want in intensity_properties.items():
        have = in_plans.get(str(channel))
        if have is None or {k: float(v) for k, v in have.items()} != {k: float(v) for k, v in want.items()}:
            problems.append(f"channel {channel} intensity properties {have} != {dict(want)}")
    return problems


def check_plans(
    plans: dict,
    target_spacing: Sequence[float],
    require_coarse: bool = False,
    mask_channels: Sequence[int] = (),
    intensity_properties: Mapping[int, Mapping[str, float]] | None = None,
) -> list[str]:
    """Problems of a plans dict against the package's rules (empty list: all good).

    ``require_coarse``: the coarse stage's rules (a 3d_lowres, no in-dataset cascade). ``mask_channels``:
    input channels that must not be normalized. ``intensity_properties``: the foreground intensity properties
    some channels must have (223's CT: the kidney+masses statistics).
    """
    problems = check_intensity_properties(plans, intensity_properties or {})
    target_t = transposed(target_spacing, plans["transpose_forward"])
    configs = plans["configurations"]
    if "3d_fullres" in configs and not np.allclose(configs["3d_fullres"]["spacing"], target_t, atol=1e-6):
        problems.append(f"3d_fullres spacing {configs['3d_fullres']['spacing']} != target {target_t}")
    if "2d" in configs and not np.allclose(configs["2d"]["spacing"], target_t[1:], atol=1e-6):
        problems.append(f"2d spacing {configs['2d']['spacing']} != target {target_t[1:]}")
    for name, cfg in configs.items():
        kw = cfg.get("resampling_fn_data_kwargs")
        if kw is not None and (kw.get("order") != 3 or kw.get("order_z") != 3 or kw.get("force_separate_z")):
            problems.append(f"{name}: image resampling is not a 3rd-order spline on every axis: {kw}")
        for c in mask_channels if "normalization_schemes" in cfg else ():
            if cfg["normalization_schemes"][c] != "NoNormalization" or cfg["use_mask_for_norm"][c]:
                problems.append(f"{name}: mask channel {c} is normalized ({cfg['normalization_schemes'][c]}); "
                                f"name it 'noNorm' in dataset.json's channel_names")
    if require_coarse:
        if "3d_lowres" not in configs:
            problems.append("no 3d_lowres configuration for the coarse stage")
        if "3d_cascade_fullres" in configs or "next_stage" in configs.get("3d_lowres", {}):
            problems.append("the coarse stage has nnU-Net's in-dataset cascade (3d_cascade_fullres / next_stage)")
    return problems


def preprocessed_spacing(data_shape: Sequence[int], properties: dict, transpose_forward: Sequence[int]) -> np.ndarray:
    """Effective voxel spacing (plans order) of a preprocessed case, from nnU-Net's stored properties.

    nnU-Net stores the original spacing (reader order) and the shape after cropping, before resampling;
    the resampled shape then gives the spacing actually used (exact up to rounding to whole voxels).
    """
    original = np.array(transposed(properties["spacing"], transpose_forward))
    before = np.array(properties["shape_after_cropping_and_before_resampling"], dtype=np.float64)
    return original * before / np.asarray(data_shape[-3:], dtype=np.float64)


def check_preprocessed(dataset_id: int, configuration: str, plans_name: str = PLANS_NAME) -> dict:
    """Load every preprocessed case's properties of one configuration and check the resampled shape.

    Returns ``{case: effective spacing}``; raises RuntimeError if a case's shape is not the one nnU-Net's
    ``compute_new_shape`` gives for the configuration's spacing.
    """
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    _, pre = _require_nnunet_paths()
    plans = load_json(plans_file(dataset_id, plans_name))
    cfg = plans["configurations"][configuration]
    folder = pre / dataset_name(dataset_id) / (cfg.get("data_identifier") or f"{plans_name}_{configuration}")
    ds_class = infer_dataset_class(str(folder))
    ids = ds_class.get_identifiers(str(folder))
    tf = plans["transpose_forward"]
    spacing = cfg["spacing"]
    out = {}
    ds = ds_class(str(folder), ids)
    for k in ids:
        data, _seg, _prev, props = ds.load_case(k)
        original = transposed(props["spacing"], tf)
        sp = [original[0]] + list(spacing) if len(spacing) == 2 else spacing
        expected = compute_new_shape(props["shape_after_cropping_and_before_resampling"], original, sp)
        if tuple(int(s) for s in data.shape[1:]) != tuple(int(s) for s in expected):
            raise RuntimeError(f"{folder}/{k}: preprocessed shape {data.shape[1:]} != {tuple(expected)} at {sp} mm")
        out[k] = preprocessed_spacing(data.shape, props, tf)
    return out


@contextmanager
def _planner_safe_environment():
    """nnU-Net's planner calls ``torch.set_num_threads(nnUNet_n_proc_DA)``, which fails for 0 (a valid
    setting for training: no augmentation workers). Plan with at least 1."""
    old = os.environ.get("nnUNet_n_proc_DA")
    if old is not None and old.strip() == "0":
        os.environ["nnUNet_n_proc_DA"] = "1"
    try:
        yield
    finally:
        if old is not None:
            os.environ["nnUNet_n_proc_DA"] = old


def intensity_properties_for(dataset_id: int, num_processes: int) -> dict[int, dict[str, float]]:
    """Channel -> foreground intensity properties that replace nnU-Net's for ``dataset_id`` (empty: none).

    223: its CT over its own kidney+masses mask channel with nnU-Net's fingerprint code, so 223 plans on its own
    (no dependency on 222's planning) and gets 222's statistics exactly when its mask is the ground truth.
    """
    from kits_plugins.planning.planner import mask_foreground_intensity_properties

    if dataset_id not in INTENSITY_MASK_CHANNEL:
        return {}
    mask_channel = INTENSITY_MASK_CHANNEL[dataset_id]
    properties = mask_foreground_intensity_properties(dataset_id, CT_CHANNEL, mask_channel, num_processes)
    print(f"{dataset_name(dataset_id)}: channel {CT_CHANNEL} intensity properties over input channel {mask_channel} "
          f"(kidney+masses): " + ", ".join(f"{k} {v:.6g}" for k, v in properties.items()))
    return {CT_CHANNEL: properties}


def plan_dataset(
    dataset_id: int,
    target_spacing: Sequence[float] = TARGET_SPACING,
    num_processes: int = 2,
    coarse_spacing: Sequence[float] | None = None,
    gpu_memory_target_gb: float | None = None,
    plans_name: str = PLANS_NAME,
    verbose: bool = False,
    network_width: float = 1.0,
) -> Path:
    """Fingerprint and plan one dataset with ``nnUNetPlannerKiTS``, then check its plans. Returns the plans path."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiment_dataset

    from kits_plugins.planning.planner import nnUNetPlannerKiTS

    target_spacing = _as_spacing(target_spacing, "target spacing")
    if coarse_spacing is not None:
        coarse_spacing = _as_spacing(coarse_spacing, "coarse spacing")
    if not (network_width > 0 and math.isfinite(network_width)):
        raise KitsInputError(f"network width must be a positive number, got {network_width}")
    dataset_name(dataset_id)
    refresh_splits(dataset_id)
    extract_fingerprints([dataset_id], num_processes=num_processes, clean=True, verbose=verbose,
                         show_progress_bar=verbose)
    intensities = intensity_properties_for(dataset_id, num_processes)
    path = plans_file(dataset_id, plans_name)
    # nnU-Net keeps configurations of an existing plans file that it did not plan itself (a 3d_lowres of an
    # earlier run): start from scratch so re-planning with other spacings or widths never mixes plans.
    path.unlink(missing_ok=True)
    is_coarse = dataset_id == COARSE_DATASET_ID
    planner = partial(nnUNetPlannerKiTS, network_width=network_width, keep_nnunet_lowres=coarse_spacing is None,
                      coarse_spacing=coarse_spacing_for(target_spacing, coarse_spacing) if is_coarse else None,
                      intensity_properties=intensities)
    with _planner_safe_environment():  # nnU-Net only calls the class: a partial with our options fits
        plan_experiment_dataset(dataset_id, planner,  # type: ignore[arg-type]  # typed as type[ExperimentPlanner]
                                gpu_memory_target_in_gb=gpu_memory_target_gb,
                                overwrite_target_spacing=target_spacing, overwrite_plans_name=plans_name)
    problems = check_plans(load_json(path), target_spacing, require_coarse=is_coarse,
                           mask_channels=MASK_CHANNELS.get(dataset_id, ()), intensity_properties=intensities)
    if problems:
        raise RuntimeError(f"{path}: plans do not satisfy the package's rules: {'; '.join(problems)}")
    return path


def plan_and_preprocess(
    dataset_ids: Sequence[int],
    target_spacing: Sequence[float] = TARGET_SPACING,
    num_processes: int = 2,
    configurations: Sequence[str] | None = None,
    coarse_spacing: Sequence[float] | None = None,
    gpu_memory_target_gb: float | None = None,
    preprocess: bool = True,
    verbose: bool = False,
    plans_name: str = PLANS_NAME,
    network_width: float = 1.0,
) -> dict[int, Path]:
    """Plan (and preprocess) each dataset under ``plans_name`` at ``target_spacing`` (reader order, mm).

    ``configurations`` None preprocesses the stage's own configuration (221: 3d_lowres, others:
    3d_fullres). ``coarse_spacing`` is the 221 3d_lowres spacing (default: nnU-Net's lowres plan, or
    2 x target when nnU-Net plans none). ``network_width`` scales the U-Net's feature counts (0.25 for the CPU
    demo). Returns ``{dataset_id: plans file}``.
    """
    from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess as nnunet_preprocess
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    _require_nnunet_paths()
    for d in dataset_ids:  # fail early on a missing dataset
        dataset_name(d)
    out: dict[int, Path] = {}
    for d in dataset_ids:
        path = plan_dataset(d, target_spacing, num_processes, coarse_spacing, gpu_memory_target_gb, plans_name,
                            verbose, network_width)
        out[d] = path
        if not preprocess:
            continue
        plans = PlansManager(str(path))
        wanted = list(configurations) if configurations else list(DEFAULT_CONFIGURATIONS.get(d, FALLBACK_CONFIGURATIONS))
        missing = [c for c in wanted if c not in plans.available_configurations]
        if missing:
            raise KitsInputError(f"{path}: configuration(s) {missing} not planned; available: "
                                 f"{sorted(plans.available_configurations)}")
        for c in wanted:
            n_stages = len(plans.get_configuration(c).pool_op_kernel_sizes)
            if n_stages < 3:
                print(f"WARNING {dataset_name(d)} {c}: images are so small at this spacing that the network has only "
                      f"{n_stages} resolution stages; the package's trainers then disable deep supervision "
                      f"(nnU-Net's own trainer would train on a NaN loss). Use a finer spacing if you can.")
        nnunet_preprocess([d], plans_name, wanted, [num_processes] * len(wanted), verbose=verbose,
                          show_progress_bar=True)
        for c in wanted:
            spacings = check_preprocessed(d, c, plans_name)
            want = np.array(plans.get_configuration(c).spacing, dtype=np.float64)
            worst = max((np.max(np.abs(s[-len(want):] - want) / want) for s in spacings.values()), default=0.0)
            print(f"{dataset_name(d)} {c}: {len(spacings)} cases at {[round(float(v), 5) for v in want]} mm "
                  f"(largest deviation from rounding to whole voxels {100 * worst:.2f}%)")
    return out

