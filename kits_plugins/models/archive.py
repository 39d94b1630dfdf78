"""One-file model archives: export a trained cascade, verify an archive, unpack it (``kits export-model`` /
``install-model`` / ``predict -m``).

An archive is a zip holding ``kits_model.json`` (:mod:`kits_plugins.models.manifest`) and, per stage,
``nnUNet_results/<DatasetXXX_Name>/<trainer>__<plans>__<config>/`` with the files nnU-Net's own
``nnunetv2/model_sharing/model_export.py`` exports that inference uses or that document the training:
``plans.json``, ``dataset.json``, ``dataset_fingerprint.json`` (when present; nnU-Net requires it),
``fold_K/<checkpoint>`` for the chosen folds and ``fold_K/progress.png`` (when present). Left out, unlike nnU-Net:
``debug.json`` and ``validation/summary.json`` (they hold the training machine's absolute paths and case ids,
and prediction needs neither), cross-validation results and ensembles (the cascade has one model per stage).

We do not install with nnU-Net's ``install_model_from_zip_file``: it calls ``ZipFile.extractall`` straight into
``$nnUNet_results``, with no checksums, no check of member paths (``zipfile`` rewrites ``..`` and absolute names
silently instead of refusing them) and no limit on what is written. Here every member is checked before anything
is written (:func:`verify_archive`), streamed into a temporary folder next to the destination with its size
counted and its SHA-256 compared to the manifest, and the folder is renamed into place only when all matched;
on any failure the temporary folder is removed, so a refused archive leaves nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from kits_plugins import __version__
from kits_plugins.constants import DEFAULT_MARGIN_MM, DEFAULT_MIN_ROI_VOLUME_MM3, DEFAULT_MIN_VOLUME_MM3
from kits_plugins.errors import KitsInputError
from kits_plugins.models.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    RESULTS_FOLDER,
    ModelManifest,
    StageEntry,
    parse_manifest,
)
from kits_plugins.utilities.paths import ID_PATTERN, check_id
from kits_plugins.utilities.staging import atomic_path, make_temp_dir

CHUNK = 1 << 20
#: optional files of a stage folder / of a fold folder that are exported when present
OPTIONAL_STAGE_FILES = ("dataset_fingerprint.json",)
OPTIONAL_FOLD_FILES = ("progress.png",)


def _nnunet_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nnunetv2")
    except PackageNotFoundError:
        return "unknown"


# ------------------------------------------------------------------------------------------------------- export
def export_model(
    out_zip: str | os.PathLike,
    models: dict,
    results: str | os.PathLike | None = None,
    name: str | None = None,
    margin_mm: float = DEFAULT_MARGIN_MM,
    min_roi_volume_mm3: float = DEFAULT_MIN_ROI_VOLUME_MM3,
    max_regrow: int | None = None,
    progress: Callable[[str], None] | None = print,
) -> ModelManifest:
    """Write the three stage models ``models`` (``{stage: StageModel}``, found in ``results`` or
    ``$nnUNet_results`` with ``find_model_folder`` / ``resolve_folds``) and their settings into ``out_zip``.

    Written under a temporary name and renamed. ``name`` (default: the zip's stem) must be a plain id.
    Checkpoints are stored, not deflated (float weights shrink by a few percent at a large time cost);
    the JSON files are deflated.
    """
    from kits_plugins.inference.cascade import DEFAULT_MAX_REGROW
    from kits_plugins.inference.model_discovery import find_model_folder, resolve_folds

    out_zip = Path(out_zip)
    name = check_id(name if name is not None else out_zip.name.removesuffix(".zip"), out_zip, "model name")
    entries: dict[str, StageEntry] = {}
    sources: dict[str, Path] = {}  # member -> file
    for stage in ("coarse", "fine", "masses"):
        model = models[stage]
        folder = find_model_folder(model, results)
        folds = resolve_folds(folder, model)
        entry = StageEntry(model.dataset_id, folder.parent.name, model.trainer, model.plans, model.configuration,
                           tuple(folds), model.checkpoint)
        check_id(entry.dataset_folder, folder, "dataset folder")
        entries[stage] = entry
        files = ["plans.json", "dataset.json"] + [f for f in OPTIONAL_STAGE_FILES if (folder / f).is_file()]
        for f in folds:
            files.append(f"fold_{f}/{model.checkpoint}")
            files += [f"fold_{f}/{o}" for o in OPTIONAL_FOLD_FILES if (folder / f"fold_{f}" / o).is_file()]
        for rel in files:
            sources[f"{entry.folder}/{rel}"] = folder / rel
        if progress:
            size = sum((folder / rel).stat().st_size for rel in files)
            progress(f"kits export-model: {stage}: {folder} folds {folds} ({len(files)} files, {size / 1e6:.1f} MB)")
    hashes: dict[str, tuple[str, int]] = {}
    with atomic_path(out_zip) as tmp, zipfile.ZipFile(tmp, "w", allowZip64=True) as zf:
        for member, source in sources.items():
            info = zipfile.ZipInfo.from_file(source, member, strict_timestamps=False)
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.compress_type = zipfile.ZIP_STORED if member.endswith((".pth", ".png")) else zipfile.ZIP_DEFLATED
            digest, size = hashlib.sha256(), 0
            with open(source, "rb") as src, zf.open(info, "w") as dst:
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    dst.write(chunk)
            hashes[member] = (digest.hexdigest(), size)
        manifest = ModelManifest(
            name=name,
            kits_cascade_version=__version__,
            nnunetv2_version=_nnunet_version(),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            stages=entries,
            margin_mm=float(margin_mm),
            min_roi_volume_mm3=float(min_roi_volume_mm3),
            max_regrow=int(DEFAULT_MAX_REGROW if max_regrow is None else max_regrow),
            min_volume_mm3=dict(DEFAULT_MIN_VOLUME_MM3),
            remove_outside_kidney=True,  # what KiTSCascadePredictor._postprocess passes
            files=hashes,
        )
        info = zipfile.ZipInfo(MANIFEST_NAME, date_time=datetime.now().timetuple()[:6])
        info.external_attr = (stat.S_IFREG | 0o644) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(info, json.dumps(manifest.to_json(), indent=2) + "\n")
    if progress:
        progress(f"kits export-model: {out_zip} written ({out_zip.stat().st_size / 1e6:.1f} MB, "
                 f"{len(hashes) + 1} members, format {FORMAT_VERSION}, name {name})")
    return manifest


# ------------------------------------------------------------------------------------------------------- verify
def check_member_name(name: str, source: str | os.PathLike) -> str:
    """``name`` if it is a relative ``/``-separated path of plain names (:data:`ID_PATTERN`), else a
    KitsInputError naming the archive and the member: absolute, ``..``, backslash, drive letter, empty parts."""

    def refuse(why: str) -> KitsInputError:
        return KitsInputError(f"{source}: member {name!r} refused: {why}; nothing was written")

    if "\\" in name:
        raise refuse("backslash in the path")
    if name.startswith("/"):
        raise refuse("absolute path")
    if ":" in name:
        raise refuse("drive letter or ':' in the path")
    parts = name.split("/")
    if ".." in parts:
        raise refuse("'..' component (would land outside the destination)")
    if name.endswith("/"):
        raise refuse("directory entry (the archive holds files only)")
    if not all(ID_PATTERN.fullmatch(p) for p in parts):
        raise refuse("not a relative path of plain names (letters, digits, '.', '_', '-')")
    return name


def _check_info(info: zipfile.ZipInfo, source: str | os.PathLike) -> None:
    """The entry itself: a regular file (no symlink, device, folder), not encrypted."""
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if stat.S_ISLNK(mode):
        raise KitsInputError(f"{source}: member {info.filename!r} refused: symbolic link; nothing was written")
    if kind not in (0, stat.S_IFREG):  # 0: written without Unix modes (e.g. on Windows)
        raise KitsInputError(f"{source}: member {info.filename!r} refused: not a regular file (mode {oct(mode)}); "
                             "nothing was written")
    if info.flag_bits & 0x1:
        raise KitsInputError(f"{source}: member {info.filename!r} refused: encrypted; nothing was written")


def read_manifest(zf: zipfile.ZipFile, source: str | os.PathLike) -> ModelManifest:
    """Parse the archive's ``kits_model.json`` (size capped at :data:`MAX_MANIFEST_BYTES`)."""
    try:
        info = zf.getinfo(MANIFEST_NAME)
    except KeyError:
        raise KitsInputError(f"{source}: no {MANIFEST_NAME}: not a model archive written by kits export-model") from None
    if info.file_size > MAX_MANIFEST_BYTES:
        raise KitsInputError(f"{source}: {MANIFEST_NAME} is {info.file_size} bytes, not a manifest")
    try:
        with zf.open(info) as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile, NotImplementedError) as e:
        raise KitsInputError(f"{source}: {MANIFEST_NAME} is corrupt ({e})") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise KitsInputError(f"{source}: {MANIFEST_NAME} is not valid JSON ({e})") from None
    return parse_manifest(data, source)


