"""Cost of the ``.nii.gz`` integrity checks (``kits_plugins.utilities.gzip_check``) against SimpleITK's read.

    python benchmarks/gzip_check.py --out benchmarks/results/gzip_check.json [--shared ../shared/kits23]

Files: the largest shared label map (case_00151, 512 x 512 x 1059 uint8) and a CT synthesized from it with
``synthesize_ct_from_label`` (int16, written to a temporary folder). Per repeat and file: ``sitk.ReadImage``;
the trailer check (``check_trailer``); the CRC of the decoded buffer (``check_decoded``, the backend the module
uses) and, for comparison, ``crc32`` of each importable backend (zlib, isal, zlib-ng) and one plain numpy pass
over the buffer (the memory-bandwidth floor of any check that reads it); every few repeats the
full streaming verification that ``kits convert`` runs on the CT it only links (isal and zlib inflate). Wall
and CPU (process) time; the goal (issue 11) is trailer + CRC under 5% of the read time for both files. The
machine is shared, so the load average is recorded and medians with min/max are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
GOAL = 0.05


def _timed(fn, *args):
    w, c = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - w, time.process_time() - c


def _stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def crc_backends() -> dict:
    backends = {"zlib": zlib.crc32}
    try:
        from isal import isal_zlib

        backends["isal"] = isal_zlib.crc32
    except ImportError:
        pass
    try:
        from zlib_ng import zlib_ng

        backends["zlib_ng"] = zlib_ng.crc32
    except ImportError:
        pass
    return backends


def synthesize_ct(label_path: Path, out: Path) -> dict:
    from kits_plugins.synthetic.from_labels import synthesize_ct_from_label
    from kits_plugins.utilities.image_io import read_label, write_image

    label, geom = read_label(label_path)
    ct, w, _ = _timed(synthesize_ct_from_label, label, geom, 0)
    write_image(ct, geom, out)
    return {"source": label_path.name, "seed": 0, "synth_wall_s": w, "dtype": str(ct.dtype)}


def measure(path: Path, repeats: int, verify_every: int) -> dict:
    from kits_plugins.utilities import gzip_check

    backends = crc_backends()
    rec: dict = {"file": path.name, "compressed_mb": path.stat().st_size / 1e6}
    read_w, read_c, trailer_w, trailer_c, crc_w, crc_c, one_pass_w, one_pass_c = ([] for _ in range(8))
    by_backend = {name: {"wall_s": [], "cpu_s": []} for name in backends}
    verify = {"isal" if gzip_check._fast_zlib is not None else "zlib": {"wall_s": [], "cpu_s": []}}
    verify.setdefault("zlib", {"wall_s": [], "cpu_s": []})
    for r in range(repeats):
        image, w, c = _timed(sitk.ReadImage, str(path))
        read_w.append(w)
        read_c.append(c)
        buffer = sitk.GetArrayViewFromImage(image)
        trailer, w, c = _timed(gzip_check.check_trailer, path)
        trailer_w.append(w)
        trailer_c.append(c)
        fast = gzip_check.buffer_is_file_data(trailer.layout, trailer.prefix, buffer) and not trailer.verified
        if not fast:
            raise SystemExit(f"{path}: the CRC check would fall back to full verification; nothing to measure")
        _, w, c = _timed(gzip_check.check_decoded, path, trailer, buffer)
        crc_w.append(w)
        crc_c.append(c)
        for name, fn in backends.items():
            _, w, c = _timed(fn, buffer)
            by_backend[name]["wall_s"].append(w)
            by_backend[name]["cpu_s"].append(c)
        _, w, c = _timed(
            np.bitwise_or.reduce, buffer.reshape(-1).view(np.uint8)[: buffer.nbytes // 8 * 8].view(np.uint64)
        )
        one_pass_w.append(w)
        one_pass_c.append(c)
        rec.update(shape_numpy=list(buffer.shape), dtype=str(buffer.dtype), uncompressed_mb=buffer.nbytes / 1e6)
        del buffer, image
        if r % verify_every == 0:
            saved = gzip_check._decompressobj
            for name in verify:
                gzip_check._decompressobj = zlib.decompressobj if name == "zlib" else saved
                try:
                    _, w, c = _timed(gzip_check.verify_gzip_stream, path)
                finally:
                    gzip_check._decompressobj = saved
                verify[name]["wall_s"].append(w)
                verify[name]["cpu_s"].append(c)
    check_w = [a + b for a, b in zip(trailer_w, crc_w)]
    check_c = [a + b for a, b in zip(trailer_c, crc_c)]
    rec.update(
        repeats=repeats,
        crc_backend_used="isal" if gzip_check._fast_zlib is not None else "zlib",
        read_wall_s=_stats(read_w),
        read_cpu_s=_stats(read_c),
        trailer_wall_s=_stats(trailer_w),
        crc_wall_s=_stats(crc_w),
        crc_cpu_s=_stats(crc_c),
        ratio_check_to_read_wall=_stats([a / b for a, b in zip(check_w, read_w)]),
        ratio_check_to_read_cpu=_stats([a / b for a, b in zip(check_c, read_c)]),
        crc_only_by_backend={
            name: {
                "wall_s": _stats(v["wall_s"]),
                "ratio_to_read_wall": _stats([a / b for a, b in zip(v["wall_s"], read_w)]),
                "ratio_to_read_cpu": _stats([a / b for a, b in zip(v["cpu_s"], read_c)]),
            }
            for name, v in by_backend.items()
        },
        one_memory_pass_reference={
            "what": "numpy bitwise_or.reduce over the buffer as uint64: the cost of touching it once",
            "wall_s": _stats(one_pass_w),
            "cpu_s": _stats(one_pass_c),
        },
        full_stream_verification={
            name: {
                "wall_s": _stats(v["wall_s"]),
                "cpu_s": _stats(v["cpu_s"]),
                "ratio_to_read_cpu_median": statistics.median(v["cpu_s"]) / statistics.median(read_c),
            }
            for name, v in verify.items()
        },
    )
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "kits23")
    ap.add_argument("--case", default="case_00151")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--verify-every", type=int, default=3, help="full stream verification every N repeats")
    args = ap.parse_args()
    label = args.shared / "labels" / f"{args.case}.nii.gz"
    if not label.exists():
        raise SystemExit(f"{label} not found (pass --shared)")
    from kits_plugins.utilities import gzip_check

    res: dict = {
        "command": "python " + " ".join(sys.argv),
        "goal": f"trailer + CRC check < {GOAL:.0%} of the SimpleITK read time",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "simpleitk": sitk.Version_VersionString(),
            "zlib": zlib.ZLIB_RUNTIME_VERSION,
            "isal": _version("isal"),
            "zlib_ng": _version("zlib_ng"),
            "crc_backend_used": "isal" if gzip_check._fast_zlib is not None else "zlib",
            "crc_backends": sorted(crc_backends()),
            "load_avg_start": os.getloadavg(),
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        ct = Path(tmp) / f"{args.case}_synthetic_ct.nii.gz"
        res["ct"] = synthesize_ct(label, ct)
        res["files"] = [measure(f, args.repeats, args.verify_every) for f in (label, ct)]
    res["machine"]["load_avg_end"] = os.getloadavg()
    res["ratios"] = {
        f["file"]: {
            "check_to_read_wall_median": f["ratio_check_to_read_wall"]["median"],
            "check_to_read_cpu_median": f["ratio_check_to_read_cpu"]["median"],
            "meets_goal_cpu": f["ratio_check_to_read_cpu"]["median"] < GOAL,
        }
        for f in res["files"]
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))

    print(f"{'file':34s} {'read s':>7s} {'check s':>8s} {'wall %':>7s} {'cpu %':>6s}  crc-only cpu % by backend")
    for f in res["files"]:
        backends = "  ".join(f"{n} {v['ratio_to_read_cpu']['median']:.1%}" for n, v in f["crc_only_by_backend"].items())
        check = f["trailer_wall_s"]["median"] + f["crc_wall_s"]["median"]
        print(f"{f['file']:34s} {f['read_wall_s']['median']:7.3f} {check:8.3f} "
              f"{f['ratio_check_to_read_wall']['median']:7.1%} {f['ratio_check_to_read_cpu']['median']:6.1%}  "
              f"{backends}")  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
