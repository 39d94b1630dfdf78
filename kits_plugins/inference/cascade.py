"""The coarse-to-fine cascade predictor: raw CT -> KiTS label map (0 background, 1 kidney, 2 tumor, 3 cyst).

Per case, the CT is read once (SimpleITK, file order, exact header) and kept as float32:

1. coarse kidney+masses mask: stage 221 (3d_lowres) on the full CT;
2. ROIs: :func:`kits_plugins.utilities.roi.roi_boxes` on that mask in file order with the file spacing,
   exactly as ``kits derive-stages`` crops the training data (per kidney, margin in mm, merged when
   overlapping, clamped at the border);
3. per ROI: fine kidney+masses mask (stage 222), then masses and tumor (stage 223) from two channels,
   the CT crop and that mask (float32 0/1), then :func:`combine_stage_outputs`;
4. paste the ROI labels into a full-size uint8 map, postprocess, write with the input header.

Every stage is a stock ``nnUNetPredictor`` (one per stage, loaded once, reused for all cases and ROIs);
no worker process is spawned per ROI. Stages 222/223 are called through ``predict_single_npy_array``
(ROI-sized, so its logits resampling is cheap). Stage 221 runs on the whole CT through
:func:`coarse_label_map`: the same nnU-Net pieces (preprocessor class, ``predict_logits_from_preprocessed_data``,
label manager, resampling functions) but the argmax is taken at low resolution and only the uint8 label map
is resampled back, so no full-size logits exist. Arrays are handed to nnU-Net in the order its
``NibabelIOWithReorient`` reader produces (see ``kits_plugins.utilities.orientation``) and mapped back.
Full-size arrays held: the float32 CT, the uint8 output and (briefly) the coarse mask.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kits_plugins.constants import (
    CYST,
    DEFAULT_MARGIN_MM,
    DEFAULT_MIN_ROI_VOLUME_MM3,
    FILE_ENDING,
    KIDNEY,
    TUMOR,
)
from kits_plugins.utilities import roi
from kits_plugins.utilities.image_io import Geometry, KitsInputError, read_image, read_label, write_image
from kits_plugins.utilities.orientation import Reorientation

EMPTY_MASK_POLICIES = ("zeros", "whole")
TIMING_KEYS = ("read", "coarse", "fine", "masses", "postprocess", "write")


def combine_stage_outputs(fine_mask: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """Final labels of one ROI from the fine kidney+masses mask (222) and the masses map (223, in KiTS
    values 2 tumor / 3 cyst, see :func:`masses_label_lut`).

    Kidney (1) wherever the fine mask is set; tumor (2) and cyst (3) from stage 223 where it predicts
    them *inside* the fine mask. Masses outside the fine mask are dropped: stage 222 is the model trained
    for the kidney+masses extent (the kidney_and_mass HEC), 223 only subdivides it, and a mass must lie
    in a kidney. Any other value 223 may return (e.g. a kidney region) stays kidney.
    """
    if fine_mask.shape != masses.shape:
        raise ValueError(f"fine mask {fine_mask.shape} and masses {masses.shape} differ in shape")
    fine_mask = fine_mask.astype(bool, copy=False)
    out = fine_mask.astype(np.uint8) * np.uint8(KIDNEY)
    lesion = fine_mask & ((masses == TUMOR) | (masses == CYST))
    out[lesion] = masses[lesion]
    return out


def masses_label_lut(labels: dict) -> np.ndarray:
    """Lookup table: stage-223 label value -> KiTS label (0, 2 tumor, 3 cyst), from its dataset.json labels.

    The value of ``tumor`` becomes 2, a ``cyst`` label or the other values of the ``masses`` region
    become 3, anything else 0. Covers the derive-stages encoding (``masses (1, 2)``, ``tumor 1``,
    regions_class_order ``(2, 1)``: 1 tumor, 2 cyst) and KiTS-valued encodings (``masses [2, 3]``, ``tumor 2``).
    """

    def values(v) -> list[int]:
        return [int(x) for x in v] if isinstance(v, (list, tuple)) else [int(v)]

    if "tumor" not in labels:
        raise KitsInputError(f"stage 223 dataset.json labels {labels} have no 'tumor' entry")
    tumor = values(labels["tumor"])
    cyst = values(labels["cyst"]) if "cyst" in labels else [v for v in values(labels.get("masses", [])) if v not in tumor]
    lut = np.zeros(max([*tumor, *cyst, 0]) + 1, dtype=np.uint8)
    lut[cyst] = CYST
    lut[tumor] = TUMOR
    return lut


@dataclass
class CascadeResult:
    """Label map (file order, uint8) of one case and what it took to get it."""

    segmentation: np.ndarray
    boxes: list[roi.Box]
    timings: dict[str, float]
    fallback: str | None = None
    probabilities: list[dict] = field(default_factory=list)  # per ROI, only with save_probabilities

    def info(self, case: str | None = None) -> dict:
        shape = self.segmentation.shape
        return {
            "case": case,
            **{k: round(self.timings.get(k, 0.0), 3) for k in TIMING_KEYS},
            "total": round(sum(self.timings.get(k, 0.0) for k in TIMING_KEYS), 3),
            "n_rois": len(self.boxes),
            "boxes": self.boxes,
            "roi_fraction": round(sum(roi.box_volume(b) for b in self.boxes) / float(np.prod(shape)), 5),
            "fallback": self.fallback,
        }


def timing_line(info: dict) -> str:
    """One readable line per case: seconds per step, ROIs and the share of the volume they cover."""
    steps = " ".join(f"{k} {info[k]:.1f}s" for k in TIMING_KEYS)
    extra = f" [{info['fallback']}]" if info.get("fallback") else ""
    return (
        f"{info['case']}: {steps} | total {info['total']:.1f}s, {info['n_rois']} ROI(s) "
        f"= {100 * info['roi_fraction']:.1f}% of the volume{extra}"
    )


def _predict(predictor, image_nn: np.ndarray, spacing_nn: Sequence[float], probabilities: bool):
    """One nnU-Net prediction of a (c, z, y, x) float32 array in nnU-Net order; label map (+ probabilities)."""
    props = {"spacing": [float(s) for s in spacing_nn]}  # nnU-Net adds keys to this dict: fresh each call
    return predictor.predict_single_npy_array(image_nn, props, None, None, probabilities)


def resample_label_map(
    seg: np.ndarray,
    new_shape: Sequence[int],
    current_spacing: Sequence[float],
    new_spacing: Sequence[float],
    configuration_manager,
    chunk_voxels: int = 2**20,
) -> np.ndarray:
    """Resample a (z, y, x) label map with the configuration's ``resampling_fn_seg`` (nnU-Net's functions).

    nnU-Net's default ``resample_data_or_seg_to_shape`` in its separate-z mode (one axis much coarser, e.g.
    2.5 mm slices) interpolates in-plane slice by slice, then along the slice axis with ``map_coordinates``
    on a coordinate grid of the whole output (int64 + float64 copies: ~1.8 GB for 512 x 512 x 103). That path
    is separable, so here it runs as two calls of nnU-Net's ``resample_data_or_seg`` with the same
    kwargs: (1) in-plane only, in slabs of slices (the slices are independent), (2) along the slice axis only,
    in slabs of an in-plane axis (in-plane size unchanged, so every column maps to itself). The result equals
    the single call (tested) with a temporary grid of ``chunk_voxels`` voxels. Other resampling functions and
    the non-separate 3-D resize are called on the whole map (float64 temporaries of the output size).
    """
    from nnunetv2.preprocessing.resampling.default_resampling import (
        ANISO_THRESHOLD,
        determine_do_sep_z_and_axis,
        resample_data_or_seg,
    )

    seg = np.ascontiguousarray(seg, dtype=np.uint8)
    new_shape = tuple(int(n) for n in new_shape)
    cfg = configuration_manager.configuration
    kwargs = dict(cfg.get("resampling_fn_seg_kwargs", {}))
    if seg.shape == new_shape:
        return seg
    if cfg.get("resampling_fn_seg") != "resample_data_or_seg_to_shape" or not kwargs.get("is_seg", True):
        return np.asarray(configuration_manager.resampling_fn_seg(seg[None], new_shape, current_spacing, new_spacing)[0],
                          dtype=np.uint8)
    do_separate_z, axis = determine_do_sep_z_and_axis(
        kwargs.get("force_separate_z", False), current_spacing, new_spacing,
        kwargs.get("separate_z_anisotropy_threshold", ANISO_THRESHOLD),
    )
    order, order_z = kwargs.get("order", 3), kwargs.get("order_z", 0)
    if not do_separate_z:
        return resample_data_or_seg(seg[None], new_shape, True, None, order, False, order_z=order_z)[0]

    def slabs(shape: Sequence[int], along: int):
        step = max(1, chunk_voxels // max(1, int(np.prod(shape)) // shape[along]))
        for start in range(0, shape[along], step):
            index = [slice(None)] * 3
            index[along] = slice(start, min(start + step, shape[along]))
            yield tuple(index)

    # (1) in-plane: the slice axis keeps its size, so nnU-Net resizes slice by slice (no coordinate grid)
    inplane_shape = list(new_shape)
    inplane_shape[axis] = seg.shape[axis]
    inplane = np.empty(inplane_shape, np.uint8)
    for index in slabs(inplane_shape, axis):
        part = seg[index]
        target = [n if d != axis else part.shape[axis] for d, n in enumerate(inplane_shape)]
        inplane[index] = resample_data_or_seg(part[None], target, True, axis, order, True, order_z=order_z)[0]
    del seg
    # (2) along the slice axis, in slabs of an in-plane axis (in-plane identity: each column maps to itself)
    other = next(d for d in range(3) if d != axis)
    out = np.empty(new_shape, np.uint8)
    for index in slabs(new_shape, other):
        part = inplane[index]
        target = [new_shape[axis] if d == axis else part.shape[d] for d in range(3)]
        out[index] = resample_data_or_seg(part[None], target, True, axis, order, True, order_z=order_z)[0]
    return out


def coarse_label_map(predictor, image_nn: np.ndarray, spacing_nn: Sequence[float]) -> np.ndarray:
    """Stage-221 label map (uint8, nnU-Net order, the input's shape) without full-size logits.

    What ``predict_single_npy_array`` does, with nnU-Net's own pieces, except that the argmax is taken at
    the network's resolution and only the uint8 label map is resampled back (:func:`resample_label_map`),
    instead of the float logits of every class. Steps: the configuration's preprocessor class
    (``run_case_npy``: transpose, crop to the nonzero region, normalisation, resampling; it makes a float32
    copy of the input and its resampling works in float64 on the cropped volume), ``predict_logits_from_
    preprocessed_data`` (sliding window, mirroring, fold ensemble), ``label_manager.convert_logits_to_
    segmentation`` at low resolution, resampling to the cropped shape, pasting into the bbox nnU-Net cropped
    to (``bbox_used_for_cropping`` in ``shape_before_cropping``, acvl_utils' ``insert_crop_into_image`` as
    nnU-Net's export uses), ``transpose_backward``. Resampling a label map instead of logits may move the
    boundary by about one voxel of the coarse grid: irrelevant for a ROI mask grown by a margin in mm.
    """
    import torch
    from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

    pm, cm = predictor.plans_manager, predictor.configuration_manager
    props = {"spacing": [float(s) for s in spacing_nn]}
    preprocessor = cm.preprocessor_class(verbose=False)
    data, _, props = preprocessor.run_case_npy(image_nn, None, props, pm, cm, predictor.dataset_json)
    logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data)).cpu()
    del data
    seg = predictor.label_manager.convert_logits_to_segmentation(logits)
    del logits
    seg = seg.numpy() if isinstance(seg, torch.Tensor) else np.asarray(seg)

    shape_cropped = props["shape_after_cropping_and_before_resampling"]
    spacing_t = [props["spacing"][i] for i in pm.transpose_forward]
    current = cm.spacing if len(cm.spacing) == len(shape_cropped) else [spacing_t[0], *cm.spacing]
    seg = resample_label_map(seg.astype(np.uint8, copy=False), shape_cropped, current, spacing_t, cm)
    full = np.zeros(props["shape_before_cropping"], dtype=np.uint8)
    full = insert_crop_into_image(full, seg, props["bbox_used_for_cropping"])
    return np.asarray(full).transpose(pm.transpose_backward)


class KiTSCascadePredictor:
    """Three stock ``nnUNetPredictor`` objects (221 coarse, 222 fine, 223 masses) run as one cascade.

    ``coarse`` may be None when every case gets an explicit coarse mask (the "oracle" mode used by tests
    and the benchmark). ``on_empty_mask`` decides what happens when the coarse mask is empty:
    ``"zeros"`` (default) warns and returns an all-zero label map; ``"whole"`` warns and runs the fine
    stages on the whole image as one ROI (slow and memory hungry on big scans, the fine models never saw
    whole scans in training).
    """

    def __init__(
        self,
        coarse,
        fine,
        masses,
        margin_mm: float = DEFAULT_MARGIN_MM,
        min_roi_volume_mm3: float = DEFAULT_MIN_ROI_VOLUME_MM3,
        postprocess: bool = True,
        min_volume_mm3: dict | None = None,
        on_empty_mask: str = "zeros",
        save_probabilities: bool = False,
    ):
        if on_empty_mask not in EMPTY_MASK_POLICIES:
            raise ValueError(f"on_empty_mask must be one of {EMPTY_MASK_POLICIES}, got {on_empty_mask!r}")
        self.coarse, self.fine, self.masses = coarse, fine, masses
        self.margin_mm = margin_mm
        self.min_roi_volume_mm3 = min_roi_volume_mm3
        self.postprocess = postprocess
        self.min_volume_mm3 = min_volume_mm3
        self.on_empty_mask = on_empty_mask
        self.save_probabilities = save_probabilities
        self._masses_lut = masses_label_lut(masses.dataset_json["labels"]) if masses is not None else None

    @classmethod
    def from_results(
        cls,
        models: dict | None = None,
        results: str | os.PathLike | None = None,
        device: str = "cpu",
        step_size: float = 0.5,
        use_mirroring: bool = True,
        load_coarse: bool = True,
        **kwargs,
    ) -> KiTSCascadePredictor:
        """Load the three stage models from ``$nnUNet_results`` (or ``results``).

        ``models``: ``{"coarse"|"fine"|"masses": StageModel}`` (see
        :func:`kits_plugins.inference.model_discovery.stage_models`); defaults for missing stages.
        ``load_coarse=False`` skips stage 221 (oracle coarse masks). Other keywords go to ``__init__``.
        """
        from kits_plugins.inference.model_discovery import DEFAULT_STAGE_MODELS, load_stage_predictor

        models = {**DEFAULT_STAGE_MODELS, **(models or {})}
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise KitsInputError("-device cuda: no CUDA device is available (use -device cpu)")
        common = dict(results=results, device=device, step_size=step_size, use_mirroring=use_mirroring)
        coarse = load_stage_predictor(models["coarse"], **common) if load_coarse else None
        fine = load_stage_predictor(models["fine"], **common)
        masses = load_stage_predictor(models["masses"], **common)
        return cls(coarse, fine, masses, **kwargs)

    # ----------------------------------------------------------------------------------------------- arrays
    def coarse_mask(self, ct: np.ndarray, geometry: Geometry) -> np.ndarray:
        """Stage 221 on the full CT (file order in, file-order bool mask out), via :func:`coarse_label_map`."""
        if self.coarse is None:
            raise KitsInputError("no coarse model loaded and no coarse mask given")
        r = Reorientation.from_geometry(geometry)
        image = r.to_nnunet(ct.astype(np.float32, copy=False))[None]
        seg_nn = coarse_label_map(self.coarse, image, r.spacing_to_nnunet(geometry.spacing_np))
        return r.from_nnunet(seg_nn) > 0

    def predict_array(
        self, ct: np.ndarray, geometry: Geometry, coarse_mask: np.ndarray | None = None
    ) -> CascadeResult:
        """Cascade on a CT array in file order (SimpleITK numpy order) with its header; no file I/O.

        ``coarse_mask`` (file order, any dtype, foreground > 0) replaces stage 221 when given.
        """
        if ct.shape != geometry.shape:
            raise ValueError(f"CT shape {ct.shape} does not match geometry {geometry.shape}")
        timings: dict[str, float] = {}
        t = time.perf_counter()
        if coarse_mask is None:
            coarse_mask = self.coarse_mask(ct, geometry)
        elif coarse_mask.shape != ct.shape:
            raise KitsInputError(f"coarse mask shape {coarse_mask.shape} differs from CT shape {ct.shape}")
        spacing = geometry.spacing_np
        boxes = roi.roi_boxes(coarse_mask > 0, spacing, self.margin_mm, self.min_roi_volume_mm3)
        del coarse_mask
        timings["coarse"] = time.perf_counter() - t

        fallback = None
        if not boxes:
            if self.on_empty_mask == "zeros":
                fallback = "empty coarse mask: all-zero label map"
            else:
                fallback = "empty coarse mask: fine stages on the whole image"
                boxes = [[[0, n] for n in ct.shape]]
            warnings.warn(fallback, RuntimeWarning, stacklevel=2)

        r = Reorientation.from_geometry(geometry)
        spacing_nn = r.spacing_to_nnunet(spacing)
        seg = np.zeros(ct.shape, dtype=np.uint8)
        probabilities = []
        timings["fine"] = timings["masses"] = 0.0
        for k, box in enumerate(boxes):
            labels_nn, probs = self._predict_roi(r.to_nnunet(roi.crop(ct, box)), spacing_nn, timings)
            roi.paste(seg, r.from_nnunet(labels_nn), box)
            if probs is not None:
                probabilities.append({"roi": k, "box": box, **{name: r.from_nnunet(p) for name, p in probs.items()}})

        if self.postprocess:
            t = time.perf_counter()
            seg = self._postprocess(seg, spacing)
            timings["postprocess"] = time.perf_counter() - t
        return CascadeResult(seg, boxes, timings, fallback, probabilities)

    def _predict_roi(self, ct_nn: np.ndarray, spacing_nn: Sequence[float], timings: dict[str, float]):
        """Stages 222 and 223 on one ROI in nnU-Net order; combined labels (+ float16 probabilities)."""
        t = time.perf_counter()
        want = self.save_probabilities
        out = _predict(self.fine, ct_nn[None], spacing_nn, want)
        fine_seg, fine_prob = out if want else (out, None)
        fine_mask = fine_seg > 0
        del fine_seg
        timings["fine"] += time.perf_counter() - t

        t = time.perf_counter()
        probs = None
        if fine_mask.any():
            image = np.stack([ct_nn.astype(np.float32, copy=False), fine_mask.astype(np.float32)])
            out = _predict(self.masses, image, spacing_nn, want)
            masses_seg, masses_prob = out if want else (out, None)
            del image
            labels = combine_stage_outputs(fine_mask, self._masses_lut[masses_seg])
            if want:
                probs = {"fine": fine_prob.astype(np.float16), "masses": masses_prob.astype(np.float16)}
        else:  # nothing for 223 to subdivide
            labels = np.zeros(fine_mask.shape, dtype=np.uint8)
            if want:
                probs = {"fine": fine_prob.astype(np.float16), "masses": None}
        timings["masses"] += time.perf_counter() - t
        return labels, probs

    def _postprocess(self, seg: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        try:
            from kits_plugins.postprocessing.remove_components import postprocess_segmentation
        except ImportError as e:  # the postprocessing module is built by another issue
            warnings.warn(f"postprocessing unavailable ({e}); writing the raw cascade output", RuntimeWarning, stacklevel=3)
            return seg
        import inspect

        extra = {"in_place": True} if "in_place" in inspect.signature(postprocess_segmentation).parameters else {}
        return postprocess_segmentation(seg, tuple(spacing), self.min_volume_mm3, remove_outside_kidney=True, **extra)

    # ------------------------------------------------------------------------------------------------ files
    def predict_case(
        self,
        ct_path: str | os.PathLike,
        out_path: str | os.PathLike,
        coarse_mask_path: str | os.PathLike | None = None,
        case: str | None = None,
    ) -> dict:
        """Read the CT once, run the cascade, write ``out_path`` with the CT's exact header; info dict."""
        t = time.perf_counter()
        ct, g = read_image(ct_path, np.float32)
        mask = None
        if coarse_mask_path is not None:
            mask, mg = read_label(coarse_mask_path, max_label=255)
            if mg.size != g.size:
                raise KitsInputError(f"{coarse_mask_path}: size {mg.size} differs from CT {ct_path} {g.size}")
        read_s = time.perf_counter() - t
        result = self.predict_array(ct, g, mask)
        del ct, mask
        result.timings["read"] = read_s
        t = time.perf_counter()
        write_image(result.segmentation, g, out_path)
        if result.probabilities:
            self._write_probabilities(Path(out_path).parent, case or Path(out_path).name[: -len(FILE_ENDING)], result, g)
        result.timings["write"] = time.perf_counter() - t
        return result.info(case)

    @staticmethod
    def _write_probabilities(out_dir: Path, case: str, result: CascadeResult, g: Geometry) -> None:
        """``<case>_roiK.npz``: float16 ``fine`` (222 softmax) and ``masses`` (223 region sigmoids, absent if
        the fine mask was empty) probabilities of the ROI in file order, its ``box`` and source header."""
        import json

        from kits_plugins.inference.stage_io import crop_id

        for p in result.probabilities:
            arrays = {k: v for k, v in p.items() if k in ("fine", "masses") and v is not None}
            np.savez(
                out_dir / f"{crop_id(case, p['roi'])}.npz",
                box=np.asarray(p["box"], dtype=np.int64),
                source_geometry=np.asarray(json.dumps(g.to_dict())),
                **arrays,
            )

    def predict(
        self,
        inputs: str | os.PathLike,
        output_dir: str | os.PathLike,
        coarse_masks: str | os.PathLike | None = None,
        progress: bool = True,
    ) -> list[dict]:
        """Every case of ``inputs`` (file, folder, KiTS layout) -> ``output_dir/case_XXXXX.nii.gz``.

        ``coarse_masks``: a folder of ``case_XXXXX.nii.gz`` masks used instead of stage 221 (oracle mode).
        With ``save_probabilities`` a ``crops.json`` next to the npz files records every ROI box.
        """
        from tqdm import tqdm

        from kits_plugins.inference.stage_io import crop_record, find_ct_inputs, mask_file, write_crops_json
        from kits_plugins.utilities.image_io import read_geometry

        cases = find_ct_inputs(inputs)
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        infos, records, geoms = [], [], {}
        bar = tqdm(cases, desc="kits predict", unit="case", disable=not progress)
        for case, ct_path in bar:
            bar.set_postfix_str(case)
            mask_path = mask_file(Path(coarse_masks), case) if coarse_masks is not None else None
            info = self.predict_case(ct_path, output_dir / f"{case}{FILE_ENDING}", mask_path, case)
            infos.append(info)
            tqdm.write(timing_line(info))
            if self.save_probabilities:
                g = geoms[case] = read_geometry(ct_path)
                rel = os.path.relpath(ct_path, output_dir)
                records += [crop_record(case, k, b, g, rel, self.margin_mm) for k, b in enumerate(info["boxes"])]
        if self.save_probabilities:
            write_crops_json(output_dir / "crops.json", records, geoms)
        return infos
