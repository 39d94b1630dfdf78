"""The end-to-end demo: synthetic cases -> convert -> stages -> plan -> train -> predict -> evaluate.

Every step runs the same ``kits`` / ``nnUNetv2_train`` command a user would type, in a child process,
so its wall time and peak RSS are measured on their own (``os.wait4``). Finished steps leave a marker
in ``WORKDIR/.steps``; a rerun skips them, ``--fresh`` starts over.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kits_plugins import __version__
from kits_plugins.constants import PLANS_NAME
from kits_plugins.utilities.staging import atomic_write_bytes

MARKER = ".kits-demo"


def nnunet_command(name: str) -> str:
    """An nnU-Net console script of this interpreter's environment (the venv need not be on PATH)."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found next to {sys.executable} nor on PATH: is nnunetv2 installed?")
    return found


@dataclass
class DemoSettings:
    """Defaults sized for 2 CPU cores and about 15 minutes (see README, "The demo")."""

    workdir: Path = Path("kits_demo")
    train_cases: int = 12
    test_cases: int = 4
    seed: int = 0
    device: str = "cpu"
    shape: tuple[int, int, int] = (64, 128, 128)  # z (S-I), y (A-P), x (R-L)
    spacing: tuple[float, float, float] = (4.0, 3.0, 3.0)  # mm, same order
    target_spacing: tuple[float, float, float] = (4.0, 3.0, 3.0)  # fine stages (S-I, A-P, R-L), mm
    coarse_spacing: tuple[float, float, float] = (8.0, 8.0, 8.0)  # 3d_lowres of the coarse stage, mm
    epochs: dict[str, int] = field(default_factory=lambda: {"221": 26, "222": 14, "223": 34})
    iterations: int = 25
    trainers: dict[str, str] = field(
        default_factory=lambda: {
            "221": "nnUNetTrainerKiTSCoarse_demo",
            "222": "nnUNetTrainerKiTSFine_demo",
            "223": "nnUNetTrainerKiTSSurface_demo",
        }
    )


@dataclass
class StepResult:
    name: str
    command: str
    wall_s: float
    peak_rss_mb: float
    skipped: bool = False


