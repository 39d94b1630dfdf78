"""``kits workflow`` / ``kits workflow-path`` on 10 tiny synthetic cases, dry runs only: the jobs of the real KiTS23
configuration (15 trainings with one GPU each, the two gathering steps, N prediction shards), the order of the train
as you infer chain read from Snakemake's DAG, and bad configurations stopped before any job with one line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from types import SimpleNamespace

import pytest

from kits_plugins.workflow.commands import config_overrides, resolve_profile, snakemake_argv
from kits_plugins.workflow.config import PROFILE_DIR, SNAKEFILE, shipped_config

OVERRIDES = ["kits_dir=train", "test_dir=test", "workdir=work"]


def dry_run_jobs(text: str) -> list[dict]:
    """The jobs of a Snakemake dry run: rule, wildcards and resources of each."""
    jobs: list[dict] = []
    for line in text.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line)
        if m:
            jobs.append({"rule": m.group(1), "wildcards": {}, "resources": {}})
        elif jobs and line.startswith(("    wildcards: ", "    resources: ")):
            key, _, values = line.strip().partition(": ")
            jobs[-1][key] = dict(v.split("=", 1) for v in values.split(", "))
    return [j for j in jobs if j["rule"] != "all"]


def dag(text: str) -> tuple[dict[str, str], dict[str, set[str]]]:
    """Snakemake's ``--dag`` (dot): node -> "rule key=value ...", and node -> the nodes it needs (direct)."""
    nodes = {}
    for node, label in re.findall(r'^\s*(\d+)\[label = "([^"]*)"', text, re.M):
        rule, *wildcards = label.split("\\n")
        nodes[node] = " ".join([rule, *sorted(w.replace(": ", "=") for w in wildcards)])
    needs: dict[str, set[str]] = {n: set() for n in nodes}
    for a, b in re.findall(r"^\s*(\d+) -> (\d+)", text, re.M):
        needs[b].add(a)
    return nodes, needs


def ancestors(node: str, needs: dict[str, set[str]]) -> set[str]:
    seen: set[str] = set()
    todo = [node]
    while todo:
        for n in needs[todo.pop()]:
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


@pytest.fixture
def dry_run(kits23_dry_run):
    return kits23_dry_run


def test_dry_run_of_kits23_lists_15_gpu_trainings_two_gatherings_and_the_shards(dry_run):
    jobs = dry_run_jobs(dry_run)
    train = [j for j in jobs if j["rule"].startswith("train_")]
    assert sorted((j["rule"], j["wildcards"]["fold"]) for j in train) == [
        (f"train_{s}", str(f)) for s in ("221", "222", "223") for f in range(5)]
    assert all(j["resources"]["gpu"] == "1" for j in train)
    assert sorted(j["rule"] for j in jobs if j["rule"].startswith("gather")) == ["gather_cv_221", "gather_cv_222"]
    predict = [j for j in jobs if j["rule"] == "predict"]
    assert sorted(j["wildcards"]["part"] for j in predict) == ["0", "1", "2"]
    assert all(j["resources"]["gpu"] == "1" for j in predict)
    assert all("gpu" not in j["resources"] for j in jobs if j not in train + predict)
    assert all(int(j["resources"]["mem_mb"]) > 0 and int(j["resources"]["runtime"]) > 0 for j in jobs)
    counts = Counter(j["rule"] for j in jobs)
    assert counts["derive_from_predictions"] == counts["derive_masks"] == counts["plan_222"] == counts["plan_223"] == 1
    assert "kits workflow: no kits23.yaml here, using the shipped" in dry_run  # no local file: the shipped one


def test_the_chain_order_in_snakemakes_dag(kits_folders, kits):
    """Direct use (snakemake -s $(kits workflow-path)): no 222 training before 221's cross-validation predictions
    are gathered, no 223 training before 222's; prediction needs every model."""
    path = kits(["workflow-path"], kits_folders).stdout.strip()
    out = subprocess.run([sys.executable, "-m", "snakemake", "-s", path, "--configfile", str(shipped_config("kits23")),
                          "--config", *OVERRIDES, "--dag"], cwd=kits_folders, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    nodes, needs = dag(out.stdout)
    by_label = {label: n for n, label in nodes.items()}
    before = {n: {nodes[a] for a in ancestors(n, needs)} for n in nodes}
    for f in range(5):
        assert {"gather_cv_221", "derive_from_predictions", "plan_222"} <= before[by_label[f"train_222 fold={f}"]]
        assert {f"train_221 fold={g}" for g in range(5)} <= before[by_label[f"train_222 fold={f}"]]
        assert {"gather_cv_222", "derive_masks", "plan_223"} <= before[by_label[f"train_223 fold={f}"]]
        assert "gather_cv_222" not in before[by_label[f"train_222 fold={f}"]]
    assert {f"train_222 fold={g}" for g in range(5)} <= before[by_label["gather_cv_222"]]
    trainings = {label for label in nodes.values() if label.startswith("train_")}
    assert len(trainings) == 15 and trainings <= before[by_label["predict part=0"]]


def test_the_short_chain_trains_every_stage_side_by_side(kits, kits_folders):
    out = kits(["workflow", "kits23.yaml", "-n", "--", "--config", *OVERRIDES, "train_as_you_infer=false"],
               kits_folders)
    assert out.returncode == 0, out.stderr
    counts = Counter(j["rule"] for j in dry_run_jobs(out.stdout))
    assert counts["train_221"] == counts["train_222"] == counts["train_223"] == 5 and counts["predict"] == 4
    assert set(counts) == {"convert", "derive_stages", "plan", "train_221", "train_222", "train_223", "predict",
                           "merge_predictions", "evaluate", "report"}


@pytest.mark.parametrize(
    "override, message",
    [
        (["colour=blue"], "unknown key 'colour' (known: kits_dir, test_dir, workdir, folds,"),
        (["kits_dir=nowhere"], "kits_dir: "),
        (["folds=[0,1,7]"], "folds[2]: 7 is not a fold: folds are 0-4"),
        (["num_parts=0"], "num_parts: 0 is less than the minimum of 1"),
    ],
)
def test_a_bad_configuration_is_one_line_before_any_job(kits, kits_folders, override, message):
    out = kits(["workflow", "kits23.yaml", "--", "--config", *OVERRIDES, "workdir=never", *override], kits_folders)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 2  # the "using the shipped" note, then the error
    error = out.stderr.strip().splitlines()[-1]
    assert error.startswith("kits workflow: error: ") and message in error, error
    assert "$ snakemake" not in out.stdout and not (kits_folders / "never").exists()
    if override == ["kits_dir=nowhere"]:
        assert error.endswith("nowhere: folder not found")


def test_direct_snakemake_gets_the_same_check(kits_folders):
    out = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--configfile",
                          str(shipped_config("kits23.yaml")), "--cores", "1", "--config", *OVERRIDES, "workdir=never", "folds=[0,5]"],
                         cwd=kits_folders, capture_output=True, text=True)
    assert out.returncode != 0
    assert "kits workflow: configuration: folds[1]: 5 is not a fold" in out.stderr
    assert not (kits_folders / "never").exists()