def verify_archive(zf: zipfile.ZipFile, source: str | os.PathLike) -> ModelManifest:
    """Every check that needs no member's content: entry names and kinds, no duplicates, the manifest, and the
    members equal to the manifest's ``files`` with the sizes it gives. Raises KitsInputError on the first problem."""
    infos = zf.infolist()
    seen: set[str] = set()
    for info in infos:
        check_member_name(info.filename, source)
        _check_info(info, source)
        if info.filename in seen:
            raise KitsInputError(f"{source}: member {info.filename!r} refused: duplicate name; nothing was written")
        seen.add(info.filename)
    manifest = read_manifest(zf, source)
    for info in infos:
        if info.filename == MANIFEST_NAME:
            continue
        expected = manifest.files.get(info.filename)
        if expected is None:
            raise KitsInputError(f"{source}: member {info.filename!r} refused: not listed in {MANIFEST_NAME}; "
                                 "nothing was written")
        if info.file_size != expected[1]:
            raise KitsInputError(f"{source}: member {info.filename!r} refused: {info.file_size} bytes, the manifest "
                                 f"says {expected[1]}; nothing was written")
    parents = {m[:i] for m in seen for i, c in enumerate(m) if c == "/"}
    for member in manifest.files:
        check_member_name(member, source)
        if member in parents:
            raise KitsInputError(f"{source}: member {member!r} refused: also a folder of other members; "
                                 "nothing was written")
        if member not in seen:
            raise KitsInputError(f"{source}: member {member!r} listed in {MANIFEST_NAME} is missing from the archive; "
                                 "nothing was written")
    return manifest


