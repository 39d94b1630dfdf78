"""Do the demo's models hold on CT made from real KiTS23 label maps? (issue 17)

    python benchmarks/demo_transfer.py --labels ../shared/kits23/labels --demo kits_demo \
        --out benchmarks/results/demo_transfer.json [--workdir demo_transfer_work] [--label-spacing Z Y X] \
        [--oracle-rois] [--fine-variant "DERIVE-STAGES OPTIONS"] [--procedural N]

Phantoms are synthesized from every label map in ``--labels`` by the package's renderer (``kits synth
--from-labels``, seed 0, on each label's own grid unless ``--label-spacing``); the models a finished ``kits demo``
left in ``--demo`` predict them with the demo's own ``kits predict`` command (the workflow's ``predict`` step:
same trainers, plans, folds, step size and TTA setting); ``kits evaluate`` scores them. The JSON holds the
mean, the spread and the worst case of the six challenge metrics, per-case rows, and the goal of issue 17
(kidney Dice >= 0.80 and masses Dice >= 0.45 on the 26 shared label maps).

``--oracle-rois`` predicts the phantoms a second time with the ground-truth kidney+masses as stage 221's mask
(``kits predict --coarse-masks``: the ROIs a perfect coarse stage would give; 222 and 223 unchanged) and reports that
pass beside the cascade's, with paired differences: how much of the gap is the coarse stage's ROIs.

``--fine-variant "OPTIONS"`` compares two ways of deriving stage 222's training crops in one run: it copies the demo
twice, re-derives Dataset222 from the demo's ground truth with the demo's own ``kits derive-stages`` options (control)
and with ``OPTIONS`` added (variant, e.g. ``"--extend-share 0.5"``), plans and retrains 222 with the demo's plan and
schedule in each copy (221 and 223 stay the demo's), predicts the same phantoms with both and reports the paired
difference. Both arms are retrained, so each carries the same training noise.

``--procedural N`` also predicts N procedural phantoms drawn as the demo's own training and test cases (its
``synthetic`` settings: shape, spacing, KiTS23 extent) from a stream neither used (seed + 20000; the demo's training
cases use its seed, its test cases seed + 10000), and reports real-label minus procedural (difference of means,
two-sample bootstrap interval, Mann-Whitney): the transfer gap itself, measured against many more unseen cases of
the demo's own world than the demo's few test cases.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

GOAL = {"Dice_kidney": 0.80, "Dice_masses": 0.45}
MARKER = ".demo_transfer"
#: ``--procedural``'s seed offset: the demo draws its training cases with ``seed``, its test cases with seed + 10000
PROCEDURAL_SEED_OFFSET = 20_000


def run(argv: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    with open(log, "a") as f:
        f.write(f"$ {shlex.join(argv)}\n")
        f.flush()
        rc = subprocess.call(argv, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=cwd)
    if rc != 0:
        raise SystemExit(f"demo_transfer: {shlex.join(argv[:4])} ... failed (exit {rc}); see {log}")


def evaluate(kits: list[str], predictions: Path, phantoms: Path, csv: Path, log: Path) -> dict[str, dict[str, float]]:
    """``kits evaluate`` of a prediction folder against the phantoms: {caseID: {metric: value}}."""
    from kits_plugins.evaluation.metrics import METRIC_COLUMNS

    run([*kits, "evaluate", str(predictions), str(phantoms), "-o", str(csv), "--quiet"], log)
    rows = json.loads(csv.with_suffix(".json").read_text())["cases"]
    return {r["caseID"]: {m: float(r[m]) for m in METRIC_COLUMNS} for r in rows}


def summarize(per_case: dict[str, dict[str, float]]) -> dict[str, dict]:
    """Per metric: mean, sample sd, median, minimum and the case with the minimum."""
    from kits_plugins.evaluation.metrics import METRIC_COLUMNS

    summary = {}
    for m in METRIC_COLUMNS:
        v = np.array([row[m] for row in per_case.values()])
        worst = min(per_case, key=lambda c: per_case[c][m])
        summary[m] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                      "median": float(np.median(v)), "min": float(v.min()), "worst_case": worst}
    return summary


def label_masks(phantoms: Path, out: Path) -> Path:
    """``out`` holding each phantom's ground truth as ``case_XXXXX.nii.gz`` (links), the layout ``kits predict
    --coarse-masks`` reads."""
    out.mkdir(parents=True, exist_ok=True)
    for seg in sorted(phantoms.glob("case_*/segmentation.nii.gz")):
        (out / f"{seg.parent.name}.nii.gz").symlink_to(seg.resolve())
    return out


def _with_option(args: list[str], flag: str, value: str) -> list[str]:
    """``args`` with the value after ``flag`` replaced by ``value``."""
    i = args.index(flag)
    return [*args[: i + 1], value, *args[i + 2 :]]


def _with_output(args: list[str], out: Path) -> list[str]:
    """``kits predict`` arguments with ``-o`` pointing at ``out``."""
    return _with_option(args, "-o", str(out))


def procedural_synth(config: dict, out: Path, n: int) -> list[str]:
    """``kits synth`` of ``n`` procedural phantoms drawn as the demo's test cases (the workflow's own ``synth``
    step) but from their own stream (seed + ``PROCEDURAL_SEED_OFFSET``), numbered after the demo's training and test
    cases."""
    from kits_plugins.workflow import steps

    s = config.get("synthetic")
    if not s:
        raise SystemExit("demo_transfer: --procedural needs a demo on procedural phantoms (its config has no "
                         "'synthetic' settings)")
    argv = steps.synth({**config, "test_dir": str(out), "synthetic": {**s, "test_cases": n}}, test=True)
    argv = _with_option(argv, "--seed", str(s["seed"] + PROCEDURAL_SEED_OFFSET))
    return _with_option(argv, "--first-case", str(s["train_cases"] + s["test_cases"]))


def fine_variant_commands(config: dict, extra: list[str], phantoms: Path, out: Path, processes: int
                          ) -> list[tuple[list[str], dict[str, str]]]:
    """(argv, extra environment) of one arm of ``--fine-variant`` in a copy of the demo whose ``workdir`` is in
    ``config``: re-derive 222 (the demo's derive options, then ``extra``), plan 222 and retrain it as the demo
    does, predict the phantoms into ``out`` with the demo's predict step. 221 and 223 stay as trained."""
    from kits_plugins.workflow import layout, steps

    if layout.ground_truth_stages(config) != layout.STAGES:
        raise SystemExit("demo_transfer: --fine-variant needs a demo trained on ground-truth ROIs "
                         "(train_as_you_infer: false)")
    predict = steps.predict({**config, "test_dir": str(phantoms), "num_parts": 1}, "0")
    return [
        ([*steps.derive_ground_truth(config), "--stages", "222", *extra, "-np", str(processes)], {}),
        ([*steps.plan(config, ("222",)), "-np", str(processes)], {}),
        (steps.train(config, "222", "all"), steps.train_environment(config, "222")),
        (_with_output(predict, out), {}),
    ]


def fine_variant_arm(name: str, demo: Path, w: Path, config: dict, extra: list[str], phantoms: Path, kits: list[str],
                     log: Path) -> dict:
    """One arm of ``--fine-variant`` in ``w/fine_variant/name``: a copy of the demo, 222 retrained, the phantoms
    predicted and scored."""
    from kits_plugins.demo.pipeline import write_demo_config
    from kits_plugins.workflow import layout

    arm = w / "fine_variant" / name
    copy = arm / "kits_demo"
    shutil.copytree(demo, copy, ignore=shutil.ignore_patterns("prediction_parts", "predictions", "figures"))
    arm_config = {**config, "workdir": str(copy)}
    write_demo_config(arm_config, copy)  # the arm's record; its commands are built from arm_config
    shutil.rmtree(copy / layout.RESULTS / "Dataset222_KiTS2023Kidney", ignore_errors=True)
    env = layout.job_environment(arm_config, os.environ)
    t0 = time.perf_counter()
    seconds = []
    for argv, extra_env in fine_variant_commands(arm_config, extra, phantoms, arm / "predictions",
                                                 min(2, os.cpu_count() or 1)):
        t = time.perf_counter()
        run(argv, log, {**env, **extra_env}, cwd=copy)
        seconds.append(time.perf_counter() - t)
    per_case = evaluate(kits, arm / "predictions", phantoms, arm / "evaluation.csv", log)
    return {"derive_options": extra, "summary": summarize(per_case), "per_case": per_case,
            "wall_s": dict(zip(("derive", "plan", "train_222", "predict"), seconds), total=time.perf_counter() - t0)}


def main(argv: list[str] | None = None) -> int:
    from kits_plugins.demo.pipeline import CONFIG_NAME
    from kits_plugins.evaluation.comparison import compare_paired, compare_unpaired
    from kits_plugins.evaluation.metrics import METRIC_COLUMNS
    from kits_plugins.workflow import layout, steps
    from kits_plugins.workflow.config import load_yaml

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--labels", type=Path, required=True, help="folder of KiTS23 label maps case_XXXXX.nii.gz")
    p.add_argument("--demo", type=Path, default=Path("kits_demo"), help="a finished kits demo's working folder")
    p.add_argument("--workdir", type=Path, default=Path("demo_transfer_work"))
    p.add_argument("--label-spacing", type=float, nargs=3, metavar=("Z", "Y", "X"),
                   help="render the phantoms on this grid (kits synth --label-spacing) instead of each label's own")
    p.add_argument("--oracle-rois", action="store_true",
                   help="also predict with the ground-truth masks as stage 221's (kits predict --coarse-masks)")
    p.add_argument("--fine-variant", metavar="OPTIONS",
                   help="also retrain stage 222 twice, on the demo's crops and with these extra kits derive-stages "
                   "options (one quoted string), and compare the two on the phantoms")
    p.add_argument("--procedural", type=int, default=0, metavar="N",
                   help="also predict N unseen procedural phantoms drawn as the demo's own cases and report "
                   "real-label minus procedural")
    p.add_argument("--out", type=Path, required=True, help="JSON to write")
    args = p.parse_args(argv)
    variant_options = shlex.split(args.fine_variant) if args.fine_variant is not None else None
    if args.procedural < 0:
        raise SystemExit(f"demo_transfer: --procedural {args.procedural}: must be 0 or more")
    if variant_options is not None and not variant_options:
        raise SystemExit("demo_transfer: --fine-variant needs kits derive-stages options, e.g. '--extend-share 0.5'")
    config_file = args.demo.resolve() / CONFIG_NAME
    if not config_file.is_file():
        raise SystemExit(f"demo_transfer: {config_file}: not found (run `kits demo` first, or point --demo at its folder)")
    t0 = time.perf_counter()
    w = args.workdir.resolve()
    if w.exists() and any(w.iterdir()):  # only a folder this script made is emptied
        if not (w / MARKER).is_file():
            raise SystemExit(f"demo_transfer: {w}: not empty and not a demo_transfer working folder; use another "
                             "--workdir")
        shutil.rmtree(w)
    (w / "logs").mkdir(parents=True)
    (w / MARKER).write_text("demo_transfer working folder (emptied by each run)\n")
    log = w / "logs" / "demo_transfer.log"
    kits = [sys.executable, "-m", "kits_plugins.cli"]

    phantoms = w / "phantoms"
    synth = [*kits, "synth", str(phantoms), "--from-labels", str(args.labels.resolve()), "--seed", "0", "--quiet"]
    if args.label_spacing:
        synth += ["--label-spacing", *map(str, args.label_spacing)]
    print("[demo_transfer 1/3] phantoms from the label maps ...", flush=True)
    run(synth, log)
    t_synth = time.perf_counter() - t0

    config = load_yaml(config_file)
    config.update(test_dir=str(phantoms), num_parts=1)  # the demo's predict step, on these phantoms
    predict = steps.predict(config, "0")
    env = layout.job_environment(config, os.environ)
    print(f"[demo_transfer 2/3] {shlex.join(predict[2:])} ...", flush=True)
    t1 = time.perf_counter()
    run(predict, log, env, cwd=w)
    t_predict = time.perf_counter() - t1
    predictions = w / layout.prediction_part("0", 1)

    print("[demo_transfer 3/3] kits evaluate ...", flush=True)
    per_case = evaluate(kits, predictions, phantoms, w / "evaluation.csv", log)
    summary = summarize(per_case)
    oracle = None
    if args.oracle_rois:
        print("[demo_transfer +] stage 221 replaced by the ground truth (--oracle-rois) ...", flush=True)
        t2 = time.perf_counter()
        oracle_out = w / "predictions_oracle_rois"
        run([*_with_output(predict, oracle_out), "--coarse-masks",
             str(label_masks(phantoms, w / "oracle_masks"))], log, env, cwd=w)
        oracle_case = evaluate(kits, oracle_out, phantoms, w / "evaluation_oracle_rois.csv", log)
        oracle = {"summary": summarize(oracle_case), "per_case": oracle_case, "predict_s": time.perf_counter() - t2,
                  "oracle_minus_cascade": {}}
        for m in ("Dice_kidney", "Dice_masses"):
            r = compare_paired({c: v[m] for c, v in oracle_case.items()}, {c: v[m] for c, v in per_case.items()})
            oracle["oracle_minus_cascade"][m] = {"n": r.n, "mean_diff": r.mean_diff, "ci95": list(r.ci95),
                                                 "p_wilcoxon": r.p_wilcoxon}
    procedural = None
    if args.procedural:
        print(f"[demo_transfer +] {args.procedural} procedural phantoms drawn as the demo's own (--procedural) ...",
              flush=True)
        t3 = time.perf_counter()
        cases_dir = w / "procedural"
        synth_argv = procedural_synth(config, cases_dir, args.procedural)
        run(synth_argv, log)
        procedural_out = w / "predictions_procedural"
        run(_with_output(steps.predict({**config, "test_dir": str(cases_dir)}, "0"), procedural_out), log, env, cwd=w)
        procedural_case = evaluate(kits, procedural_out, cases_dir, w / "evaluation_procedural.csv", log)
        procedural = {"cases": len(procedural_case), "synth": shlex.join(synth_argv[2:]),
                      "summary": summarize(procedural_case), "per_case": procedural_case,
                      "wall_s": time.perf_counter() - t3, "real_minus_procedural": {}}
        for m in ("Dice_kidney", "Dice_masses"):
            u = compare_unpaired({c: v[m] for c, v in per_case.items()}, {c: v[m] for c, v in procedural_case.items()})
            procedural["real_minus_procedural"][m] = {"n_real": u.n_a, "n_procedural": u.n_b,
                                                      "mean_diff": u.mean_diff, "ci95": list(u.ci95),
                                                      "p_mannwhitney": u.p_mannwhitney}
    variant = None
    if variant_options is not None:
        variant = {}
        for k, (name, extra) in enumerate((("control", []), ("variant", variant_options))):
            options = shlex.join(extra) if extra else "the demo's own"
            print(f"[demo_transfer +{k + 1}] stage 222 retrained ({name}: derive-stages options {options}) ...",
                  flush=True)
            variant[name] = fine_variant_arm(name, args.demo.resolve(), w, config, extra, phantoms, kits, log)
        # control minus the demo's own 222: the same settings, so only the training noise
        for key, a, b in (("variant_minus_control", variant["variant"]["per_case"], variant["control"]["per_case"]),
                          ("control_minus_demo", variant["control"]["per_case"], per_case)):
            variant[key] = {}
            for m in ("Dice_kidney", "Dice_masses"):
                r = compare_paired({c: v[m] for c, v in a.items()}, {c: v[m] for c, v in b.items()})
                variant[key][m] = {"n": r.n, "mean_diff": r.mean_diff, "ci95": list(r.ci95), "p_wilcoxon": r.p_wilcoxon}
    result = {
        "command": shlex.join(["python", "benchmarks/demo_transfer.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "demo_config": {k: config[k] for k in ("synthetic", "trainers", "epochs", "iterations", "plans", "folds")},
        "label_spacing": args.label_spacing,
        "cases": len(per_case),
        "wall_s": {"synth": t_synth, "predict": t_predict, "total": time.perf_counter() - t0},
        "summary": summary,
        "goal": {m: {"target": g, "mean": summary[m]["mean"], "met": summary[m]["mean"] >= g} for m, g in GOAL.items()},
        "per_case": per_case,
    }
    if oracle is not None:
        result["oracle_rois"] = oracle
    if procedural is not None:
        result["procedural"] = procedural
    if variant is not None:
        result["fine_variant"] = variant
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, args.out)
    for m in METRIC_COLUMNS:
        s = summary[m]
        print(f"{m:<12} mean {s['mean']:.3f} (sd {s['sd']:.3f}), worst {s['min']:.3f} ({s['worst_case']})")
    if oracle is not None:
        for m, d in oracle["oracle_minus_cascade"].items():
            s = oracle["summary"][m]
            print(f"oracle ROIs: {m:<12} mean {s['mean']:.3f}, {d['mean_diff']:+.3f} [{d['ci95'][0]:+.3f}, "
                  f"{d['ci95'][1]:+.3f}] over the cascade")
    if procedural is not None:
        for m, u in procedural["real_minus_procedural"].items():
            s = procedural["summary"][m]
            p_text = "n/a" if u["p_mannwhitney"] is None else f"{u['p_mannwhitney']:.3f}"
            print(f"procedural ({procedural['cases']} cases): {m:<12} mean {s['mean']:.3f} (sd {s['sd']:.3f}), "
                  f"worst {s['min']:.3f}; real-label minus procedural {u['mean_diff']:+.3f} [{u['ci95'][0]:+.3f}, "
                  f"{u['ci95'][1]:+.3f}] (Mann-Whitney p {p_text})")
    if variant is not None:
        for m, d in variant["control_minus_demo"].items():
            print(f"fine variant: {m:<12} control minus the demo's own 222 (training noise) {d['mean_diff']:+.3f} "
                  f"[{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]")
        for m, d in variant["variant_minus_control"].items():
            a, b = variant["control"]["summary"][m]["mean"], variant["variant"]["summary"][m]["mean"]
            print(f"fine variant: {m:<12} control {a:.3f}, variant {b:.3f}, {d['mean_diff']:+.3f} "
                  f"[{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] (Wilcoxon p {d['p_wilcoxon']:.3f})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
