"""Identifiers that become paths, containment of output paths, and outputs that would replace inputs."""

from __future__ import annotations

import os

import pytest

from kits_plugins.errors import KitsInputError
from kits_plugins.utilities.paths import check_id, child_path, refuse_overwriting_inputs


@pytest.mark.parametrize("good", ["case_00001", "case_00001_roi0", "a", "A.b-c_1", "x" * 200])
def test_plain_ids_pass(good):
    assert check_id(good, "crops.json") == good


@pytest.mark.parametrize(
    "bad", ["", ".", "..", "../../ESCAPED", "/abs/path", "a/b", "a\\b", "nul\x00byte", ".hidden", "-flag", "x" * 201,
            "case 1", None, 3],
)
def test_ids_with_separators_dots_nul_or_wrong_type_are_refused_naming_the_source(bad):
    with pytest.raises(KitsInputError, match="crops.json: case id"):
        check_id(bad, "crops.json")


@pytest.mark.parametrize("name", ["../x.nii.gz", "/tmp/x.nii.gz", "a/../../x", "..", "", "x\x00y"])
def test_child_path_refuses_names_leaving_the_folder(tmp_path, name):
    with pytest.raises(KitsInputError, match="src.json"):
        child_path(tmp_path / "out", name, "src.json")


def test_child_path_follows_links(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (out / "link.nii.gz").symlink_to(outside / "target.nii.gz")
    with pytest.raises(KitsInputError, match="outside"):
        child_path(out, "link.nii.gz", "src")
    assert child_path(out, "case_1.nii.gz", "src") == out / "case_1.nii.gz"
    # an output folder that is itself a link is fine: names are checked against where it resolves
    (tmp_path / "outlink").symlink_to(out, target_is_directory=True)
    assert child_path(tmp_path / "outlink", "case_1.nii.gz", "src") == tmp_path / "outlink" / "case_1.nii.gz"


def test_refuse_overwriting_inputs_same_path_hardlink_and_symlink(tmp_path):
    src = tmp_path / "in" / "case_1.nii.gz"
    src.parent.mkdir()
    src.write_bytes(b"data")
    with pytest.raises(KitsInputError, match="would write over its input"):
        refuse_overwriting_inputs([tmp_path / "in" / ".." / "in" / "case_1.nii.gz"], [src], "kits x")
    os.link(src, tmp_path / "hard.nii.gz")
    with pytest.raises(KitsInputError, match="hard.nii.gz"):
        refuse_overwriting_inputs([tmp_path / "hard.nii.gz"], [src], "kits x")
    (tmp_path / "soft.nii.gz").symlink_to(src)
    with pytest.raises(KitsInputError):
        refuse_overwriting_inputs([tmp_path / "soft.nii.gz"], [src], "kits x")
    # a different file, or one that does not exist yet, is fine
    refuse_overwriting_inputs([tmp_path / "new.nii.gz", tmp_path / "in" / "case_2.nii.gz"], [src], "kits x")