def test_show_config_and_workflow_path(kits, tmp_path):
    out = kits(["workflow", "--show-config", "kits23"], tmp_path)
    assert out.returncode == 0 and out.stdout == shipped_config("kits23.yaml").read_text()
    assert kits(["workflow-path"], tmp_path).stdout.strip() == str(SNAKEFILE)
    bad = kits(["workflow", "--show-config", "nope"], tmp_path)
    assert bad.returncode == 2 and "no shipped configuration 'nope' (shipped: demo.yaml, kits23.yaml)" in bad.stderr


def test_snakemake_argv_and_overrides():
    argv = snakemake_argv(shipped_config("demo.yaml"), dry_run=True, until=["plan"], extra=["--config", "a=1"])
    assert argv[:4] == ["--snakefile", str(SNAKEFILE), "--configfile", str(shipped_config("demo.yaml"))]
    assert argv[4:] == ["--cores", "all", "--dry-run", "--until", "plan", "--config", "a=1"]
    assert "--cores" not in snakemake_argv(shipped_config("demo.yaml"), profile="slurm")
    assert resolve_profile("slurm") == str(PROFILE_DIR / "slurm") and resolve_profile("mycluster") == "mycluster"
    # Snakemake's own parsing: values inside lists stay strings (the configuration check converts them)
    assert config_overrides(["-n", "--config", "num_parts=8", "folds=[0,1]", "--cores", "2"]) == {
        "num_parts": 8, "folds": ["0", "1"]}
    assert config_overrides(["--forceall"]) == {}


def test_the_slurm_plugin_submits_a_training_with_one_gpu(dry_run):
    """The resources of a training job, as the SLURM executor plugin turns them into sbatch options."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    class Resources(dict):
        __getattr__ = dict.__getitem__

    job = next(j for j in dry_run_jobs(dry_run) if j["rule"] == "train_222")
    resources = Resources({k: int(v) for k, v in job["resources"].items() if v.isdigit()})
    params = {"run_uuid": "u", "slurm_logfile": "log", "comment_str": "train", "account": "", "partition": "",
              "workdir": "."}
    slurm_job = SimpleNamespace(resources=resources, threads=12)
    call = get_submit_command(slurm_job, params) + set_gres_string(slurm_job)  # as the plugin's run_job does
    assert "--gpus=1" in call and f"--mem {resources['mem_mb']}" in call and "-t 4320" in call
    assert "--cpus-per-task=12" in call
    resources["gpu_model"] = "a100"  # resources.train.gpu_model
    assert set_gres_string(slurm_job) == " --gpus=a100:1"


def test_a_lock_left_by_a_killed_run_is_released(tmp_path, monkeypatch):
    import json
    import socket

    from kits_plugins.workflow import commands

    calls = []
    monkeypatch.setattr(commands, "run_snakemake", lambda argv, cwd=None, env=None: calls.append(argv) or 0)
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.input.lock").write_text("")
    config = shipped_config("demo.yaml")
    owner = tmp_path / commands.OWNER_FILE
    commands.prepare_run(tmp_path, config, ["seed=1"])  # a lock, but no owner recorded: Snakemake's message
    assert calls == [] and not owner.exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    owner.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout)}))
    commands.prepare_run(tmp_path, config, ["seed=1"])
    assert calls == [["--snakefile", str(SNAKEFILE), "--configfile", str(config), "--unlock", "--config", "seed=1"]]
    owner.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))  # a live run: left alone
    commands.prepare_run(tmp_path, config, [])
    assert len(calls) == 1
    owner.write_text(json.dumps({"host": "another-host", "pid": int(dead.stdout)}))  # can't tell: left alone
    commands.prepare_run(tmp_path, config, [])
    assert len(calls) == 1 and json.loads(owner.read_text())["host"] == "another-host"
    (locks / "0.input.lock").unlink()  # no lock: this run becomes the owner
    commands.prepare_run(tmp_path, config, [])
    assert json.loads(owner.read_text()) == {"host": socket.gethostname(), "pid": os.getpid()}
