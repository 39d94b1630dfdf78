"""``kits_plugins.models.archive``: export writes the stage folders and a manifest with every member's SHA-256;
install unpacks a verified archive and refuses every bad one (paths, links, duplicates, checksums, versions,
an installed model) with one line naming the archive and the member, leaving nothing anywhere.

The stage model folders here hold placeholder bytes (export and install never load a checkpoint); the end-to-end
test with real loadable models is tests/inference/test_model_archive_predict.py."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import warnings
import zipfile
from pathlib import Path

import pytest

from kits_plugins import __version__
from kits_plugins.cli import main
from kits_plugins.constants import DEFAULT_MARGIN_MM, DEFAULT_MIN_ROI_VOLUME_MM3, DEFAULT_MIN_VOLUME_MM3
from kits_plugins.errors import KitsInputError
from kits_plugins.inference.model_discovery import DEFAULT_STAGE_MODELS
from kits_plugins.models import archive
from kits_plugins.models.manifest import MANIFEST_NAME


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` (links not followed) with its content (None for folders)."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = None
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = Path(p).read_bytes() if not os.path.islink(p) else b"LINK"
    return out


def rewrite(src: Path, dst: Path, members=None, manifest=None, rehash: bool = True) -> None:
    """Copy archive ``src`` to ``dst``: ``members(list of [ZipInfo, bytes])`` edits the members (not the manifest),
    ``manifest(dict)`` the manifest; with ``rehash``, ``files`` is rebuilt from the edited members first."""
    with zipfile.ZipFile(src) as zf:
        items = [[i, zf.read(i)] for i in zf.infolist() if i.filename != MANIFEST_NAME]
        data = json.loads(zf.read(MANIFEST_NAME))
    if members:
        members(items)
    if rehash:
        data["files"] = {i.filename: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)} for i, b in items}
    if manifest:
        manifest(data)
    with warnings.catch_warnings(), zipfile.ZipFile(dst, "w") as zf:
        warnings.simplefilter("ignore")  # duplicate names
        for info, content in items:
            zf.writestr(info, content)
        zf.writestr(MANIFEST_NAME, json.dumps(data))


def test_export_writes_the_chosen_files_and_a_manifest_with_every_checksum(exported, datasets):
    results, out = exported
    with zipfile.ZipFile(out) as zf:
        names = sorted(zf.namelist())
        manifest = json.loads(zf.read(MANIFEST_NAME))
        contents = {n: zf.read(n) for n in names}
    expected = [MANIFEST_NAME]
    for stage, dataset in datasets.items():
        base = f"nnUNet_results/{dataset}/{DEFAULT_STAGE_MODELS[stage].identifier}"
        expected += [f"{base}/{f}" for f in ("plans.json", "dataset.json", "dataset_fingerprint.json",
                                             "fold_0/checkpoint_final.pth", "fold_0/progress.png",
                                             "fold_1/checkpoint_final.pth")]
    assert names == sorted(expected)  # no debug.json, validation/, other checkpoints
    for name in expected[1:]:
        assert contents[name] == (results / name.removeprefix("nnUNet_results/")).read_bytes()
        assert manifest["files"][name] == {"sha256": hashlib.sha256(contents[name]).hexdigest(),
                                           "size": len(contents[name])}
    assert sorted(manifest["files"]) == sorted(expected[1:])
    assert (manifest["format"], manifest["format_version"], manifest["name"]) == ("kits-cascade-model", 1, "tiny")
    assert manifest["kits_cascade_version"] == __version__ and manifest["nnunetv2_version"][0].isdigit()
    assert manifest["stages"]["masses"] == {
        "dataset_id": 223, "dataset_folder": "Dataset223_KiTS2023Masses", "trainer": "nnUNetTrainerKiTSSurface",
        "plans": "kitsPlans", "configuration": "3d_fullres", "folds": [0, 1], "checkpoint": "checkpoint_final.pth"}
    assert manifest["stages"]["coarse"]["configuration"] == "3d_lowres"
    assert manifest["roi"] == {"margin_mm": DEFAULT_MARGIN_MM, "min_roi_volume_mm3": DEFAULT_MIN_ROI_VOLUME_MM3,
                               "max_regrow": 2}
    assert manifest["postprocessing"] == {
        "min_volume_mm3": {str(k): v for k, v in DEFAULT_MIN_VOLUME_MM3.items()}, "remove_outside_kidney": True}
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary left


def test_export_cli_folds_checkpoint_settings_and_progress(tmp_path, capsys, results_factory, datasets):
    results = results_factory(tmp_path / "results")
    out = tmp_path / "m1.zip"
    assert main(["export-model", str(out), "--results", str(results), "-f", "1", "-chk", "checkpoint_best.pth",
                 "--margin-mm", "7.5", "--max-regrow", "0"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 4 and printed[0].startswith("kits export-model: coarse: ") and "MB" in printed[-1]
    with zipfile.ZipFile(out) as zf:
        manifest = json.loads(zf.read(MANIFEST_NAME))
        assert zf.read(f"nnUNet_results/{datasets['fine']}/{DEFAULT_STAGE_MODELS['fine'].identifier}"
                       "/fold_1/checkpoint_best.pth") == b"best"
    assert manifest["name"] == "m1"  # from the file name
    assert {s["checkpoint"] for s in manifest["stages"].values()} == {"checkpoint_best.pth"}
    assert all(s["folds"] == [1] for s in manifest["stages"].values())
    assert manifest["roi"] == {"margin_mm": 7.5, "min_roi_volume_mm3": DEFAULT_MIN_ROI_VOLUME_MM3, "max_regrow": 0}
    assert main(["export-model", str(tmp_path / "x.zip"), "--results", str(results), "-f", "3"]) == 2
    assert "no checkpoint_final.pth for fold(s) [3]" in capsys.readouterr().err
    assert main(["export-model", str(tmp_path / "y.zip"), "--results", str(results), "--name", "../up"]) == 2
    assert "model name '../up' is not a plain name" in capsys.readouterr().err
    assert not (tmp_path / "x.zip").exists() and not (tmp_path / "y.zip").exists()


def test_install_unpacks_verified_files_and_predict_finds_them(exported, tmp_path, capsys, datasets):
    results, out = exported
    dest = tmp_path / "models"
    assert main(["install-model", str(out), "--dest", str(dest)]) == 0
    assert "kits predict -m tiny" in capsys.readouterr().out
    folder = dest / "tiny"
    with zipfile.ZipFile(out) as zf:
        for name in zf.namelist():
            if name != MANIFEST_NAME:
                assert (folder / name).read_bytes() == zf.read(name)
        assert json.loads((folder / MANIFEST_NAME).read_text()) == json.loads(zf.read(MANIFEST_NAME))
    assert sorted(os.listdir(dest)) == ["tiny"]  # no temporary left
    manifest = archive.load_installed(folder)
    assert manifest.stages["fine"].folds == (0, 1)
    assert archive.resolve_model(str(folder)) == (folder, manifest)
    # an installed folder that lost a file is refused before any model loads
    (folder / "nnUNet_results" / datasets["fine"] / DEFAULT_STAGE_MODELS["fine"].identifier / "plans.json").unlink()
    with pytest.raises(KitsInputError, match="plans.json is missing .* install the model again"):
        archive.load_installed(folder)


def test_default_models_folder_and_names(exported, tmp_path, monkeypatch):
    _, out = exported
    monkeypatch.setenv("KITS_MODELS", str(tmp_path / "env_models"))
    folder, manifest = archive.install_model(out)
    assert folder == tmp_path / "env_models" / "tiny" and folder.is_dir()
    assert archive.resolve_model("tiny") == (folder, manifest)
    with pytest.raises(KitsInputError, match=r"no installed model 'nope' in .*env_models \(installed: \['tiny'\]"):
        archive.resolve_model("nope")
    monkeypatch.delenv("KITS_MODELS")
    import platformdirs

    assert archive.models_dir() == Path(platformdirs.user_data_dir("kits-cascade", appauthor=False)) / "models"


def test_force_replaces_an_installed_model(exported, tmp_path):
    results, out = exported
    dest = tmp_path / "models"
    archive.install_model(out, dest)
    (dest / "tiny" / "stray.txt").write_text("old")
    archive.install_model(out, dest, force=True)
    assert not (dest / "tiny" / "stray.txt").exists() and (dest / "tiny" / MANIFEST_NAME).is_file()
    assert sorted(os.listdir(dest)) == ["tiny"]


def _link(items):
    info = zipfile.ZipInfo("nnUNet_results/link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    items.append([info, b"../../../../etc/passwd"])


def _tamper_last(items):
    items[-1][1] = bytes([items[-1][1][0] ^ 1]) + items[-1][1][1:]  # same size, other content


def _set(key, value):
    return lambda data: data.__setitem__(key, value)


# (case id, members edit, manifest edit, rehash, expected message)
REFUSALS = [
    ("parent", lambda items: items.append([zipfile.ZipInfo("../evil"), b"x"]), None, True,
     "member '../evil' refused: '..' component"),
    ("nested_parent", lambda items: items.append([zipfile.ZipInfo("nnUNet_results/../../evil"), b"x"]), None, True,
     "member 'nnUNet_results/../../evil' refused: '..' component"),
    ("absolute", None, None, True, "refused: absolute path"),  # member added in the test (needs tmp_path)
    ("backslash", lambda items: items.append([zipfile.ZipInfo("a\\..\\evil"), b"x"]), None, True,
     "refused: backslash"),
    ("drive", lambda items: items.append([zipfile.ZipInfo("C:/evil"), b"x"]), None, True, "refused: drive letter"),
    ("symlink", _link, None, True, "member 'nnUNet_results/link' refused: symbolic link"),
    ("duplicate", lambda items: items.append([items[0][0], items[0][1]]), None, True, "refused: duplicate name"),
    ("directory", lambda items: items.append([zipfile.ZipInfo("nnUNet_results/d/"), b""]), None, False,
     "member 'nnUNet_results/d/' refused: directory entry"),
    ("extra", lambda items: items.append([zipfile.ZipInfo("nnUNet_results/extra.txt"), b"x"]), None, False,
     "member 'nnUNet_results/extra.txt' refused: not listed in kits_model.json"),
    ("missing", lambda items: items.pop(), None, False, "listed in kits_model.json is missing from the archive"),
    ("tampered", _tamper_last, None, False, "refused: SHA-256 or size differs from kits_model.json"),
    ("size", lambda items: items[-1].__setitem__(1, items[-1][1] + b"more"), None, False, "bytes, the manifest says"),
    ("version", None, _set("kits_cascade_version", "1.0.0"), True,
     f"model exported by kits-cascade 1.0.0, incompatible with the installed {__version__}"),
    ("format", None, _set("format_version", 99), True, "manifest format version 99 is not supported"),
    ("name", None, _set("name", ".."), True, "model name '..' is not a plain name"),
    ("no_checkpoint", lambda items: items.pop(), None, True, "(needed by the stage model) is not listed"),
]


@pytest.mark.parametrize("case, members, manifest, rehash, message", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_bad_archives_are_refused_with_nothing_written(exported, tmp_path, capsys, case, members, manifest, rehash,
                                                       message):
    _, out = exported
    bad = tmp_path / "bad.zip"
    if case == "absolute":
        members = lambda items: items.append([zipfile.ZipInfo(str(tmp_path / "abs_evil")), b"x"])  # noqa: E731
    if case == "no_checkpoint":  # the last member written is the masses model's fold_1 checkpoint
        with zipfile.ZipFile(out) as zf:
            assert [i.filename for i in zf.infolist()][-2].endswith("Masses/nnUNetTrainerKiTSSurface__kitsPlans__3d_fullres/"
                                                      "fold_1/checkpoint_final.pth")
    rewrite(out, bad, members, manifest, rehash)
    dest = tmp_path / "models"
    (dest / "other").mkdir(parents=True)
    (dest / "other" / "keep.txt").write_text("keep")
    before = tree(tmp_path)
    assert main(["install-model", str(bad), "--dest", str(dest)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"kits install-model: error: {bad}: ") and message in err
    assert tree(tmp_path) == before  # nothing in DEST, nothing next to it
    assert not (tmp_path / "abs_evil").exists() and not (tmp_path.parent / "evil").exists()
    # a destination that does not exist yet is not left behind either
    assert main(["install-model", str(bad), "--dest", str(tmp_path / "new" / "models")]) == 2
    assert not (tmp_path / "new").exists()


def test_an_installed_model_is_kept_without_force(exported, tmp_path, capsys):
    _, out = exported
    dest = tmp_path / "models"
    archive.install_model(out, dest)
    before = tree(tmp_path)
    assert main(["install-model", str(out), "--dest", str(dest)]) == 2
    assert "models/tiny exists (model 'tiny' is installed); pass --force" in capsys.readouterr().err
    assert tree(tmp_path) == before


def test_a_file_that_is_no_zip_is_one_line(tmp_path, capsys):
    (tmp_path / "x.zip").write_bytes(b"not a zip")
    assert main(["install-model", str(tmp_path / "x.zip"), "--dest", str(tmp_path / "m")]) == 2
    assert f"{tmp_path / 'x.zip'}: not a readable zip archive" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