def _open_zip(zip_path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(zip_path)
    except FileNotFoundError:
        raise KitsInputError(f"{zip_path}: no such model archive") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as e:
        raise KitsInputError(f"{zip_path}: not a readable zip archive ({e})") from None


def _extract_member(zf: zipfile.ZipFile, member: str, expected: tuple[str, int], into: Path,
                    source: str | os.PathLike) -> None:
    """Stream one member into ``into``: at most the manifest's size is accepted, then its SHA-256 is compared."""
    sha, size = expected
    target = into.joinpath(*member.split("/"))
    target.parent.mkdir(parents=True, exist_ok=True)
    digest, n = hashlib.sha256(), 0
    try:
        with zf.open(member) as src, open(target, "xb") as dst:
            while chunk := src.read(CHUNK):
                n += len(chunk)
                if n > size:
                    raise KitsInputError(f"{source}: member {member!r} refused: more than the {size} bytes the "
                                         "manifest gives; nothing was written")
                digest.update(chunk)
                dst.write(chunk)
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile, NotImplementedError) as e:  # CRC, truncation, method
        raise KitsInputError(f"{source}: member {member!r} is corrupt ({e}); nothing was written") from None
    if n != size or digest.hexdigest() != sha:
        raise KitsInputError(f"{source}: member {member!r} refused: SHA-256 or size differs from {MANIFEST_NAME} "
                             f"(tampered or corrupt; {n} bytes read, {size} expected); nothing was written")


def extract_archive(zip_path: str | os.PathLike, target: str | os.PathLike, force: bool = False) -> ModelManifest:
    """Verify ``zip_path`` and unpack it as the folder ``target`` (see :func:`unpack_verified`)."""
    zip_path = Path(zip_path)
    with _open_zip(zip_path) as zf:
        return unpack_verified(zf, verify_archive(zf, zip_path), zip_path, Path(target), force)


