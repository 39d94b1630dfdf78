"""``kits_plugins.demo.commands``: ``kits demo --fresh`` refuses to delete a folder that is not a demo."""

from __future__ import annotations

from kits_plugins.cli import main


def test_fresh_refuses_a_folder_that_is_not_a_demo(tmp_path, capsys):
    (tmp_path / "precious.txt").write_text("keep me")
    assert main(["demo", "--workdir", str(tmp_path), "--fresh"]) == 2
    assert "it is not a kits demo folder" in capsys.readouterr().err
    assert (tmp_path / "precious.txt").read_text() == "keep me"
