"""Checkpoints load without running code (:mod:`kits_plugins.inference.checkpoints`).

A crafted checkpoint whose pickle calls ``os.system`` (or a pure-Python file writer) is refused with a one-line
error and nothing runs, directly and through ``load_stage_predictor``; ``trust=True`` is nnU-Net's full
unpickling. The safe loader initialises the same predictor as nnU-Net's ``initialize_from_trained_model_folder``
(parameters, trainer, mirroring axes, dataset.json, plans, configuration, predictions), and the allow-list is
complete for checkpoints written by nnU-Net's real trainer (numpy 2) and as numpy 1 writes them, and minimal.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from kits_plugins.inference import checkpoints
from kits_plugins.inference.checkpoints import initialize_from_model_folder, load_checkpoint
from kits_plugins.inference.model_discovery import StageModel, load_stage_predictor, make_nnunet_predictor
from kits_plugins.testing.plans_builder import minimal_plans, plain_unet_architecture
from kits_plugins.utilities.image_io import KitsInputError

DATASET = "Dataset999_SafeLoading"
MODEL = StageModel(999, "nnUNetTrainer", "3d_fullres")
SPACING = [2.0, 1.5, 1.5]


class ShellPayload:
    """Unpickles to ``os.system("touch <marker>")``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


class WriterPayload:
    """Unpickles to ``Path(marker).write_text(...)``: code execution without a shell."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.write_text, (Path(self.marker), "code ran while loading the checkpoint")


def nnunet_checkpoint(network_weights: dict, plans: dict, dataset_json: dict, fold: int, logging_value=np.float32):
    """A dict laid out like ``nnUNetTrainer.save_checkpoint``'s (numpy scalars in ``logging``, a torch.device)."""
    network = torch.nn.Conv3d(1, 1, 1)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    network(torch.ones(1, 1, 2, 2, 2)).sum().backward()
    optimizer.step()
    dice = logging_value(0.5)
    return {
        "network_weights": network_weights,
        "optimizer_state": optimizer.state_dict(),
        "grad_scaler_state": None,
        "logging": {"mean_fg_dice": [dice], "ema_fg_dice": [dice], "dice_per_class_or_region": [[dice]],
                    "train_losses": [logging_value(0.8)], "val_losses": [logging_value(0.7)], "lrs": [0.01],
                    "epoch_start_timestamps": [1.0], "epoch_end_timestamps": [2.0]},
        "_best_ema": dice,
        "current_epoch": 1,
        "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": fold, "dataset_json": dataset_json,
                      "device": torch.device("cpu")},
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": (1, 2),
    }


