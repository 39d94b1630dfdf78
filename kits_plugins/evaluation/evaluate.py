"""Evaluate a folder of predictions against KiTS23 references: case matching, checks, parallel cases, outputs.

The metrics themselves are in :mod:`kits_plugins.evaluation.metrics`. Every check that only needs headers
(missing predictions, shape, spacing) runs before any voxel is read; the CSV and JSON are written only after
every case succeeded, each through a temporary file renamed into place, so a failed run leaves no partial
output (and an older ``evaluation.csv`` untouched).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, wait
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kits_plugins.constants import FILE_ENDING, HEC_LABELS, HEC_TOLERANCES_MM, MAX_LABEL
from kits_plugins.evaluation.metrics import (
    METRIC_COLUMNS,
    average_row,
    compute_case_metrics,
    ranking_means,
)
from kits_plugins.utilities.image_io import KitsInputError, read_geometry, read_label
from kits_plugins.utilities.paths import refuse_overwriting_inputs
from kits_plugins.utilities.processes import worker_pool
from kits_plugins.utilities.staging import atomic_path

KITS_SEGMENTATION_NAME = "segmentation.nii.gz"
CSV_HEADER = ("caseID",) + METRIC_COLUMNS
SPACING_ATOL_MM = 1e-4


def find_prediction_cases(pred_dir: str | os.PathLike) -> dict[str, Path]:
    """``case_id -> file`` for every ``<case_id>.nii.gz`` in ``pred_dir`` (hidden/partial files ignored)."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise KitsInputError(f"{pred_dir}: prediction folder not found")
    return {
        p.name[: -len(FILE_ENDING)]: p
        for p in sorted(pred_dir.iterdir())
        if p.is_file() and p.name.endswith(FILE_ENDING) and not p.name.startswith(".")
    }


