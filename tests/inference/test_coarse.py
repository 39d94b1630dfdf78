"""``kits_plugins.inference.coarse``: slab-wise coarse-stage preprocessing against nnU-Net's own ``run_case_npy``,
ROI boxes taken from the low-resolution map against boxes of the full-size resampled map, chunked label-map
resampling and the low-resolution label map against nnU-Net's logits path."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from scipy import ndimage

from kits_plugins.inference.coarse import (
    LowresLabelMap,
    coarse_label_map,
    lean_preprocessing_supported,
    preprocess_lowres,
    resample_label_map,
)
from kits_plugins.testing.plans_builder import minimal_plans
from kits_plugins.utilities import roi
from kits_plugins.utilities.image_io import Geometry
from kits_plugins.utilities.orientation import Reorientation


def _predictor(spacing, transpose=(0, 1, 2), normalization="CTNormalization", order=3):
    """What preprocess_lowres reads from an nnUNetPredictor: plans/configuration managers and dataset.json."""
    props = {"max": 1500.0, "mean": 60.0, "median": 50.0, "min": -1000.0, "percentile_00_5": -150.0,
             "percentile_99_5": 300.0, "std": 90.0}
    pm = PlansManager(minimal_plans("3d_lowres", spacing, [normalization], patch_size=(16, 16, 16), data_order=order,
                                    transpose_forward=transpose, intensity_properties=props))
    ds = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "kidney": 1}, "file_ending": ".nii.gz"}
    return SimpleNamespace(plans_manager=pm, configuration_manager=pm.get_configuration("3d_lowres"), dataset_json=ds)


def _ct(shape, seed=0, zero_frame=True):
    rng = np.random.default_rng(seed)
    ct = ndimage.gaussian_filter(rng.normal(0, 1, shape), 1.5).astype(np.float32) * 900 + 40
    if zero_frame:  # exactly-zero border: nnU-Net crops it away
        ct[:2] = 0
        ct[:, -3:] = 0
    return ct


@pytest.mark.parametrize(
    "image_spacing, target, transpose",
    [
        ((3.0, 0.8, 0.8), (2.0, 1.9, 1.9), (0, 1, 2)),  # thick slices: nnU-Net's separate-z path
        ((1.0, 0.8, 0.8), (2.0, 1.9, 1.9), (0, 1, 2)),  # near-isotropic: one 3-D cubic resize in nnU-Net
        ((0.8, 3.0, 0.8), (1.9, 2.0, 1.9), (1, 0, 2)),  # transposed plans, separate-z along another axis
        ((0.8, 1.0, 0.9), (1.6, 1.9, 2.1), (2, 0, 1)),  # transposed plans, 3-D
    ],
)
@pytest.mark.parametrize("chunk", [97, 2**22])
def test_slab_preprocessing_equals_run_case_npy(image_spacing, target, transpose, chunk):
    p = _predictor(target, transpose)
    image = _ct((23, 37, 31))[None]
    ref, _, ref_props = p.configuration_manager.preprocessor_class(verbose=False).run_case_npy(
        image.copy(), None, {"spacing": list(image_spacing)}, p.plans_manager, p.configuration_manager, p.dataset_json)
    before = image.copy()
    got, props = preprocess_lowres(p, image, image_spacing, chunk_voxels=chunk)
    assert np.array_equal(image, before)  # the input is not modified
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert np.abs(got - ref).max() < 1e-4, np.abs(got - ref).max()
    for key in ("shape_before_cropping", "shape_after_cropping_and_before_resampling"):
        assert tuple(props[key]) == tuple(ref_props[key])
    assert [list(map(int, b)) for b in props["bbox_used_for_cropping"]] == \
        [list(map(int, b)) for b in ref_props["bbox_used_for_cropping"]]


def test_unsupported_schemes_fall_back_to_run_case_npy():
    p = _predictor((2.0, 1.9, 1.9), normalization="ZScoreNormalization")  # global mean/std: not slab-wise
    assert not lean_preprocessing_supported(p.configuration_manager)
    assert lean_preprocessing_supported(_predictor((2.0, 1.9, 1.9)).configuration_manager)
    image = _ct((12, 20, 18))[None]
    ref = p.configuration_manager.preprocessor_class(verbose=False).run_case_npy(
        image.copy(), None, {"spacing": [1.0, 0.8, 0.8]}, p.plans_manager, p.configuration_manager, p.dataset_json)[0]
    got, _ = preprocess_lowres(p, image, (1.0, 0.8, 0.8))
    assert np.array_equal(got, ref)


@pytest.mark.parametrize("transpose", [(0, 1, 2), (2, 0, 1)])
def test_lowres_boxes_contain_the_resampled_map_boxes(transpose):
    """Boxes from the low-res map's components vs components of the map resampled to the input grid."""
    low = np.zeros((14, 20, 18), np.uint8)
    low[3:8, 2:7, 4:9] = 1  # "left kidney"
    low[4:10, 12:18, 6:12] = 1  # "right kidney"
    low[12, 19, 17] = 1  # a speck: dropped by the volume threshold
    low[3:5, 3:5, 5:7] = 2  # another foreground label inside the first
    input_shape_t = (33, 47, 40)  # cropped input, internal (transposed) order
    crop = [[2, 35], [0, 47], [3, 43]]
    props = {"spacing": [1.0, 1.0, 1.0], "shape_before_cropping": (37, 47, 45),
             "bbox_used_for_cropping": crop, "shape_after_cropping_and_before_resampling": input_shape_t}
    backward = tuple(int(i) for i in np.argsort(transpose))
    spacing_low = (2.0, 2.1, 2.2)
    lowres = LowresLabelMap(low, spacing_low, props, backward)
    assert lowres.input_shape == tuple(props["shape_before_cropping"][i] for i in backward)
    p = _predictor(spacing_low, transpose, order=1)
    full = lowres.to_full(p.configuration_manager)
    assert full.shape == lowres.input_shape and full.dtype == np.uint8

    got = lowres.component_boxes(min_volume_mm3=10 * np.prod(spacing_low))
    ref = [b for b, _ in roi.component_boxes(full > 0, (1.0, 1.0, 1.0))][:2]
    assert len(got) == 2
    for g_box, r_box in zip(sorted(got), sorted(ref)):
        for d, ((a, b), (c, e)) in enumerate(zip(g_box, r_box)):
            f = props["shape_after_cropping_and_before_resampling"][transpose[d]] / low.shape[transpose[d]]
            assert a <= c and b >= e, (g_box, r_box)  # contains the resampled component
            assert c - a <= np.ceil(f) and b - e <= np.ceil(f)  # by at most one low-res voxel per side
    # the largest component is kept even when it is below the volume threshold
    assert len(lowres.component_boxes(min_volume_mm3=1e9)) == 1
    assert LowresLabelMap(np.zeros_like(low), spacing_low, props, backward).component_boxes() == []


