"""A validation set for deep grey nuclei of brain MR, never trained on and not the held-out template: the CAT12 T1
template (IXI-derived, brain-extracted, 0.5 mm) and its IBSR atlas (FreeSurfer aseg numbering), both shipped in
deepmriprep's wheel on PyPI.

Why: a click inside a nucleus means the nucleus, not the brain around it; the generated volumes and the real CT
validation series do not test that, and choices must not be made on the held-out MNI152 2 mm atlas
(lib.data.heldout). Fetched once with pip (a package registry) into a cache folder; nothing comes from a data hub.
"""

from __future__ import annotations

import os

import numpy as np

from .heldout import _largest, ras_affine, wheel_files
from .packaged import RealCase, thick_slices

DEEPMRIPREP = "deepmriprep==0.3.0"
_FILES = {"Template_05mm_bet.nii.gz": "t1.nii.gz", "ibsr.nii.gz": "ibsr.nii.gz"}
# aseg ids: left, right
NUCLEI = {"thalamus": (10, 49), "caudate": (11, 50), "putamen": (12, 51), "pallidum": (13, 52)}
# large structures, (left ids, right ids) or (ids,) where the image draws no line between the sides (the white
# matter runs on through the corpus callosum, the cerebellum's halves and its white matter and cortex are one
# structure to a click): a click in one means all of it, not a piece
LARGE = {"white_matter": ((2, 41),), "cerebellum": ((7, 8, 46, 47),), "brainstem": ((16,),),
         "lateral_ventricle": ((4,), (43,))}


def cache_dir() -> str:
    return os.environ.get("LIMNET_BRAINVAL", os.path.join(os.path.expanduser("~"), ".cache", "limnet", "brainval"))


def fetch(folder: str | None = None) -> str:
    """Download (once) deepmriprep's wheel and keep the T1 template and the IBSR atlas; returns the folder."""
    folder = folder or cache_dir()
    if all(os.path.exists(os.path.join(folder, f)) for f in _FILES.values()):
        return folder
    wheel_files(DEEPMRIPREP, _FILES, folder)
    return folder


def validation_cases(folder: str | None = None, thick: int = 3, shrink: int = 2,
                     fov: int | None = None, structures: dict | None = None,
                     thin: bool = True) -> list[RealCase]:
    """Left and right thalamus, caudate, putamen and pallidum on the template at 1 mm (block-averaged from 0.5 mm),
    and the left ones again on `thick` mm slices (partial volume). `shrink` 4: at 2 mm isotropic instead (names
    end in "_2mm", no thick slices), as a 2 mm brain MR shows them: a pallidum a few pixels across. `fov`: slices
    padded with air to fov x fov pixels (names end in "_fov<fov>"), as a scanner's 256 mm field of view at 1 mm
    shows the (skull-stripped) template: the same brain on a slice the interaction module sees reduced 2x.
    `structures`: name -> (left ids, right ids), or (ids,) for one structure across the midline, instead of the
    nuclei (`LARGE`, `large_cases`). `thin` False: only the thick-slice copies."""
    import SimpleITK as sitk

    folder = fetch(folder)
    t1 = sitk.BinShrink(sitk.Cast(sitk.ReadImage(os.path.join(folder, "t1.nii.gz")), sitk.sitkFloat32), [shrink] * 3)
    atlas = sitk.Resample(sitk.ReadImage(os.path.join(folder, "ibsr.nii.gz")), t1, sitk.Transform(),
                          sitk.sitkNearestNeighbor, 0)
    image = sitk.GetArrayFromImage(t1).transpose(2, 1, 0).astype(np.float32)
    labels = sitk.GetArrayFromImage(atlas).transpose(2, 1, 0)
    spacing, affine = tuple(float(s) for s in t1.GetSpacing()), ras_affine(t1)
    suffix = "" if shrink == 2 else f"_{spacing[0]:g}mm"
    wide = "" if fov is None else f"_fov{fov}"
    if fov is not None:
        pad = [((fov - n) // 2, fov - n - (fov - n) // 2) if n < fov else (0, 0) for n in image.shape[:2]] + [(0, 0)]
        image, labels = np.pad(image, pad), np.pad(labels, pad)
        affine = affine.copy()
        affine[:3, 3] -= affine[:3, :3] @ np.array([pad[0][0], pad[1][0], 0], dtype=np.float64)
    cases = []
    for name, ids in (structures or NUCLEI).items():
        for side, v in zip(("_left", "_right") if len(ids) == 2 else ("",), ids):
            thick_copy = side != "_right" and thick > 1 and shrink == 2
            if not (thin or thick_copy):
                continue
            mask = _largest(np.isin(labels, v)).astype(np.uint8)
            if thin:
                cases.append(RealCase(f"brainval_{name}{side}{suffix}{wide}", image, mask, spacing, affine, "MR"))
            if thick_copy:
                ti, tl = thick_slices(image, mask, thick)
                aff = affine.copy()
                aff[:3, 2] *= thick
                cases.append(RealCase(f"brainval_{name}{side}_{thick}mm{wide}", ti, tl, (*spacing[:2], spacing[2] * thick),
                                      aff, "MR"))
    return cases


def large_cases(folder: str | None = None) -> list[RealCase]:
    """Large brain structures of the same template (`LARGE`: cerebral white matter, cerebellum, brainstem, lateral
    ventricles): at 2 mm isotropic (names end in "_2mm"), and at 1 mm on 5 mm slices, as an MR series of thick
    slices shows them (names end in "_5mm"; of the ventricles the left one).

    Why: a first-click rule that prefers a small reading with an edge (the reading ranker, `ranked_first`) can take
    a piece of a large structure for the structure on a small slice; the nuclei and the CT series hold no large
    structure on a small slice whose whole-slice answer the guard accepts (design log, 2026-12-07)."""
    thin = validation_cases(folder, thick=1, shrink=4, structures=LARGE)
    return thin + validation_cases(folder, thick=5, shrink=2, structures=LARGE, thin=False)
