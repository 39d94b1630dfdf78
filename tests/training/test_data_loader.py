"""``kits_plugins.training.data_loader``: nnU-Net's data loader with the transforms' extra per-sample keys collated
into the batch (nnU-Net's own keeps only image and segmentation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from kits_plugins.training.data_loader import nnUNetDataLoaderWithExtras, stack_extras

LABELS = LabelManager({"background": 0, "masses": (1, 2), "tumor": 1}, regions_class_order=(2, 1))


class _Cases:
    """In-memory stand-in for nnU-Net's preprocessed dataset: case i has all labels == i % 3."""

    def __init__(self, n: int = 4, shape=(6, 7, 8)):
        self.identifiers = [f"case_{i}" for i in range(n)]
        self.shape = shape

    def load_case(self, identifier: str):
        i = int(identifier.split("_")[1])
        data = np.full((1, *self.shape), float(i), dtype=np.float32)
        seg = np.full((1, *self.shape), i % 3, dtype=np.int16)
        return data, seg, None, {"class_locations": {}}


def _mark(**sample) -> dict:
    """A transform adding one extra key per sample: the sample's image mean, shape (1,)."""
    sample["mark"] = sample["image"].mean().reshape(1)
    return sample


def _loader(cls, transforms, **kwargs):
    return cls(_Cases(), 3, (6, 7, 8), (6, 7, 8), LABELS, transforms=transforms, **kwargs)


def test_extra_keys_are_collated_in_sample_order():
    np.random.seed(0)
    loader = _loader(nnUNetDataLoaderWithExtras, _mark, extra_keys=("mark",))
    for _ in range(3):
        batch = next(loader)
        assert batch["mark"].shape == (3, 1)
        torch.testing.assert_close(batch["mark"][:, 0], batch["data"].flatten(1).mean(1))  # row j is sample j
        assert set(batch) == {"data", "target", "keys", "mark"}
    assert loader.transforms is _mark  # the pipeline stays replaceable, as in nnU-Net's loader
    np.random.seed(0)
    assert "mark" not in next(_loader(nnUNetDataLoader, _mark))  # what nnU-Net's own loader does with it


def test_transforms_without_the_key_give_nnunets_batch():
    np.random.seed(0)
    batch = next(_loader(nnUNetDataLoaderWithExtras, lambda **s: s, extra_keys=("mark",)))
    assert set(batch) == {"data", "target", "keys"}


def test_stack_extras_refuses_a_key_missing_in_some_samples():
    a, b = torch.zeros(2, 3), torch.ones(2, 3)
    assert torch.equal(stack_extras([{"k": a}, {"k": b}], ["k"])["k"], torch.stack([a, b]))
    assert stack_extras([{"k": None}, {"k": None}], ["k"]) == {}
    with pytest.raises(KeyError, match="1 of 2 samples"):
        stack_extras([{"k": a}, {"k": None}], ["k"])
