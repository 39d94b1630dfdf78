"""How much of the real ground truth would the default postprocessing delete?

Runs :func:`kits_plugins.postprocessing.remove_components.postprocess_with_report` with the default
thresholds (mm3, applied at each case's NATIVE voxel volume) on the shared real KiTS23 label maps, and
records every ground-truth component that it would remove or relabel, with its size, plus the smallest
ground-truth component of each class for context. A good postprocessing deletes nothing here: these are
true kidneys and lesions.

    python benchmarks/postprocessing_gt_impact.py --out benchmarks/results/postprocessing_gt_impact.json \
        [--shared ../shared/kits23]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cc3d
import numpy as np
from tqdm import tqdm

from kits_plugins.constants import CYST, LABEL_NAMES, TUMOR
from kits_plugins.postprocessing.remove_components import (
    DEFAULT_MIN_VOLUME_MM3,
    postprocess_with_report,
)
from kits_plugins.utilities.image_io import read_label
from kits_plugins.utilities.roi import outer_slices

REPO = Path(__file__).resolve().parents[1]


def component_sizes(seg: np.ndarray) -> dict[str, list[int]]:
    """Voxel counts of the 26-connected components: kidney+masses ("kidney"), tumor and cyst."""
    box = outer_slices(seg)
    out: dict[str, list[int]] = {"kidney": [], "tumor": [], "cyst": []}
    if box is None:
        return out
    crop = seg[box]
    for name, mask in (("kidney", crop != 0), ("tumor", crop == TUMOR), ("cyst", crop == CYST)):
        if mask.any():
            labels = cc3d.connected_components(mask, connectivity=26)
            out[name] = sorted(int(v) for v in cc3d.statistics(labels)["voxel_counts"][1:])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output JSON")
    parser.add_argument("--shared", default=str(REPO.parent / "shared" / "kits23"), help="folder with labels/")
    args = parser.parse_args()

    files = sorted((Path(args.shared) / "labels").glob("case_*.nii.gz"))
    if not files:
        raise SystemExit(f"no label maps in {Path(args.shared) / 'labels'}")

    cases = []
    for f in tqdm(files, desc="cases"):
        seg, geom = read_label(f)
        t0 = time.perf_counter()
        out, report = postprocess_with_report(seg, geom.spacing_np)
        seconds = time.perf_counter() - t0
        changed = int(np.count_nonzero(out != seg))
        sizes = component_sizes(seg)
        vv = geom.voxel_volume_mm3
        cases.append(
            {
                "case": f.name.split(".")[0],
                "spacing_np_mm": list(geom.spacing_np),
                "voxel_volume_mm3": vv,
                "min_voxels_at_native": {LABEL_NAMES[k]: v for k, v in report.min_voxels.items()},
                "gt_components": {k: len(v) for k, v in sizes.items()},
                "gt_smallest_component_voxels": {k: (v[0] if v else None) for k, v in sizes.items()},
                "gt_smallest_component_mm3": {k: (v[0] * vv if v else None) for k, v in sizes.items()},
                "removed": [r.__dict__ for r in report.removed],
                "voxels_changed": changed,
                "postprocess_seconds": seconds,
            }
        )

    by_reason: dict[str, int] = {}
    for c in cases:
        for r in c["removed"]:
            by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
    totals = {
        name: sum(c["gt_components"][name] for c in cases) for name in ("kidney", "tumor", "cyst")
    }
    result = {
        "description": "GT components of the shared real KiTS23 label maps that the default postprocessing "
        "would remove (thresholds in mm3 at each case's native voxel volume)",
        "min_volume_mm3": {LABEL_NAMES[k]: v for k, v in DEFAULT_MIN_VOLUME_MM3.items()},
        "n_cases": len(cases),
        "gt_components_total": totals,
        "removed_total_by_reason": by_reason,
        "removed_fraction_by_class": {
            "kidney": by_reason.get("small_kidney", 0) / max(totals["kidney"], 1),
            "tumor": by_reason.get("small_tumor", 0) / max(totals["tumor"], 1),
            "cyst": by_reason.get("small_cyst", 0) / max(totals["cyst"], 1),
        },
        "cases_with_removals": sum(1 for c in cases if c["removed"]),
        "removed_voxels_total": sum(c["voxels_changed"] for c in cases),
        "removed_mass_voxels_with_kidney_fragments": sum(
            r["mass_voxels"] for c in cases for r in c["removed"] if r["reason"] == "small_kidney"
        ),
        "largest_removed_by_reason": {
            reason: max(
                (
                    {"case": c["case"], "voxels": r["voxels"], "volume_mm3": r["volume_mm3"]}
                    for c in cases for r in c["removed"] if r["reason"] == reason
                ),
                key=lambda x: x["voxels"],
            )
            for reason in by_reason
        },
        "removed_lesions_with_seed_voxel_count": sum(
            1 for c in cases for r in c["removed"] if r["exceeds_seed_voxels"]
        ),
        "gt_smallest_mm3_overall": {
            name: min((c["gt_smallest_component_mm3"][name] for c in cases
                       if c["gt_smallest_component_mm3"][name] is not None), default=None)
            for name in ("kidney", "tumor", "cyst")
        },
        "total_seconds": sum(c["postprocess_seconds"] for c in cases),
        "cases": cases,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))

    print(f"{'case':<12}{'vox mm3':>9}{'min vox k/t/c':>22}{'GT k/t/c':>11}  removed (label:voxels/mm3 -> new)")
    for c in cases:
        mv = c["min_voxels_at_native"]
        gt = c["gt_components"]
        rem = ", ".join(
            f"{r['reason']}:{r['voxels']}/{r['volume_mm3']:.1f}->{r['new_label']}" for r in c["removed"]
        )
        print(
            f"{c['case']:<12}{c['voxel_volume_mm3']:>9.3f}"
            f"{mv['kidney']:>10}/{mv['tumor']:>5}/{mv['cyst']:>5}"
            f"{gt['kidney']:>5}/{gt['tumor']:>2}/{gt['cyst']:>2}  {rem or '-'}"
        )
    print(f"GT components: {totals}; removed by reason: {by_reason}; "
          f"cases with removals: {result['cases_with_removals']}/{len(cases)}")
    print(f"largest removed: {result['largest_removed_by_reason']}")
    print(f"changed voxels: {result['removed_voxels_total']}; lesion voxels inside removed kidney fragments: "
          f"{result['removed_mass_voxels_with_kidney_fragments']}; removed lesions with >= the seed's voxel count: "
          f"{result['removed_lesions_with_seed_voxel_count']}; postprocessing time {result['total_seconds']:.1f} s")


if __name__ == "__main__":
    main()
