"""``kits_plugins.workflow.collect``: cross-validation predictions gathered by nnU-Net's folds, shards merged, each
checked complete before the folder appears."""

from __future__ import annotations

import json

import pytest

from kits_plugins.errors import KitsInputError
from kits_plugins.workflow.collect import gather_crossval, merge_parts


def folds_with_predictions(root, splits):
    (root / "splits_final.json").write_text(json.dumps(splits))
    dirs = []
    for k, split in enumerate(splits):
        v = root / f"fold_{k}" / "validation"
        v.mkdir(parents=True)
        for case in split["val"]:
            (v / f"{case}.nii.gz").write_text(f"{case} by fold {k}")
        (v / "summary.json").write_text("{}")  # nnU-Net's own files are not predictions
        dirs.append(v.parent)
    return dirs


def test_gather_crossval(tmp_path):
    splits = [{"train": ["b", "c"], "val": ["a"]}, {"train": ["a"], "val": ["b", "c"]}]
    dirs = folds_with_predictions(tmp_path, splits)
    out = tmp_path / "crossval" / "221"
    assert gather_crossval(dirs, tmp_path / "splits_final.json", out) == 3
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz", "b.nii.gz", "c.nii.gz"]
    assert (out / "b.nii.gz").read_text() == "b by fold 1"
    assert gather_crossval(dirs, tmp_path / "splits_final.json", out) == 3  # replaces an older folder
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary left


def test_gather_refuses_an_incomplete_fold(tmp_path):
    dirs = folds_with_predictions(tmp_path, [{"val": ["a"]}, {"val": ["b", "c"]}])
    (dirs[1] / "validation" / "c.nii.gz").unlink()
    out = tmp_path / "out"
    with pytest.raises(KitsInputError, match=r"fold_1/validation: no prediction of 1 validation case\(s\), first c"):
        gather_crossval(dirs, tmp_path / "splits_final.json", out)
    assert not out.exists()
    with pytest.raises(KitsInputError, match="splits not found"):
        gather_crossval(dirs, tmp_path / "none.json", out)


def test_merge_parts(tmp_path):
    parts = [tmp_path / "part_0_of_2", tmp_path / "part_1_of_2"]
    for part, cases in zip(parts, (["case_00000", "case_00002"], ["case_00001"])):
        part.mkdir()
        for c in cases:
            (part / f"{c}.nii.gz").write_text(c)
    out = tmp_path / "predictions"
    assert merge_parts(parts, ["case_00000", "case_00001", "case_00002"], out) == 3
    with pytest.raises(KitsInputError, match="1 test case\\(s\\) have no prediction in 2 shard\\(s\\), first case_00003"):
        merge_parts(parts, ["case_00000", "case_00003"], tmp_path / "other")
    (parts[1] / "case_00000.nii.gz").write_text("again")
    with pytest.raises(KitsInputError, match="case case_00000 was predicted by two shards"):
        merge_parts(parts, [], tmp_path / "other")
