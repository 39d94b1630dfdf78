"""``kits_plugins.demo.commands``: ``kits demo --fresh`` refuses to delete a folder that is not a demo; the outcome
printed from summary.json (targets, steps of this run and earlier ones, Snakemake's own time)."""

from __future__ import annotations

from kits_plugins.cli import main
from kits_plugins.demo.commands import print_outcome


def test_fresh_refuses_a_folder_that_is_not_a_demo(tmp_path, capsys):
    (tmp_path / "precious.txt").write_text("keep me")
    assert main(["demo", "--workdir", str(tmp_path), "--fresh"]) == 2
    assert "it is not a kits demo folder" in capsys.readouterr().err
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_print_outcome(capsys):
    summary = {
        "metrics": {"average": {"Dice_kidney": 0.9, "Dice_masses": 0.4}},
        "steps": [
            {"name": "plan", "wall_s": 50.0, "peak_rss_mb": 4200.0, "started": 10.0, "finished": 60.0},
            {"name": "train_221_all", "wall_s": 300.0, "peak_rss_mb": None, "started": 100.0, "finished": 400.0},
        ],
    }
    print_outcome(summary, since=50.0, wall_s=310.0)
    out = capsys.readouterr().out
    assert "Dice_kidney = 0.900 (meets the target 0.85)" in out and "Dice_masses = 0.400 (BELOW the target 0.5)" in out
    assert "plan" in out and "(earlier run)" in out.splitlines()[3] and "n/a" in out.splitlines()[4]
    assert out.splitlines()[-1] == "[demo] this run: 310.0 s, of which 300.0 s with a step running; Snakemake's own time 10.0 s"