@pytest.mark.parametrize("order_z", [0, 1])
def test_chunked_label_resampling_equals_nnunet_single_call(order_z):
    """Separate-z (2.5-5 mm slices) and 3-D cases: the slab-wise two-step resampling is nnU-Net's result."""
    from types import SimpleNamespace

    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape
    from scipy import ndimage

    rng = np.random.default_rng(1)
    low = (ndimage.gaussian_filter(rng.random((13, 21, 19)), 2) > 0.5).astype(np.uint8)
    low[low > 0] += (rng.random(int(low.sum())) > 0.5).astype(np.uint8)  # labels 0, 1, 2
    kwargs = {"is_seg": True, "order": 1, "order_z": order_z, "force_separate_z": None}
    cm = SimpleNamespace(configuration={"resampling_fn_seg": "resample_data_or_seg_to_shape",
                                        "resampling_fn_seg_kwargs": kwargs})
    cases = [((3.0, 1.5, 1.5), (5.0, 0.7, 0.7), (8, 45, 41)),  # slice axis 0
             ((1.5, 3.0, 1.5), (0.7, 5.0, 0.7), (28, 8, 41)),  # slice axis 1
             ((1.5, 1.5, 1.5), (0.9, 0.7, 0.8), (22, 45, 36))]  # isotropic: one 3-D resize
    for current, new, shape in cases:
        ref = resample_data_or_seg_to_shape(low[None], shape, current, new, **kwargs)[0]
        for chunk in (50, 700, 2**20):
            got = resample_label_map(low, shape, current, new, cm, chunk_voxels=chunk)
            assert got.dtype == np.uint8 and got.shape == shape and np.array_equal(got, ref)


@pytest.mark.parametrize("spacing", [(1.5, 1.5, 3.0), (0.9, 0.9, 3.0)])
def test_coarse_label_map_matches_predict_single_npy_array(cascade, spacing, make_case):
    """The low-resolution argmax + label-map resampling against nnU-Net's logits path, with nnU-Net's
    crop to the nonzero region active (a zero border) and, at 0.9 mm in-plane, its separate-z resampling."""
    ct, lab, g = make_case(shape=(40, 34, 14))
    ct = np.pad(ct[2:-2, 2:-2, 1:-1], ((2, 2), (2, 2), (1, 1)))  # zero frame: nnU-Net crops it away
    g = Geometry(g.origin, spacing, g.direction, g.size)
    r = Reorientation.from_geometry(g)
    image, spacing_nn = r.to_nnunet(ct)[None], r.spacing_to_nnunet(g.spacing_np)
    old = cascade.coarse.predict_single_npy_array(image, {"spacing": list(spacing_nn)}, None, None, False)
    new = coarse_label_map(cascade.coarse, image, spacing_nn)
    assert new.dtype == np.uint8 and new.shape == old.shape == image.shape[1:]
    differ = new != old
    # label-map vs logits resampling: only voxels at the label boundary may differ (<= 1 voxel away)
    boundary = ndimage_boundary(old > 0)
    assert not (differ & ~boundary).any()
    assert differ.sum() <= 0.25 * boundary.sum(), (int(differ.sum()), int(boundary.sum()))
    assert old.any() and new.any()  # (volumes may differ by tens of %: these blobs are ~3 coarse voxels wide)
    # the box of the mask (what the ROIs are grown from) moves by at most one voxel per side
    box_old, box_new = (np.array([[ax.min(), ax.max()] for ax in np.nonzero(m > 0)]) for m in (old, new))
    assert np.abs(box_old - box_new).max() <= 1


def ndimage_boundary(mask: np.ndarray) -> np.ndarray:
    """Voxels within one voxel (26-neighbourhood) of the mask's boundary, on either side."""
    from scipy import ndimage

    st = np.ones((3, 3, 3), bool)
    return ndimage.binary_dilation(mask, st) & ~ndimage.binary_erosion(mask, st)