@pytest.fixture(scope="module")
def model_results(tmp_path_factory) -> Path:
    """``$nnUNet_results`` with one two-fold model (a small PlainConvUNet with seeded random weights)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    root = tmp_path_factory.mktemp("nnUNet_results")
    folder = root / DATASET / MODEL.identifier
    plans = minimal_plans("3d_fullres", SPACING, ["CTNormalization"], plain_unet_architecture([4, 8]),
                          patch_size=(16, 16, 16), median_shape=(20, 24, 24), dataset_name=DATASET)
    dataset_json = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "kidney": 1, "tumor": 2},
                    "numTraining": 1, "file_ending": ".nii.gz"}
    pm = PlansManager(plans)
    for fold in (0, 1):
        torch.manual_seed(fold)
        net = nnUNetTrainer.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 1, 3, False)
        (folder / f"fold_{fold}").mkdir(parents=True)
        torch.save(nnunet_checkpoint(net.state_dict(), plans, dataset_json, fold),
                   folder / f"fold_{fold}" / "checkpoint_final.pth")
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    return root


@pytest.fixture
def ext_trainer_env(monkeypatch):
    """``load_stage_predictor`` sets ``nnUNet_extTrainer``; restore it after the test."""
    monkeypatch.setenv("nnUNet_extTrainer", os.environ.get("nnUNet_extTrainer", ""))


def assert_same_predictor(ours, nnunet, image: np.ndarray) -> None:
    """Everything ``initialize_from_trained_model_folder`` sets, and the predictions, are equal."""
    assert len(ours.list_of_parameters) == len(nnunet.list_of_parameters) > 0
    for a, b in zip(ours.list_of_parameters, nnunet.list_of_parameters):
        assert list(a) == list(b)
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert ours.trainer_name == nnunet.trainer_name
    assert ours.allowed_mirroring_axes == nnunet.allowed_mirroring_axes
    assert ours.dataset_json == nnunet.dataset_json
    assert ours.plans_manager.plans == nnunet.plans_manager.plans
    assert ours.configuration_manager.configuration == nnunet.configuration_manager.configuration
    assert type(ours.network) is type(nnunet.network)
    sa, sb = ours.network.state_dict(), nnunet.network.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert ours.label_manager.all_labels == nnunet.label_manager.all_labels
    props = {"spacing": SPACING}
    seg_a, prob_a = ours.predict_single_npy_array(image, props, None, None, True)
    seg_b, prob_b = nnunet.predict_single_npy_array(image, props, None, None, True)
    np.testing.assert_array_equal(seg_a, seg_b)
    np.testing.assert_array_equal(prob_a, prob_b)


def _image(shape=(16, 16, 16)) -> np.ndarray:
    """A CT-like array one patch large: a single sliding-window tile keeps the comparison fast."""
    return np.random.default_rng(3).normal(40.0, 60.0, (1, *shape)).astype(np.float32)


# --------------------------------------------------------------------------------------------- refused payloads
@pytest.mark.parametrize("payload, refused", [(ShellPayload, "posix.system"), (WriterPayload, "builtins.getattr")])
def test_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path, payload, refused):
    marker = tmp_path / "MARKER"
    path = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": {}, "logging": {"x": payload(marker)}}, path)
    with pytest.raises(KitsInputError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: checkpoint refused")
    assert refused in message and "--trust-checkpoints" in message
    assert not marker.exists()


def test_trust_loads_the_malicious_checkpoint_and_runs_its_code(tmp_path):
    marker = tmp_path / "MARKER"
    torch.save({"network_weights": {}, "x": WriterPayload(marker)}, tmp_path / "c.pth")
    checkpoint = load_checkpoint(tmp_path / "c.pth", trust=True)
    assert marker.read_text() == "code ran while loading the checkpoint"
    assert checkpoint["x"] == len("code ran while loading the checkpoint")  # write_text's return value


def test_load_stage_predictor_refuses_a_malicious_fold(model_results, tmp_path, ext_trainer_env):
    results = tmp_path / "results"
    shutil.copytree(model_results, results)
    marker = tmp_path / "MARKER"
    path = results / DATASET / MODEL.identifier / "fold_1" / "checkpoint_final.pth"
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["logging"]["epoch_end_timestamps"] = [ShellPayload(marker)]
    torch.save(checkpoint, path)
    with pytest.raises(KitsInputError, match="fold_1/checkpoint_final.pth: checkpoint refused .*posix.system"):
        load_stage_predictor(MODEL, results=results)
    assert not marker.exists()
    predictor = load_stage_predictor(MODEL, results=results, trust_checkpoints=True)
    assert marker.exists() and len(predictor.list_of_parameters) == 2


def test_unreadable_and_non_nnunet_files_are_one_line_errors(model_results, tmp_path):
    good = model_results / DATASET / MODEL.identifier / "fold_0" / "checkpoint_final.pth"
    data = good.read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.pth").write_bytes(b"no checkpoint here")
    (tmp_path / "empty.pth").write_bytes(b"")
    cases = {"missing.pth": "cannot read checkpoint", "truncated.pth": "not a readable PyTorch checkpoint",
             "garbage.pth": "not a readable PyTorch checkpoint", "empty.pth": "not a readable PyTorch checkpoint"}
    for trust in (False, True):
        for name, expected in cases.items():
            with pytest.raises(KitsInputError) as info:
                load_checkpoint(tmp_path / name, trust=trust)
            assert str(info.value).startswith(f"{tmp_path / name}: {expected}") and "\n" not in str(info.value)
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(KitsInputError, match="list.pth: not an nnU-Net checkpoint"):
        load_checkpoint(tmp_path / "list.pth")
    folder = tmp_path / "model"
    shutil.copytree(good.parents[1], folder)
    torch.save({"network_weights": {}}, folder / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(KitsInputError, match="fold_0/checkpoint_final.pth: not an nnU-Net checkpoint .*trainer_name"):
        initialize_from_model_folder(make_nnunet_predictor(), folder, (0,))


# ----------------------------------------------------------------------------------------- same as nnU-Net's loader
def test_safe_predictor_equals_nnunet_initialize_from_trained_model_folder(model_results, ext_trainer_env):
    ours = load_stage_predictor(MODEL, results=model_results)
    nnunet = make_nnunet_predictor()
    nnunet.initialize_from_trained_model_folder(str(model_results / DATASET / MODEL.identifier), use_folds=(0, 1))
    assert ours.allowed_mirroring_axes == (1, 2) and ours.trainer_name == "nnUNetTrainer"
    assert not torch.equal(*(p["decoder.seg_layers.0.weight"] for p in ours.list_of_parameters))  # two folds
    assert_same_predictor(ours, nnunet, _image())
    # fold given as the string nnU-Net's CLI passes, and the auto-detected folds
    folder = model_results / DATASET / MODEL.identifier
    single = initialize_from_model_folder(make_nnunet_predictor(), folder, "1")
    assert len(single.list_of_parameters) == 1
    auto = initialize_from_model_folder(make_nnunet_predictor(), folder)
    assert len(auto.list_of_parameters) == 2


# --------------------------------------------------------------------------------------- the allow-list: complete
def _numpy1_pickle(src: Path, dst: Path) -> None:
    """``src`` with numpy's scalar constructor spelt as numpy 1.x pickles it (``numpy.core.multiarray.scalar``,
    checked against numpy 1.26.4's pickle output); the rest of the archive unchanged."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("/data.pkl"):
                assert b"cnumpy._core.multiarray\nscalar\n" in data
                data = data.replace(b"cnumpy._core.multiarray\nscalar\n", b"cnumpy.core.multiarray\nscalar\n")
            zout.writestr(info, data)


