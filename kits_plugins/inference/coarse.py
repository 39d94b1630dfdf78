"""Stage 221 on a whole CT with memory proportional to the scan, not to nnU-Net's float64 temporaries.

``predict_single_npy_array`` on a 512 x 512 x 274 scan peaks at 2.2 GB above the input in ``run_case_npy``
alone (``benchmarks/coarse_preprocessing.py``; 182 MB with :func:`preprocess_lowres`): a float32 copy, a
filled nonzero mask, then ``resample_data_or_seg`` turns the whole cropped volume into float64 and skimage's
cubic spline prefilter makes another float64 copy.
Then it resamples float logits of every class back to full size. For the coarse stage neither is needed:

* :func:`preprocess_lowres` produces the same network input as ``run_case_npy`` with nnU-Net's own
  pieces (``compute_new_shape``, ``determine_do_sep_z_and_axis``, ``resample_data_or_seg``, the
  configuration's normalizer class) but in slabs: normalisation is pointwise (CT/no normalisation), nnU-Net's
  separate-z resampling is per slice then per column, and its 3-D cubic resize is separable (one axis at a
  time, unchanged axes reproduce the samples) with skimage's clip to the input range applied once at the end,
  as the single call does. Equal to ``run_case_npy`` up to float32 rounding (tested); other normalisation or
  resampling schemes fall back to ``run_case_npy`` itself.
* :func:`coarse_lowres` takes the argmax at the network's resolution; :class:`LowresLabelMap` gives ROI
  boxes straight from that small map (components, then box corners scaled to the input grid) or, when
  a full-size mask is wanted, resamples only the uint8 label map (:func:`resample_label_map`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from kits_plugins.inference import nnunet_predictor as nnp
from kits_plugins.utilities import roi

if TYPE_CHECKING:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

#: normalisation schemes that are pointwise and ignore the nonzero mask, so they can run slab by slab
LEAN_NORMALIZATIONS = ("CTNormalization", "NoNormalization")
_RESAMPLE_KW = {"mode": "edge", "anti_aliasing": False}  # what nnU-Net's resample_data_or_seg passes to skimage


def _slabs(shape: Sequence[int], along: int, chunk_voxels: int) -> Iterator[tuple[slice, ...]]:
    """Index tuples cutting ``shape`` into slabs along one axis, each about ``chunk_voxels`` voxels."""
    per_index = max(1, int(np.prod(shape)) // max(1, shape[along]))
    step = max(1, chunk_voxels // per_index)
    for start in range(0, shape[along], step):
        index = [slice(None)] * len(shape)
        index[along] = slice(start, min(start + step, shape[along]))
        yield tuple(index)


def _separate_z(kwargs: dict, current_spacing, new_spacing) -> tuple[bool, int | None]:
    from nnunetv2.preprocessing.resampling.default_resampling import ANISO_THRESHOLD, determine_do_sep_z_and_axis

    return determine_do_sep_z_and_axis(
        kwargs.get("force_separate_z", False), current_spacing, new_spacing,
        kwargs.get("separate_z_anisotropy_threshold", ANISO_THRESHOLD),
    )


def _resample_separate_z(read, shape, new_shape, axis, is_seg, order, order_z, dtype, chunk_voxels) -> np.ndarray:
    """nnU-Net's separate-z resampling in slabs: in-plane per slice (slices are independent in nnU-Net too),
    then along ``axis`` per column (in-plane size unchanged there, so every column maps to itself).
    ``read(index)`` returns the input slab at ``index`` (already normalised)."""
    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg

    inplane_shape = list(new_shape)
    inplane_shape[axis] = shape[axis]
    inplane = np.empty(inplane_shape, dtype)
    for index in _slabs(inplane_shape, axis, chunk_voxels):
        part = read(index)
        target = [n if d != axis else part.shape[axis] for d, n in enumerate(inplane_shape)]
        inplane[index] = resample_data_or_seg(part[None], target, is_seg, axis, order, True, order_z=order_z)[0]
    if inplane_shape[axis] == new_shape[axis]:
        return inplane
    other = next(d for d in range(3) if d != axis)
    out = np.empty(new_shape, dtype)
    for index in _slabs(new_shape, other, chunk_voxels):
        part = inplane[index]
        target = [new_shape[axis] if d == axis else part.shape[d] for d in range(3)]
        out[index] = resample_data_or_seg(part[None], target, is_seg, axis, order, True, order_z=order_z)[0]
    return out


def _resample_cubic_separable(read, shape, new_shape, order, chunk_voxels) -> np.ndarray:
    """nnU-Net's non-separate image resampling (one skimage ``resize`` of the whole volume, float64,
    clipped to the input's range) as one resize per changed axis, each in slabs of another axis, float32
    in between, and the clip once at the end. Axes that shrink most go first (smallest intermediates).
    Exact because the tensor-product spline is separable and a resize that keeps an axis's size returns its
    samples unchanged; only float32 rounding between the passes differs (tested against nnU-Net)."""
    from skimage.transform import resize

    lo, hi = math.inf, -math.inf
    axes = sorted((d for d in range(3) if new_shape[d] != shape[d]), key=lambda d: new_shape[d] / shape[d])
    current_shape: list[int] = list(shape)
    current: np.ndarray | None = None  # the previous pass's output
    for k, axis in enumerate(axes):
        out_shape = list(current_shape)
        out_shape[axis] = new_shape[axis]
        out = np.empty(out_shape, np.float32)
        along = next(d for d in range(3) if d != axis)
        for index in _slabs(current_shape, along, chunk_voxels):
            part = read(index) if current is None else current[index]
            if k == 0:
                lo, hi = min(lo, float(part.min())), max(hi, float(part.max()))
            # (axis, everything else) as 2-D: the other axes are not resampled, so flattening them keeps every
            # value (interpolation reproduces the samples) and costs 4x4 spline taps per voxel instead of 4x4x4
            moved = np.moveaxis(part, axis, 0)
            flat = resize(moved.reshape(moved.shape[0], -1).astype(np.float64), (new_shape[axis], moved[0].size),
                          order, clip=False, **_RESAMPLE_KW)
            out[index] = np.moveaxis(flat.reshape(new_shape[axis], *moved.shape[1:]), 0, axis)
        current, current_shape = out, out_shape
    if current is None:  # nothing to resample: nnU-Net returns the (normalised) data as is
        return np.ascontiguousarray(read(tuple(slice(None) for _ in range(3))), dtype=np.float32)
    return np.clip(current, lo, hi, out=current)


def lean_preprocessing_supported(configuration_manager: ConfigurationManager) -> bool:
    """True when :func:`preprocess_lowres` can run slab by slab for this configuration."""
    cfg = configuration_manager.configuration
    return (
        cfg.get("resampling_fn_data") == "resample_data_or_seg_to_shape"
        and all(s in LEAN_NORMALIZATIONS for s in configuration_manager.normalization_schemes)
        and not any(configuration_manager.use_mask_for_norm)
        and len(configuration_manager.spacing) == 3
    )


def preprocess_lowres(predictor: nnUNetPredictor, image_nn: np.ndarray, spacing_nn: Sequence[float],
                      chunk_voxels: int = 2**22) -> tuple[np.ndarray, dict]:
    """Network input (c, z, y, x float32) and nnU-Net properties for a (c, z, y, x) image in nnU-Net order.

    Same steps and result as the configuration's ``run_case_npy`` (transpose, crop to the nonzero box,
    normalise, resample), done in slabs of ``chunk_voxels`` so that no full-size float copy is made: the
    crop is a view (the box of a filled nonzero mask is the box of the nonzero voxels), every slab is
    normalised as it is read. Falls back to ``run_case_npy`` where that is not exact (see
    :func:`lean_preprocessing_supported`).
    """
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

    pm, cm = nnp.plans_manager(predictor), nnp.configuration_manager(predictor)
    props: dict = {"spacing": [float(s) for s in spacing_nn]}
    if not lean_preprocessing_supported(cm):
        data, _, props = cm.preprocessor_class(verbose=False).run_case_npy(
            image_nn, None, props, pm, cm, nnp.dataset_json(predictor))
        return data, props

    data = image_nn.transpose([0, *[i + 1 for i in pm.transpose_forward]])  # view
    spacing = [props["spacing"][i] for i in pm.transpose_forward]
    props["shape_before_cropping"] = data.shape[1:]
    box = None
    for index in _slabs(data.shape[1:], 0, chunk_voxels):
        part = roi.outer_box((data[(slice(None),) + index] != 0).any(axis=0))
        if part is not None:
            part[0] = [part[0][0] + index[0].start, part[0][1] + index[0].start]
            box = part if box is None else roi.union_box(box, part)
    box = box if box is not None else [[0, n] for n in data.shape[1:]]
    props["bbox_used_for_cropping"] = box
    cropped = data[(slice(None),) + roi.bounding_box_to_slice(box)]
    shape = cropped.shape[1:]
    props["shape_after_cropping_and_before_resampling"] = shape
    new_shape = [int(n) for n in compute_new_shape(shape, spacing, cm.spacing)]

    kwargs = dict(cm.configuration.get("resampling_fn_data_kwargs", {}))
    order, order_z = kwargs.get("order", 3), kwargs.get("order_z", 0)
    do_separate_z, axis = _separate_z(kwargs, spacing, cm.spacing)
    out = np.empty((data.shape[0], *new_shape), np.float32)
    for c, scheme in enumerate(cm.normalization_schemes):
        normalizer = _normalizer(scheme)(use_mask_for_norm=False,
                                         intensityproperties=pm.foreground_intensity_properties_per_channel[str(c)])

        def read(index, c=c, normalizer=normalizer):
            return normalizer.run(np.array(cropped[c][index], dtype=np.float32), None)

        if do_separate_z:
            out[c] = _resample_separate_z(read, shape, new_shape, axis, False, order, order_z, np.float32,
                                          chunk_voxels)
        else:
            out[c] = _resample_cubic_separable(read, shape, new_shape, order, chunk_voxels)
    return out, props


def _normalizer(scheme: str):
    import nnunetv2
    from batchgenerators.utilities.file_and_folder_operations import join
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    cls = recursive_find_python_class(join(nnunetv2.__path__[0], "preprocessing", "normalization"), scheme,
                                      "nnunetv2.preprocessing.normalization")
    if cls is None:
        raise RuntimeError(f"nnU-Net has no normalization class {scheme!r}")
    return cls


def resample_label_map(
    seg: np.ndarray,
    new_shape: Sequence[int],
    current_spacing: tuple[float, ...] | list[float] | np.ndarray,  # what nnU-Net's resampling functions take
    new_spacing: tuple[float, ...] | list[float] | np.ndarray,
    configuration_manager: ConfigurationManager,
    chunk_voxels: int = 2**20,
) -> np.ndarray:
    """Resample a (z, y, x) label map with the configuration's ``resampling_fn_seg`` (nnU-Net's functions).

    nnU-Net's default ``resample_data_or_seg_to_shape`` in its separate-z mode (one axis much coarser, e.g.
    2.5 mm slices) interpolates in-plane slice by slice, then along the slice axis with ``map_coordinates``
    on a coordinate grid of the whole output (int64 + float64 copies: ~1.8 GB for 512 x 512 x 103). That path
    runs here in slabs (:func:`_resample_separate_z`, the same nnU-Net calls); the result equals the single
    call (tested). Other resampling functions and the non-separate 3-D resize are called on the whole map.
    """
    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg

    seg = np.ascontiguousarray(seg, dtype=np.uint8)
    new_shape = tuple(int(n) for n in new_shape)
    cfg = configuration_manager.configuration
    kwargs = dict(cfg.get("resampling_fn_seg_kwargs", {}))
    if seg.shape == new_shape:
        return seg
    if cfg.get("resampling_fn_seg") != "resample_data_or_seg_to_shape" or not kwargs.get("is_seg", True):
        return np.asarray(configuration_manager.resampling_fn_seg(seg[None], new_shape, current_spacing, new_spacing)[0],
                          dtype=np.uint8)
    do_separate_z, axis = _separate_z(kwargs, current_spacing, new_spacing)
    order, order_z = kwargs.get("order", 3), kwargs.get("order_z", 0)
    if not do_separate_z:
        return resample_data_or_seg(seg[None], new_shape, True, None, order, False, order_z=order_z)[0]
    return _resample_separate_z(lambda index: seg[index], seg.shape, new_shape, axis, True, order, order_z,
                                np.uint8, chunk_voxels)


@dataclass
class LowresLabelMap:
    """Stage-221 argmax at the network's resolution and what is needed to place it on the input grid.

    ``seg`` (uint8) and ``spacing`` are in nnU-Net's internal order (after ``transpose_forward``);
    ``props`` are nnU-Net's preprocessing properties (crop box and shapes, also in that order).
    """

    seg: np.ndarray
    spacing: tuple[float, ...]
    props: dict
    transpose_backward: tuple[int, ...]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of the image given to :func:`coarse_lowres` (nnU-Net order, before ``transpose_forward``)."""
        before = self.props["shape_before_cropping"]
        return tuple(int(before[i]) for i in self.transpose_backward)

    def component_boxes(self, min_volume_mm3: float = 0.0) -> list[roi.Box]:
        """Boxes of the foreground components on the input grid (nnU-Net order), largest first.

        Components and their volumes (mm³) are taken at the network's resolution; each box is the
        input-grid extent of its low-resolution voxels (voxel ``i`` covers ``[i*f, (i+1)*f)`` of the
        cropped input, ``f`` the per-axis size ratio), so it contains what resampling the map would give.
        """
        cropped = self.props["shape_after_cropping_and_before_resampling"]
        crop_box = self.props["bbox_used_for_cropping"]
        out = []
        for box, _ in roi.component_boxes(self.seg > 0, self.spacing, min_volume_mm3):
            scaled = []
            for (a, b), n_low, n_in, (c0, _) in zip(box, self.seg.shape, cropped, crop_box):
                f = n_in / n_low
                scaled.append([c0 + max(0, math.floor(a * f + 1e-6)), c0 + min(n_in, math.ceil(b * f - 1e-6))])
            out.append([scaled[i] for i in self.transpose_backward])
        return out

    def to_full(self, configuration_manager: ConfigurationManager) -> np.ndarray:
        """uint8 label map on the input grid (nnU-Net order), as nnU-Net's export would place it: the low-res
        map resampled to the cropped shape (:func:`resample_label_map`), pasted into the crop box."""
        from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

        cropped = self.props["shape_after_cropping_and_before_resampling"]
        spacing_t = [self.props["spacing"][i] for i in np.argsort(self.transpose_backward)]
        seg = resample_label_map(self.seg, cropped, self.spacing, spacing_t, configuration_manager)
        full = np.zeros(self.props["shape_before_cropping"], dtype=np.uint8)
        full = insert_crop_into_image(full, seg, self.props["bbox_used_for_cropping"])
        return np.asarray(full).transpose(self.transpose_backward)


