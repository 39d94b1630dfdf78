"""nnU-Net raw dataset folders: where they live, how they are written (staged, then renamed) and their
``dataset.json`` (the label definitions themselves live in :mod:`kits_plugins.utilities.labels`).

Every dataset is built in a hidden temporary folder next to its target and renamed into place only when
complete, so an interrupted or failed run never leaves a half-written dataset; an existing dataset is
replaced only with ``overwrite``. The staging folder gets ordinary permissions (0777 & ~umask, as ``mkdir`` gives;
``mkdtemp`` makes it 0700), so a dataset on a shared cluster is as readable as any folder its user creates, and a
staging folder left by a killed run is removed by the next one (:mod:`kits_plugins.utilities.staging`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
from tqdm import tqdm

from kits_plugins.constants import FILE_ENDING, READER_WRITER
from kits_plugins.utilities.image_io import KitsInputError
from kits_plugins.utilities.processes import worker_pool
from kits_plugins.utilities.staging import make_temp_dir


def raw_root(raw: str | os.PathLike | None = None) -> Path:
    """``raw`` if given, else ``$nnUNet_raw``; a clear error if neither is set."""
    if raw is None:
        raw = os.environ.get("nnUNet_raw")
        if not raw:
            raise KitsInputError("nnUNet_raw is not set: export nnUNet_raw=/path/to/nnUNet_raw or pass --raw DIR")
    return Path(raw)


def find_dataset(root: Path, dataset_id: int) -> Path:
    """The folder ``DatasetXXX_*`` of ``dataset_id`` under ``root`` (exactly one)."""
    found = sorted(p for p in root.glob(f"Dataset{dataset_id:03d}_*") if p.is_dir())
    if not found:
        raise KitsInputError(f"{root}: no Dataset{dataset_id:03d}_* folder (run `kits convert` first)")
    if len(found) > 1:
        raise KitsInputError(f"{root}: several folders for dataset {dataset_id}: {[p.name for p in found]}")
    return found[0]


def check_writable(target: Path, overwrite: bool) -> None:
    """Refuse before any work if ``target`` exists and ``overwrite`` is off."""
    if target.exists() and not overwrite:
        raise KitsInputError(f"{target}: dataset already exists (pass --overwrite to replace it)")
    other = [p for p in target.parent.glob(f"{target.name[:10]}_*") if p.name != target.name and p.is_dir()]
    if other:
        raise KitsInputError(f"{target.parent}: another folder uses id {target.name[7:10]}: {other[0].name}")


@contextmanager
def staged_datasets(targets: Sequence[Path], overwrite: bool) -> Iterator[list[Path]]:
    """Temporary folders for ``targets``; on success they replace the targets together, on error vanish."""
    for t in targets:
        check_writable(t, overwrite)
    staging = []
    try:
        for t in targets:
            t.parent.mkdir(parents=True, exist_ok=True)
            staging.append(make_temp_dir(t))
        yield staging
        for t, s in zip(targets, staging):
            old = None
            if t.exists():
                old = make_temp_dir(t, suffix=".old")
                os.replace(t, old / t.name)
            os.replace(s, t)
            if old is not None:
                shutil.rmtree(old)
    finally:
        for s in staging:
            if s.exists():
                shutil.rmtree(s, ignore_errors=True)


def write_dataset_json(
    folder: Path,
    channel_names: dict,
    labels: dict,
    num_training_cases: int,
    regions_class_order: Sequence[int] | None = None,
    name: str = "KiTS2023",
    description: str = "",
) -> None:
    """nnU-Net's ``generate_dataset_json`` with our reader/writer (NibabelIOWithReorient) and file ending."""
    generate_dataset_json(
        str(folder),
        dict(channel_names),  # generate_dataset_json edits its arguments in place
        labels=dict(labels),
        num_training_cases=num_training_cases,
        file_ending=FILE_ENDING,
        regions_class_order=tuple(regions_class_order) if regions_class_order is not None else None,
        dataset_name=name,
        reference="https://kits-challenge.org/kits23/",
        license="CC BY-NC-SA 4.0 (KiTS23 data)",
        description=description,
        overwrite_image_reader_writer=READER_WRITER,
        converted_by="kits-cascade",
    )


def run_jobs(func: Callable, jobs: Sequence, num_processes: int, desc: str) -> Iterable:
    """``func(job)`` for each job in order, in ``num_processes`` spawned workers (1: in this process), with tqdm.
    The workers end with this process (:func:`kits_plugins.utilities.processes.worker_pool`)."""
    if num_processes <= 1 or len(jobs) <= 1:
        for job in tqdm(jobs, desc=desc, unit="case"):
            yield func(job)
        return
    with worker_pool(num_processes) as pool:
        yield from tqdm(pool.map(func, jobs), total=len(jobs), desc=desc, unit="case")