def test_allow_list_covers_numpy1_checkpoints_and_each_entry_is_needed(model_results, tmp_path, monkeypatch):
    """numpy 1.x writes ``numpy.core.multiarray.scalar`` and (EMA pseudo Dice from the second epoch on) float64."""
    folder = model_results / DATASET / MODEL.identifier
    numpy2 = folder / "fold_0" / "checkpoint_final.pth"  # float32 scalars, as nnU-Net 2.8 writes under numpy 2
    checkpoint = torch.load(numpy2, weights_only=False)
    checkpoint["logging"]["ema_fg_dice"].append(np.float64(0.55))
    checkpoint["_best_ema"] = np.float64(0.55)
    torch.save(checkpoint, tmp_path / "numpy2_float64.pth")
    _numpy1_pickle(tmp_path / "numpy2_float64.pth", tmp_path / "numpy1.pth")
    files = [numpy2, tmp_path / "numpy1.pth"]
    for path in files:
        loaded = load_checkpoint(path)
        assert loaded["logging"]["mean_fg_dice"] == [np.float32(0.5)]
        assert isinstance(loaded["logging"]["mean_fg_dice"][0], np.float32)
    loaded = load_checkpoint(tmp_path / "numpy1.pth")
    assert isinstance(loaded["_best_ema"], np.float64) and loaded["_best_ema"] == 0.55
    assert loaded["init_args"]["device"] == torch.device("cpu")

    full = checkpoints.checkpoint_safe_globals()
    for i in range(len(full)):  # drop any one entry: one of the two files is refused
        monkeypatch.setattr(checkpoints, "checkpoint_safe_globals", lambda i=i: full[:i] + full[i + 1:])
        refused = []
        for path in files:
            try:
                load_checkpoint(path)
            except KitsInputError:
                refused.append(path)
        assert refused, f"allow-list entry {full[i]} is not needed"


