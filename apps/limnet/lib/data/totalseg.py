"""Real CT (and one MR) with organ label maps from TotalSegmentator's sdist on PyPI (its test reference files):
real CT texture and real organ boundaries for training, which the generated volumes and the MNI152 T1 lack.

The label maps are TotalSegmentator's own predictions (pseudo-labels, not hand-drawn), good enough for "segment
the organ I clicked". One series, the 512x512x20 DICOM CT, is kept out of training: it is a validation set on real
CT (`validation_cases`), for choices that the generated validation volumes cannot make. The held-out evaluation
volumes (lib.data.heldout) come from other packages.

Fetched once with pip (a package registry) into a cache folder; nothing comes from a data hub.
"""

from __future__ import annotations

import os
import tarfile
import tempfile

import numpy as np

from .heldout import _largest, _pip_download, ras_affine, read_volume
from .packaged import RealCase, thick_slices

TOTALSEGMENTATOR = "totalsegmentator==2.18.0"
_REF = "tests/reference_files/"
# TotalSegmentator v2 "total" class ids of the validation series' labels worth clicking (v2 ids; names for tables)
TOTAL_NAMES = {
    1: "spleen", 2: "kidney_right", 3: "kidney_left", 5: "liver", 6: "stomach", 7: "pancreas", 20: "trachea",
    52: "aorta", 63: "inferior_vena_cava", 79: "spinal_cord", 86: "autochthon_left", 87: "autochthon_right",
    117: "costal_cartilages", 32: "vertebrae_T12", 33: "vertebrae_T11", 64: "portal_vein", 98: "rib_left_4",
}
MIN_VOXELS = 500


def cache_dir() -> str:
    return os.environ.get("LIMNET_TOTALSEG", os.path.join(os.path.expanduser("~"), ".cache", "limnet", "totalseg"))


def fetch(folder: str | None = None) -> str:
    """Download (once) TotalSegmentator's sdist and keep its test reference volumes; returns the folder."""
    folder = folder or cache_dir()
    if os.path.exists(os.path.join(folder, "done")):
        return folder
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(_pip_download(TOTALSEGMENTATOR, tmp, sdist=True)) as tar:
            for m in tar.getmembers():
                if m.isfile() and _REF in m.name:
                    m.name = m.name.split(_REF, 1)[1]
                    tar.extract(m, folder)
    open(os.path.join(folder, "done"), "w").close()
    return folder


def _objects(labels: np.ndarray, values=None) -> dict[int, np.ndarray]:
    """Each label value's largest connected part (one clickable object), if it is large enough."""
    out = {}
    for v in values if values is not None else np.unique(labels)[1:]:
        m = labels == v
        if m.sum() >= MIN_VOXELS:
            m = _largest(m)
            if m.sum() >= MIN_VOXELS and np.count_nonzero(m.any((0, 1))) >= 3:
                out[int(v)] = m
    return out


def _training_volumes(folder: str) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """(raw image, {name: mask}) of every series used for training (never the validation series)."""
    vols = []
    img, ct = read_volume(os.path.join(folder, "example_ct.nii.gz"))  # abdomen to chest, 3 mm, 61 organs
    _, lab = read_volume(os.path.join(folder, "example_seg_fast_force_split.nii.gz"), like=img)
    vols.append((ct, {f"abdomen_{v}": m for v, m in _objects(lab).items()}))
    img, mr = read_volume(os.path.join(folder, "example_mr_sm.nii.gz"))  # abdominal MR, 3 mm
    _, lab = read_volume(os.path.join(folder, "example_seg_mr.nii.gz"), like=img)
    vols.append((mr, {f"mr_{v}": m for v, m in _objects(lab).items()}))
    img, cta = read_volume(os.path.join(folder, "aorta_report", "example_ct.nii.gz"))  # chest CT angiogram, 1.5 mm
    _, heart = read_volume(os.path.join(folder, "pulmonary_report", "models", "heart.nii.gz"), like=img)
    vols.append((cta, {"heart": heart > 0}))
    crop_dir = os.path.join(folder, "aorta_report", "test_result", "models")
    img, crop = read_volume(os.path.join(crop_dir, "ct_cropped.nii.gz"))
    masks = {}
    for name in sorted(os.listdir(crop_dir)):
        if name.endswith(".nii.gz") and not name.startswith(("ct", "T7", "organ_")):
            _, m = read_volume(os.path.join(crop_dir, name), like=img)
            got = _objects(m > 0, [True])
            if got:
                masks[name[:-7]] = got[1]
    vols.append((crop, masks))
    pul_dir = os.path.join(folder, "pulmonary_report", "models")
    img, crop = read_volume(os.path.join(pul_dir, "ct_cropped.nii.gz"))
    _, m = read_volume(os.path.join(pul_dir, "pulmonary_artery.nii.gz"), like=img)
    vols.append((crop, {"pulmonary_artery": m > 0}))
    return vols


