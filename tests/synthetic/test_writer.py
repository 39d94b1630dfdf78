"""``kits_plugins.synthetic.writer``: cases written whole or not at all, CTs synthesized for folders of label maps
(permuted directions, real KiTS23 labels when present, bad input), and ``kits synth``."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from kits_plugins.cli import main
from kits_plugins.synthetic import writer
from kits_plugins.synthetic.phantom import kits_geometry, make_case, make_phantom
from kits_plugins.utilities.image_io import Geometry, KitsInputError, read_geometry, read_image, write_image
from kits_plugins.utilities.orientation import Reorientation

SMALL = (48, 96, 96)  # anatomical order; default spacing 3 x 1.5625 x 1.5625 mm (body scaled to fit)


def _write_label_dir(tmp_path, permuted_geometry, geom_perm=((0, 2, 1), (1, -1, 1))):
    """Two synthetic label maps with a permuted, flipped direction in DIR/case_XXXXX.nii.gz."""
    d = tmp_path / "labels"
    d.mkdir()
    for i, seed in enumerate((1, 2)):
        canon = make_phantom(seed, SMALL).label
        g0 = permuted_geometry((4, 5, 6), *geom_perm)
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


def test_from_labels_folder_permuted_direction(tmp_path, permuted_geometry):
    d = _write_label_dir(tmp_path, permuted_geometry)
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


def test_bad_inputs_name_the_file(tmp_path, permuted_geometry):
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

    bad = _write_label_dir(tmp_path, permuted_geometry)
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


def test_cli_end_to_end(tmp_path, capsys, permuted_geometry):
    out = tmp_path / "data"
    rc = main(["synth", str(out), "--cases", "2", "--seed", "3", "--shape", "32", "64", "64",
               "--spacing", "4", "2.5", "2.5", "--first-case", "5", "--quiet"])  # fmt: skip
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["case_00005", "case_00006"]
    ct, label, geom = make_case(writer.case_seed(3, 6), (32, 64, 64), (4.0, 2.5, 2.5))
    back, g = read_image(out / "case_00006" / "imaging.nii.gz")
    seg, _ = read_image(out / "case_00006" / "segmentation.nii.gz")
    assert np.array_equal(back, ct) and np.array_equal(seg, label) and g == geom == kits_geometry((32, 64, 64), (4, 2.5, 2.5))

    d = _write_label_dir(tmp_path, permuted_geometry)
    assert main(["synth", str(tmp_path / "fl"), "--from-labels", str(d), "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "fl").iterdir()) == ["case_00003", "case_00004"]
    assert main(["synth", str(tmp_path / "fl4"), "--from-labels", str(d), "--label-spacing", "4", "4", "4",
                 "--quiet"]) == 0
    for case in ("case_00003", "case_00004"):
        image = read_geometry(tmp_path / "fl4" / case / "imaging.nii.gz")
        assert image.spacing == (4.0, 4.0, 4.0)
        assert read_geometry(tmp_path / "fl4" / case / "segmentation.nii.gz") == image
    assert main(["synth", str(tmp_path / "y"), "--cases", "1", "--label-spacing", "4", "4", "4"]) == 2
    assert "--label-spacing needs --from-labels" in capsys.readouterr().err
    assert main(["synth", str(tmp_path / "k"), "--cases", "1", "--seed", "3", "--spacing", "4", "4", "4",
                 "--shape", "16", "64", "64", "--kits23-extent", "--quiet"]) == 0
    k = read_geometry(tmp_path / "k" / "case_00000" / "imaging.nii.gz")
    assert k == make_case(writer.case_seed(3, 0), (16, 64, 64), (4.0, 4.0, 4.0), kits23_extent=True)[2]
    assert 213 <= (k.shape[2] - 1) * 4.0 <= 704 and k.shape[:2] == (64, 64)  # file order: slices last
    assert main(["synth", str(tmp_path / "z"), "--from-labels", str(d), "--kits23-extent"]) == 2
    assert "--kits23-extent is for procedural cases" in capsys.readouterr().err

    empty = tmp_path / "nothing"
    empty.mkdir()
    assert main(["synth", str(tmp_path / "x"), "--from-labels", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "nothing" in err and "no label maps" in err and len(err.strip().splitlines()) == 1


def test_cli_refuses_a_non_empty_output_without_overwrite(tmp_path, capsys, permuted_geometry):
    out = tmp_path / "kits"
    (out / "case_00000").mkdir(parents=True)
    (out / "case_00000" / "imaging.nii.gz").write_bytes(b"a real user's CT")
    argv = ["synth", str(out), "--cases", "1", "--shape", "16", "24", "24", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "folder is not empty" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (out / "case_00000" / "imaging.nii.gz").read_bytes() == b"a real user's CT"
    d = _write_label_dir(tmp_path, permuted_geometry)
    assert main(["synth", str(out), "--from-labels", str(d), "--quiet"]) == 2
    assert main([*argv, "--overwrite"]) == 0
    assert read_geometry(out / "case_00000" / "imaging.nii.gz").size == (16, 24, 24)  # KiTS layout: slices last
