"""The coarse-to-fine cascade predictor: raw CT -> KiTS label map (0 background, 1 kidney, 2 tumor, 3 cyst).

Per case, the CT is read once (SimpleITK, file order, exact header) and kept as stored (:func:`read_ct`;
int16 for KiTS23, half the memory of float32):

1. coarse kidney+masses map: stage 221 (3d_lowres) on the full CT, kept at the network's resolution
   (:mod:`kits_plugins.inference.coarse`: slab-wise preprocessing, argmax at low resolution);
2. ROIs: one box per kidney component (volumes in mm³ at low resolution), scaled to the CT grid, then grown
   by the margin in mm, clamped and merged with :func:`kits_plugins.utilities.roi.pad_and_merge`, as
   ``kits derive-stages`` crops the training data (:func:`~kits_plugins.utilities.roi.roi_boxes`);
3. per ROI: fine kidney+masses mask (stage 222), then masses and tumor (stage 223) from two channels,
   the CT crop and that mask (float32 0/1), then
   :func:`~kits_plugins.utilities.labels.combine_stage_outputs`;
4. paste the ROI labels into a full-size uint8 map, postprocess, write with the input header.

Every stage is a stock ``nnUNetPredictor`` (one per stage, loaded once, reused for all cases and ROIs);
no worker process is spawned per ROI. Stages 222/223 are called through ``predict_single_npy_array``
(ROI-sized, so its float64 temporaries and logits resampling are cheap). Stage 221 runs on the whole CT
through :func:`kits_plugins.inference.coarse.coarse_lowres`: nnU-Net's own preprocessing, sliding window and
argmax, with no full-size float copy and no full-size coarse mask. Arrays are handed to nnU-Net in the order
its ``NibabelIOWithReorient`` reader produces (see ``kits_plugins.utilities.orientation``) and mapped back.
Full-size arrays held: the CT (as stored) and the uint8 output.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kits_plugins.constants import (
    DEFAULT_MARGIN_MM,
    DEFAULT_MIN_ROI_VOLUME_MM3,
    FILE_ENDING,
)
from kits_plugins.inference import nnunet_predictor as nnp
from kits_plugins.inference.coarse import LowresLabelMap, coarse_lowres
from kits_plugins.inference.outputs import (
    CaseOutputs,
    check_dicom_seg_inputs,
    planned_paths,
    write_case_outputs,
    write_statistics_table,
)
from kits_plugins.inference.stage_io import find_ct_inputs, mask_file
from kits_plugins.postprocessing.remove_components import postprocess_segmentation
from kits_plugins.utilities import roi
from kits_plugins.utilities.crops import CROPS_JSON, crop_id, crop_record, write_crops_json
from kits_plugins.utilities.ct_io import read_ct, read_ct_geometry
from kits_plugins.utilities.image_io import (
    Geometry,
    KitsInputError,
    read_label,
    write_image,
)
from kits_plugins.utilities.labels import combine_stage_outputs, decode_masses, kidney_mask, masses_label_lut
from kits_plugins.utilities.orientation import Reorientation
from kits_plugins.utilities.paths import child_path, refuse_overwriting_inputs
from kits_plugins.utilities.staging import atomic_path

if TYPE_CHECKING:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from kits_plugins.inference.model_discovery import StageModel

logger = logging.getLogger(__name__)
EMPTY_MASK_POLICIES = ("zeros", "whole")
#: times a ROI is grown (by the margin, on the faces stage 222's mask touches) and stage 222 rerun
DEFAULT_MAX_REGROW = 2
TIMING_KEYS = ("read", "coarse", "fine", "masses", "postprocess", "write")


@dataclass
class CascadeResult:
    """Label map (file order, uint8) of one case and what it took to get it."""

    segmentation: np.ndarray
    boxes: list[roi.Box]
    timings: dict[str, float]
    fallback: str | None = None
    probabilities: list[dict] = field(default_factory=list)  # per ROI, only with save_probabilities
    regrown: list[dict] = field(default_factory=list)  # per ROI grown because stage 222's mask touched its face

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
            "regrown": self.regrown,
        }


def timing_line(info: dict) -> str:
    """One readable line per case: seconds per step, ROIs and the share of the volume they cover."""
    steps = " ".join(f"{k} {info[k]:.1f}s" for k in TIMING_KEYS)
    extra = f" [{info['fallback']}]" if info.get("fallback") else ""
    for g in info.get("regrown", []):
        extra += f" [ROI {g['roi']} cut the kidney: grown at {g['faces']} and stage 222 rerun]"
    return (
        f"{info['case']}: {steps} | total {info['total']:.1f}s, {info['n_rois']} ROI(s) "
        f"= {100 * info['roi_fraction']:.1f}% of the volume{extra}"
    )


def _predict(predictor: nnUNetPredictor, image_nn: np.ndarray, spacing_nn: Sequence[float],
             probabilities: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """One nnU-Net prediction of a (c, z, y, x) float32 array in nnU-Net order: label map and, with
    ``probabilities``, the class probabilities (else None)."""
    props = {"spacing": [float(s) for s in spacing_nn]}  # nnU-Net adds keys to this dict: fresh each call
    out = predictor.predict_single_npy_array(image_nn, props, None, None, probabilities)
    return out if probabilities else (out, None)


@dataclass(frozen=True)
class PredictionJob:
    """One case of ``kits predict``: its CT, the label map to write and the optional oracle coarse mask."""

    case: str
    ct: Path
    output: Path
    coarse_mask: Path | None = None


def crops_json_name(num_parts: int = 1, part_id: int = 0) -> str:
    """``crops.json`` of ``kits predict --save_probabilities``; one per part when prediction is sharded, so the
    parts never write the same file."""
    return CROPS_JSON if num_parts == 1 else f"crops_part{part_id}_of_{num_parts}.json"


def prediction_jobs(
    inputs: str | os.PathLike,
    output_dir: str | os.PathLike,
    coarse_masks: str | os.PathLike | None = None,
    save_probabilities: bool = False,
    num_parts: int = 1,
    part_id: int = 0,
    outputs: CaseOutputs | None = None,
) -> list[PredictionJob]:
    """The cases of ``inputs`` (file, folder, KiTS layout, DICOM series) and their outputs ``<case>.nii.gz``, checked
    before any model is loaded: case ids are plain names, every mask exists, no output replaces an input (nor do
    the other files of ``outputs``: :mod:`kits_plugins.inference.outputs`), a DICOM SEG has a DICOM series input.

    ``num_parts`` / ``part_id`` shard the work as ``nnUNetv2_predict`` does: this part gets ``cases[part_id::num_parts]``
    of the cases sorted by id, so N jobs (GPUs, nodes) with part ids 0..N-1 write every case exactly once.
    """
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise KitsInputError(f"-part_id {part_id} is not in 0..{num_parts - 1} (-num_parts {num_parts})")
    output_dir = Path(output_dir)
    outputs = outputs or CaseOutputs()
    cts = find_ct_inputs(inputs)[part_id::num_parts]
    check_dicom_seg_inputs(cts, outputs)
    jobs = [
        PredictionJob(case, ct, child_path(output_dir, f"{case}{FILE_ENDING}", ct),
                      mask_file(Path(coarse_masks), case) if coarse_masks is not None else None)
        for case, ct in cts
    ]
    written = [j.output for j in jobs] + ([output_dir / crops_json_name(num_parts, part_id)] if save_probabilities else [])
    written += planned_paths(output_dir, [j.case for j in jobs], outputs, num_parts, part_id)
    inputs_used = [j.ct for j in jobs] + [j.coarse_mask for j in jobs if j.coarse_mask is not None]
    refuse_overwriting_inputs(written, inputs_used, "kits predict")
    return jobs


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
        coarse: nnUNetPredictor | None,
        fine: nnUNetPredictor,
        masses: nnUNetPredictor,
        margin_mm: float = DEFAULT_MARGIN_MM,
        min_roi_volume_mm3: float = DEFAULT_MIN_ROI_VOLUME_MM3,
        postprocess: bool = True,
        min_volume_mm3: dict | None = None,
        on_empty_mask: str = "zeros",
        save_probabilities: bool = False,
        max_regrow: int = DEFAULT_MAX_REGROW,
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
        if max_regrow < 0:
            raise ValueError(f"max_regrow must be >= 0, got {max_regrow}")
        self.max_regrow = int(max_regrow)
        self._masses_labels = nnp.dataset_json(masses)["labels"] if masses is not None else None
        if self._masses_labels is not None:
            masses_label_lut(self._masses_labels)  # a dataset.json without 'tumor' fails here, not per ROI

    @classmethod
    def from_results(
        cls,
        models: dict[str, StageModel] | None = None,
        results: str | os.PathLike | None = None,
        device: str = "cpu",
        step_size: float = 0.5,
        use_mirroring: bool = True,
        load_coarse: bool = True,
        trust_checkpoints: bool = False,
        **kwargs,
    ) -> KiTSCascadePredictor:
        """Load the three stage models from ``$nnUNet_results`` (or ``results``).

        ``models``: ``{"coarse"|"fine"|"masses": StageModel}`` (see
        :func:`kits_plugins.inference.model_discovery.stage_models`); defaults for missing stages.
        ``load_coarse=False`` skips stage 221 (oracle coarse masks). ``trust_checkpoints`` unpickles checkpoints
        fully (see :mod:`kits_plugins.inference.checkpoints`). Other keywords go to ``__init__``.
        """
        from kits_plugins.inference.model_discovery import DEFAULT_STAGE_MODELS, load_stage_predictor

        models = {**DEFAULT_STAGE_MODELS, **(models or {})}
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise KitsInputError("-device cuda: no CUDA device is available (use -device cpu)")

        def load(model: StageModel) -> nnUNetPredictor:
            return load_stage_predictor(model, results=results, device=device, step_size=step_size,
                                        use_mirroring=use_mirroring, trust_checkpoints=trust_checkpoints)

        coarse = load(models["coarse"]) if load_coarse else None
        fine = load(models["fine"])
        masses = load(models["masses"])
        return cls(coarse, fine, masses, **kwargs)

    # ----------------------------------------------------------------------------------------------- arrays
    def _coarse_model(self) -> nnUNetPredictor:
        if self.coarse is None:
            raise KitsInputError("no coarse model loaded and no coarse mask given")
        return self.coarse

    def coarse_lowres(self, ct: np.ndarray, geometry: Geometry) -> LowresLabelMap:
        """Stage 221 on the full CT (file order), kept at the network's resolution."""
        coarse = self._coarse_model()
        r = Reorientation.from_geometry(geometry)
        image = r.to_nnunet(ct)[None]  # any dtype: the preprocessing makes float32 slabs
        return coarse_lowres(coarse, image, r.spacing_to_nnunet(geometry.spacing_np))

    def coarse_mask(self, ct: np.ndarray, geometry: Geometry) -> np.ndarray:
        """Stage 221 as a full-size file-order bool mask (for inspection; the cascade itself only needs
        :meth:`coarse_boxes`)."""
        lowres = self.coarse_lowres(ct, geometry)
        full = lowres.to_full(nnp.configuration_manager(self._coarse_model()))
        return Reorientation.from_geometry(geometry).from_nnunet(full) > 0

    def coarse_boxes(self, ct: np.ndarray, geometry: Geometry) -> list[roi.Box]:
        """ROI boxes (file order) from stage 221, taken from its low-resolution map: per component above
        ``min_roi_volume_mm3`` (the largest always kept), grown by ``margin_mm``, merged."""
        lowres = self.coarse_lowres(ct, geometry)
        r = Reorientation.from_geometry(geometry)
        tight = [r.box_from_nnunet(b, lowres.input_shape) for b in lowres.component_boxes(self.min_roi_volume_mm3)]
        return roi.pad_and_merge(tight, self.margin_mm, geometry.spacing_np, ct.shape)

    def predict_array(
        self,
        ct: np.ndarray,
        geometry: Geometry,
        coarse_mask: np.ndarray | None = None,
        boxes: Sequence[roi.Box] | None = None,
    ) -> CascadeResult:
        """Cascade on a CT array in file order (SimpleITK numpy order) with its header; no file I/O.

        ``coarse_mask`` (file order, any dtype, foreground > 0) replaces stage 221 when given; ``boxes``
        (file-order ROIs, e.g. from a ``crops.json``) replace both stage 221 and the box computation.
        """
        if ct.shape != geometry.shape:
            raise ValueError(f"CT shape {ct.shape} does not match geometry {geometry.shape}")
        spacing = geometry.spacing_np
        timings: dict[str, float] = {}
        t = time.perf_counter()
        if boxes is not None:
            boxes = [[[int(a), int(b)] for a, b in box] for box in boxes]
            for box in boxes:
                if len(box) != ct.ndim or any(not 0 <= a < b <= n for (a, b), n in zip(box, ct.shape)):
                    raise KitsInputError(f"ROI box {box} does not lie inside the CT of shape {ct.shape}")
        elif coarse_mask is None:
            boxes = self.coarse_boxes(ct, geometry)
        elif coarse_mask.shape != ct.shape:
            raise KitsInputError(f"coarse mask shape {coarse_mask.shape} differs from CT shape {ct.shape}")
        else:
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
        regrown: list[dict] = []
        timings["fine"] = timings["masses"] = 0.0
        for k, first in enumerate(boxes):
            box, ct_nn, fine_mask_nn, fine_prob, grown = self._fine_stage(ct, first, r, spacing, spacing_nn, timings)
            if grown:
                regrown.append({"roi": k, "from": first, "to": box, "faces": grown})
                logger.info("ROI %d %s: stage 222's mask touched inner faces %s; grown to %s", k, first, grown, box)
                boxes[k] = box
            labels_nn, probs = self._masses_stage(ct_nn, fine_mask_nn, fine_prob, spacing_nn, timings)
            patch = r.from_nnunet(labels_nn)
            np.copyto(roi.crop(seg, box), patch, where=patch > 0)  # a grown box may overlap another ROI
            if probs is not None:
                probabilities.append({"roi": k, "box": box, **{
                    name: None if p is None else r.from_nnunet(p) for name, p in probs.items()}})

        if self.postprocess:
            t = time.perf_counter()
            seg = self._postprocess(seg, spacing)
            timings["postprocess"] = time.perf_counter() - t
        return CascadeResult(seg, boxes, timings, fallback, probabilities, regrown)

    def _fine_stage(
        self, ct: np.ndarray, box: roi.Box, r: Reorientation, spacing_np: Sequence[float],
        spacing_nn: Sequence[float], timings: dict[str, float],
    ) -> tuple[roi.Box, np.ndarray, np.ndarray, np.ndarray | None, list[list[roi.Face]]]:
        """Stage 222 on the ROI ``box`` (file order). When its mask touches an inner face of the box (the coarse
        box cut the kidney), those faces move out by the margin and 222 runs again, at most ``max_regrow`` times.
        Returns the final box, its CT crop and binary mask in nnU-Net order (float32 / bool), the probabilities
        (with ``save_probabilities``) and the faces grown at each round."""
        t = time.perf_counter()
        grown: list[list[roi.Face]] = []
        while True:
            ct_nn = np.asarray(r.to_nnunet(roi.crop(ct, box)), dtype=np.float32)  # ROI-sized; the CT stays as stored
            fine_seg, fine_prob = _predict(self.fine, ct_nn[None], spacing_nn, self.save_probabilities)
            mask_nn = kidney_mask(fine_seg).view(bool)
            faces = roi.inner_faces_touched(r.from_nnunet(mask_nn), box, ct.shape)
            if not faces or len(grown) >= self.max_regrow:
                break
            grown.append(faces)
            box = roi.grow_faces(box, faces, self.margin_mm, spacing_np, ct.shape)
        timings["fine"] += time.perf_counter() - t
        return box, ct_nn, mask_nn, fine_prob, grown

    def _masses_stage(
        self, ct_nn: np.ndarray, fine_mask: np.ndarray, fine_prob: np.ndarray | None, spacing_nn: Sequence[float],
        timings: dict[str, float],
    ) -> tuple[np.ndarray, dict[str, np.ndarray | None] | None]:
        """Stage 223 on one ROI (nnU-Net order) from the CT crop and the fine mask; combined KiTS labels
        (+ float16 probabilities of both stages with ``save_probabilities``)."""
        t = time.perf_counter()
        probs: dict[str, np.ndarray | None] | None = None
        if fine_mask.any():
            image = np.stack([ct_nn, fine_mask.astype(np.float32)])
            masses_seg, masses_prob = _predict(self.masses, image, spacing_nn, self.save_probabilities)
            del image
            assert self._masses_labels is not None  # read from self.masses, which just ran
            labels = combine_stage_outputs(fine_mask, decode_masses(masses_seg, self._masses_labels))
            if fine_prob is not None and masses_prob is not None:  # i.e. save_probabilities
                probs = {"fine": fine_prob.astype(np.float16), "masses": masses_prob.astype(np.float16)}
        else:  # nothing for 223 to subdivide
            labels = np.zeros(fine_mask.shape, dtype=np.uint8)
            if fine_prob is not None:  # i.e. save_probabilities
                probs = {"fine": fine_prob.astype(np.float16), "masses": None}
        timings["masses"] += time.perf_counter() - t
        return labels, probs

    def _postprocess(self, seg: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        return postprocess_segmentation(seg, tuple(spacing), self.min_volume_mm3, remove_outside_kidney=True,
                                        in_place=True)

    # ------------------------------------------------------------------------------------------------ files
    def predict_case(
        self,
        ct_path: str | os.PathLike,
        out_path: str | os.PathLike,
        coarse_mask_path: str | os.PathLike | None = None,
        case: str | None = None,
        outputs: CaseOutputs | None = None,
    ) -> dict:
        """Read the CT once, run the cascade, write ``out_path`` with the CT's exact header (and the other files of
        ``outputs``, next to it); info dict, with the case's ``statistics`` when they are asked for."""
        outputs = outputs or CaseOutputs()
        t = time.perf_counter()
        ct, g = read_ct(ct_path)
        mask = None
        if coarse_mask_path is not None:
            mask, mg = read_label(coarse_mask_path, max_label=255)
            if not mg.matches(g):
                raise KitsInputError(f"{coarse_mask_path}: geometry differs from CT {ct_path} ({mg.describe_mismatch(g)})")
        read_s = time.perf_counter() - t
        result = self.predict_array(ct, g, mask)
        kept_ct = ct if outputs.needs_ct else None
        del ct, mask
        result.timings["read"] = read_s
        t = time.perf_counter()
        name = case or Path(out_path).name[: -len(FILE_ENDING)]
        if outputs.nifti:
            write_image(result.segmentation, g, out_path)
        if result.probabilities:
            self._write_probabilities(Path(out_path).parent, name, result, g)
        stats = write_case_outputs(name, ct_path, result.segmentation, kept_ct, g, Path(out_path).parent, outputs)
        result.timings["write"] = time.perf_counter() - t
        info = result.info(case)
        if stats is not None:
            info["statistics"] = stats
        return info

    @staticmethod
    def _write_probabilities(out_dir: Path, case: str, result: CascadeResult, g: Geometry) -> None:
        """``<case>_roiK.npz``: float16 ``fine`` (222 softmax) and ``masses`` (223 region sigmoids, absent if
        the fine mask was empty) probabilities of the ROI in file order, its ``box`` and source header."""
        import json

        for p in result.probabilities:
            arrays = {k: v for k, v in p.items() if k in ("fine", "masses") and v is not None}
            with atomic_path(out_dir / f"{crop_id(case, p['roi'])}.npz") as tmp, open(tmp, "wb") as f:
                np.savez(f, box=np.asarray(p["box"], dtype=np.int64),
                         source_geometry=np.asarray(json.dumps(g.to_dict())), **arrays)

    def predict(
        self,
        inputs: str | os.PathLike,
        output_dir: str | os.PathLike,
        coarse_masks: str | os.PathLike | None = None,
        progress: bool = True,
        num_parts: int = 1,
        part_id: int = 0,
        outputs: CaseOutputs | None = None,
    ) -> list[dict]:
        """Every case of ``inputs`` (file, folder, KiTS layout, DICOM series folders) -> ``output_dir/<case>.nii.gz``
        and the other files of ``outputs`` (:mod:`kits_plugins.inference.outputs`).

        ``coarse_masks``: a folder of ``case_XXXXX.nii.gz`` masks used instead of stage 221 (oracle mode).
        ``num_parts`` / ``part_id``: only this shard of the cases (:func:`prediction_jobs`).
        With ``save_probabilities`` a ``crops.json`` (:func:`crops_json_name`) next to the npz files records every ROI box.
        """
        from tqdm import tqdm

        outputs = outputs or CaseOutputs()
        jobs = prediction_jobs(inputs, output_dir, coarse_masks, self.save_probabilities, num_parts, part_id, outputs)
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        infos, records, geoms = [], [], {}
        bar = tqdm(jobs, desc="kits predict", unit="case", disable=not progress)
        for job in bar:
            case, ct_path = job.case, job.ct
            bar.set_postfix_str(case)
            info = self.predict_case(ct_path, job.output, job.coarse_mask, case, outputs)
            infos.append(info)
            tqdm.write(timing_line(info))
            if self.save_probabilities:
                g = geoms[case] = read_ct_geometry(ct_path)  # a NIfTI file or a DICOM series folder
                rel = os.path.relpath(ct_path, output_dir)
                records += [crop_record(case, k, b, g, rel, self.margin_mm) for k, b in enumerate(info["boxes"])]
        if self.save_probabilities:
            write_crops_json(output_dir / crops_json_name(num_parts, part_id), records, geoms)
        if outputs.statistics and infos:
            write_statistics_table(output_dir, [i["statistics"] for i in infos], num_parts, part_id)
        return infos
