"""``kits_plugins.workflow.report``: steps read from Snakemake's benchmark files and the logs' ``$`` lines, the time
with a step running (parallel steps once), and the tables."""

from __future__ import annotations

import os

from kits_plugins.workflow.report import busy_seconds, logged_command, read_benchmark, step_records, steps_table

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def bench(path, wall, rss, finished):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{wall}\t0:00:01\t{rss}\t1\t1\t1\t0\t0\t0\t0\n")
    os.utime(path, (finished, finished))


def test_steps_from_benchmarks_and_logs(tmp_path):
    bench(tmp_path / "benchmarks" / "convert.tsv", 2.5, 464.2, 1000.0)
    bench(tmp_path / "benchmarks" / "synth_train.tsv", 4.0, "NA", 990.0)
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "convert.log").write_text("noise\n$ kits convert k --overwrite -np 2\nmore\n")
    steps = step_records(tmp_path, ["convert", "synth_train", "plan"])  # plan has not run
    assert [s["name"] for s in steps] == ["synth_train", "convert"]  # in the order they started
    assert steps[1] == {"name": "convert", "command": "kits convert k --overwrite -np 2", "wall_s": 2.5,
                        "peak_rss_mb": 464.2, "started": 997.5, "finished": 1000.0}
    assert steps[0]["peak_rss_mb"] is None and steps[0]["command"] is None
    assert read_benchmark(tmp_path / "none.tsv") is None and logged_command(tmp_path / "none.log") is None
    table = steps_table(steps)
    assert "convert" in table and "n/a" in table and table.splitlines()[-1].split() == ["all", "steps", "6.5"]


def test_busy_seconds_counts_parallel_steps_once():
    steps = [{"started": 0.0, "finished": 10.0}, {"started": 5.0, "finished": 12.0}, {"started": 20.0, "finished": 21.0}]
    assert busy_seconds(steps) == 13.0
    assert busy_seconds(steps, since=4.0) == 8.0  # steps of an earlier run left out
