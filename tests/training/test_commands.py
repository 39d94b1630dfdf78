"""``kits_plugins.training.commands``: ``kits trainer-path`` names the folder that holds only the trainer shim, and
nnU-Net finds the cascade trainers through it."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from kits_plugins.cli import main
from kits_plugins.training import trainers
from kits_plugins.training.commands import trainer_path


def test_trainer_path_holds_only_the_shim_and_nnunet_finds_the_classes(monkeypatch, capsys):
    assert main(["trainer-path"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.is_absolute() and path == trainer_path()
    assert sorted(p.name for p in path.iterdir() if p.name != "__pycache__") == ["kits_trainers.py"]
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    assert {"nnUNetTrainerKiTSSurface", "nnUNetTrainerKiTSSurface_short", "nnUNetTrainerKiTSSurface_demo"} <= set(
        trainers.__all__)
    for name in trainers.__all__:  # not an nnU-Net built-in name
        with pytest.raises(RuntimeError, match="Could not find requested nnunet trainer"):
            recursive_find_trainer_class_by_name(name)
    monkeypatch.setenv("nnUNet_extTrainer", str(path))
    for name in trainers.__all__:
        cls = recursive_find_trainer_class_by_name(name)
        # found through the shim, but it is the class of kits_plugins.training.trainers: picklable by that path
        assert cls is getattr(trainers, name) and cls.__module__ == "kits_plugins.training.trainers"
        assert pickle.loads(pickle.dumps(cls)) is cls