class Demo:
    def __init__(self, settings: DemoSettings):
        self.s = settings
        self.w = Path(settings.workdir).resolve()
        self.steps_dir = self.w / ".steps"
        self.results: list[StepResult] = []

    # ---------------------------------------------------------------- environment
    def env(self) -> dict[str, str]:
        from kits_plugins.training.commands import ext_trainer_paths

        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.update(
            nnUNet_raw=str(self.w / "nnUNet_raw"),
            nnUNet_preprocessed=str(self.w / "nnUNet_preprocessed"),
            nnUNet_results=str(self.w / "nnUNet_results"),
            nnUNet_extTrainer=ext_trainer_paths(env.get("nnUNet_extTrainer")),
            nnUNet_compile="false",
        )
        env.setdefault("nnUNet_def_n_proc", "2")
        env.setdefault("nnUNet_n_proc_DA", "2")
        env["KITS_ITERS"] = str(self.s.iterations)
        return env

    # ---------------------------------------------------------------- step runner
    def run_step(self, name: str, argv: list[str], extra_env: dict[str, str] | None = None) -> StepResult:
        marker = self.steps_dir / f"{name}.json"
        cmd = shlex.join(argv)
        if marker.exists():
            prev = json.loads(marker.read_text())
            res = StepResult(name, cmd, prev["wall_s"], prev["peak_rss_mb"], skipped=True)
            print(f"[demo] {name}: done earlier ({prev['wall_s']:.0f} s), skipping")
            self.results.append(res)
            return res
        print(f"\n[demo] {name}: $ {cmd}", flush=True)
        env = self.env()
        if extra_env:
            env.update(extra_env)
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, cwd=self.w)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"demo step '{name}' failed (exit {proc.returncode}): {cmd}")
        res = StepResult(name, cmd, wall, usage.ru_maxrss / 1024.0)
        self.steps_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(marker, json.dumps(asdict(res), indent=1).encode())
        print(f"[demo] {name}: {wall:.1f} s, peak RSS {res.peak_rss_mb:.0f} MB", flush=True)
        self.results.append(res)
        return res

    def kits(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "kits_plugins.cli", *args]

    # ---------------------------------------------------------------- the pipeline
    def run(self) -> dict:
        s = self.s
        self.w.mkdir(parents=True, exist_ok=True)
        (self.w / MARKER).write_text("kits demo working directory\n")
        t_start = time.perf_counter()
        shape = [str(v) for v in s.shape]
        spacing = [str(v) for v in s.spacing]
        self.run_step("synth_train", self.kits("synth", "kits_train", "--overwrite", "--cases", str(s.train_cases),
                                                "--seed", str(s.seed), "--shape", *shape, "--spacing", *spacing))
        self.run_step("synth_test", self.kits("synth", "kits_test", "--overwrite", "--cases", str(s.test_cases),
                                               "--seed", str(s.seed + 10_000), "--first-case", str(s.train_cases),
                                               "--shape", *shape, "--spacing", *spacing))
        self.run_step("convert", self.kits("convert", "kits_train", "--overwrite"))
        self.run_step("derive_stages", self.kits("derive-stages", "--overwrite", "--seed", str(s.seed)))
        self.run_step("plan", self.kits("plan", "-d", "221", "222", "223", "-np", "2",
                                        "--target-spacing", *[str(v) for v in s.target_spacing],
                                        "--coarse-spacing", *[str(v) for v in s.coarse_spacing],
                                        "--demo-network"))
        for ds, config in (("221", "3d_lowres"), ("222", "3d_fullres"), ("223", "3d_fullres")):
            self.run_step(
                f"train_{ds}",
                [nnunet_command("nnUNetv2_train"), ds, config, "all", "-tr", s.trainers[ds],
                 "-p", PLANS_NAME, "-device", s.device],
                extra_env={"KITS_EPOCHS": str(s.epochs[ds])},
            )
        self.run_step("predict", self.kits("predict", "-i", "kits_test", "-o", "predictions", "-f", "all",
                                           "-device", s.device, "--disable_tta",
                                           "--coarse-trainer", s.trainers["221"],
                                           "--fine-trainer", s.trainers["222"],
                                           "--masses-trainer", s.trainers["223"]))
        self.run_step("evaluate", self.kits("evaluate", "predictions", "kits_test", "-o", "evaluation.csv"))
        pngs = self.figures()
        total = time.perf_counter() - t_start
        return self.summary(total, pngs)

    def figures(self) -> list[str]:
        from kits_plugins.demo.figures import save_case_png
        from kits_plugins.utilities.image_io import read_image

        out = []
        for case_dir in sorted((self.w / "kits_test").glob("case_*")):
            pred_file = self.w / "predictions" / f"{case_dir.name}.nii.gz"
            if not pred_file.exists():
                continue
            ct, g = read_image(case_dir / "imaging.nii.gz")
            gt, _ = read_image(case_dir / "segmentation.nii.gz")
            pred, _ = read_image(pred_file)
            png = save_case_png(ct, gt, pred, g, self.w / "figures" / f"{case_dir.name}.png", title=case_dir.name)
            out.append(str(png.relative_to(self.w)))
        return out

    def summary(self, total_s: float, pngs: list[str]) -> dict:
        from importlib.metadata import version

        import torch

        metrics = {}
        ev_json = self.w / "evaluation.json"
        if ev_json.exists():
            metrics = json.loads(ev_json.read_text())
        summary = {
            "kits_cascade": __version__,
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "nnunetv2": version("nnunetv2"),
                "platform": platform.platform(),
                "cpu_count": os.cpu_count(),
            },
            "seed": self.s.seed,
            "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.s).items()
                         if k != "workdir"},
            "steps": [asdict(r) for r in self.results],
            "total_wall_s_this_run": total_s,
            "metrics": metrics,
            "figures": pngs,
        }
        atomic_write_bytes(self.w / "summary.json", json.dumps(summary, indent=1, default=str).encode())
        return summary
