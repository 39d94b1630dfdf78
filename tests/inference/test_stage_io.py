"""``kits_plugins.inference.stage_io``: finding CT inputs; ``kits crop-rois`` / ``kits paste-rois`` reproduce the
label map exactly, and on hostile or broken inputs: ids from crops.json never leave their folders, no output replaces
an input, masks must share the CT's geometry, NaN CTs are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kits_plugins.cli import main
from kits_plugins.inference import stage_io
from kits_plugins.utilities import roi
from kits_plugins.utilities.crops import load_crops
from kits_plugins.utilities.image_io import Geometry, KitsInputError, read_geometry, read_image, read_label, write_image
from kits_plugins.utilities.orientation import Reorientation

GEOMETRY = Geometry((5.0, -3.0, 2.0), (1.0, 0.75, 1.5), (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0), (32, 28, 20))


def _case(root: Path, case: str = "case_00001") -> tuple[Path, Path]:
    """CT folder and mask folder with one case: a box-shaped kidney."""
    ct = np.full(GEOMETRY.shape, -100, np.int16)
    mask = np.zeros(GEOMETRY.shape, np.uint8)
    mask[6:14, 8:20, 10:22] = 1
    ct[mask > 0] = 200
    (root / "ct").mkdir(parents=True)
    (root / "mask").mkdir()
    write_image(ct, GEOMETRY, root / "ct" / f"{case}_0000.nii.gz")
    write_image(mask, GEOMETRY, root / "mask" / f"{case}.nii.gz")
    return root / "ct", root / "mask"


def _crops(tmp_path: Path, capsys) -> Path:
    ct, mask = _case(tmp_path)
    assert main(["crop-rois", "-i", str(ct), "--mask", str(mask), "-o", str(tmp_path / "r"), "--margin-mm", "2"]) == 0
    capsys.readouterr()
    return tmp_path / "r" / "crops.json"


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def _edit(crops: Path, out: Path, crop_id: str | None = None, case: str | None = None, cases_key: str | None = None):
    doc = json.loads(crops.read_text())
    (cid, rec), = doc["crops"].items()
    if case is not None:
        rec["case"] = case
    doc["crops"] = {crop_id or cid: rec}
    if cases_key is not None:
        doc["cases"] = {cases_key: next(iter(doc["cases"].values()))}
    out.write_text(json.dumps(doc))
    return out


def _fails(argv, capsys, *needles) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and "%|" not in ln]  # not tqdm
    assert len(lines) == 1 and lines[0].startswith("kits ") and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "edit",
    [
        {"case": "../../ESCAPED"},
        {"case": "/tmp/ESCAPED_ABS"},
        {"crop_id": "../../ESCAPED"},
        {"crop_id": "../r/case_00001_roi0"},  # would read a prediction from outside -i
        {"case": "a/b"},
        {"case": "nul\x00byte"},
        {"cases_key": "../../ESCAPED"},
    ],
)
def test_paste_rois_ids_from_crops_json_never_leave_their_folders(tmp_path, capsys, edit):
    crops = _crops(tmp_path, capsys)
    pred = tmp_path / "deep" / "er" / "pred"
    pred.mkdir(parents=True)  # ids are checked before any prediction is read
    bad = _edit(crops, tmp_path / "bad.json", **edit)
    before = _files(tmp_path)
    _fails(["paste-rois", "-i", str(pred), "--crops", str(bad), "-o", str(tmp_path / "deep" / "er" / "out")], capsys,
           "bad.json", "not a plain name")
    assert _files(tmp_path) == before  # nothing written anywhere
    assert not Path("/tmp/ESCAPED_ABS.nii.gz").exists()


def test_crop_rois_with_crops_json_crop_id_escaping_writes_nothing(tmp_path, capsys):
    crops = _crops(tmp_path, capsys)
    bad = _edit(crops, tmp_path / "bad.json", crop_id="../../X")
    out = tmp_path / "a" / "b" / "out"
    before = _files(tmp_path)
    _fails(["crop-rois", "-i", str(tmp_path / "ct"), "--crops", str(bad), "-o", str(out)], capsys, "bad.json")
    assert _files(tmp_path) == before


def test_crop_rois_refuses_to_write_over_its_input_ct(tmp_path, capsys):
    crops = _crops(tmp_path, capsys)
    ct_file = tmp_path / "ct" / "case_00001_0000.nii.gz"
    original = ct_file.read_bytes()
    # a crop named like the case: its channel file case_00001_0000.nii.gz would replace the CT
    bad = _edit(crops, tmp_path / "bad.json", crop_id="case_00001")
    _fails(["crop-rois", "-i", str(tmp_path / "ct"), "--crops", str(bad), "-o", str(tmp_path / "ct")], capsys,
           "would write over its input")
    assert ct_file.read_bytes() == original


def test_output_link_pointing_outside_is_refused(tmp_path, capsys):
    crops = _crops(tmp_path, capsys)
    out = tmp_path / "out"
    out.mkdir()
    (out / "case_00001_roi0_0000.nii.gz").symlink_to(tmp_path / "victim.nii.gz")
    _fails(["crop-rois", "-i", str(tmp_path / "ct"), "--crops", str(crops), "-o", str(out)], capsys, "outside")
    assert not (tmp_path / "victim.nii.gz").exists()


def test_binary_crops_json_is_a_one_line_error(tmp_path, capsys):
    _case(tmp_path)
    junk = tmp_path / "crops.json"
    junk.write_bytes(bytes(range(256)) * 4)
    _fails(["paste-rois", "-i", str(tmp_path), "--crops", str(junk), "-o", str(tmp_path / "o")], capsys,
           "crops.json: not a valid JSON text")


def test_crop_rois_mask_must_share_the_ct_geometry(tmp_path, capsys):
    ct, mask = _case(tmp_path)
    m, g = read_image(mask / "case_00001.nii.gz")
    shifted = Geometry((g.origin[0] + 2.0, g.origin[1], g.origin[2]), g.spacing, g.direction, g.size)
    write_image(m, shifted, mask / "case_00001.nii.gz")  # same size, other position
    _fails(["crop-rois", "-i", str(ct), "--mask", str(mask), "-o", str(tmp_path / "r")], capsys, "geometry differs",
           "origin")


def test_crop_rois_refuses_nan_ct(tmp_path, capsys):
    ct, mask = _case(tmp_path)
    a, g = read_image(ct / "case_00001_0000.nii.gz", dtype=np.float32)
    a[3, 4, 5] = np.nan
    write_image(a, g, ct / "case_00001_0000.nii.gz")
    _fails(["crop-rois", "-i", str(ct), "--mask", str(mask), "-o", str(tmp_path / "r")], capsys,
           "case_00001_0000.nii.gz: CT contains NaN")
    assert not (tmp_path / "r" / "case_00001_roi0_0000.nii.gz").exists()


def test_input_discovery(tmp_path, make_case, write_case):
    ct, lab, g = make_case(shape=(6, 5, 4))
    write_image(ct, g, tmp_path / "nn" / "case_00002_0000.nii.gz")
    write_image(ct, g, tmp_path / "nn" / "case_00001_0000.nii.gz")
    write_image(ct, g, tmp_path / "nn" / "case_00001_0001.nii.gz")  # another channel: ignored
    assert [c for c, _ in stage_io.find_ct_inputs(tmp_path / "nn")] == ["case_00001", "case_00002"]
    write_image(ct, g, tmp_path / "plain" / "case_00009.nii.gz")
    assert stage_io.find_ct_inputs(tmp_path / "plain")[0][0] == "case_00009"
    write_case(tmp_path / "kits", "case_00004", ct, lab, g, kits_layout=True)
    [(case, f)] = stage_io.find_ct_inputs(tmp_path / "kits")
    assert case == "case_00004" and f.name == "imaging.nii.gz"
    assert stage_io.find_ct_inputs(f) == [("case_00004", f)]
    (tmp_path / "empty").mkdir()
    with pytest.raises(KitsInputError, match="empty: no CT found"):
        stage_io.find_ct_inputs(tmp_path / "empty")


def test_crop_paste_round_trip_is_exact(tmp_path, make_case):
    from nnunetv2.imageio.nibabel_reader_writer import NibabelIOWithReorient

    from kits_plugins.cli import main

    ct, lab, g = make_case(border=True)
    write_image(ct, g, tmp_path / "ct" / "case_00005_0000.nii.gz")
    write_image(lab, g, tmp_path / "gt" / "case_00005.nii.gz")
    write_image(np.zeros_like(ct), g, tmp_path / "ct" / "case_00006_0000.nii.gz")
    write_image(np.zeros_like(lab), g, tmp_path / "gt" / "case_00006.nii.gz")

    # stage 222 input: CT crops with boxes from the (here: ground-truth) kidney mask
    assert main(["crop-rois", "-i", str(tmp_path / "ct"), "--mask", str(tmp_path / "gt"), "-o", str(tmp_path / "r222"),
                 "--margin-mm", "4.5", "--min-roi-volume-mm3", "50"]) == 0
    crops, cases = load_crops(tmp_path / "r222" / "crops.json")
    assert sorted(crops) == ["case_00005_roi0", "case_00005_roi1"] and cases["case_00006"] == g
    for cid, c in crops.items():
        crop, cg = read_image(tmp_path / "r222" / f"{cid}_0000.nii.gz")
        assert np.array_equal(crop, roi.crop(ct, c.box))
        assert cg == g.with_size(roi.box_shape(c.box), [a for a, _ in c.box])
        # simulate nnUNetv2_predict -d 222 (written by nnU-Net's own writer, float32 affine) and -d 223
        # (derive-stages encoding: 1 tumor, 2 cyst)
        lab_crop = roi.crop(lab, c.box)
        io = NibabelIOWithReorient()
        _, props = io.read_images([str(tmp_path / "r222" / f"{cid}_0000.nii.gz")])
        (tmp_path / "p222").mkdir(exist_ok=True)
        nn_order = Reorientation.from_geometry(cg).to_nnunet((lab_crop > 0).astype(np.uint8))
        io.write_seg(nn_order, str(tmp_path / "p222" / f"{cid}.nii.gz"), props)
        write_image(np.array([0, 0, 1, 2], np.uint8)[lab_crop], cg, tmp_path / "p223" / f"{cid}.nii.gz")

    # stage 223 input: same boxes, mask channel from the ROI-sized 222 predictions
    assert main(["crop-rois", "-i", str(tmp_path / "ct"), "--crops", str(tmp_path / "r222" / "crops.json"),
                 "--roi-mask", str(tmp_path / "p222"), "--with-mask-channel", "-o", str(tmp_path / "r223")]) == 0
    for cid, c in crops.items():
        ch1, _ = read_image(tmp_path / "r223" / f"{cid}_0001.nii.gz")
        assert np.array_equal(ch1, roi.crop(lab, c.box) > 0)
    assert load_crops(tmp_path / "r223" / "crops.json")[0].keys() == crops.keys()

    assert main(["paste-rois", "-i", str(tmp_path / "p223"), "--fine", str(tmp_path / "p222"), "--crops",
                 str(tmp_path / "r222" / "crops.json"), "-o", str(tmp_path / "final"), "--ref", str(tmp_path / "ct")]) == 0
    out, og = read_label(tmp_path / "final" / "case_00005.nii.gz")
    assert og == g and np.array_equal(out, lab)  # 0 voxels differ, header exact
    empty, eg = read_label(tmp_path / "final" / "case_00006.nii.gz")
    assert eg == g and not empty.any()
    assert read_geometry(tmp_path / "final" / "case_00005.nii.gz") == read_geometry(tmp_path / "ct" / "case_00005_0000.nii.gz")


def test_stage_helpers_reject_bad_input(tmp_path, capsys, make_case):
    from kits_plugins.cli import main

    ct, lab, g = make_case(shape=(10, 8, 6))
    write_image(ct, g, tmp_path / "ct" / "case_00001_0000.nii.gz")
    assert main(["crop-rois", "-i", str(tmp_path / "ct"), "--mask", str(tmp_path / "nomask"), "-o",
                 str(tmp_path / "o")]) == 2
    assert "nomask/case_00001.nii.gz: mask for case_00001 not found" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text(json.dumps({"crops": {"c_roi0": {"case": "c", "box": [[0, 99], [0, 1], [0, 1]],
                                                                       "source_geometry": g.to_dict()}}}))
    with pytest.raises(KitsInputError, match="bad.json"):
        load_crops(tmp_path / "bad.json")
    assert main(["predict", "-i", str(tmp_path / "ct"), "-o", str(tmp_path / "o"), "--results",
                 str(tmp_path / "none")]) == 2
    assert "nnUNet_results folder does not exist" in capsys.readouterr().err