# --------------------------------------------------------------------------- a checkpoint from nnU-Net's real trainer
@pytest.fixture(scope="module")
def trained_model(tmp_path_factory):
    """Dataset 222 (2 tiny cases) planned and preprocessed, then 1 epoch x 1 iteration of
    ``nnUNetTrainerKiTSCoarse_short`` with nnU-Net's training loop: its ``save_checkpoint`` writes the files."""
    from nnunetv2.run.run_training import get_trainer_from_args

    from kits_plugins.planning.planning import plan_and_preprocess
    from kits_plugins.testing.tiny_datasets import write_tiny_stage_dataset
    from kits_plugins.training.commands import trainer_path

    root = tmp_path_factory.mktemp("nnunet")
    mp = pytest.MonkeyPatch()
    env = {"nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "pre"),
           "nnUNet_results": str(root / "results"), "nnUNet_extTrainer": str(trainer_path()),
           "nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1", "nnUNet_compile": "false",
           "KITS_EPOCHS": "1", "KITS_ITERS": "1", "KITS_VAL_ITERS": "1"}
    for k, v in env.items():
        mp.setenv(k, v)
    mp.delenv("KITS_BOUNDARY_SCHEDULE", raising=False)
    try:
        raw = write_tiny_stage_dataset(root / "raw", 222, num_cases=2, seed=222)
        plan_and_preprocess([222], target_spacing=(2.0, 1.5, 1.5), num_processes=1, network_width=0.25)
        split = [{"train": ["case_00000"], "val": ["case_00001"]}]
        (root / "pre" / raw.name / "splits_final.json").write_text(json.dumps(split))
        trainer = get_trainer_from_args("222", "3d_fullres", 0, "nnUNetTrainerKiTSCoarse_short", "kitsPlans",
                                        device=torch.device("cpu"))
        trainer.run_training()
        yield root / "results" / raw.name / "nnUNetTrainerKiTSCoarse_short__kitsPlans__3d_fullres"
    finally:
        mp.undo()


@pytest.mark.slow
def test_real_trainer_checkpoints_load_without_trust(trained_model):
    for name in ("checkpoint_final.pth", "checkpoint_best.pth"):
        path = trained_model / "fold_0" / name
        assert torch.serialization.get_unsafe_globals_in_checkpoint(path)  # numpy scalars: torch's defaults refuse
        checkpoint = load_checkpoint(path)
        reference = torch.load(path, map_location="cpu", weights_only=False)
        assert sorted(checkpoint) == sorted(reference)
        assert checkpoint["trainer_name"] == "nnUNetTrainerKiTSCoarse_short"
        assert checkpoint["logging"]["train_losses"] == reference["logging"]["train_losses"]
        assert checkpoint["_best_ema"] == reference["_best_ema"]
        assert checkpoint["init_args"]["device"] == torch.device("cpu")
        assert all(torch.equal(checkpoint["network_weights"][k], v) for k, v in reference["network_weights"].items())
    ours = initialize_from_model_folder(make_nnunet_predictor(), trained_model, (0,))
    nnunet = make_nnunet_predictor()
    nnunet.initialize_from_trained_model_folder(str(trained_model), use_folds=(0,))
    assert_same_predictor(ours, nnunet, _image((20, 24, 24)))  # the trained model's patch size
