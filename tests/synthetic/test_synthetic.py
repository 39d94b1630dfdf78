"""Synthetic CT: determinism, label semantics, HU realism, orientation, --from-labels, bad input, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from kits_plugins.cli import main
from kits_plugins.synthetic import anatomy as A
from kits_plugins.synthetic import writer
from kits_plugins.synthetic.from_labels import synthesize_ct_from_label
from kits_plugins.synthetic.phantom import KITS_DIRECTION, kits_geometry, make_case, make_phantom
from kits_plugins.utilities.image_io import Geometry, KitsInputError, read_geometry, read_image, write_image
from kits_plugins.utilities.orientation import Reorientation

SMALL = (48, 96, 96)  # anatomical order; default spacing 3 x 1.5625 x 1.5625 mm (body scaled to fit)
MEDIUM = (64, 128, 128)


def _lesions_touch_kidney(label: np.ndarray) -> bool:
    lesions = label >= 2
    if not lesions.any():
        return True
    cc, n = ndimage.label(lesions, structure=np.ones((3, 3, 3)))
    near = ndimage.binary_dilation(label == 1, structure=np.ones((3, 3, 3), bool))
    return set(np.unique(cc[near & lesions])) >= set(range(1, n + 1))


@pytest.fixture(scope="module")
def phantoms() -> list:
    """A few medium phantoms with tissue maps, chosen so tumours and cysts both occur."""
    out, have_cyst, seed = [], False, 0
    while len(out) < 3 or not have_cyst:
        ph = make_phantom(seed, MEDIUM, return_tissue=True)
        if (ph.label == 2).any() and ((ph.label == 3).sum() > 20 or len(out) < 2):
            out.append(ph)
            have_cyst |= bool((ph.label == 3).sum() > 20)
        seed += 1
        assert seed < 40
    return out


def test_make_case_is_deterministic_and_in_kits_file_layout():
    ct, label, geom = make_case(7, SMALL)
    ct2, label2, geom2 = make_case(7, SMALL)
    assert ct.tobytes() == ct2.tobytes() and label.tobytes() == label2.tobytes() and geom == geom2
    ct3, label3, _ = make_case(8, SMALL)
    assert not np.array_equal(ct, ct3) and not np.array_equal(label, label3)
    assert ct.dtype == np.int16 and label.dtype == np.uint8
    # KiTS23 file layout: direction (0,0,1, 0,1,0, -1,0,0), slice axis last in numpy order
    assert geom.direction == KITS_DIRECTION and geom.shape == (96, 96, 48)
    assert geom.spacing_np == (1.5625, 1.5625, 3.0)
    r = Reorientation.from_geometry(geom)
    ph = make_phantom(7, SMALL)
    assert np.array_equal(r.to_nnunet(label), ph.label) and np.array_equal(r.to_nnunet(ct), ph.ct)
    assert r.spacing_to_nnunet(geom.spacing_np) == pytest.approx((3.0, 1.5625, 1.5625))


def test_labels_and_variety():
    n_kidneys, n_tumors, cysts = [], [], 0
    for seed in range(60):
        _, label, _ = make_case(seed, SMALL)
        assert set(np.unique(label)) <= {0, 1, 2, 3}
        assert (label == 1).any()
        assert _lesions_touch_kidney(label), seed
        n_kidneys.append(ndimage.label(label > 0, structure=np.ones((3, 3, 3)))[1])
        n_tumors.append(ndimage.label(label == 2, structure=np.ones((3, 3, 3)))[1])
        cysts += bool((label == 3).any())
        if seed >= 12 and set(n_kidneys) == {1, 2} and 0 in n_tumors and max(n_tumors) >= 2 and cysts >= 2:
            break
    assert set(n_kidneys) == {1, 2}  # solitary kidneys occur
    assert 0 in n_tumors and max(n_tumors) >= 2 and max(n_tumors) <= 3 and cysts >= 2


def test_same_body_at_another_resolution():
    """Anatomy is defined in mm: halving the voxel size in-plane keeps the kidneys where they were."""
    a = make_phantom(3, (64, 128, 128), (3.0, 3.0, 3.0))
    b = make_phantom(3, (64, 256, 256), (3.0, 1.5, 1.5))
    ca = np.array(ndimage.center_of_mass(a.label > 0)) * (3.0, 3.0, 3.0)
    cb = np.array(ndimage.center_of_mass(b.label > 0)) * (3.0, 1.5, 1.5)
    assert np.allclose(ca, cb, atol=3.0)
    va = (a.label > 0).sum() * 27.0
    vb = (b.label > 0).sum() * 3.0 * 1.5 * 1.5
    assert abs(va - vb) / vb < 0.1


def test_hu_per_label_and_tissue(phantoms):
    tumor_means = []
    for ph in phantoms:
        ct, lab, tis = ph.ct.astype(np.float32), ph.label, ph.tissue
        hu = ph.anatomy.intensities.hu
        kid = ct[lab == 1].mean()
        assert hu[A.MEDULLA] - 15 < kid < hu[A.CORTEX] + 15
        assert hu[A.CORTEX] > hu[A.MEDULLA] + 30
        assert ct[tis == A.CORTEX].mean() > ct[tis == A.MEDULLA].mean() + 20
        if (lab == 2).any():
            tumor_means.append(ct[lab == 2].mean())
            assert 30 < ct[lab == 2].mean() < 160
        if (lab == 3).sum() > 20:
            core = ndimage.binary_erosion(lab == 3)
            assert -10 < ct[lab == 3].mean() < 45  # rim mixes with parenchyma
            if core.sum() > 5:
                assert -10 < ct[core].mean() < 30
        assert -130 < ct[tis == A.FAT].mean() < -60
        assert 25 < ct[tis == A.MUSCLE].mean() < 80
        bone = np.isin(tis, [A.BONE, A.CORTICAL_BONE])
        assert 400 < ct[bone].mean() < 1000
        assert abs(ct[tis == A.LIVER].mean() - hu[A.LIVER]) < 25
        assert (tis == A.SPLEEN).any() and (tis == A.LUNG).any() and (tis == A.BOWEL).any()
        # noise: white noise of 9-15 HU everywhere (air: clipped at -1024, so a bit lower)
        assert 5 < ct[tis == A.AIR].std() < 20
    assert all(40 <= m <= 150 for m in tumor_means)


def test_threshold_is_not_a_kidney_detector(phantoms):
    for ph in phantoms:
        ct, lab, tis = ph.ct, ph.label, ph.tissue
        lo, hi = np.percentile(ct[lab == 1], [10, 90])
        window = (ct >= lo) & (ct <= hi)
        precision = (window & (lab == 1)).sum() / window.sum()
        assert precision < 0.5
        liver = ct[tis == A.LIVER]
        assert ((liver >= lo) & (liver <= hi)).mean() > 0.2  # liver overlaps renal parenchyma


def test_spine_behind_and_between_kidneys(phantoms):
    for ph in phantoms:
        lab, tis = ph.label, ph.tissue
        zk = np.nonzero((lab == 1).any(axis=(1, 2)))[0]
        bone = np.isin(tis[zk], [A.BONE, A.CORTICAL_BONE])
        kid = lab[zk] > 0
        by, bx = np.nonzero(bone.any(axis=0))
        ky, kx = np.nonzero(kid.any(axis=0))
        mid = np.abs(bx - np.median(bx)) < 10  # the spine column, not ribs
        assert np.median(by[mid]) < np.mean(ky) + 5  # posterior (small y) or level with the kidneys
        if ndimage.label(kid.any(axis=0))[1] == 2:
            assert kx.min() < np.median(bx[mid]) < kx.max()
        # liver on the patient's right (large x), spleen on the left
        ly = np.nonzero(tis == A.LIVER)[2].mean()
        sy = np.nonzero(tis == A.SPLEEN)[2].mean()
        assert ly > sy


def _permuted_geometry(shape_np, perm, flips) -> Geometry:
    d = np.zeros((3, 3))
    d[np.arange(3), perm] = flips
    return Geometry((-12.5, 30.0, 101.25), (0.9, 1.6, 2.7), tuple(d.ravel()), tuple(shape_np[::-1]))


def test_from_label_uses_direction():
    """The same anatomy stored with two different direction matrices gives the same anatomical CT."""
    ph = make_phantom(5, SMALL, (2.7, 1.6, 1.6))
    canon = ph.label
    cts = []
    for perm, flips in (((2, 1, 0), (1, 1, 1)), ((0, 2, 1), (-1, 1, -1)), ((1, 0, 2), (1, -1, 1))):
        geom0 = _permuted_geometry((4, 5, 6), perm, flips)
        r = Reorientation.from_geometry(geom0)
        file_arr = np.ascontiguousarray(r.from_nnunet(canon))
        spacing_np = [0.0] * 3
        for fa, (na, _) in enumerate(r.axis_map):
            spacing_np[fa] = (2.7, 1.6, 1.6)[na]
        geom = Geometry(geom0.origin, tuple(spacing_np[::-1]), geom0.direction, tuple(file_arr.shape[::-1]))
        assert r.spacing_to_nnunet(geom.spacing_np) == pytest.approx((2.7, 1.6, 1.6))
        ct = synthesize_ct_from_label(file_arr, geom, seed=11)
        assert ct.shape == file_arr.shape and ct.dtype == np.int16
        cts.append(Reorientation.from_geometry(geom).to_nnunet(ct))
    assert np.array_equal(cts[0], cts[1]) and np.array_equal(cts[0], cts[2])
    # kidneys rendered as parenchyma, spine (> 300 HU) behind them in anatomical order
    assert 80 < cts[0][canon == 1].mean() < 250
    zk = np.nonzero((canon == 1).any(axis=(1, 2)))[0]
    by = np.nonzero(cts[0][zk] > 350)[1]
    assert np.median(by) < np.nonzero(canon[zk] == 1)[1].mean() + 5


def _write_label_dir(tmp_path, geom_perm=((0, 2, 1), (1, -1, 1))):
    """Two synthetic label maps with a permuted, flipped direction in DIR/case_XXXXX.nii.gz."""
    d = tmp_path / "labels"
    d.mkdir()
    for i, seed in enumerate((1, 2)):
        canon = make_phantom(seed, SMALL).label
        g0 = _permuted_geometry((4, 5, 6), *geom_perm)
        r = Reorientation.from_geometry(g0)
        arr = np.ascontiguousarray(r.from_nnunet(canon))
        spacing_np = [(3.0, 1.5625, 1.5625)[na] for na, _ in r.axis_map]
        write_image(arr, Geometry(g0.origin, tuple(spacing_np[::-1]), g0.direction, tuple(arr.shape[::-1])),
                    d / f"case_{i + 3:05d}.nii.gz")  # fmt: skip
    return d


def _check_from_labels_output(label_file, case_dir):
    seg = case_dir / "segmentation.nii.gz"
    img = case_dir / "imaging.nii.gz"
    assert seg.read_bytes() == label_file.read_bytes()  # label copied unchanged (bytes, so header too)
    g_label = read_geometry(label_file)
    assert read_geometry(img) == g_label  # header identical: origin, spacing, direction, size
    ct, g_ct = read_image(img)
    assert g_ct == g_label and ct.dtype == np.int16
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(label_file)))
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(seg))), lab)
    return ct, lab


def test_from_labels_folder_permuted_direction(tmp_path):
    d = _write_label_dir(tmp_path)
    out = tmp_path / "out"
    paths = writer.synthesize_from_labels(out, d, seed=4, progress=False)
    assert [p.name for p in paths] == ["case_00003", "case_00004"]
    for f, p in zip(sorted(d.iterdir()), paths):
        ct, lab = _check_from_labels_output(f, p)
        assert ct[lab == 1].mean() > 80 and (ct[lab == 0] < -50).mean() > 0.1
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    # deterministic: same seed, same image
    again = writer.synthesize_from_labels(tmp_path / "again", d, seed=4, progress=False)
    assert read_image(again[0] / "imaging.nii.gz")[0].tobytes() == read_image(paths[0] / "imaging.nii.gz")[0].tobytes()


def test_from_labels_real_maps(shared_label_files, tmp_path):
    small = sorted(sorted(shared_label_files, key=lambda f: f.stat().st_size)[:2])  # e.g. case_00208, case_00512
    d = tmp_path / "labels"
    d.mkdir()
    for f in small:
        (d / f.name).symlink_to(f)
    paths = writer.synthesize_from_labels(tmp_path / "out", d, seed=0, progress=False)
    for f, p in zip(small, paths):
        ct, lab = _check_from_labels_output(f, p)
        g = read_geometry(f)
        r = Reorientation.from_geometry(g)
        c, lc = r.to_nnunet(ct), r.to_nnunet(lab)
        assert 100 < c[lc == 1].mean() < 230
        if (lc == 2).any():
            assert 30 < c[lc == 2].mean() < 160
        zk = np.nonzero((lc == 1).any(axis=(1, 2)))[0]
        by = np.nonzero(c[zk] > 350)[1]
        assert np.median(by) < np.nonzero(lc[zk] == 1)[1].mean() + 10  # bone behind the kidneys


def test_bad_inputs_name_the_file(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(KitsInputError, match="empty.*no label maps"):
        writer.synthesize_from_labels(tmp_path / "o1", empty, progress=False)
    with pytest.raises(KitsInputError, match="missing"):
        writer.synthesize_from_labels(tmp_path / "o1", tmp_path / "missing", progress=False)

    flat = tmp_path / "flat"
    flat.mkdir()
    sitk.WriteImage(sitk.Image([8, 8], sitk.sitkUInt8), str(flat / "case_00001.nii.gz"))
    with pytest.raises(KitsInputError, match=r"case_00001.nii.gz.*3D"):
        writer.synthesize_from_labels(tmp_path / "o2", flat, progress=False)
    assert not (tmp_path / "o2").exists() or not list((tmp_path / "o2").iterdir())

    bad = _write_label_dir(tmp_path)
    g = read_geometry(bad / "case_00004.nii.gz")
    arr = np.zeros(g.shape, np.uint8)
    arr[1, 1, 1] = 7
    write_image(arr, g, bad / "case_00004.nii.gz")
    out = tmp_path / "o3"
    with pytest.raises(KitsInputError, match=r"case_00004.nii.gz: labels outside 0-3: \[7\]"):
        writer.synthesize_from_labels(out, bad, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["case_00003"]  # the good case, nothing half-written


def test_interrupted_write_leaves_no_partial_case(tmp_path, monkeypatch):
    ct, label, geom = make_case(0, SMALL)
    calls = []

    def failing_write(array, geometry, path, compress=True):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return write_image(array, geometry, path, compress)

    monkeypatch.setattr(writer, "write_image", failing_write)
    with pytest.raises(KeyboardInterrupt):
        writer.write_case(tmp_path, "case_00000", ct, label, geom)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    p = writer.write_case(tmp_path, "case_00000", ct, label, geom)
    p2 = writer.write_case(tmp_path, "case_00000", ct, label, geom)  # overwrite in place
    assert p == p2 and sorted(x.name for x in tmp_path.iterdir()) == ["case_00000"]
    back, g = read_image(p / "imaging.nii.gz")
    assert np.array_equal(back, ct) and g == geom


def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "data"
    rc = main(["synth", str(out), "--cases", "2", "--seed", "3", "--shape", "32", "64", "64",
               "--spacing", "4", "2.5", "2.5", "--first-case", "5", "--quiet"])  # fmt: skip
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["case_00005", "case_00006"]
    ct, label, geom = make_case(writer.case_seed(3, 6), (32, 64, 64), (4.0, 2.5, 2.5))
    back, g = read_image(out / "case_00006" / "imaging.nii.gz")
    seg, _ = read_image(out / "case_00006" / "segmentation.nii.gz")
    assert np.array_equal(back, ct) and np.array_equal(seg, label) and g == geom == kits_geometry((32, 64, 64), (4, 2.5, 2.5))

    d = _write_label_dir(tmp_path)
    assert main(["synth", str(tmp_path / "fl"), "--from-labels", str(d), "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "fl").iterdir()) == ["case_00003", "case_00004"]

    empty = tmp_path / "nothing"
    empty.mkdir()
    assert main(["synth", str(tmp_path / "x"), "--from-labels", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "nothing" in err and "no label maps" in err and len(err.strip().splitlines()) == 1


def test_cli_refuses_a_non_empty_output_without_overwrite(tmp_path, capsys):
    out = tmp_path / "kits"
    (out / "case_00000").mkdir(parents=True)
    (out / "case_00000" / "imaging.nii.gz").write_bytes(b"a real user's CT")
    argv = ["synth", str(out), "--cases", "1", "--shape", "16", "24", "24", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "folder is not empty" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (out / "case_00000" / "imaging.nii.gz").read_bytes() == b"a real user's CT"
    d = _write_label_dir(tmp_path)
    assert main(["synth", str(out), "--from-labels", str(d), "--quiet"]) == 2
    assert main([*argv, "--overwrite"]) == 0
    assert read_geometry(out / "case_00000" / "imaging.nii.gz").size == (16, 24, 24)  # KiTS layout: slices last
