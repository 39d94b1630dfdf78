"""``kits_plugins.demo.pipeline``: ``kits demo``'s options applied to demo.yaml, and the configuration it writes."""

from __future__ import annotations

from kits_plugins.demo.pipeline import CONFIG_NAME, DemoOptions, demo_config, demo_defaults, write_demo_config
from kits_plugins.workflow.config import check_config, load_yaml


def test_options_change_the_matching_keys(tmp_path):
    defaults = demo_defaults()
    o = DemoOptions(workdir=tmp_path / "d", train_cases=6, test_cases=2, device="cuda", seed=3, iterations=10,
                    epochs_scale=4)
    c = demo_config(defaults, o)
    w = (tmp_path / "d").resolve()
    assert (c["workdir"], c["kits_dir"], c["test_dir"]) == (str(w), str(w / "kits_train"), str(w / "kits_test"))
    assert c["synthetic"] == {**defaults["synthetic"], "train_cases": 6, "test_cases": 2, "seed": 3}
    assert c["derive"]["seed"] == 3 and c["device"] == "cuda" and c["iterations"] == 10
    assert c["epochs"] == {"221": 96, "222": 72, "223": 144}  # demo.yaml's 24 / 18 / 36, times 4
    assert defaults == demo_defaults()  # not changed in place
    small = demo_config(defaults, DemoOptions(tmp_path, 12, 4, "cpu", 0, 25, epochs_scale=0.01))
    assert small["epochs"] == {"221": 1, "222": 1, "223": 1}


def test_the_written_configuration_is_valid(tmp_path):
    o = DemoOptions(workdir=tmp_path, train_cases=12, test_cases=4, device="cpu", seed=0, iterations=25)
    c = demo_config(demo_defaults(), o)
    path = write_demo_config(c, tmp_path)
    assert path == tmp_path / CONFIG_NAME and load_yaml(path) == c
    checked = check_config(load_yaml(path), "/elsewhere")  # absolute paths: read the same from any folder
    assert checked["workdir"] == str(tmp_path.resolve())
