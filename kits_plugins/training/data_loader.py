"""nnU-Net's data loader, keeping extra per-sample outputs of the transforms in the batch.

``nnUNetDataLoader.generate_train_batch`` (nnunetv2 2.8.1) applies the transforms to each sample and collates only
``image`` and ``segmentation`` into ``data`` and ``target``: any other key a transform adds is dropped.
``nnUNetDataLoaderWithExtras`` takes the listed ``extra_keys`` out of each transformed sample and stacks them into
the batch under the same keys. The batch is otherwise nnU-Net's own; nnU-Net's augmenter pins every tensor of the
batch dict (``pin_memory`` on CUDA), the extra keys included.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader


def stack_extras(samples: list[dict[str, torch.Tensor | None]], keys: Sequence[str]) -> dict[str, torch.Tensor]:
    """Per-sample extras -> one ``(b, *sample_shape)`` tensor per key; a key no sample has is left out."""
    batch = {}
    for k in keys:
        values = [s[k] for s in samples]
        present = [v for v in values if v is not None]
        if not present:
            continue
        if len(present) != len(values):
            raise KeyError(f"the transforms produced {k!r} for {len(present)} of {len(values)} samples")
        batch[k] = torch.stack(present)
    return batch


class nnUNetDataLoaderWithExtras(nnUNetDataLoader):
    """``nnUNetDataLoader`` whose batches also hold ``extra_keys``: tensors the transforms add to each sample,
    stacked along a new batch axis (the sample's dtype). ``transforms`` stays the plain pipeline (replaceable)."""

    def __init__(self, *args, extra_keys: Sequence[str] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.extra_keys = tuple(extra_keys)

    def generate_train_batch(self) -> dict:
        transforms = self.transforms
        if not self.extra_keys or transforms is None:
            return super().generate_train_batch()
        kept: list[dict[str, torch.Tensor | None]] = []

        def transform_and_keep(**sample) -> dict:
            out = transforms(**sample)
            kept.append({k: out.pop(k, None) for k in self.extra_keys})
            return out

        self.transforms = transform_and_keep  # nnU-Net calls self.transforms once per sample, in batch order
        try:
            batch = super().generate_train_batch()
        finally:
            self.transforms = transforms
        batch.update(stack_extras(kept, self.extra_keys))
        return batch
