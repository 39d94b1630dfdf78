"""Does the cascade beat plain nnU-Net? Stock nnU-Net vs the cascade vs the cascade without its surface loss, at equal
training compute, on CT phantoms made from real KiTS23 label maps.

    python benchmarks/accuracy_study.py --labels ../shared/kits23/labels --out benchmarks/results/accuracy_study.json
        [--workdir accuracy_study_work] [--split-seed 0] [--budget VOXEL_PASSES] [--quick]
        [--test-labels DIR [--reuse-models]] [--figure PNG]

Systems (each trained on the same training phantoms and evaluated on the same test phantoms):

- ``stock``: nnU-Net 3d_fullres on the whole CT with nnU-Net's KiTS23 regions (Dataset220), trained by
  ``nnUNetTrainerStock_demo`` (nnU-Net's ``nnUNetTrainer``, only the schedule set), predicted by
  ``nnUNetv2_predict``, no postprocessing (``find_best_configuration`` is not run: it needs cross-validation);
- ``cascade``: stages 221/222/223 with the package's trainers (surface loss on 223), ``kits predict`` (with its
  postprocessing);
- ``cascade_no_surface``: the same stages 221 and 222 (the same trained networks) and 223 trained with plain region
  Dice+BCE (``nnUNetTrainerKiTSMasses_demo``): the surface-loss ablation;
- ``cascade_tayi``: the cascade trained as it infers, through the workflow's cross-validated chain in its own
  nnU-Net root (``WORKDIR/tayi``): 221 in five folds, its cross-validation predictions give 222's ROIs (``kits
  derive-stages --from-predictions``), 222 in five folds, its cross-validation predictions give 223's mask channel
  (``--masks-from``), 223 in fold ``all`` (nothing after it needs its cross-validation; five folds would give each a
  fifth of its budget). At equal compute each fold gets a fifth of its stage's budget; ``kits predict`` ensembles
  the five folds of 221 and 222. ``--quick`` leaves it out unless ``--systems`` names it (then with 5 training
  cases and a budget of 1e7).

Data: the label maps are split (seeded, stratified by cysts and slice thickness) into training and test cases;
each map is resampled to the study spacing with nnU-Net's segmentation resampling and a CT is rendered on that grid
(``kits synth --from-labels --label-spacing``), so every system trains and is evaluated at the study spacing, where
no network resamples. Equal compute: every system gets the same number of network voxel-passes (iterations x batch x
patch voxels, summed over its networks; ``kits_plugins.training.budget``); the cascade splits its budget over its
stages (``STAGE_SHARES``). All networks are planned by the same planner rule (``kits plan``: nnU-Net's planner at
the study spacing, feature widths x ``NETWORK_WIDTH``). No test-time mirroring anywhere.

Every step writes a marker under ``WORKDIR/steps`` when done, so a rerun continues where a run stopped (a killed
training continues its checkpoint). Metrics are ``kits evaluate``'s; the JSON (``settings``, ``systems``,
``comparisons``) and the figure are written at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from kits_plugins.evaluation.comparison import DEFAULT_BOOTSTRAP_SAMPLES, compare_paired  # noqa: E402
from kits_plugins.evaluation.metrics import METRIC_COLUMNS  # noqa: E402
from kits_plugins.training.budget import Schedule, patch_voxel_passes, split_budget  # noqa: E402

SYSTEMS = ("stock", "cascade", "cascade_no_surface", "cascade_tayi")
QUICK_SYSTEMS = SYSTEMS[:3]
COMPARISONS = (("cascade", "stock"), ("cascade_no_surface", "stock"), ("cascade", "cascade_no_surface"),
               ("cascade_tayi", "stock"), ("cascade_tayi", "cascade"))
PLANS = "kitsPlans"
NETWORK_WIDTH = 0.25
TAYI = "tayi"  # the cross-validated chain's nnU-Net root, under the workdir
CV_FOLDS: tuple[int | str, ...] = (0, 1, 2, 3, 4)


@dataclass(frozen=True)
class Network:
    """One trained network of a system: an nnU-Net dataset, configuration and trainer, in the nnU-Net root
    ``WORKDIR/root`` (the workdir itself when empty), trained in ``folds``."""

    dataset: str
    configuration: str
    trainer: str
    root: str = ""
    folds: tuple[int | str, ...] = ("all",)


NETWORKS = {
    "stock": Network("220", "3d_fullres", "nnUNetTrainerStock_demo"),
    "coarse": Network("221", "3d_lowres", "nnUNetTrainerKiTSCoarse_demo"),
    "fine": Network("222", "3d_fullres", "nnUNetTrainerKiTSFine_demo"),
    "surface": Network("223", "3d_fullres", "nnUNetTrainerKiTSSurface_demo"),
    "masses": Network("223", "3d_fullres", "nnUNetTrainerKiTSMasses_demo"),
    "tayi_coarse": Network("221", "3d_lowres", "nnUNetTrainerKiTSCoarse_demo", TAYI, CV_FOLDS),
    "tayi_fine": Network("222", "3d_fullres", "nnUNetTrainerKiTSFine_demo", TAYI, CV_FOLDS),
    "tayi_surface": Network("223", "3d_fullres", "nnUNetTrainerKiTSSurface_demo", TAYI),
}
#: trained from the first plans (one nnU-Net root); the chain's networks are planned one after the other
FIRST_NETWORKS = ("stock", "coarse", "fine", "surface", "masses")
SYSTEM_NETWORKS = {"stock": ("stock",), "cascade": ("coarse", "fine", "surface"),
                   "cascade_no_surface": ("coarse", "fine", "masses"),
                   "cascade_tayi": ("tayi_coarse", "tayi_fine", "tayi_surface")}
# Of a cascade's budget. The first default run gave 20/40/40: 221 stopped at 175 iterations with its validation
# pseudo-Dice still rising (0.30), so its ROIs covered half of each CT, while 222 passed 0.83 within 92 iterations
# and 223 began to mark masses only after 370-460 (benchmarks/results/accuracy_study.json, training logs).
STAGE_SHARES = {"coarse": 0.45, "fine": 0.15, "surface": 0.4, "masses": 0.4}
STAGE_SHARES.update({f"tayi_{n}": STAGE_SHARES[n] for n in ("coarse", "fine", "surface")})
DATASET_FOLDERS = {"220": "Dataset220_KiTS2023", "221": "Dataset221_KiTS2023Coarse",
                   "222": "Dataset222_KiTS2023Kidney", "223": "Dataset223_KiTS2023Masses"}

# 3 mm for every full-resolution network and 2.5 x that for the coarse stage (the package's production ratio); on 2
# CPU cores the default budget trains the three systems (five networks) in about an hour. nnU-Net's planner sizes
# patches for 3 GB instead of its 8 (a smaller patch: more iterations for the same voxel-passes), the same for all.
DEFAULTS = {"spacing": [3.0, 3.0, 3.0], "coarse_spacing": [7.5, 7.5, 7.5], "gpu_memory_target_gb": 3.0,
            "test_fraction": 0.3, "budget": 3.5e8, "val_iterations": 2, "phantom_seed": 0, "bootstrap_seed": 0}
QUICK = {"spacing": [6.0, 6.0, 6.0], "coarse_spacing": [12.0, 12.0, 12.0], "train_cases": 2, "test_cases": 1,
         "budget": 4.0e6, "chain_train_cases": 5, "chain_budget": 1.0e7}
# with cascade_tayi: five folds need five training cases, and each fold at least one iteration of its network (at
# 4e6 the 222 folds' single iterations overspend the quick budget by 4%; at 2e7 a run's 221 folds, 37 iterations
# each, marked no kidney in any training case, so 222 had nothing to train on)
THICK_SLICE_MM = 2.5  # stratum boundary: thin (< 2.5 mm) and thick slices


# ------------------------------------------------------------------------------------------------ small helpers
def progress(step: int, total: int, text: str) -> None:
    print(f"[accuracy_study {step}/{total}] {text}", flush=True)


def kits(*args: str) -> list[str]:
    return [sys.executable, "-m", "kits_plugins.cli", *args]


def nnunet(name: str) -> str:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def run(argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
    """Run a command, its output appended to ``log``; a failure stops the study naming the log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"$ {shlex.join(argv)}\n")
        f.flush()
        rc = subprocess.call(list(argv), stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    if rc != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise SystemExit(f"accuracy_study: {shlex.join(argv[:4])} ... failed (exit {rc}); log {log}:\n{tail}")


def run_parallel(jobs: Sequence[tuple[Sequence[str], Path]], env: dict[str, str] | None = None) -> None:
    """Independent commands at the same time (each with its own log), e.g. planning datasets: nnU-Net's planner
    is mostly one Python thread."""
    procs = []
    for argv, log in jobs:
        log.parent.mkdir(parents=True, exist_ok=True)
        f = open(log, "a")
        f.write(f"$ {shlex.join(argv)}\n")
        f.flush()
        procs.append((argv, log, f, subprocess.Popen(list(argv), stdout=f, stderr=subprocess.STDOUT,
                                                     env={**os.environ, **(env or {})})))
    failed = []
    for argv, log, f, proc in procs:
        rc = proc.wait()
        f.close()
        if rc != 0:
            failed.append(f"{shlex.join(argv[:6])} ... (exit {rc}; log {log})")
    if failed:
        raise SystemExit("accuracy_study: failed: " + "; ".join(failed))


class Steps:
    """Markers of finished steps (``WORKDIR/steps/NAME.json``: wall time and commands), so reruns resume."""

    def __init__(self, workdir: Path, total: int):
        self.dir = workdir / "steps"
        self.total, self.count = total, 0

    def done(self, name: str) -> dict | None:
        p = self.dir / f"{name}.json"
        return json.loads(p.read_text()) if p.exists() else None

    def run(self, name: str, text: str, body) -> dict:
        """Run ``body()`` (returns a dict to record) unless the step has a marker; returns the marker."""
        self.count += 1
        marker = self.done(name)
        if marker is not None:
            progress(self.count, self.total, f"{text}: done earlier ({marker['wall_s']:.0f} s)")
            return marker
        progress(self.count, self.total, f"{text} ...")
        t0 = time.perf_counter()
        record = body() or {}
        record["wall_s"] = time.perf_counter() - t0
        write_json(self.dir / f"{name}.json", record)
        progress(self.count, self.total, f"{text}: {record['wall_s']:.0f} s")
        return record


# ------------------------------------------------------------------------------------------------ data
def label_cases(label_dir: Path) -> dict[str, Path]:
    from kits_plugins.synthetic.writer import label_files

    return {p.name[: -len(".nii.gz")]: p.resolve() for p in label_files(label_dir)}


def case_strata(cases: dict[str, Path]) -> dict[str, dict]:
    """Per case: has a cyst, thick slices (largest spacing >= THICK_SLICE_MM), voxel count (headers + labels)."""
    from kits_plugins.utilities.image_io import read_label

    out = {}
    for case, path in sorted(cases.items()):
        label, geometry = read_label(path)
        out[case] = {"cyst": bool((label == 3).any()), "thick": max(geometry.spacing) >= THICK_SLICE_MM,
                     "voxels": int(label.size)}
    return out


def stratified_split(strata: dict[str, dict], test_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split with both sides holding cases with and without cysts and with thin and thick slices: each
    stratum (cyst x thick) gives round(test_fraction x size) test cases (at least 1 of a stratum of 2 or more),
    chosen by a seeded permutation."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for key in sorted({(s["cyst"], s["thick"]) for s in strata.values()}):
        members = sorted(c for c, s in strata.items() if (s["cyst"], s["thick"]) == key)
        order = [members[i] for i in rng.permutation(len(members))]
        n_test = round(test_fraction * len(members))
        if len(members) >= 2:
            n_test = min(max(n_test, 1), len(members) - 1)
        test += order[:n_test]
        train += order[n_test:]
    return sorted(train), sorted(test)


def link_labels(cases: dict[str, Path], names: Sequence[str], folder: Path) -> Path:
    """A folder of links to the chosen label maps (``kits synth --from-labels`` takes a folder)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for c in names:
        (folder / f"{c}.nii.gz").symlink_to(cases[c])
    return folder


def make_phantoms(labels: Path, out: Path, spacing: Sequence[float], seed: int, log: Path) -> None:
    if out.exists():  # a half-made folder from a killed run: kits synth replaces cases, start clean anyway
        shutil.rmtree(out)
    run(kits("synth", str(out), "--from-labels", str(labels), "--label-spacing", *map(str, spacing),
             "--seed", str(seed), "--quiet"), log)


def nnunet_images(phantoms: Path, folder: Path) -> Path:
    """``case_XXXXX_0000.nii.gz`` links to the phantoms' CTs, the input layout ``nnUNetv2_predict`` reads."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for case in sorted(p for p in phantoms.iterdir() if p.is_dir()):
        (folder / f"{case.name}_0000.nii.gz").symlink_to((case / "imaging.nii.gz").resolve())
    return folder


# ------------------------------------------------------------------------------------------------ models
def nnunet_env(workdir: Path) -> dict[str, str]:
    from kits_plugins.training.commands import ext_trainer_paths

    env = {"nnUNet_raw": str(workdir / "nnUNet_raw"), "nnUNet_preprocessed": str(workdir / "nnUNet_preprocessed"),
           "nnUNet_results": str(workdir / "nnUNet_results"),
           "nnUNet_extTrainer": ext_trainer_paths(os.environ.get("nnUNet_extTrainer")),
           "PYTHONUNBUFFERED": "1"}
    for key, value in (("nnUNet_def_n_proc", "2"), ("nnUNet_n_proc_DA", "2"), ("nnUNet_compile", "false")):
        env[key] = os.environ.get(key, value)
    return env


def fold_dir(workdir: Path, network: str, fold: int | str = "all") -> Path:
    n = NETWORKS[network]
    return (workdir / n.root / "nnUNet_results" / DATASET_FOLDERS[n.dataset] / f"{n.trainer}__{PLANS}__{n.configuration}"
            / f"fold_{fold}")


def iteration_cost(workdir: Path, network: str) -> dict:
    """Batch size, patch size and voxel-passes per iteration of a network, from its plans."""
    n = NETWORKS[network]
    plans = json.loads((workdir / n.root / "nnUNet_preprocessed" / DATASET_FOLDERS[n.dataset] / f"{PLANS}.json")
                       .read_text())
    c = plans["configurations"][n.configuration]
    return {"batch_size": c["batch_size"], "patch_size": c["patch_size"], "spacing": c["spacing"],
            "features_per_stage": c["architecture"]["arch_kwargs"]["features_per_stage"],
            "voxel_passes_per_iteration": patch_voxel_passes(c["batch_size"], c["patch_size"])}


def iteration_costs(workdir: Path) -> dict[str, dict]:
    """``iteration_cost`` of every network of the first plans."""
    return {network: iteration_cost(workdir, network) for network in FIRST_NETWORKS}


def schedules(budget: float, costs: dict[str, dict]) -> dict[str, Schedule]:
    """The stock network spends the budget, rounded to its whole iterations (its iterations are the largest); each
    cascade spends what stock spends over its three networks (rounding carried to its last network)."""
    stock = split_budget(budget, [1.0], [costs["stock"]["voxel_passes_per_iteration"]])[0]
    spent = stock.iterations * costs["stock"]["voxel_passes_per_iteration"]
    out = {"stock": stock}
    for system in ("cascade", "cascade_no_surface"):
        nets = SYSTEM_NETWORKS[system]
        for net, s in zip(nets, split_budget(spent, [STAGE_SHARES[n] for n in nets],
                                             [costs[n]["voxel_passes_per_iteration"] for n in nets])):
            if net in out and out[net] != s:
                raise RuntimeError(f"{net}: the two cascades would train it differently ({out[net]} vs {s})")
            out[net] = s
    return out


def trained_voxel_passes(workdir: Path, network: str) -> dict:
    """What a finished training actually ran, from nnU-Net's ``debug.json`` (the trainer's attributes) and the
    fold's plans: epochs, iterations per epoch, batch and patch size, voxel-passes (summed over the folds)."""
    n = NETWORKS[network]
    runs = []
    for fold in n.folds:
        d = fold_dir(workdir, network, fold)
        debug = json.loads((d / "debug.json").read_text())
        patch = json.loads((d.parent / "plans.json").read_text())["configurations"][n.configuration]["patch_size"]
        runs.append((int(debug["num_epochs"]), int(debug["num_iterations_per_epoch"]), int(debug["batch_size"]),
                     patch))
    if any(r != runs[0] for r in runs):
        raise SystemExit(f"accuracy_study: {network}: the folds trained different schedules {runs}")
    epochs, iterations, batch, patch = runs[0]
    return {"folds": list(n.folds), "epochs": epochs, "iterations_per_epoch": iterations, "batch_size": batch,
            "patch_size": patch, "voxel_passes": len(runs) * epochs * iterations * patch_voxel_passes(batch, patch)}


def training_curve(workdir: Path, network: str, fold: int | str | None = None) -> dict:
    """nnU-Net's validation pseudo-Dice of a finished training, per epoch (mean over regions) and per region at the
    last epoch, from ``checkpoint_final.pth``'s log (read with the package's safe loader); of ``fold``, by default
    the network's first. With fold ``all`` it is measured on patches of the training cases: it shows whether a
    network learned, not how it generalises."""
    from kits_plugins.inference.checkpoints import load_checkpoint

    fold = NETWORKS[network].folds[0] if fold is None else fold
    log = load_checkpoint(fold_dir(workdir, network, fold) / "checkpoint_final.pth")["logging"]
    return {"pseudo_dice_per_epoch": [round(float(v), 4) for v in log["mean_fg_dice"]],
            "pseudo_dice_last_epoch": [round(float(v), 4) for v in log["dice_per_class_or_region"][-1]]}


def train(workdir: Path, network: str, schedule: Schedule, val_iterations: int, fold: int | str = "all") -> dict:
    n = NETWORKS[network]
    argv = [nnunet("nnUNetv2_train"), n.dataset, n.configuration, str(fold), "-tr", n.trainer, "-p", PLANS,
            "-device", "cpu"]
    if (fold_dir(workdir, network, fold) / "checkpoint_best.pth").exists() or \
            (fold_dir(workdir, network, fold) / "checkpoint_latest.pth").exists():
        argv.append("--c")  # a killed run: continue its checkpoint
    env = {**nnunet_env(workdir / n.root), "KITS_EPOCHS": str(schedule.epochs),
           "KITS_ITERS": str(schedule.iterations_per_epoch), "KITS_VAL_ITERS": str(val_iterations)}
    suffix = "" if fold == "all" else f"_fold{fold}"
    run(argv, workdir / "logs" / f"train_{network}{suffix}.log", env)
    return {"command": shlex.join(argv), "schedule": {"epochs": schedule.epochs,
                                                      "iterations_per_epoch": schedule.iterations_per_epoch}}


# ------------------------------------------------------------------------------------------------ train as you infer
def fold_budget(system_budget: float, network: str, iteration_cost: int) -> Schedule:
    """One fold's schedule of a chain network: its stage's share of the system's budget, split evenly over its
    folds (each fold trains the same schedule)."""
    n = NETWORKS[network]
    return split_budget(system_budget * STAGE_SHARES[network] / len(n.folds), [1.0], [iteration_cost])[0]


def last_budget(system_budget: float, spent: float, network: str, iteration_cost: int) -> Schedule:
    """The chain's last network spends what the others left of the system's budget (rounding carried to it, as
    ``split_budget`` does for the other cascades)."""
    left = system_budget - spent
    if left <= 0:
        raise SystemExit(f"accuracy_study: {network}: the chain's earlier stages spent the whole budget ({spent:.3g} "
                         f"of {system_budget:.3g} voxel-passes): raise --budget")
    return split_budget(left / len(NETWORKS[network].folds), [1.0], [iteration_cost])[0]


def start_chain(workdir: Path) -> dict:
    """The chain's nnU-Net root: Dataset220 and 221 linked from the first root (221 is derived from the ground
    truth in both), 221's preprocessed data copied (nnU-Net writes beside it)."""
    t = workdir / TAYI
    shutil.rmtree(t, ignore_errors=True)
    (t / "nnUNet_raw").mkdir(parents=True)
    (t / "nnUNet_preprocessed").mkdir()
    for d in ("220", "221"):
        (t / "nnUNet_raw" / DATASET_FOLDERS[d]).symlink_to(workdir / "nnUNet_raw" / DATASET_FOLDERS[d])
    shutil.copytree(workdir / "nnUNet_preprocessed" / DATASET_FOLDERS["221"],
                    t / "nnUNet_preprocessed" / DATASET_FOLDERS["221"])
    return {}


def chain_step(workdir: Path, network: str, derive: Sequence[str], dataset: str, plan_args: Sequence[str]) -> dict:
    """The workflow's rules between two stages (``gather_cv_*``, then ``derive_from_predictions`` + ``plan_222`` or
    ``derive_masks`` + ``plan_223``): gather ``network``'s cross-validation predictions, derive ``dataset`` from
    them, plan it. 221's predictions give 222 a training case only where they mark a kidney; with fewer such cases
    than folds the chain cannot go on, and the returned record says why (``stopped``) instead."""
    from kits_plugins.utilities.image_io import read_label
    from kits_plugins.workflow.collect import gather_crossval

    n, t = NETWORKS[network], workdir / NETWORKS[network].root
    crossval = t / "crossval" / n.dataset
    cases = gather_crossval([fold_dir(workdir, network, f) for f in n.folds],
                            t / "nnUNet_preprocessed" / DATASET_FOLDERS[n.dataset] / "splits_final.json", crossval)
    record: dict = {"crossval_predictions": cases}
    if "--from-predictions" in derive:  # the largest marked component of a case always gets an ROI
        record["cases_with_roi"] = sum(bool(read_label(p)[0].any()) for p in sorted(crossval.iterdir()))
        if record["cases_with_roi"] < len(CV_FOLDS):
            record["stopped"] = (f"{network}'s cross-validation predictions mark a kidney in {record['cases_with_roi']} "
                                 f"of {cases} training cases; {dataset}'s five folds need at least five")
            return record
    log, env = workdir / "logs" / f"tayi_{dataset}.log", nnunet_env(t)
    run(kits("derive-stages", "--overwrite", *derive, str(crossval), "-np", "2"), log, env)
    run(kits("plan", "-d", dataset, *plan_args), log, env)
    return record


def fold_curves(workdir: Path, network: str) -> dict:
    """Every fold's validation pseudo-Dice per epoch (``training_curve`` of each fold)."""
    return {str(f): training_curve(workdir, network, f)["pseudo_dice_per_epoch"] for f in NETWORKS[network].folds}


def predict(workdir: Path, system: str, phantoms: Path, out: Path) -> dict:
    """``nnUNetv2_predict`` (stock) or ``kits predict`` (the cascades: fold ``all``; the chain's every fold it
    holds, ``kits predict``'s default: five of 221 and 222, ``all`` of 223)."""
    if out.exists():
        shutil.rmtree(out)
    nets = [NETWORKS[n] for n in SYSTEM_NETWORKS[system]]
    env = nnunet_env(workdir / nets[0].root)
    log = workdir / "logs" / f"predict_{system}_{out.parent.parent.name}.log"
    if system == "stock":
        images = nnunet_images(phantoms, out.parent / "imagesTs")
        argv = [nnunet("nnUNetv2_predict"), "-i", str(images), "-o", str(out), "-d", "220", "-c", "3d_fullres",
                "-f", "all", "-tr", nets[0].trainer, "-p", PLANS, "-device", "cpu", "--disable_tta",
                "-npp", "1", "-nps", "1"]
    else:
        folds = ["-f", "all"] if all(n.folds == ("all",) for n in nets) else []
        argv = kits("predict", "-i", str(phantoms), "-o", str(out), *folds, "-p", PLANS, "-device", "cpu",
                    "--coarse-trainer", nets[0].trainer, "--fine-trainer", nets[1].trainer,
                    "--masses-trainer", nets[2].trainer, "--disable_tta")
    run(argv, log, env)
    return {"command": shlex.join(argv)}


def evaluate(predictions: Path, phantoms: Path, csv: Path, log: Path) -> dict[str, dict[str, float]]:
    """``kits evaluate``'s per-case rows (caseID -> the six challenge metrics)."""
    run(kits("evaluate", str(predictions), str(phantoms), "-o", str(csv), "--quiet"), log)
    rows = json.loads(csv.with_suffix(".json").read_text())["cases"]
    return {r["caseID"]: {m: float(r[m]) for m in METRIC_COLUMNS} for r in rows}


# ------------------------------------------------------------------------------------------------ results
def summarise(per_case: dict[str, dict[str, dict[str, float]]], seed: int) -> tuple[dict, list[dict]]:
    means = {s: {m: float(np.nanmean([row[m] for row in rows.values()])) for m in METRIC_COLUMNS}
             for s, rows in per_case.items()}
    comparisons = []
    for a, b in (c for c in COMPARISONS if set(c) <= set(per_case)):
        for m in METRIC_COLUMNS:
            r = compare_paired({c: v[m] for c, v in per_case[a].items()}, {c: v[m] for c, v in per_case[b].items()},
                               seed=seed)
            comparisons.append({"a": a, "b": b, "metric": m, "n": r.n, "mean_diff": r.mean_diff,
                                "ci95": list(r.ci95), "p_wilcoxon": r.p_wilcoxon})
    return means, comparisons


def figure(per_case: dict, predictions: dict[str, Path], phantoms: Path, out: Path) -> str | None:
    """Per-case Dice and Surface Dice per HEC and system, and one axial slice per system of the test case where
    the systems differ most (largest spread of kidney+masses Dice)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kits_plugins.utilities.image_io import read_image, read_label
    from kits_plugins.utilities.orientation import Reorientation

    systems = list(per_case)
    cases = sorted(per_case[systems[0]])
    spread = {c: np.ptp([per_case[s][c]["Dice_kidney"] for s in systems]) for c in cases}
    worst = max(cases, key=lambda c: spread[c])
    fig = plt.figure(figsize=(4 * max(3, len(systems) + 1), 8))
    grid = fig.add_gridspec(2, max(6, 2 * (len(systems) + 1)))
    colors = {"stock": "tab:gray", "cascade": "tab:blue", "cascade_no_surface": "tab:orange",
              "cascade_tayi": "tab:purple"}
    for i, m in enumerate(METRIC_COLUMNS):
        ax = fig.add_subplot(grid[0, i])
        for k, s in enumerate(systems):
            values = [per_case[s][c][m] for c in cases]
            jitter = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else [0.0]
            ax.scatter(k + np.asarray(jitter), values, s=14, color=colors.get(s, "k"))
            ax.hlines(np.nanmean(values), k - 0.3, k + 0.3, color="k")
        ax.set_xticks(range(len(systems)), systems, rotation=30, ha="right", fontsize=7)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(m, fontsize=9)
    ct, geometry = read_image(phantoms / worst / "imaging.nii.gz")
    r = Reorientation.from_geometry(geometry)
    def radiological(a: np.ndarray) -> np.ndarray:  # nnU-Net order (RAS after reorientation): anterior up,
        return r.to_nnunet(np.asarray(a))[:, ::-1, ::-1]  # the patient's right on the left of the picture

    ct_nn = radiological(ct)
    ref_nn = radiological(read_label(phantoms / worst / "segmentation.nii.gz")[0])
    z = int(np.argmax((ref_nn > 0).sum(axis=(1, 2))))
    panels = [("reference", ref_nn)] + [(s, radiological(read_label(predictions[s] / f"{worst}.nii.gz")[0]))
                                        for s in systems]
    cmap = matplotlib.colors.ListedColormap(["none", "tab:green", "tab:red", "tab:cyan"])
    width = grid.ncols // len(panels)
    for k, (name, lab) in enumerate(panels):
        ax = fig.add_subplot(grid[1, k * width:(k + 1) * width])
        ax.imshow(np.clip(ct_nn[z], -200, 300), cmap="gray")
        ax.imshow(np.ma.masked_equal(lab[z], 0), cmap=cmap, vmin=0, vmax=3, alpha=0.5, interpolation="nearest")
        title = name if name == "reference" else f"{name}: kidney Dice {per_case[name][worst]['Dice_kidney']:.3f}"
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.suptitle(f"per-case challenge metrics ({len(cases)} test cases); slice {z} of {worst} "
                 "(green kidney, red tumor, cyan cyst)", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, out)
    return worst


# ------------------------------------------------------------------------------------------------ the study
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labels", type=Path, required=True, help="folder of KiTS23 label maps case_XXXXX.nii.gz")
    p.add_argument("--test-labels", type=Path, help="evaluate on phantoms from these label maps instead of a split "
                   "(all of --labels trains, unless --reuse-models)")
    p.add_argument("--reuse-models", action="store_true",
                   help="with --test-labels: predict with the models WORKDIR already holds, no training")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--budget", type=float, help=f"training voxel-passes per system (default {DEFAULTS['budget']:.3g}; "
                   f"--quick {QUICK['budget']:.3g}, with cascade_tayi {QUICK['chain_budget']:.3g})")
    p.add_argument("--quick", action="store_true", help="2 training cases (5 with cascade_tayi), 1 test case, coarse "
                   "spacing, tiny budget: checks the plumbing in minutes")
    p.add_argument("--systems", nargs="+", choices=SYSTEMS, help="train and evaluate only these (default: all; "
                   f"--quick: {' '.join(QUICK_SYSTEMS)}); a rerun in the same workdir adds systems to those trained")
    p.add_argument("--workdir", type=Path, default=Path("accuracy_study_work"))
    p.add_argument("--out", type=Path, required=True, help="JSON to write")
    p.add_argument("--figure", type=Path, help="PNG to write (default: --out with .png)")
    args = p.parse_args(argv)
    if args.reuse_models and args.test_labels is None:
        p.error("--reuse-models needs --test-labels (the split's own test cases are predicted in the first run)")
    return args


def plan_args(settings: dict) -> list[str]:
    """``kits plan``'s options of every network: the study spacing, the coarse spacing, width and memory target."""
    return ["--target-spacing", *map(str, settings["spacing_mm"]), "--coarse-spacing",
            *map(str, settings["coarse_spacing_mm"]), "--network-width", str(NETWORK_WIDTH),
            "--gpu-memory-target", str(settings["gpu_memory_target_gb"]), "-np", "2"]


def chosen_systems(args: argparse.Namespace) -> list[str]:
    default = QUICK_SYSTEMS if args.quick else SYSTEMS
    return [s for s in SYSTEMS if s in (args.systems or default)]


def study_settings(args: argparse.Namespace, cases: dict[str, Path]) -> dict:
    """What the trained models depend on (a workdir holds one study: a rerun must not mix settings)."""
    quick = args.quick
    chain = "cascade_tayi" in chosen_systems(args)
    chain_cases = {"train_cases": QUICK["chain_train_cases"] if chain else QUICK["train_cases"]} if quick else {}
    quick_budget = QUICK["chain_budget"] if chain else QUICK["budget"]
    return {
        "labels": str(args.labels.resolve()),
        "quick": quick,
        **chain_cases,
        "spacing_mm": QUICK["spacing"] if quick else DEFAULTS["spacing"],
        "coarse_spacing_mm": QUICK["coarse_spacing"] if quick else DEFAULTS["coarse_spacing"],
        "budget_voxel_passes": float(args.budget or (quick_budget if quick else DEFAULTS["budget"])),
        "stage_shares": {n: STAGE_SHARES[n] for n in ("coarse", "fine", "surface")},
        "network_width": NETWORK_WIDTH,
        "gpu_memory_target_gb": DEFAULTS["gpu_memory_target_gb"],
        "val_iterations_per_epoch": DEFAULTS["val_iterations"],
        "split_seed": args.split_seed,
        "phantom_seed": DEFAULTS["phantom_seed"],
        "test_fraction": DEFAULTS["test_fraction"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    w = args.workdir.resolve()
    w.mkdir(parents=True, exist_ok=True)
    cases = label_cases(args.labels)
    settings = study_settings(args, cases)
    settings_file = w / "study_settings.json"
    if settings_file.exists():
        old = json.loads(settings_file.read_text())
        if old != settings:
            changed = sorted(k for k in settings.keys() | old.keys() if old.get(k) != settings.get(k))
            raise SystemExit(f"accuracy_study: {w} holds a study with other settings ({', '.join(changed)}); use "
                             "another --workdir")
    elif args.reuse_models:
        raise SystemExit(f"accuracy_study: --reuse-models: {w} holds no trained study (no study_settings.json)")
    elif any(w.iterdir()):  # the study replaces nnUNet_raw/ and other folders in its workdir: never someone else's
        raise SystemExit(f"accuracy_study: {w}: not empty and not a study's workdir (no study_settings.json); use "
                         "another --workdir")
    write_json(settings_file, settings)
    spacing, budget = settings["spacing_mm"], settings["budget_voxel_passes"]

    train_only = not args.reuse_models
    systems = chosen_systems(args)
    needed = {n for s in systems for n in SYSTEM_NETWORKS[s]}
    chain = "cascade_tayi" in systems
    # split, phantoms, prepare, budget, trainings; the chain: its root, 3 budgets, 2 derivations, 11 trainings
    chain_steps = 6 + sum(len(NETWORKS[n].folds) for n in SYSTEM_NETWORKS["cascade_tayi"])
    n_train = 4 + len(needed & set(FIRST_NETWORKS)) + (chain_steps if chain else 0)
    steps = Steps(w, total=(n_train if train_only else 0) + 1 + 2 * len(systems))
    env = nnunet_env(w)

    # 1. split (stratified, seeded); --test-labels: all of --labels trains
    split = steps.done("split")
    if train_only:
        def do_split() -> dict:
            strata = case_strata(cases)
            if args.test_labels is not None:
                train_cases, test_cases = sorted(cases), []
            else:
                train_cases, test_cases = stratified_split(strata, settings["test_fraction"], args.split_seed)
            if args.quick:  # the smallest cases of each side
                train_cases = sorted(train_cases, key=lambda c: (strata[c]["voxels"], c))[: settings["train_cases"]]
                test_cases = sorted(test_cases, key=lambda c: (strata[c]["voxels"], c))[: QUICK["test_cases"]]
            return {"train": sorted(train_cases), "test": sorted(test_cases), "strata": strata}
        split = steps.run("split", "split the label maps", do_split)
    assert split is not None
    test_name = "split" if args.test_labels is None else f"test_{args.test_labels.resolve().name}"
    test_root = w / "tests" / test_name
    test_cases_all = label_cases(args.test_labels) if args.test_labels is not None else cases
    test_cases = sorted(test_cases_all) if args.test_labels is not None else split["test"]

    seed = settings["phantom_seed"]
    if train_only:
        steps.run("phantoms_train", f"phantoms of {len(split['train'])} training cases at {spacing} mm",
                  lambda: make_phantoms(link_labels(cases, split["train"], w / "labels_train"), w / "phantoms_train",
                                        spacing, seed, w / "logs" / "phantoms_train.log"))

        def prepare() -> dict:
            log = w / "logs" / "prepare.log"
            for d in ("nnUNet_raw", "nnUNet_preprocessed"):
                shutil.rmtree(w / d, ignore_errors=True)
            run(kits("convert", str(w / "phantoms_train"), "--overwrite", "-np", "2"), log, env)
            run(kits("derive-stages", "--overwrite", "-np", "2"), log, env)
            run_parallel([(kits("plan", "-d", *datasets, *plan_args(settings)), w / "logs" / f"plan_{'_'.join(datasets)}.log")
                          for datasets in (("220", "222"), ("221", "223"))], env)
            return {}
        steps.run("prepare", "convert, derive the stages, plan and preprocess (kits convert/derive-stages/plan)",
                  prepare)

        def do_budget() -> dict:
            costs = iteration_costs(w)
            plan = schedules(budget, costs)
            totals = {system: sum(plan[n].iterations * costs[n]["voxel_passes_per_iteration"] for n in nets)
                      for system, nets in SYSTEM_NETWORKS.items() if system != "cascade_tayi"}
            if max(totals.values()) > 1.01 * min(totals.values()):
                raise SystemExit(f"accuracy_study: whole iterations give the systems {totals} voxel-passes, more than 1% "
                                 "apart: raise --budget")
            return {"networks": {n: {**costs[n], "epochs": s.epochs, "iterations_per_epoch": s.iterations_per_epoch,
                                     "voxel_passes": s.iterations * costs[n]["voxel_passes_per_iteration"]}
                                 for n, s in plan.items()}}
        planned = steps.run("budget", f"split {budget:.3g} voxel-passes per system", do_budget)
        val_iterations = settings["val_iterations_per_epoch"]

        def train_network(network: str, n: dict) -> None:
            s = Schedule(n["epochs"], n["iterations_per_epoch"])
            for fold in NETWORKS[network].folds:
                name, of = (f"train_{network}", "") if fold == "all" else (f"train_{network}_fold{fold}", f" fold {fold}")
                steps.run(name, f"train {network}{of} ({NETWORKS[network].trainer}, {s.epochs} epochs x "
                          f"{s.iterations_per_epoch} iterations, batch {n['batch_size']} x {n['patch_size']})",
                          lambda fold=fold: train(w, network, s, val_iterations, fold))

        for network in FIRST_NETWORKS:
            if network in needed:
                train_network(network, planned["networks"][network])

        if chain:  # train as you infer: each stage's inputs from the cross-validated stage before
            system_budget = float(planned["networks"]["stock"]["voxel_passes"])
            steps.run("tayi_start", f"cross-validated chain: nnU-Net root {w / TAYI}", lambda: start_chain(w))
            spent = 0.0
            derive = {"tayi_fine": ("tayi_coarse", ["--stages", "222", "--from-predictions"], "222"),
                      "tayi_surface": ("tayi_fine", ["--masks-from"], "223")}
            last = SYSTEM_NETWORKS["cascade_tayi"][-1]  # spends what the folds before it left
            for network in SYSTEM_NETWORKS["cascade_tayi"]:
                if network in derive:
                    before, options, dataset = derive[network]
                    record = steps.run(f"tayi_{dataset}", f"gather {before}'s cross-validation predictions, derive "
                                       f"and plan {dataset} from them", lambda before=before, options=options,
                                       dataset=dataset: chain_step(w, before, options, dataset, plan_args(settings)))
                    if record.get("stopped"):
                        print(f"[accuracy_study] cascade_tayi stops: {record['stopped']}", flush=True)
                        break

                def chain_budget(network: str = network, spent: float = spent) -> dict:
                    cost = iteration_cost(w, network)
                    per_iteration = cost["voxel_passes_per_iteration"]
                    s = (last_budget(system_budget, spent, network, per_iteration) if network == last
                         else fold_budget(system_budget, network, per_iteration))
                    return {**cost, "epochs": s.epochs, "iterations_per_epoch": s.iterations_per_epoch,
                            "voxel_passes": len(NETWORKS[network].folds) * s.iterations * per_iteration}
                n = steps.run(f"budget_{network}", f"{network}: its share of {system_budget:.4g} voxel-passes, "
                              f"{len(NETWORKS[network].folds)} fold(s)", chain_budget)
                spent += n["voxel_passes"]
                if network == last and abs(spent - system_budget) > 0.01 * system_budget:
                    raise SystemExit(f"accuracy_study: whole iterations give cascade_tayi {spent:.4g} voxel-passes "
                                     f"against {system_budget:.4g}, more than 1% apart: raise --budget")
                train_network(network, n)

    # a chain that could not go on is reported, not predicted
    chain_stop = (steps.done("tayi_222") or {}) if chain else {}
    stopped = chain_stop.get("stopped")
    if stopped:
        systems = [s for s in systems if s != "cascade_tayi"]

    # test phantoms, predictions, evaluation
    phantoms = test_root / "phantoms"
    steps.run(f"phantoms_{test_name}", f"phantoms of {len(test_cases)} test cases at {spacing} mm",
              lambda: make_phantoms(link_labels(test_cases_all, test_cases, test_root / "labels"), phantoms, spacing,
                                    seed, w / "logs" / f"phantoms_{test_name}.log"))
    per_case, predict_wall, predictions = {}, {}, {}
    for system in systems:
        predictions[system] = test_root / "predictions" / system
        marker = steps.run(f"predict_{system}_{test_name}", f"predict {system} on {len(test_cases)} test cases",
                           lambda system=system: predict(w, system, phantoms, predictions[system]))
        predict_wall[system] = marker["wall_s"]
        marker = steps.run(f"evaluate_{system}_{test_name}", f"evaluate {system} (kits evaluate)",
                           lambda system=system: {"per_case": evaluate(
                               predictions[system], phantoms, test_root / "evaluation" / f"{system}.csv",
                               w / "logs" / f"evaluate_{system}_{test_name}.log")})
        per_case[system] = marker["per_case"]

    # the report
    def wall(name: str) -> float:
        return float((steps.done(name) or {}).get("wall_s", math.nan))

    networks = sorted({n for s in systems for n in SYSTEM_NETWORKS[s]})
    trained = {n: trained_voxel_passes(w, n) for n in networks}
    train_wall = {n: sum(wall(f"train_{n}" if f == "all" else f"train_{n}_fold{f}") for f in NETWORKS[n].folds)
                  for n in networks}
    chain_wall = sum(wall(name) for name in ("tayi_start", "tayi_222", "tayi_223")) if chain else 0.0
    means, comparisons = summarise(per_case, DEFAULTS["bootstrap_seed"])
    report = {}
    for s in systems:
        nets = SYSTEM_NETWORKS[s]
        extra = chain_wall if s == "cascade_tayi" else 0.0  # gathering, deriving and planning between the stages
        report[s] = {
            "networks": {n: {**trained[n], "trainer": NETWORKS[n].trainer, "train_wall_s": train_wall[n],
                             **training_curve(w, n)} for n in nets},
            "voxel_passes": sum(trained[n]["voxel_passes"] for n in nets),
            "train_wall_s": sum(train_wall[n] for n in nets) + extra,
            "predict_wall_s": predict_wall[s],
            "wall_s": sum(train_wall[n] for n in nets) + extra + predict_wall[s],
            "per_case": per_case[s],
            "mean": means[s],
        }
    fig_path = args.figure or args.out.with_suffix(".png")
    worst = figure(per_case, predictions, phantoms, fig_path) if per_case else None
    strata = split["strata"]
    result = {
        "settings": {
            **settings,
            "split": {"train": split["train"], "test": test_cases,
                      "strata": {c: strata[c] for c in split["train"] + split["test"] if c in strata}},
            "test_labels": None if args.test_labels is None else str(args.test_labels.resolve()),
            "reused_models": bool(args.reuse_models),
            "bootstrap": {"samples": DEFAULT_BOOTSTRAP_SAMPLES, "seed": DEFAULTS["bootstrap_seed"]},
            "command": shlex.join([Path(sys.executable).name, *sys.argv]) if argv is None else shlex.join(argv),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "wall_s": sum(json.loads(p.read_text())["wall_s"] for p in (w / "steps").glob("*.json")
                          if p.stem.endswith(f"_{test_name}") or p.stem == "phantoms_train"
                          or not p.stem.startswith(("phantoms_", "predict_", "evaluate_"))),
            "wall_s_this_run": time.perf_counter() - t_start,
            "figure": str(fig_path), "figure_case": worst,
            "postprocessing": {s: "none" if s == "stock" else "kits predict's" for s in systems},
            "tta": False,
            "system_voxel_passes": float((steps.done("budget") or {})["networks"]["stock"]["voxel_passes"]),
            "folds": {s: {n: list(NETWORKS[n].folds) for n in SYSTEM_NETWORKS[s]} for s in systems},
        },
        "systems": report,
        "not_trained": {} if not stopped else {"cascade_tayi": {
            "reason": stopped, "cases_with_roi": chain_stop["cases_with_roi"],
            "training_cases": len(split["train"]),
            "networks": {"tayi_coarse": {**trained_voxel_passes(w, "tayi_coarse"),
                                         "pseudo_dice_per_epoch_per_fold": fold_curves(w, "tayi_coarse")}}}},
        "comparisons": comparisons,
    }
    write_json(args.out, result)
    from study_tables import tables  # benchmarks/, beside this script

    print(tables(result))
    print(f"wrote {args.out} and {fig_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