def coarse_lowres(predictor: nnUNetPredictor, image_nn: np.ndarray, spacing_nn: Sequence[float]) -> LowresLabelMap:
    """Stage 221 on a (c, z, y, x) image in nnU-Net order: :func:`preprocess_lowres`, nnU-Net's
    ``predict_logits_from_preprocessed_data`` (sliding window, mirroring, fold ensemble) and its label
    manager's argmax, all at the network's resolution. No full-size float array is made."""
    import torch

    pm, cm = nnp.plans_manager(predictor), nnp.configuration_manager(predictor)
    data, props = preprocess_lowres(predictor, image_nn, spacing_nn)
    logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data)).cpu()
    del data
    seg = nnp.label_manager(predictor).convert_logits_to_segmentation(logits)
    del logits
    seg = seg.numpy() if isinstance(seg, torch.Tensor) else np.asarray(seg)
    spacing = tuple(float(s) for s in cm.spacing)
    return LowresLabelMap(seg.astype(np.uint8, copy=False), spacing, props, tuple(pm.transpose_backward))


def coarse_label_map(predictor: nnUNetPredictor, image_nn: np.ndarray, spacing_nn: Sequence[float]) -> np.ndarray:
    """Stage-221 label map (uint8, nnU-Net order, the input's shape): :func:`coarse_lowres`, then only the
    uint8 map is resampled back. Resampling labels instead of logits may move the boundary by about one
    coarse voxel: irrelevant for a ROI mask grown by a margin in mm."""
    return coarse_lowres(predictor, image_nn, spacing_nn).to_full(nnp.configuration_manager(predictor))