def unpack_verified(zf: zipfile.ZipFile, manifest: ModelManifest, source: str | os.PathLike, target: Path,
                    force: bool = False) -> ModelManifest:
    """Unpack an archive that passed :func:`verify_archive` as the folder ``target`` (parents created as needed).

    Members are streamed into a temporary folder next to ``target`` (never ``ZipFile.extractall``), each checked
    against the manifest's size and SHA-256; the folder is renamed to ``target`` when all matched and removed on
    any failure (parents created here are removed too), so a refused archive leaves nothing. An existing
    ``target`` is an error unless ``force`` (then it is replaced, only after the new one is complete).
    """
    if os.path.lexists(target) and not force:
        raise KitsInputError(f"{source}: {target} exists (model {manifest.name!r} is installed); pass --force to "
                             "replace it; nothing was written")
    created: list[Path] = []
    parent = target.parent
    while not os.path.lexists(parent):
        created.append(parent)
        parent = parent.parent
    if created:
        target.parent.mkdir(parents=True)
    try:
        free = shutil.disk_usage(target.parent).free
        if manifest.total_size > free:
            raise KitsInputError(f"{source}: model needs {manifest.total_size / 1e6:.1f} MB, {target.parent} "
                                 f"has {free / 1e6:.1f} MB free; nothing was written")
        tmp = make_temp_dir(target)
        try:
            for member, expected in manifest.files.items():
                _extract_member(zf, member, expected, tmp, source)
            (tmp / MANIFEST_NAME).write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
            _replace_folder(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except BaseException:
        for folder in created:  # innermost first; only the ones made here, and only when empty
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    return manifest


def _replace_folder(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``; an existing ``target`` is moved aside first and removed after."""
    if not os.path.lexists(target):
        os.rename(new, target)
        return
    old = make_temp_dir(target, suffix=".old")
    os.rmdir(old)
    os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()


# ----------------------------------------------------------------------------------------------------- installed
def models_dir() -> Path:
    """Installed models' folder: ``$KITS_MODELS``, else ``platformdirs.user_data_dir("kits-cascade")/models``."""
    env = os.environ.get("KITS_MODELS")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_data_dir("kits-cascade", appauthor=False)) / "models"


def install_model(zip_path: str | os.PathLike, dest: str | os.PathLike | None = None,
                  force: bool = False) -> tuple[Path, ModelManifest]:
    """Verify ``zip_path`` and unpack it into ``dest/<name>`` (``dest``: :func:`models_dir`); the folder and the
    manifest."""
    zip_path = Path(zip_path)
    dest = Path(dest) if dest is not None else models_dir()
    with _open_zip(zip_path) as zf:
        manifest = verify_archive(zf, zip_path)
        target = dest / check_id(manifest.name, zip_path, "model name")
        return target, unpack_verified(zf, manifest, zip_path, target, force=force)


def load_installed(folder: str | os.PathLike) -> ModelManifest:
    """The manifest of an installed model folder, checked; every listed file must exist with its size (the
    SHA-256 were compared when it was unpacked; hashing gigabytes of checkpoints on every run is not repeated)."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise KitsInputError(f"{folder}: no {MANIFEST_NAME}: not a model installed by kits install-model") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise KitsInputError(f"{path}: not valid JSON ({e})") from None
    manifest = parse_manifest(data, path)
    for member, (_, size) in manifest.files.items():
        check_member_name(member, path)
        file = folder.joinpath(*member.split("/"))
        if not file.is_file() or file.is_symlink() or file.stat().st_size != size:
            raise KitsInputError(f"{folder}: {member} is missing or has another size than {MANIFEST_NAME} gives "
                                 f"({size} bytes); install the model again")
    return manifest


def resolve_model(spec: str, scratch: str | os.PathLike | None = None) -> tuple[Path, ModelManifest]:
    """``kits predict -m SPEC``: an existing zip (verified and unpacked into ``scratch``, a folder the caller
    removes), an existing folder holding ``kits_model.json``, else the name of a model in :func:`models_dir`.
    Returns the model folder (its ``nnUNet_results`` is the stage models' results folder) and the manifest."""
    path = Path(spec)
    if path.is_file():
        if scratch is None:
            raise ValueError("a zip model needs a scratch folder")
        with _open_zip(path) as zf:
            manifest = verify_archive(zf, path)
            target = Path(scratch) / manifest.name
            return target, unpack_verified(zf, manifest, path, target)
    if path.is_dir():
        return path, load_installed(path)
    root = models_dir()
    if not ID_PATTERN.fullmatch(spec):
        raise KitsInputError(f"-m {spec}: no such file or folder, and not a model name")
    folder = root / spec
    if not folder.is_dir():
        present = sorted(p.name for p in root.iterdir() if (p / MANIFEST_NAME).is_file()) if root.is_dir() else []
        raise KitsInputError(f"-m {spec}: no such file or folder, and no installed model {spec!r} in {root} "
                             f"(installed: {present or 'none'}; set KITS_MODELS or use kits install-model)")
    return folder, load_installed(folder)


def model_results(folder: str | os.PathLike) -> Path:
    """The nnU-Net results folder inside a model folder."""
    return Path(folder) / RESULTS_FOLDER


def scratch_dir() -> tempfile.TemporaryDirectory[str]:
    """A temporary folder for a zip unpacked for one run (``kits predict -m file.zip``)."""
    return tempfile.TemporaryDirectory(prefix="kits-model-")
