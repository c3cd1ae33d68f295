"""Class-agnostic training targets on real texture, from a packaged real volume (nilearn's MNI152 2009 T1):
tissue maps (brain, white matter, ventricles) and compact intensity-connected regions grown from random seeds.
"Segment what I clicked" needs exactly this: real boundaries of arbitrary structures. The regions are opened
(thin bridges and ribbons cut) and the seed's part kept: a region that runs on along a thin ribbon of the same
intensity (cortex around a nucleus) would teach that a click means everything of that intensity it touches.

The MNI152 2009 volume is used for training only; evaluation uses other packages' volumes (lib.data.heldout).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from lib.engine.geometry import normalize_intensity

from .packaged import mni152, mni152_structures, thick_slices


def _region_from_seed(rng: np.random.Generator, smooth: np.ndarray, head: np.ndarray, size: int):
    """A crop around a random seed and the compact intensity-connected region containing the seed inside it."""
    coords = np.argwhere(head)
    for _ in range(20):
        c = coords[rng.integers(len(coords))]
        lo = np.maximum(c - size // 2, 0)
        hi = np.minimum(lo + size, smooth.shape)
        lo = np.maximum(hi - size, 0)
        crop = smooth[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        v = smooth[tuple(c)]
        tol = rng.uniform(0.04, 0.12)
        inside = np.abs(crop - v) < tol
        r = int(rng.integers(1, 3))
        inside = ndi.binary_opening(inside, ndi.generate_binary_structure(3, 1), iterations=r)
        lab, _ = ndi.label(inside)
        if lab[tuple(c - lo)] == 0:  # the seed lay on a ribbon or a bridge: no compact structure there
            continue
        target = lab == lab[tuple(c - lo)]
        n = int(target.sum())
        if 200 < n < 0.5 * target.size:
            return (lo, hi), target
    return None


def mni_training_cases(rng: np.random.Generator, n_regions: int = 48, tissues: tuple[str, ...] | None = None):
    """(normalised image, label) pairs: whole-volume tissue targets at 1 mm and thick slices, plus seeded regions.
    `tissues`: which of `mni152_structures` to keep (None: all); the draws are the same either way, so the seeded
    regions do not change with it."""
    from lib.training.samplers import Case

    t1, _, _, _ = mni152()
    img = normalize_intensity(t1)
    structures = mni152_structures()
    if tissues is not None and set(tissues) - set(structures):  # a misspelt name would leave its tissue out silently
        raise ValueError(f"unknown MNI152 tissues {sorted(set(tissues) - set(structures))}; known: {list(structures)}")
    cases = []
    for name, lab in structures.items():
        f = int(rng.choice([2, 3, 5]))
        if tissues is not None and name not in tissues:
            continue
        cases.append(Case(img, lab.astype(np.uint8)))
        ti, tl = thick_slices(t1, lab, f)
        cases.append(Case(normalize_intensity(ti), tl))
    smooth = ndi.gaussian_filter(img, 1.0)
    head = smooth > 0.15
    for _ in range(n_regions):
        size = int(rng.choice([48, 64, 96]))
        got = _region_from_seed(rng, smooth, head, size)
        if got is None:
            continue
        (lo, hi), target = got
        crop = img[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        axis = int(rng.integers(3))  # any orientation: slices along the last axis after moving `axis` there
        crop, target = np.moveaxis(crop, axis, 2), np.moveaxis(target, axis, 2)
        cases.append(Case(np.ascontiguousarray(crop), np.ascontiguousarray(target.astype(np.uint8))))
    return cases
