"""Where every file of a workflow run lives, relative to its ``workdir``, and the environment of its jobs.

The Snakefile, the report and the tests take paths from here, so a file is named in one place. Step names (the
``benchmarks/<step>.tsv`` and ``logs/<step>.log`` stems) are the names ``summary.json`` lists.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from kits_plugins.constants import RAW_DATASET_ID, RAW_DATASET_NAME, STAGE_DATASET_NAMES

STAGES = ("221", "222", "223")
DATASETS = {str(RAW_DATASET_ID): RAW_DATASET_NAME, **{str(k): v for k, v in STAGE_DATASET_NAMES.items()}}
CONFIGURATIONS = {"221": "3d_lowres", "222": "3d_fullres", "223": "3d_fullres"}
CROSSVAL_STAGES = ("221", "222")  # gathered when training as you infer

RAW, PREPROCESSED, RESULTS = "nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"
PREDICTIONS = "predictions"
EVALUATION_CSV = "evaluation.csv"
EVALUATION_JSON = "evaluation.json"
SUMMARY = "summary.json"
REPORT = "report.txt"
FIGURES = "figures"


def raw_dataset_json(stage: str) -> str:
    """``dataset.json`` of a raw dataset (220, or a stage): what convert and derive-stages finish with."""
    return f"{RAW}/{DATASETS[stage]}/dataset.json"


def crops_json(stage: str) -> str:
    return f"{RAW}/{DATASETS[stage]}/crops.json"


def plans_json(stage: str, plans: str) -> str:
    """The plans ``kits plan`` writes for a stage (after which it preprocesses)."""
    return f"{PREPROCESSED}/{DATASETS[stage]}/{plans}.json"


def splits_json(stage: str) -> str:
    """The folds nnU-Net trains a stage with (``kits plan`` copies the raw dataset's)."""
    return f"{PREPROCESSED}/{DATASETS[stage]}/splits_final.json"


def fold_folder(config: Mapping, stage: str, fold: str | int) -> str:
    """nnU-Net's output folder of one fold: ``<trainer>__<plans>__<configuration>/fold_<fold>``."""
    model = f"{config['trainers'][stage]}__{config['plans']}__{CONFIGURATIONS[stage]}"
    return f"{RESULTS}/{DATASETS[stage]}/{model}/fold_{fold}"


def trained(stage: str, fold: str | int) -> str:
    """The record a training job writes when ``nnUNetv2_train`` has finished (checkpoint, command, inputs)."""
    return f"trained/{stage}/fold_{fold}.json"


def crossval_dir(stage: str) -> str:
    """A stage's cross-validation predictions (every fold's ``validation/``) gathered into one folder."""
    return f"crossval/{stage}"


def prediction_part(part: str | int, num_parts: int) -> str:
    """The folder ``kits predict -num_parts N -part_id K`` writes into."""
    return f"prediction_parts/part_{part}_of_{num_parts}"


def log(step: str) -> str:
    return f"logs/{step}.log"


def benchmark(step: str) -> str:
    """Snakemake's benchmark of a step: wall time (``s``) and peak RSS of the job's process tree (``max_rss``)."""
    return f"benchmarks/{step}.tsv"


def ground_truth_stages(config: Mapping) -> tuple[str, ...]:
    """Stages derived and planned from ground truth: all three for the short chain, 221 when training as you infer
    (222 and 223 are derived later from cross-validation predictions)."""
    return ("221",) if config["train_as_you_infer"] else STAGES


def fold_names(config: Mapping) -> list[str]:
    return [str(f) for f in config["folds"]]


def step_names(config: Mapping) -> list[str]:
    """Every job of a run, named as its benchmark and log, in pipeline order."""
    folds = fold_names(config)
    steps = ["synth_train", "synth_test"] if config["synthetic"] is not None else []
    steps += ["convert", "derive_stages", "plan"]
    if config["train_as_you_infer"]:
        steps += [f"train_221_{f}" for f in folds] + ["gather_cv_221", "derive_from_predictions", "plan_222"]
        steps += [f"train_222_{f}" for f in folds] + ["gather_cv_222", "derive_masks", "plan_223"]
        steps += [f"train_223_{f}" for f in folds]
    else:
        steps += [f"train_{s}_{f}" for s in STAGES for f in folds]
    n = config["num_parts"]
    steps += [f"predict_{k}_of_{n}" for k in range(n)] + ["merge_predictions", "evaluate"]
    return steps


def env_value(value: object) -> str:
    """A configuration value as an environment string (YAML booleans as ``true``/``false``)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def job_environment(config: Mapping, environ: Mapping[str, str]) -> dict[str, str]:
    """Variables to set for every job: nnU-Net's three folders under the workdir, the trainer shim first in
    ``nnUNet_extTrainer`` (the user's folders kept), this interpreter's ``bin`` first on PATH (so
    ``nnUNetv2_train`` is this environment's), unbuffered Python output for the logs, and the configuration's
    ``env`` where the environment does not set the variable already."""
    from kits_plugins.training.commands import ext_trainer_paths

    w = Path(config["workdir"])
    env = {k: env_value(v) for k, v in config["env"].items() if k not in environ}
    bin_dir = str(Path(sys.executable).parent)
    path = environ.get("PATH", "")
    env.update(
        nnUNet_raw=str(w / RAW),
        nnUNet_preprocessed=str(w / PREPROCESSED),
        nnUNet_results=str(w / RESULTS),
        nnUNet_extTrainer=ext_trainer_paths(environ.get("nnUNet_extTrainer")),
        PATH=path if path.split(os.pathsep)[0] == bin_dir else os.pathsep.join(p for p in (bin_dir, path) if p),
        PYTHONUNBUFFERED="1",
    )
    return env