def training_cases(rng: np.random.Generator, folder: str | None = None):
    """(normalised image, label) training pairs: every organ of the training series, each in any of the three slice
    orientations; about half of those of the 1.5 mm angiogram and its crops of 150 slices or more also as 4.5 mm
    slices (partial volume)."""
    from lib.engine.denoise import ct_padding
    from lib.engine.geometry import normalize_as_read, normalize_intensity
    from lib.training.samplers import Case

    cases = []
    for raw, masks in _training_volumes(fetch(folder)):
        raw = raw.astype(np.float32)
        img, ct = normalize_as_read(raw)
        for mask in masks.values():
            axis = int(rng.integers(3))  # slices along the last axis after moving `axis` there
            im, lab = np.moveaxis(img, axis, 2), np.moveaxis(mask, axis, 2)
            cases.append(Case(np.ascontiguousarray(im), np.ascontiguousarray(lab.astype(np.uint8)), ct))
            if raw.shape[2] >= 150 and rng.random() < 0.5:  # the angiogram and its aorta crop: thick slices too
                ti, tl = thick_slices(raw, mask.astype(np.uint8), 3)
                cases.append(Case(normalize_intensity(ti, padding=ct_padding(ct)), tl, ct))
    return cases


def _block_mean(volume: np.ndarray, factor: int) -> np.ndarray:
    """The mean of each factor x factor block of every slice (in-plane; rows and columns beyond the last whole
    block dropped)."""
    h, w, d = volume.shape
    h, w = h // factor, w // factor
    return volume[: h * factor, : w * factor].reshape(h, factor, w, factor, d).mean((1, 3))


def validation_cases(folder: str | None = None, shrink: int = 1) -> list[RealCase]:
    """The DICOM CT series (512x512x20, 0.98 x 0.98 x 2 mm), never used for training, with its organs. `shrink` 4:
    block-averaged 4x in-plane (128 x 128, 3.9 mm pixels; names end in "_4x"; labels by majority, organs under 20
    voxels left out), a slice the interaction module sees whole rather than reduced: the path CT-sized slices never
    take, which the low-resolution CT a user may bring takes."""
    folder = fetch(folder)
    img, ct = read_volume(os.path.join(folder, "example_ct_dicom"))
    _, lab = read_volume(os.path.join(folder, "example_seg_dicom.nii.gz"), like=img)
    spacing, affine = tuple(float(s) for s in img.GetSpacing()), ras_affine(img)
    objs = _objects(lab, sorted(TOTAL_NAMES))
    if shrink == 1:
        return [RealCase(f"ctval_{TOTAL_NAMES[v]}", ct.astype(np.float32), m.astype(np.uint8), spacing, affine, "CT")
                for v, m in objs.items()]
    image = _block_mean(ct.astype(np.float32), shrink)
    affine = affine.copy()
    affine[:3, :2] *= shrink
    spacing = (spacing[0] * shrink, spacing[1] * shrink, spacing[2])
    cases = []
    for v, m in objs.items():
        small = _block_mean(m.astype(np.float32), shrink) >= 0.5  # by majority
        if small.sum() >= 20:
            cases.append(RealCase(f"ctval_{TOTAL_NAMES[v]}_{shrink}x", image, small.astype(np.uint8), spacing, affine,
                                  "CT"))
    return cases
