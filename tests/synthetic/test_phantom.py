"""``kits_plugins.synthetic.phantom``: synthetic cases are deterministic, in the KiTS23 file layout, with KiTS label
semantics and variety, defined in mm, with realistic HU per label and tissue and a plausible anatomy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from kits_plugins.synthetic import anatomy as A
from kits_plugins.synthetic.phantom import KITS_DIRECTION, make_case, make_phantom
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
    """KiTS23's frequencies (kits23_statistics): every case has tumors, one in most cases, cysts in about half, a
    solitary kidney now and then."""
    n_kidneys, n_tumors, cysts = [], [], 0
    for seed in range(150):
        _, label, _ = make_case(seed, SMALL)
        assert set(np.unique(label)) <= {0, 1, 2, 3}
        assert (label == 1).any()
        assert _lesions_touch_kidney(label), seed
        n_kidneys.append(ndimage.label(label > 0, structure=np.ones((3, 3, 3)))[1])
        n_tumors.append(ndimage.label(label == 2, structure=np.ones((3, 3, 3)))[1])
        cysts += bool((label == 3).any())
        if seed >= 30 and set(n_kidneys) == {1, 2} and max(n_tumors) >= 2 and cysts >= 5:
            break
    assert set(n_kidneys) == {1, 2}  # solitary kidneys occur
    assert n_kidneys.count(1) <= 0.15 * len(n_kidneys)
    assert max(n_tumors) >= 2 and max(n_tumors) <= 3 and n_tumors.count(1) >= 0.6 * len(n_tumors)
    assert n_tumors.count(0) <= 0.1 * len(n_tumors) and 0.2 * len(n_tumors) <= cysts <= 0.8 * len(n_tumors)


def test_kits23_extent_draws_scan_length_and_kidney_height():
    """``kits23_extent``: the slice count follows a scan length drawn from KiTS23 (213-700 mm), the body keeps its
    adult size, and the kidneys sit at a KiTS23 height in the scan."""
    extents, heights = [], []
    for seed in range(12):
        ph = make_phantom(seed, (64, 128, 128), (4.0, 3.0, 3.0), kits23_extent=True)
        extent = (ph.label.shape[0] - 1) * 4.0
        assert 213.0 - 4 <= extent <= 700.0 + 4
        assert ph.anatomy.scale == 1.0
        z = np.nonzero((ph.label > 0).any(axis=(1, 2)))[0]
        assert z.size and z.min() > 0 and z.max() < ph.label.shape[0] - 1  # the kidneys lie inside the scan
        extents.append(extent)
        heights.append(1 - np.mean(z) * 4.0 / extent)
    assert np.ptp(extents) > 100  # lengths vary
    assert 0.2 < np.median(heights) < 0.6
    fixed = make_phantom(0, (64, 128, 128), (4.0, 3.0, 3.0))
    assert fixed.label.shape == (64, 128, 128)


def test_contrast_phases():
    """Procedural cases come in KiTS23's two contrast phases: cortex brighter than medulla (corticomedullary) or the
    two alike (nephrographic); the bowel lumen holds gas or positive oral contrast. Adult size (scale 1): in
    a scaled-down body the few-mm cortex blurs into its surroundings."""
    seen, lumen = {}, set()
    for seed in range(60):
        ph = make_phantom(seed, (64, 128, 128), (4.0, 3.0, 3.0), return_tissue=True, kits23_extent=True)
        phase = ph.anatomy.intensities.phase
        gas = ph.ct[ph.tissue == A.GAS]
        if gas.size > 100:  # the bowel lumen: gas, or positive oral contrast
            lumen.add("contrast" if np.median(gas) > 100 else "gas" if np.median(gas) < -700 else "other")
        if phase in seen:
            continue
        ct, tis = ph.ct.astype(np.float32), ph.tissue
        cortex, medulla = ct[tis == A.CORTEX].mean(), ct[tis == A.MEDULLA].mean()
        liver = ct[tis == A.LIVER].mean()
        if phase == "corticomedullary":
            assert cortex > medulla + 20
        else:
            assert phase == "nephrographic" and abs(cortex - medulla) < 25 and cortex > 110 and liver < cortex
        seen[phase] = seed
        if len(seen) == len(A.PHASES) and len(lumen) >= 2:
            break
    assert set(seen) == set(A.PHASES) and lumen == {"gas", "contrast"}


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
        intensities = ph.anatomy.intensities
        hu = intensities.hu
        kid = ct[lab == 1].mean()
        assert hu[A.MEDULLA] - 15 < kid < hu[A.CORTEX] + 15
        if intensities.phase == "corticomedullary":
            assert hu[A.CORTEX] > hu[A.MEDULLA] + 30
            assert ct[tis == A.CORTEX].mean() > ct[tis == A.MEDULLA].mean() + 20
        if (lab == 2).any():
            lo, hi = intensities.tumor_range
            tumor_means.append(ct[lab == 2].mean())
            assert lo - 20 < ct[lab == 2].mean() < hi + 30
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
        # noise: white noise of 8-18 HU everywhere (air: clipped at -1024, so a bit lower)
        assert 3 < ct[tis == A.AIR].std() < 27
    assert all(0 <= m <= 150 for m in tumor_means)


def test_threshold_is_not_a_kidney_detector(phantoms):
    for ph in phantoms:
        ct, lab, tis = ph.ct, ph.label, ph.tissue
        lo, hi = np.percentile(ct[lab == 1], [10, 90])
        window = (ct >= lo) & (ct <= hi)
        precision = (window & (lab == 1)).sum() / window.sum()
        assert precision < 0.5
        liver = ct[tis == A.LIVER]
        if ph.anatomy.intensities.phase == "corticomedullary":
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
