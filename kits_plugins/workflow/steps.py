"""The command each rule runs: the ``kits`` / ``nnUNetv2_train`` command a user would type, as an argv list.

Only what the configuration fixes is here; a rule appends ``-np {threads}`` itself, so running with other
``--cores`` (threads are capped at the cores) does not change a command and make Snakemake redo the job.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

from kits_plugins.workflow import layout


def kits(*args: str) -> list[str]:
    """A ``kits`` command of this interpreter (the environment need not be on PATH)."""
    return [sys.executable, "-m", "kits_plugins.cli", *args]


def job(*args: str) -> list[str]:
    """A helper of the workflow's own steps (kits_plugins.workflow.jobs)."""
    return [sys.executable, "-m", "kits_plugins.workflow.jobs", *args]


def nnunet_command(name: str) -> str:
    """An nnU-Net console script of this interpreter's environment (the venv need not be on PATH)."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found next to {sys.executable} nor on PATH: is nnunetv2 installed?")
    return found


def _numbers(values: list) -> list[str]:
    return [str(v) for v in values]


def synth(config: Mapping, test: bool) -> list[str]:
    """Procedural phantoms: the test cases are numbered after the training cases, with seed + 10000."""
    s = config["synthetic"]
    out, cases = (config["test_dir"], s["test_cases"]) if test else (config["kits_dir"], s["train_cases"])
    argv = kits("synth", out, "--overwrite", "--cases", str(cases), "--seed", str(s["seed"] + (10_000 if test else 0)))
    if test:
        argv += ["--first-case", str(s["train_cases"])]
    argv += ["--shape", *_numbers(s["shape"]), "--spacing", *_numbers(s["spacing"])]
    return argv + ["--kits23-extent"] if s.get("kits23_extent") else argv


def convert(config: Mapping) -> list[str]:
    return kits("convert", config["kits_dir"], "--overwrite")


def derive_ground_truth(config: Mapping) -> list[str]:
    argv = kits("derive-stages", "--overwrite", "--margin-mm", str(config["derive"]["margin_mm"]),
                "--seed", str(config["derive"]["seed"]))
    argv += _derive_options(config["derive"], ("jitter_mm", "extend_share", "extend_max_mm"))
    stages = layout.ground_truth_stages(config)
    return argv if stages == layout.STAGES else argv + ["--stages", *stages]


def _derive_options(derive: Mapping, keys: tuple[str, ...]) -> list[str]:
    """``--key-name value`` of each set key; null (the schema's default) leaves derive-stages' own default."""
    argv: list[str] = []
    for key in keys:
        if derive.get(key) is not None:
            argv += ["--" + key.replace("_", "-"), str(derive[key])]
    return argv


def derive_from_predictions(config: Mapping) -> list[str]:
    """222's ROIs from 221's cross-validation predictions (223 is rebuilt from 222's afterwards); the extension,
    when set, applies to them too."""
    return kits("derive-stages", "--overwrite", "--from-predictions", layout.crossval_dir("221"), "--stages", "222",
                "--margin-mm", str(config["derive"]["margin_mm"]),
                *_derive_options(config["derive"], ("extend_share", "extend_max_mm")))


def derive_masks(config: Mapping) -> list[str]:
    """223 on 222's crops, its mask channel from 222's cross-validation predictions."""
    return kits("derive-stages", "--overwrite", "--masks-from", layout.crossval_dir("222"))


def plan(config: Mapping, stages: tuple[str, ...]) -> list[str]:
    p = config["plan"]
    argv = kits("plan", "-d", *stages)
    if p["target_spacing"] is not None:
        argv += ["--target-spacing", *_numbers(p["target_spacing"])]
    if p["coarse_spacing"] is not None:
        argv += ["--coarse-spacing", *_numbers(p["coarse_spacing"])]
    if p["network_width"] != 1:
        argv += ["--network-width", str(p["network_width"])]
    if p["gpu_memory_target"] is not None:
        argv += ["--gpu-memory-target", str(p["gpu_memory_target"])]
    return argv


def train(config: Mapping, stage: str, fold: str) -> list[str]:
    return [nnunet_command("nnUNetv2_train"), stage, layout.CONFIGURATIONS[stage], fold,
            "-tr", config["trainers"][stage], "-p", config["plans"], "-device", config["device"]]


def train_environment(config: Mapping, stage: str) -> dict[str, str]:
    """The schedule of the _short / _demo trainers (KITS_EPOCHS, KITS_ITERS); empty for production trainers."""
    env = {}
    if config["epochs"] is not None:
        env["KITS_EPOCHS"] = str(config["epochs"][stage])
    if config["iterations"] is not None:
        env["KITS_ITERS"] = str(config["iterations"])
    return env


def predict(config: Mapping, part: str) -> list[str]:
    t = config["trainers"]
    argv = kits("predict", "-i", config["test_dir"], "-o", layout.prediction_part(part, config["num_parts"]),
                "-f", *layout.fold_names(config), "-device", config["device"], "-p", config["plans"],
                "--coarse-trainer", t["221"], "--fine-trainer", t["222"], "--masses-trainer", t["223"],
                "-step_size", str(config["predict"]["step_size"]),
                "-num_parts", str(config["num_parts"]), "-part_id", str(part))
    return argv + (["--disable_tta"] if config["predict"]["disable_tta"] else [])


def evaluate(config: Mapping) -> list[str]:
    return kits("evaluate", layout.PREDICTIONS, config["test_dir"], "-o", layout.EVALUATION_CSV)