def find_reference_cases(ref_dir: str | os.PathLike) -> dict[str, Path]:
    """``case_id -> file`` for ``<case_id>.nii.gz`` files and/or the KiTS layout ``<case_id>/segmentation.nii.gz``."""
    ref_dir = Path(ref_dir)
    if not ref_dir.is_dir():
        raise KitsInputError(f"{ref_dir}: reference folder not found")
    cases: dict[str, Path] = {}
    for p in sorted(ref_dir.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_file() and p.name.endswith(FILE_ENDING):
            case_id, path = p.name[: -len(FILE_ENDING)], p
        elif p.is_dir() and (p / KITS_SEGMENTATION_NAME).is_file():
            case_id, path = p.name, p / KITS_SEGMENTATION_NAME
        else:
            continue
        if case_id in cases:
            raise KitsInputError(f"{ref_dir}: reference case {case_id} found twice ({cases[case_id]} and {path})")
        cases[case_id] = path
    if not cases:
        raise KitsInputError(
            f"{ref_dir}: no reference cases (expected case_XXXXX{FILE_ENDING} or case_XXXXX/{KITS_SEGMENTATION_NAME})"
        )
    return cases


def match_cases(
    pred_dir: str | os.PathLike, ref_dir: str | os.PathLike, only_predicted: bool = False
) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """Pair predictions with references; returns ``[(case_id, pred, ref)]`` and predictions without reference.

    Every reference case needs a prediction (all missing ones are listed in the error) unless
    ``only_predicted``, which evaluates the predicted subset of the references instead.
    """
    refs = find_reference_cases(ref_dir)
    preds = find_prediction_cases(pred_dir)
    missing = [c for c in refs if c not in preds]
    extra = [c for c in preds if c not in refs]
    if missing and not only_predicted:
        raise KitsInputError(
            f"{pred_dir}: no prediction for {len(missing)} of {len(refs)} reference cases: {', '.join(missing)}"
        )
    pairs = [(c, preds[c], refs[c]) for c in refs if c in preds]
    if not pairs:
        raise KitsInputError(f"{pred_dir}: no prediction matches a reference case in {ref_dir}")
    return pairs, extra


def check_headers(pairs: Sequence[tuple[str, Path, Path]]) -> None:
    """Shape and spacing of each prediction must equal its reference's (headers only); lists every bad case."""
    problems = []
    for case_id, pred, ref in pairs:
        gp, gr = read_geometry(pred), read_geometry(ref)
        if gp.shape != gr.shape:
            problems.append(f"{case_id}: shape {gp.shape} != reference {gr.shape} ({pred})")
        elif not np.allclose(gp.spacing, gr.spacing, rtol=0, atol=SPACING_ATOL_MM):
            problems.append(f"{case_id}: spacing {gp.spacing} != reference {gr.spacing} ({pred})")
    if problems:
        raise KitsInputError(f"prediction does not match reference for {len(problems)} case(s): " + "; ".join(problems))


def evaluate_case(case_id: str, pred_path: str | os.PathLike, ref_path: str | os.PathLike) -> dict:
    """Read one prediction/reference pair (labels checked to be 0-3) and compute its metrics (one row)."""
    pred, gp = read_label(pred_path, max_label=MAX_LABEL)
    ref, _ = read_label(ref_path, max_label=MAX_LABEL)
    if pred.shape != ref.shape:
        raise KitsInputError(f"{pred_path}: case {case_id}: shape {pred.shape} != reference {ref.shape}")
    # The challenge passes the prediction's spacing (numpy order); check_headers made it equal the reference's.
    metrics = compute_case_metrics(pred, ref, gp.spacing_np)
    return {"caseID": case_id, **metrics}


def _run_cases(pairs: Sequence[tuple[str, Path, Path]], num_processes: int, progress: bool) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    bar = tqdm(total=len(pairs), desc="evaluate", unit="case", disable=not progress)
    try:
        if num_processes <= 1 or len(pairs) == 1:
            for case_id, pred, ref in pairs:
                rows[case_id] = evaluate_case(case_id, pred, ref)
                bar.update()
            return rows
        with worker_pool(min(num_processes, len(pairs))) as pool:  # spawned; workers end with this process
            futures = {pool.submit(evaluate_case, c, str(p), str(r)): c for c, p, r in pairs}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for f in done:
                    error = f.exception()
                    if error is not None:
                        for other in pending:
                            other.cancel()
                        raise error
                    rows[futures[f]] = f.result()
                    bar.update()
        return rows
    finally:
        bar.close()


def evaluate_folders(
    pred_dir: str | os.PathLike,
    ref_dir: str | os.PathLike,
    out_csv: str | os.PathLike | None = None,
    num_processes: int = 2,
    progress: bool = True,
    only_predicted: bool = False,
) -> dict:
    """Evaluate every reference case against its prediction, as the KiTS23 challenge does.

    Returns ``{"cases": [row, ...], "average": row, "mean_dice": float, "mean_surface_dice": float, ...}`` where a
    row maps ``caseID`` and the six ``METRIC_COLUMNS`` to values. With ``out_csv``, writes the challenge's CSV
    there and the same results as JSON next to it (``.json`` suffix), both atomically.
    Raises KitsInputError (naming the case) for missing predictions, shape/spacing mismatches or bad labels.
    """
    pairs, extra = match_cases(pred_dir, ref_dir, only_predicted=only_predicted)
    if out_csv is not None:
        refuse_overwriting_inputs(
            [out_csv, json_path_for(out_csv)], [f for _, p, r in pairs for f in (p, r)], "kits evaluate"
        )
    if extra:
        print(f"note: {len(extra)} prediction(s) without reference ignored: {', '.join(extra)}", file=sys.stderr)
    check_headers(pairs)
    by_case = _run_cases(pairs, num_processes, progress)
    rows = [by_case[c] for c, _, _ in pairs]
    mean_dice, mean_sd = ranking_means(rows)
    result = {
        "cases": rows,
        "average": {"caseID": "average", **average_row(rows)},
        "mean_dice": mean_dice,
        "mean_surface_dice": mean_sd,
        "num_cases": len(rows),
        "pred_dir": str(Path(pred_dir).resolve()),
        "ref_dir": str(Path(ref_dir).resolve()),
        "hec_labels": {k: list(v) for k, v in HEC_LABELS.items()},
        "hec_tolerances_mm": dict(HEC_TOLERANCES_MM),
    }
    if out_csv is not None:
        out_csv = Path(out_csv)
        _write_atomically(
            [
                (out_csv, lambda f: f.write(format_csv(result))),
                (json_path_for(out_csv), lambda f: json.dump(result, f, indent=2)),
            ]
        )
    return result


def json_path_for(csv_path: str | os.PathLike) -> Path:
    """The JSON written next to a CSV: same name, ``.json`` suffix."""
    return Path(csv_path).with_suffix(".json")


def format_csv(result: dict) -> str:
    """The challenge's CSV: header, one row per case, final ``average`` row; values with 8 decimals."""
    lines = [",".join(CSV_HEADER)]
    for row in result["cases"] + [result["average"]]:
        lines.append(",".join([row["caseID"]] + [f"{row[c]:0.8f}" for c in METRIC_COLUMNS]))
    return "\n".join(lines) + "\n"


def format_table(result: dict) -> str:
    """A readable terminal table of all cases, the average and the two ranking numbers."""
    rows = result["cases"] + [result["average"]]
    width = max(len("caseID"), *(len(r["caseID"]) for r in rows))
    col_w = max(len(c) for c in METRIC_COLUMNS)
    header = f"{'caseID':<{width}}  " + "  ".join(f"{c:>{col_w}}" for c in METRIC_COLUMNS)
    rule = "-" * len(header)
    lines = [header, rule]
    for i, row in enumerate(rows):
        if i == len(rows) - 1:
            lines.append(rule)
        lines.append(f"{row['caseID']:<{width}}  " + "  ".join(f"{row[c]:>{col_w}.4f}" for c in METRIC_COLUMNS))
    lines.append(
        f"{result['num_cases']} case(s)   mean Dice {result['mean_dice']:.4f}   "
        f"mean Surface Dice {result['mean_surface_dice']:.4f}"
    )
    return "\n".join(lines)


def _write_atomically(items: Sequence[tuple[Path, Callable]]) -> None:
    """Write each file to a temporary name in its folder (:func:`atomic_path`); all are renamed only once every
    one is written, and on failure none is."""
    with ExitStack() as stack:
        for path, write in items:
            tmp = stack.enter_context(atomic_path(path))
            with open(tmp, "w", newline="") as f:
                write(f)
