"""Tiny fixed-weight stage models and the generated cases they segment exactly, for the tests of
``kits_plugins.inference``.

The three stage models are 1x1x1 convolutions with fixed weights ("oracle" thresholds on the CT
intensities of the generated case, and on the mask channel for stage 223), stored as real nnU-Net model
folders (plans.json, dataset.json, fold_0/checkpoint_final.pth) and loaded by ``nnUNetPredictor``
through ``initialize_from_trained_model_folder``; nnU-Net does preprocessing, sliding window, mirroring
and resampling. Since the thresholds reproduce the generated label map, the cascade's output must equal
it exactly inside the ROIs.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from kits_plugins.inference.cascade import KiTSCascadePredictor
from kits_plugins.testing.plans_builder import minimal_plans
from kits_plugins.utilities.image_io import Geometry, write_image

KITS_DIRECTION = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0)  # real KiTS23: slice axis is the last numpy axis
HU = {0: -100.0, 1: 200.0, 2: 400.0, 3: 300.0}  # background, kidney, tumor, cyst

NET_MODULE = '''
import torch
from torch import nn


class ThresholdNet(nn.Module):
    """1x1x1 convolution with the fixed weights given in the plans: logits linear in the intensities."""

    def __init__(self, input_channels, num_classes, weights, bias, **kwargs):
        super().__init__()
        self.conv = nn.Conv3d(input_channels, num_classes, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor(weights, dtype=torch.float32).view(num_classes, input_channels, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor(bias, dtype=torch.float32))

    def forward(self, x):
        return self.conv(x)
'''


# stage -> (dataset folder, configuration, spacing (nnU-Net order), channels, labels, regions_class_order, W, b)
# kidney+masses: foreground logit 0.1 * (HU - 100); masses region: HU > 250 and mask; tumor region: HU > 350 and mask.
STAGE_DEFS = {
    "coarse": ("Dataset221_KiTS2023Coarse", "3d_lowres", [3.0, 3.0, 3.0], {"0": "CT"},
               {"background": 0, "kidney": 1}, None, [[0.0], [0.1]], [0.0, -10.0]),
    "fine": ("Dataset222_KiTS2023Kidney", "3d_fullres", [1.5, 1.5, 3.0], {"0": "CT"},
             {"background": 0, "kidney": 1}, None, [[0.0], [0.1]], [0.0, -10.0]),
    "masses": ("Dataset223_KiTS2023Masses", "3d_fullres", [1.5, 1.5, 3.0], {"0": "CT", "1": "mask"},
               {"background": 0, "masses": [1, 2], "tumor": 1}, [2, 1],  # derive-stages' encoding
               [[0.1, 100.0], [0.1, 100.0]], [-125.0, -135.0]),
}


def _plans(name: str, config: str, spacing, n_channels: int, weights, bias) -> dict:
    arch = {"network_class_name": "kits_test_threshold_nets.ThresholdNet",
            "arch_kwargs": {"weights": weights, "bias": bias}, "_kw_requires_import": []}
    props = {"max": 1000.0, "mean": 0.0, "median": 0.0, "min": -1000.0, "percentile_00_5": -1000.0,
             "percentile_99_5": 1000.0, "std": 100.0}
    return minimal_plans(config, spacing, ["NoNormalization"] * n_channels, arch, patch_size=(16, 16, 16),
                         data_order=1, intensity_properties=props, median_shape=(16, 32, 32), dataset_name=name)


@pytest.fixture(scope="package")
def results(tmp_path_factory):
    """A tmp nnUNet_results with the three stage model folders (default trainer names, fold_0); built once for
    this folder's tests."""
    from kits_plugins.inference.model_discovery import DEFAULT_STAGE_MODELS

    root = tmp_path_factory.mktemp("nnUNet_results")
    netdir = tmp_path_factory.mktemp("nets")
    (netdir / "kits_test_threshold_nets.py").write_text(NET_MODULE)
    sys.path.insert(0, str(netdir))
    import kits_test_threshold_nets

    for stage, (name, config, spacing, channels, labels, rco, w, b) in STAGE_DEFS.items():
        folder = root / name / DEFAULT_STAGE_MODELS[stage].identifier
        (folder / "fold_0").mkdir(parents=True)
        ds = {"channel_names": channels, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz",
              "overwrite_image_reader_writer": "NibabelIOWithReorient"}
        if rco is not None:
            ds["regions_class_order"] = rco
        (folder / "dataset.json").write_text(json.dumps(ds))
        (folder / "plans.json").write_text(json.dumps(_plans(name, config, spacing, len(channels), w, b)))
        net = kits_test_threshold_nets.ThresholdNet(len(channels), len(w), w, b)
        torch.save({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer",
                    "init_args": {"configuration": config}, "inference_allowed_mirroring_axes": (0, 1, 2)},
                   folder / "fold_0" / "checkpoint_final.pth")
    yield root
    sys.path.remove(str(netdir))


@pytest.fixture(scope="package")
def cascade(results):
    """The cascade predictor on ``results`` (no postprocessing)."""
    return KiTSCascadePredictor.from_results(results=results, margin_mm=4.5, min_roi_volume_mm3=50.0,
                                             postprocess=False)


@pytest.fixture(scope="session")
def make_case():
    """``make_case(shape=(36, 30, 14), border=False)``: CT, label map and geometry of a case the stage models of
    ``results`` segment exactly."""

    def make_case(shape=(36, 30, 14), border=False) -> tuple[np.ndarray, np.ndarray, Geometry]:
        """Two kidneys (one with a tumor, one with a cyst) in a KiTS-like permuted-direction image.

        File numpy order; slice axis last (3 mm), in-plane 1.5 mm. ``border=True`` puts one kidney against
        the image border."""
        lab = np.zeros(shape, np.uint8)
        z0 = 0 if border else 4
        lab[z0:z0 + 10, 4:12, 3:10] = 1
        lab[z0 + 3:z0 + 6, 6:9, 5:8] = 2
        lab[22:32, 16:26, 4:11] = 1
        lab[25:28, 19:22, 6:9] = 3
        ct = np.vectorize(HU.get, otypes=[np.float32])(lab)
        ct += np.random.default_rng(0).normal(0, 5, shape).astype(np.float32)
        g = Geometry((-20.0, 35.5, 110.25), (1.5, 1.5, 3.0), KITS_DIRECTION, tuple(shape[::-1]))
        return ct, lab, g

    return make_case


@pytest.fixture(scope="session")
def write_case():
    """``write_case(folder, case, ct, lab, g, kits_layout=False)``: the CT as ``<case>_0000.nii.gz``, or CT and labels
    in the KiTS layout."""

    def _write_case(folder, case, ct, lab, g, kits_layout=False):
        if kits_layout:
            write_image(ct, g, folder / case / "imaging.nii.gz")
            write_image(lab, g, folder / case / "segmentation.nii.gz")
        else:
            write_image(ct, g, folder / f"{case}_0000.nii.gz")

    return _write_case


@pytest.fixture(scope="session")
def hu() -> dict[int, float]:
    """The CT value of each label in ``make_case``'s cases (the stage models threshold them)."""
    return HU
