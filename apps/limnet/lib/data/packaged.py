"""Real volumes shipped inside installed packages (no downloads): nilearn's MNI152 2009 T1 with its grey- and
white-matter maps. Structures derived from them are sample studies and training targets (lib.data.real_targets);
evaluation uses other packages' volumes (lib.data.heldout).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


@dataclass
class RealCase:
    name: str
    image: np.ndarray  # raw intensities, H x W x D
    label: np.ndarray  # uint8 {0, 1}
    spacing: tuple[float, float, float]
    affine: np.ndarray
    modality: str


def _nilearn_data_dir() -> str:
    import nilearn

    return os.path.join(os.path.dirname(nilearn.__file__), "datasets", "data")


def mni152() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """T1, grey-matter and white-matter probability (0..1) maps and the affine, 1 mm isotropic."""
    import nibabel as nib

    d = _nilearn_data_dir()
    t1 = nib.load(os.path.join(d, "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"))
    gm = nib.load(os.path.join(d, "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz")).get_fdata() / 255.0
    wm = nib.load(os.path.join(d, "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz")).get_fdata() / 255.0
    return t1.get_fdata().astype(np.float32), gm.astype(np.float32), wm.astype(np.float32), t1.affine


def _largest(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n <= 1:
        return mask
    return lab == (int(np.argmax(np.bincount(lab.ravel())[1:])) + 1)


def mni152_structures() -> dict[str, np.ndarray]:
    """Brain, white matter and lateral ventricles: structures a click can mean.

    Not grey matter as a tissue class: trained on "one hemisphere's cortex", the interaction module answered a
    click on any compact grey structure of a brain MR (a nucleus, a grey lesion) with the whole ribbon it touches.
    """
    t1, gm, wm, _ = mni152()
    tissue = (gm + wm) > 0.5
    brain = _largest(ndi.binary_fill_holes(ndi.binary_closing(tissue, iterations=3)))
    white = _largest(wm > 0.5)
    core = ndi.binary_erosion(brain, iterations=12)
    dark = core & (t1 < np.percentile(t1[brain], 8)) & (gm < 0.3) & (wm < 0.3)
    ventricles = _largest(ndi.binary_opening(dark, iterations=1))
    return {"brain": brain, "white_matter": white, "ventricles": ventricles}


def thick_slices(image: np.ndarray, label: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Average `factor` slices along the last axis (partial volume), label by majority."""
    d = image.shape[2] // factor
    img = image[:, :, : d * factor].reshape(*image.shape[:2], d, factor).mean(3)
    lab = label[:, :, : d * factor].reshape(*label.shape[:2], d, factor).astype(np.float32).mean(3) >= 0.5
    return img.astype(np.float32), lab.astype(np.uint8)
