"""Fingerprint, plan and preprocess the stage datasets at the package's target spacing.

nnU-Net looks up preprocessor and resampling classes only inside its own package, so the package cannot
ship a custom preprocessor. Instead it plans with nnU-Net's Python API under one plans name
(``kitsPlans``), passing ``overwrite_target_spacing``, and then *enforces* the properties the seed's
preprocessor had by editing the written plans JSON programmatically (never by hand):

- every full-resolution configuration (``3d_fullres``, its ``2d`` slice spacing) uses the target spacing;
- images are resampled with a third-order spline on every axis (``order 3``, ``order_z 3``,
  ``force_separate_z False``), segmentations keep nnU-Net's default;
- binary mask input channels (stage 223's kidney mask, channel 1) are not intensity-normalized;
- the coarse stage (221) always has a ``3d_lowres`` configuration, even when nnU-Net's planner drops it
  (it only plans one when the full-resolution patch covers < 25% of the median image). nnU-Net's own
  in-dataset cascade (``3d_cascade_fullres``) is removed there: the cascade of this package runs across
  datasets, not inside 221.

Spacings are in nnU-Net's numpy axis order. The stage datasets declare ``NibabelIOWithReorient``, so the
three numbers are (superior-inferior, anterior-posterior, right-left) in mm.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from contextlib import contextmanager
from copy import deepcopy
from pathlib import Path

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import load_json, save_json

from kits_plugins.constants import COARSE_DATASET_ID, MASSES_DATASET_ID, PLANS_NAME, TARGET_SPACING
from kits_plugins.utilities.image_io import KitsInputError

# Configurations preprocessed per stage when none are requested: the coarse stage trains 3d_lowres on the
# full CT, the ROI stages train 3d_fullres.
DEFAULT_CONFIGURATIONS: dict[int, tuple[str, ...]] = {
    COARSE_DATASET_ID: ("3d_lowres",),
}
FALLBACK_CONFIGURATIONS: tuple[str, ...] = ("3d_fullres",)

# Input channels that hold binary masks (dataset id -> channel indices); they get no normalization.
MASK_CHANNELS: dict[int, tuple[int, ...]] = {MASSES_DATASET_ID: (1,)}

# Image resampling the seed used: third-order spline on every axis, no separate-z treatment.
IMAGE_RESAMPLING_KWARGS = {"is_seg": False, "order": 3, "order_z": 3, "force_separate_z": False}

# Factor applied to the target spacing for the coarse configuration when nnU-Net plans none and no
# explicit coarse spacing is given.
DEFAULT_COARSE_FACTOR = 2.0

FULLRES_CONFIGURATIONS = ("3d_fullres", "2d")


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


def enforce_plans(
    plans: dict,
    target_spacing: Sequence[float],
    mask_channels: Sequence[int] = (),
    drop_nnunet_cascade: bool = False,
) -> list[str]:
    """Make ``plans`` (a loaded plans dict, edited in place) carry the package's preprocessing choices.

    Sets the full-resolution spacing, the images' third-order spline resampling for every configuration
    that defines resampling, and ``NoNormalization`` for ``mask_channels``. Returns a list of what was
    changed (empty when nnU-Net had already planned it so).
    """
    changes: list[str] = []
    tf = plans["transpose_forward"]
    target_t = transposed(target_spacing, tf)
    configs = plans["configurations"]
    for name, cfg in configs.items():
        if name == "3d_fullres":
            want = target_t
        elif name == "2d":
            want = target_t[1:]
        else:
            want = None
        if want is not None and (cfg.get("spacing") is None or not np.allclose(cfg["spacing"], want, atol=1e-6)):
            changes.append(f"{name}: spacing {cfg.get('spacing')} -> {want}")
            cfg["spacing"] = list(want)
        if "resampling_fn_data_kwargs" in cfg and cfg["resampling_fn_data_kwargs"] != IMAGE_RESAMPLING_KWARGS:
            changes.append(f"{name}: image resampling {cfg['resampling_fn_data_kwargs']} -> {IMAGE_RESAMPLING_KWARGS}")
            cfg["resampling_fn_data_kwargs"] = dict(IMAGE_RESAMPLING_KWARGS)
        if "normalization_schemes" in cfg:
            for c in mask_channels:
                if cfg["normalization_schemes"][c] != "NoNormalization" or cfg["use_mask_for_norm"][c]:
                    changes.append(f"{name}: channel {c} normalization {cfg['normalization_schemes'][c]} -> none")
                    cfg["normalization_schemes"][c] = "NoNormalization"
                    cfg["use_mask_for_norm"][c] = False
    if drop_nnunet_cascade:
        if "3d_cascade_fullres" in configs:
            del configs["3d_cascade_fullres"]
            changes.append("removed 3d_cascade_fullres (the package cascades across datasets)")
        if "3d_lowres" in configs and configs["3d_lowres"].pop("next_stage", None) is not None:
            changes.append("3d_lowres: removed next_stage")
    return changes


def scale_network_width(plans: dict, width: float) -> list[str]:
    """Multiply every configuration's U-Net feature counts by ``width`` (at least 4 features per stage).

    For CPU runs (the demo): a quarter-width network trains several times faster. It lives in the plans, so
    training and nnU-Net's predictor build the same network. Returns what was changed.
    """
    if not (width > 0 and math.isfinite(width)):
        raise KitsInputError(f"network width must be a positive number, got {width}")
    changes = []
    if width == 1.0:
        return changes
    for name, cfg in plans["configurations"].items():
        arch = cfg.get("architecture", {}).get("arch_kwargs")
        if arch and "features_per_stage" in arch:
            new = [max(4, int(round(f * width))) for f in arch["features_per_stage"]]
            if new != list(arch["features_per_stage"]):
                changes.append(f"{name}: features per stage {list(arch['features_per_stage'])} -> {new}")
                arch["features_per_stage"] = new
    return changes


def plan_coarse_configuration(
    dataset_id: int, plans: dict, coarse_spacing: Sequence[float], gpu_memory_target_gb: float | None = None
) -> dict:
    """A complete ``3d_lowres`` configuration at ``coarse_spacing`` (reader order), planned by nnU-Net.

    Uses nnU-Net's own ``ExperimentPlanner.get_plans_for_configuration`` (patch size, network topology and
    batch size for that spacing and the dataset's median shape), exactly as it plans 3d_lowres itself.
    """
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape
    from nnunetv2.utilities.json_export import recursive_fix_for_json_export

    kwargs = {} if gpu_memory_target_gb is None else {"gpu_memory_target_in_gb": gpu_memory_target_gb}
    planner = ExperimentPlanner(dataset_id, plans_name=plans["plans_name"], **kwargs)
    fp = planner.dataset_fingerprint
    tf = plans["transpose_forward"]
    spacing_t = np.array(transposed(coarse_spacing, tf))
    new_shapes = [compute_new_shape(s, sp, coarse_spacing) for sp, s in zip(fp["spacings"], fp["shapes_after_crop"])]
    median_t = np.median(new_shapes, 0)[tf]
    n_voxels = float(np.prod(median_t, dtype=np.float64) * planner.dataset_json["numTraining"])
    cfg = planner.get_plans_for_configuration(
        spacing_t, median_t, f"{plans['plans_name']}_3d_lowres", n_voxels, {}
    )
    cfg["batch_dice"] = False
    recursive_fix_for_json_export(cfg)
    return cfg


def plans_file(dataset_id: int, plans_name: str = PLANS_NAME) -> Path:
    """Path of the plans JSON of ``dataset_id``."""
    _, pre = _require_nnunet_paths()
    return pre / dataset_name(dataset_id) / f"{plans_name}.json"


def check_plans(plans: dict, target_spacing: Sequence[float], require_coarse: bool = False) -> list[str]:
    """Problems of a plans dict against the package's rules (empty list: all good)."""
    problems = []
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
    if require_coarse and "3d_lowres" not in configs:
        problems.append("no 3d_lowres configuration for the coarse stage")
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
    """Fingerprint and plan one dataset, then enforce the package's rules on its plans. Returns the plans path."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments

    target_spacing = _as_spacing(target_spacing, "target spacing")
    if not (network_width > 0 and math.isfinite(network_width)):
        raise KitsInputError(f"network width must be a positive number, got {network_width}")
    name = dataset_name(dataset_id)
    extract_fingerprints([dataset_id], num_processes=num_processes, clean=True, verbose=verbose,
                         show_progress_bar=verbose)
    path = plans_file(dataset_id, plans_name)
    # nnU-Net keeps configurations of an existing plans file that it did not plan itself (our 3d_lowres):
    # start from scratch so re-planning with other spacings or widths never compounds.
    path.unlink(missing_ok=True)
    with _planner_safe_environment():
        plan_experiments([dataset_id], "ExperimentPlanner", gpu_memory_target_in_gb=gpu_memory_target_gb,
                         overwrite_target_spacing=target_spacing, overwrite_plans_name=plans_name)
    plans = load_json(path)
    is_coarse = dataset_id == COARSE_DATASET_ID
    changes = enforce_plans(plans, target_spacing, MASK_CHANNELS.get(dataset_id, ()), drop_nnunet_cascade=is_coarse)
    if is_coarse and (coarse_spacing is not None or "3d_lowres" not in plans["configurations"]):
        spacing = coarse_spacing_for(target_spacing, coarse_spacing)
        why = "requested" if coarse_spacing is not None else "nnU-Net planned none (images small)"
        with _planner_safe_environment():
            cfg = plan_coarse_configuration(dataset_id, plans, spacing, gpu_memory_target_gb)
        plans["configurations"]["3d_lowres"] = cfg
        changes.append(f"3d_lowres at {spacing} mm ({why}), patch {cfg['patch_size']}")
        changes += enforce_plans(plans, target_spacing, MASK_CHANNELS.get(dataset_id, ()))
    changes += scale_network_width(plans, network_width)
    problems = check_plans(plans, target_spacing, require_coarse=is_coarse)
    if problems:  # cannot happen unless nnU-Net changes its plans format
        raise RuntimeError(f"{path}: plans do not satisfy the package's rules: {'; '.join(problems)}")
    if changes:
        save_json(plans, str(path), sort_keys=False)
    for c in changes:
        print(f"{name} {plans_name}: {c}")
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
        plans = load_json(path)
        wanted = list(configurations) if configurations else list(DEFAULT_CONFIGURATIONS.get(d, FALLBACK_CONFIGURATIONS))
        missing = [c for c in wanted if c not in plans["configurations"]]
        if missing:
            raise KitsInputError(f"{path}: configuration(s) {missing} not planned; available: "
                                 f"{sorted(plans['configurations'])}")
        for c in wanted:
            n_stages = len(_configuration_value(plans, c, "architecture")["arch_kwargs"]["strides"])
            if n_stages < 3:
                print(f"WARNING {dataset_name(d)} {c}: images are so small at this spacing that the network has only "
                      f"{n_stages} resolution stages; the package's trainers then disable deep supervision "
                      f"(nnU-Net's own trainer would train on a NaN loss). Use a finer spacing if you can.")
        nnunet_preprocess([d], plans_name, wanted, [num_processes] * len(wanted), verbose=verbose,
                          show_progress_bar=True)
        for c in wanted:
            spacings = check_preprocessed(d, c, plans_name)
            want = np.array(_configuration_spacing(plans, c), dtype=np.float64)
            worst = max((np.max(np.abs(s[-len(want):] - want) / want) for s in spacings.values()), default=0.0)
            print(f"{dataset_name(d)} {c}: {len(spacings)} cases at {[round(float(v), 5) for v in want]} mm "
                  f"(largest deviation from rounding to whole voxels {100 * worst:.2f}%)")
    return out


def _configuration_value(plans: dict, configuration: str, key: str):
    """A configuration's value for ``key``, following ``inherits_from`` as nnU-Net's PlansManager does."""
    cfg = plans["configurations"][configuration]
    while key not in cfg and "inherits_from" in cfg:
        cfg = {**plans["configurations"][cfg["inherits_from"]], **{k: v for k, v in cfg.items() if k != "inherits_from"}}
    return deepcopy(cfg[key])


def _configuration_spacing(plans: dict, configuration: str) -> list[float]:
    return list(_configuration_value(plans, configuration, "spacing"))
