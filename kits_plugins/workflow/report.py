"""The report of a workflow run: ``summary.json`` (steps, metrics, versions, settings), ``report.txt`` (the KiTS table
and the steps) and ``figures/``.

Per-step wall time and peak RSS come from Snakemake's benchmark files (``benchmarks/<step>.tsv``: ``s`` and
``max_rss``, the resident memory of the job's whole process tree, sampled every 0.5 s for the first 15 s of a job
and every 30 s after); the command from the first ``$ `` line of the step's log.
"""

from __future__ import annotations

import csv
import json
import os
import platform
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from kits_plugins import __version__
from kits_plugins.constants import FILE_ENDING
from kits_plugins.utilities.staging import atomic_write_bytes
from kits_plugins.workflow import layout


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "", "NA") else None
    except ValueError:
        return None


def read_benchmark(path: Path) -> dict | None:
    """Wall time, peak RSS (MB; None when the job ended before Snakemake sampled it) and start / end time (epoch s)
    of one benchmark file, or None when there is none."""
    try:
        with open(path, newline="") as f:
            row = next(csv.DictReader(f, delimiter="\t"), None)
        finished = path.stat().st_mtime
    except FileNotFoundError:
        return None
    if row is None:
        return None
    wall = _number(row.get("s")) or 0.0
    return {"wall_s": wall, "peak_rss_mb": _number(row.get("max_rss")), "started": finished - wall,
            "finished": finished}


def logged_command(log: Path) -> str | None:
    """The command a step ran, as its log's first ``$ `` line shows it."""
    try:
        with open(log, errors="replace") as f:
            for line in f:
                if line.startswith("$ "):
                    return line[2:].rstrip("\n")
    except FileNotFoundError:
        pass
    return None


def step_records(workdir: Path, names: Sequence[str]) -> list[dict]:
    """One record per step that has a benchmark, in the order the steps started."""
    out = []
    for name in names:
        bench = read_benchmark(workdir / layout.benchmark(name))
        if bench is not None:
            out.append({"name": name, "command": logged_command(workdir / layout.log(name)), **bench})
    return sorted(out, key=lambda r: r["started"])


def busy_seconds(steps: Sequence[Mapping], since: float = 0.0) -> float:
    """Seconds in which at least one of the steps that started after ``since`` was running (parallel steps once)."""
    spans = sorted((s["started"], s["finished"]) for s in steps if s["started"] >= since)
    total, end = 0.0, float("-inf")
    for a, b in spans:
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def versions() -> dict:
    def pkg(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {"python": platform.python_version(), "torch": pkg("torch"), "nnunetv2": pkg("nnunetv2"),
            "snakemake": pkg("snakemake"), "platform": platform.platform(), "cpu_count": os.cpu_count()}


def make_figures(test_dir: Path, predictions: Path, out: Path) -> list[Path]:
    """One PNG per predicted test case: an axial slice through each kidney with CT, ground truth and prediction."""
    from kits_plugins.utilities.image_io import read_image
    from kits_plugins.utilities.preview import save_case_png

    written = []
    for case_dir in sorted(test_dir.glob("case_*")):
        pred = predictions / f"{case_dir.name}{FILE_ENDING}"
        if not pred.is_file():
            continue
        ct, g = read_image(case_dir / "imaging.nii.gz")
        gt, _ = read_image(case_dir / "segmentation.nii.gz")
        p, _ = read_image(pred)
        written.append(save_case_png(ct, gt, p, g, out / f"{case_dir.name}.png", title=case_dir.name))
    return written


def steps_table(steps: Sequence[Mapping]) -> str:
    lines = [f"{'step':<24} {'wall s':>8} {'peak RSS MB':>12}"]
    for s in steps:
        rss = "n/a" if s["peak_rss_mb"] is None else f"{s['peak_rss_mb']:.0f}"
        lines.append(f"{s['name']:<24} {s['wall_s']:8.1f} {rss:>12}")
    lines.append(f"{'all steps':<24} {sum(s['wall_s'] for s in steps):8.1f}")
    return "\n".join(lines)


def write_report(config: Mapping, workdir: Path) -> dict:
    """Figures, ``summary.json`` and ``report.txt`` of the run in ``workdir``; returns the summary."""
    from kits_plugins.evaluation.evaluate import format_table

    figures_dir = workdir / layout.FIGURES
    pngs = make_figures(Path(config["test_dir"]), workdir / layout.PREDICTIONS, figures_dir)
    metrics = json.loads((workdir / layout.EVALUATION_JSON).read_text())
    steps = step_records(workdir, layout.step_names(config))
    synthetic = config.get("synthetic")
    summary = {
        "kits_cascade": __version__,
        "versions": versions(),
        "seed": synthetic["seed"] if synthetic else config["derive"]["seed"],
        "settings": dict(config),
        "steps": steps,
        "steps_wall_s": sum(s["wall_s"] for s in steps),
        "metrics": metrics,
        "figures": [str(p.relative_to(workdir)) for p in pngs],
    }
    atomic_write_bytes(workdir / layout.SUMMARY, json.dumps(summary, indent=1, default=str).encode())
    text = f"{format_table(metrics)}\n\n{steps_table(steps)}\n"
    atomic_write_bytes(workdir / layout.REPORT, text.encode())
    return summary
