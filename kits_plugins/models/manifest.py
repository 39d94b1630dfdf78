"""``kits_model.json``: the manifest of an exported cascade (what each stage is, its settings, every file's SHA-256).

Layout (format version 1; ``files`` lists every other member of the archive, nothing more, nothing less)::

    {
      "format": "kits-cascade-model",
      "format_version": 1,
      "name": "kits23",                          # plain id: the installed folder's name
      "created": "2026-12-02T01:50:00+00:00",    # UTC, ISO 8601
      "kits_cascade_version": "0.1.0",           # kits_plugins.__version__ of the exporter
      "nnunetv2_version": "2.8.1",
      "stages": {"coarse" | "fine" | "masses": {
          "dataset_id": 221, "dataset_folder": "Dataset221_KiTS2023Coarse", "trainer": "nnUNetTrainerKiTSCoarse",
          "plans": "kitsPlans", "configuration": "3d_lowres", "folds": [0, 1, 2, 3, 4],
          "checkpoint": "checkpoint_final.pth"}},
      "roi": {"margin_mm": 15.0, "min_roi_volume_mm3": 2000.0, "max_regrow": 2},
      "postprocessing": {"min_volume_mm3": {"1": 9594.7, "2": 95.9, "3": 24.0}, "remove_outside_kidney": true},
      "files": {"nnUNet_results/Dataset221_KiTS2023Coarse/<trainer>__<plans>__<config>/plans.json":
                {"sha256": "<64 hex>", "size": 1234}, ...}
    }

A stage's model folder is ``nnUNet_results/<dataset_folder>/<trainer>__<plans>__<configuration>`` (nnU-Net's own
layout, so ``find_model_folder`` finds it with ``results=<model>/nnUNet_results``). Every name in the manifest that
becomes part of a path is checked here with :func:`~kits_plugins.utilities.paths.check_id`.

Compatibility (:func:`compatible_version`): a model runs with this package when both versions have the same major
number and, while the major is 0 (no stability promise), the same minor; manifest format versions in
:data:`SUPPORTED_FORMAT_VERSIONS`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kits_plugins import __version__
from kits_plugins.errors import KitsInputError
from kits_plugins.utilities.paths import check_id

MANIFEST_NAME = "kits_model.json"
FORMAT = "kits-cascade-model"
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)
#: the folder inside an archive (and an installed model) laid out as nnU-Net's results folder
RESULTS_FOLDER = "nnUNet_results"
STAGE_NAMES = ("coarse", "fine", "masses")
#: a manifest larger than this is not one (read before anything else, so it is capped)
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
_VERSION = re.compile(r"(\d+)\.(\d+)")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_DATASET_FOLDER = re.compile(r"Dataset(\d{3})_[A-Za-z0-9._-]+")


def compatible_version(model_version: str, package_version: str = __version__) -> bool:
    """Same major version and, for 0.x, the same minor (see the module docstring)."""
    a, b = _VERSION.match(model_version or ""), _VERSION.match(package_version)
    if a is None or b is None:
        return False
    if a[1] != b[1]:
        return False
    return a[1] != "0" or a[2] == b[2]


@dataclass(frozen=True)
class StageEntry:
    """One stage of an exported cascade (the manifest's ``stages[stage]``)."""

    dataset_id: int
    dataset_folder: str
    trainer: str
    plans: str
    configuration: str
    folds: tuple[int | str, ...]
    checkpoint: str

    @property
    def folder(self) -> str:
        """The stage's model folder inside the archive / installed model (``/``-separated)."""
        return f"{RESULTS_FOLDER}/{self.dataset_folder}/{self.trainer}__{self.plans}__{self.configuration}"

    def required_files(self) -> list[str]:
        """Members the stage cannot run without: plans.json, dataset.json and each fold's checkpoint."""
        return [f"{self.folder}/plans.json", f"{self.folder}/dataset.json"] + [
            f"{self.folder}/fold_{f}/{self.checkpoint}" for f in self.folds
        ]

    def to_json(self) -> dict[str, Any]:
        return {"dataset_id": self.dataset_id, "dataset_folder": self.dataset_folder, "trainer": self.trainer,
                "plans": self.plans, "configuration": self.configuration, "folds": list(self.folds),
                "checkpoint": self.checkpoint}


@dataclass(frozen=True)
class ModelManifest:
    """A parsed, checked ``kits_model.json``."""

    name: str
    kits_cascade_version: str
    nnunetv2_version: str
    created: str
    stages: dict[str, StageEntry]
    margin_mm: float
    min_roi_volume_mm3: float
    max_regrow: int
    min_volume_mm3: dict[int, float]
    remove_outside_kidney: bool = True
    files: dict[str, tuple[str, int]] = field(default_factory=dict)  # member -> (sha256, size)
    format_version: int = FORMAT_VERSION

    @property
    def total_size(self) -> int:
        """Sum of the listed members' sizes in bytes (the cap on what unpacking may write)."""
        return sum(size for _, size in self.files.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": self.format_version,
            "name": self.name,
            "created": self.created,
            "kits_cascade_version": self.kits_cascade_version,
            "nnunetv2_version": self.nnunetv2_version,
            "stages": {stage: entry.to_json() for stage, entry in self.stages.items()},
            "roi": {"margin_mm": self.margin_mm, "min_roi_volume_mm3": self.min_roi_volume_mm3,
                    "max_regrow": self.max_regrow},
            "postprocessing": {"min_volume_mm3": {str(k): v for k, v in sorted(self.min_volume_mm3.items())},
                               "remove_outside_kidney": self.remove_outside_kidney},
            "files": {name: {"sha256": sha, "size": size} for name, (sha, size) in sorted(self.files.items())},
        }


def _get(data: Mapping, key: str, kind: type | tuple[type, ...], source: str | os.PathLike, where: str = "") -> Any:
    value = data.get(key) if isinstance(data, Mapping) else None
    if not isinstance(value, kind) or (kind in (int, float, (int, float)) and isinstance(value, bool)):
        what = "number" if isinstance(kind, tuple) else {"dict": "JSON object", "list": "JSON list", "str": "string",
                                                         "int": "integer"}.get(kind.__name__, kind.__name__)
        raise KitsInputError(f"{source}: {MANIFEST_NAME}: {where}{key!r} missing or not a {what}")
    return value


def _number(data: Mapping, key: str, source: str | os.PathLike, where: str) -> float:
    value = float(_get(data, key, (int, float), source, where))
    if not math.isfinite(value) or value < 0:
        raise KitsInputError(f"{source}: {MANIFEST_NAME}: {where}{key!r} = {value} is not a finite number >= 0")
    return value


def _stage(data: Mapping, stage: str, source: str | os.PathLike) -> StageEntry:
    where = f"stages.{stage}."
    entry = StageEntry(
        dataset_id=_get(data, "dataset_id", int, source, where),
        dataset_folder=check_id(_get(data, "dataset_folder", str, source, where), source, f"{where}dataset_folder"),
        trainer=check_id(_get(data, "trainer", str, source, where), source, f"{where}trainer"),
        plans=check_id(_get(data, "plans", str, source, where), source, f"{where}plans"),
        configuration=check_id(_get(data, "configuration", str, source, where), source, f"{where}configuration"),
        folds=tuple(_get(data, "folds", list, source, where)),
        checkpoint=check_id(_get(data, "checkpoint", str, source, where), source, f"{where}checkpoint"),
    )
    m = _DATASET_FOLDER.fullmatch(entry.dataset_folder)
    if m is None or int(m[1]) != entry.dataset_id:
        raise KitsInputError(f"{source}: {MANIFEST_NAME}: {where}dataset_folder {entry.dataset_folder!r} is not "
                             f"Dataset{entry.dataset_id:03d}_<name>")
    if "__" in entry.trainer + entry.plans:
        raise KitsInputError(f"{source}: {MANIFEST_NAME}: {where}trainer/plans may not contain '__'")
    bad = [f for f in entry.folds if not (f == "all" or (isinstance(f, int) and not isinstance(f, bool) and f >= 0))]
    if not entry.folds or bad or len(set(entry.folds)) != len(entry.folds):
        raise KitsInputError(f"{source}: {MANIFEST_NAME}: {where}folds {list(entry.folds)} is not a non-empty list of "
                             "distinct folds (integers >= 0 or 'all')")
    return entry


def parse_manifest(data: object, source: str | os.PathLike) -> ModelManifest:
    """Check a loaded ``kits_model.json`` (format, version, names, stages, settings, files); one-line
    KitsInputError naming ``source`` on the first problem. Member names of ``files`` are checked by the caller
    against the archive (:func:`kits_plugins.models.archive.check_member_name`)."""
    if not isinstance(data, Mapping) or data.get("format") != FORMAT:
        raise KitsInputError(f"{source}: {MANIFEST_NAME} is not a kits-cascade model manifest (format != {FORMAT!r})")
    fmt = data.get("format_version")
    if fmt not in SUPPORTED_FORMAT_VERSIONS:
        raise KitsInputError(f"{source}: manifest format version {fmt!r} is not supported by kits-cascade "
                             f"{__version__} (supported: {list(SUPPORTED_FORMAT_VERSIONS)})")
    version = _get(data, "kits_cascade_version", str, source)
    if not compatible_version(version):
        raise KitsInputError(f"{source}: model exported by kits-cascade {version}, incompatible with the installed "
                             f"{__version__} (same major version needed, and the same minor while it is 0); install "
                             f"kits-cascade {version} or export the model again")
    name = check_id(_get(data, "name", str, source), source, "model name")
    stages_data = _get(data, "stages", dict, source)
    if sorted(stages_data) != sorted(STAGE_NAMES):
        raise KitsInputError(f"{source}: {MANIFEST_NAME}: stages {sorted(stages_data)} are not {list(STAGE_NAMES)}")
    stages = {stage: _stage(_get(stages_data, stage, dict, source, "stages."), stage, source) for stage in STAGE_NAMES}
    folders: dict[int, str] = {}
    for entry in stages.values():
        if folders.setdefault(entry.dataset_id, entry.dataset_folder) != entry.dataset_folder:
            raise KitsInputError(f"{source}: {MANIFEST_NAME}: dataset {entry.dataset_id} has two folders "
                                 f"({folders[entry.dataset_id]}, {entry.dataset_folder})")
    roi = _get(data, "roi", dict, source)
    post = _get(data, "postprocessing", dict, source)
    min_volume: dict[int, float] = {}
    for key, value in _get(post, "min_volume_mm3", dict, source, "postprocessing.").items():
        if key not in ("1", "2", "3"):
            raise KitsInputError(f"{source}: {MANIFEST_NAME}: postprocessing.min_volume_mm3 key {key!r} is not a "
                                 "label 1, 2 or 3")
        min_volume[int(key)] = _number({key: value}, key, source, "postprocessing.min_volume_mm3.")
    if post.get("remove_outside_kidney", True) is not True:
        raise KitsInputError(f"{source}: {MANIFEST_NAME}: postprocessing.remove_outside_kidney must be true (the "
                             "cascade always removes masses outside the kidneys)")
    files: dict[str, tuple[str, int]] = {}
    for member, info in _get(data, "files", dict, source).items():
        sha = _get(info, "sha256", str, source, f"files[{member!r}].")
        size = _get(info, "size", int, source, f"files[{member!r}].")
        if not _SHA256.fullmatch(sha) or size < 0:
            raise KitsInputError(f"{source}: {MANIFEST_NAME}: files[{member!r}] has no valid sha256/size")
        files[member] = (sha, size)
    manifest = ModelManifest(
        name=name,
        kits_cascade_version=version,
        nnunetv2_version=str(data.get("nnunetv2_version", "unknown")),
        created=str(data.get("created", "")),
        stages=stages,
        margin_mm=_number(roi, "margin_mm", source, "roi."),
        min_roi_volume_mm3=_number(roi, "min_roi_volume_mm3", source, "roi."),
        max_regrow=int(_number(roi, "max_regrow", source, "roi.")),
        min_volume_mm3=min_volume,
        files=files,
        format_version=fmt,
    )
    for entry in stages.values():
        for needed in entry.required_files():
            if needed not in files:
                raise KitsInputError(f"{source}: {MANIFEST_NAME}: {needed} (needed by the stage model) is not listed "
                                     "in its files")
    return manifest


def stage_models(manifest: ModelManifest, folds: list[int | str] | None = None,
                 source: str | os.PathLike = "") -> dict:
    """``{stage: StageModel}`` of the manifest's models; ``folds`` (``kits predict -m ... -f``) chooses a subset of
    the exported folds (a fold that was not exported is a KitsInputError)."""
    from kits_plugins.inference.model_discovery import StageModel

    out = {}
    for stage, e in manifest.stages.items():
        chosen = tuple(e.folds)
        if folds:
            missing = [f for f in folds if f not in e.folds]
            if missing:
                raise KitsInputError(f"{source or manifest.name}: fold(s) {missing} not in the model (stage {stage} "
                                     f"has folds {list(e.folds)})")
            chosen = tuple(folds)
        out[stage] = StageModel(e.dataset_id, e.trainer, e.configuration, plans=e.plans, folds=chosen,
                                checkpoint=e.checkpoint)
    return out
