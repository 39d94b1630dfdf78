"""Time and peak memory of ``kits derive-stages`` on the largest shared KiTS23 case (512 x 512 x 1059).

The shared folder holds label maps only, so a CT is synthesized cheaply next to the real label (int16:
label-dependent HU plus uniform noise, which gzip compresses worse than real CT, so reading and cropping
are if anything slower than on the real scan). A Dataset220 with that one case is built in a temporary
folder and ``kits derive-stages`` (221, 222, 223) runs in a fresh process; wall time and the child's peak
RSS are measured and compared to the issue's limits (30 s, 4 GB).

    python benchmarks/derive_stages_speed.py --out benchmarks/results/derive_stages_speed.json [--shared DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
TIME_LIMIT_S, RSS_LIMIT_GB = 30.0, 4.0


def largest_case(labels_dir: Path) -> Path:
    sizes = {}
    for f in sorted(labels_dir.glob("case_*.nii.gz")):
        r = sitk.ImageFileReader()
        r.SetFileName(str(f))
        r.ReadImageInformation()
        sizes[f] = int(np.prod(r.GetSize()))
    return max(sizes, key=sizes.get)


def synthesize_ct(label_image: sitk.Image, seed: int = 0) -> sitk.Image:
    label = sitk.GetArrayViewFromImage(label_image)
    rng = np.random.default_rng(seed)
    ct = np.array([-1000, 40, 60, 10], np.int16)[label]
    ct += rng.integers(-32, 32, size=ct.shape, dtype=np.int16)
    image = sitk.GetImageFromArray(ct)
    image.CopyInformation(label_image)
    return image


def run_child(cmd: list[str], env: dict) -> tuple[float, float]:
    """Wall time (s) and peak RSS (GB) of one child process (maxrss of the waited-for child)."""
    t = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child: exec so its RSS is measured alone
        os.execvpe(cmd[0], cmd, env)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}")
    return wall, usage.ru_maxrss / 1024**2  # ru_maxrss is in KiB on Linux


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--shared", default=str(REPO.parent / "shared" / "kits23"), help="shared kits23 folder")
    p.add_argument("--repeats", type=int, default=2, help="timed runs (the fastest and all raw figures are kept)")
    args = p.parse_args()

    label_file = largest_case(Path(args.shared) / "labels")
    case = label_file.name[: -len(".nii.gz")]
    work = Path(tempfile.mkdtemp(prefix="kits_derive_bench_"))
    try:
        ds = work / "raw" / "Dataset220_KiTS2023"
        (ds / "imagesTr").mkdir(parents=True)
        (ds / "labelsTr").mkdir()
        shutil.copyfile(label_file, ds / "labelsTr" / label_file.name)
        label_image = sitk.ReadImage(str(label_file))
        t = time.perf_counter()
        sitk.WriteImage(synthesize_ct(label_image), str(ds / "imagesTr" / f"{case}_0000.nii.gz"), True)
        synth_s = time.perf_counter() - t
        shape = list(sitk.GetArrayViewFromImage(label_image).shape)
        del label_image

        env = dict(os.environ, nnUNet_raw=str(work / "raw"), OMP_NUM_THREADS="1")
        kits = [sys.executable, "-m", "kits_plugins.cli"]
        # baseline: the interpreter plus the modules derive-stages imports, doing nothing
        base_wall, base_rss = run_child(
            [sys.executable, "-c", "import kits_plugins.dataset_conversion.derive_stages"], env
        )
        runs = []
        for i in range(args.repeats):
            cmd = kits + ["derive-stages", "--overwrite", "-np", "1"]
            wall, rss = run_child(cmd, env)
            runs.append({"run": i, "wall_s": round(wall, 2), "peak_rss_gb": round(rss, 3)})
        # read-only reference: how long reading the two volumes alone takes
        t = time.perf_counter()
        sitk.ReadImage(str(ds / "labelsTr" / label_file.name))
        sitk.ReadImage(str(ds / "imagesTr" / f"{case}_0000.nii.gz"))
        read_s = time.perf_counter() - t
        outputs = {}
        for name in ("Dataset221_KiTS2023Coarse", "Dataset222_KiTS2023Kidney", "Dataset223_KiTS2023Masses"):
            files = list((work / "raw" / name).rglob("*.nii.gz"))
            outputs[name] = {"files": len(files), "mb": round(sum(f.stat().st_size for f in files) / 1e6, 1)}
        crops = json.loads((work / "raw" / "Dataset222_KiTS2023Kidney" / "crops.json").read_text())["crops"]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    best = min(runs, key=lambda r: r["wall_s"])
    worst_rss = max(r["peak_rss_gb"] for r in runs)
    result = {
        "case": case,
        "shape_numpy": shape,
        "voxels_million": round(float(np.prod(shape)) / 1e6, 1),
        "command": "kits derive-stages --overwrite -np 1 (221, 222, 223; jitter 10 mm, margin 15 mm)",
        "ct": f"synthetic int16 (label HU + uniform noise [-32, 32)), gzip; written in {synth_s:.1f} s (not timed)",
        "runs": runs,
        "best_wall_s": best["wall_s"],
        "peak_rss_gb": worst_rss,
        "import_only": {"wall_s": round(base_wall, 2), "peak_rss_gb": round(base_rss, 3)},
        "read_label_and_ct_only_s": round(read_s, 2),
        "rois": {k: {"box": v["box"], "shape": [b - a for a, b in v["box"]]} for k, v in crops.items()},
        "outputs": outputs,
        "limits": {"wall_s": TIME_LIMIT_S, "peak_rss_gb": RSS_LIMIT_GB},
        "ratios": {
            "wall_over_limit": round(best["wall_s"] / TIME_LIMIT_S, 3),
            "rss_over_limit": round(worst_rss / RSS_LIMIT_GB, 3),
            "wall_over_read_only": round(best["wall_s"] / read_s, 2),
        },
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "note": "2 CPU cores shared with other jobs; peak RSS is ru_maxrss of the derive-stages process",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"{'case':<12}{'shape':>20}{'wall s':>10}{'limit':>8}{'peak GB':>10}{'limit':>8}{'read-only s':>13}")
    print(f"{case:<12}{'x'.join(map(str, shape)):>20}{best['wall_s']:>10.2f}{TIME_LIMIT_S:>8.0f}"
          f"{worst_rss:>10.2f}{RSS_LIMIT_GB:>8.0f}{read_s:>13.2f}")
    print(f"ROIs: {len(crops)}; outputs: {outputs}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
