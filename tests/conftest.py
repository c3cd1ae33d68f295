"""Shared fixtures: the app's library on sys.path, trained weights, and a real server on loopback."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# monailabel.client saves results under tempfile's folder with the server's file name; on one machine that is the
# very file the server deletes after answering. Clients (like Slicer) keep their own temporary folder.
tempfile.tempdir = tempfile.mkdtemp(prefix="limnet-tests-")
# The servers the tests start keep theirs in a folder inside it (not the same one, for that reason). The folder goes
# when the run passes (each run left ~300 MB behind, and with the clones CI makes of this repository that filled a
# disk once); a failed run keeps it, with the servers' logs, and says where.
os.environ["TMPDIR"] = os.path.join(tempfile.tempdir, "servers")
os.makedirs(os.environ["TMPDIR"])
_RUN_PASSED: list[bool] = []


def _remove_temporary_folder() -> None:
    if _RUN_PASSED == [True]:
        shutil.rmtree(tempfile.tempdir, ignore_errors=True)
    else:
        print(f"\nthe tests' temporary files are kept in {tempfile.tempdir}", file=sys.stderr)


atexit.register(_remove_temporary_folder)


def pytest_sessionfinish(session, exitstatus) -> None:
    _RUN_PASSED.append(int(exitstatus) == 0)


APP = os.path.join(ROOT, "apps", "limnet")
sys.path.insert(0, APP)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from serverctl import free_port, start_server, stop_server  # noqa: E402,F401

from lib.data.heldout import cache_dir  # noqa: E402
from lib.data.synthetic import generate_case  # noqa: E402
from lib.engine.geometry import crop_slices  # noqa: E402
from lib.net.bundle import WORKING_SIZE, LimNet  # noqa: E402


def cube_volume(seed: int = 0):
    """A textured CT-like volume with a bright box at a known, asymmetric array position."""
    rng = np.random.default_rng(seed)
    img = rng.normal(40, 15, (96, 80, 40)).astype(np.float32)
    box = (slice(14, 34), slice(50, 68), slice(8, 22))
    img[box] = 300 + rng.normal(0, 15, img[box].shape)
    truth = np.zeros(img.shape, bool)
    truth[box] = True
    return img, truth


def weights_path() -> str:
    for name in ("limnet.pt", "pretrained_limnet.pt"):
        p = os.path.join(APP, "model", name)
        if os.path.exists(p):
            return p
    raise RuntimeError("no committed weights under apps/limnet/model")


@pytest.fixture(scope="session")
def net() -> LimNet:
    return LimNet.load(weights_path())


def write_nifti(path: str, array: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(array, np.diag(list(spacing) + [1.0])), path)


@pytest.fixture(scope="session")
def studies(tmp_path_factory) -> dict:
    """A studies folder: generated volumes (with their truth) and a real held-out chest CT (pyradiomics' lung2)."""
    from lib.data.heldout import heldout_cases

    folder = tmp_path_factory.mktemp("studies")
    case = generate_case(np.random.default_rng(11), "blob", size=(112, 112), depth=(36, 36))
    write_nifti(str(folder / "blob.nii.gz"), case.image.astype(np.float32), case.spacing)
    second = generate_case(np.random.default_rng(12), "touching", size=(96, 96), depth=(30, 30))
    write_nifti(str(folder / "touching.nii.gz"), second.image.astype(np.float32), second.spacing)
    real = {c.name: c for c in heldout_cases(sources=("pyradiomics",))}["lung2_lung_tumour"]
    shutil.copy(os.path.join(cache_dir(), "pyradiomics", "lung2_image.nrrd"), folder / "lung2.nrrd")
    sagittal = lung_stored_thick_axis_first(real)
    write_nifti(str(folder / "lung2_sagittal.nii.gz"), sagittal.image, sagittal.spacing)
    return {"folder": str(folder), "blob": case, "touching": second, "lung2": real, "lung2_sagittal": sagittal}


def lung_stored_thick_axis_first(real) -> SimpleNamespace:
    """The real CT's 256 x 256 in-plane crop around its tumour, stored with the 5 mm axis first (as a NIfTI reoriented
    from a sagittal acquisition keeps its thick axis): image (int16 HU), label and spacing in that order."""
    xs, ys, _ = np.nonzero(real.label)
    x0, y0 = (int(np.clip(c.mean() - 128, 0, n - 256)) for c, n in ((xs, real.image.shape[0]), (ys, real.image.shape[1])))
    crop = np.s_[x0 : x0 + 256, y0 : y0 + 256, :]
    image = np.round(real.image[crop]).astype(np.int16)
    return SimpleNamespace(image=np.ascontiguousarray(image.transpose(2, 0, 1)),
                           label=np.ascontiguousarray(real.label[crop].transpose(2, 0, 1)),
                           spacing=tuple(float(real.spacing[i]) for i in (2, 0, 1)))


def copy_app(parent) -> str:
    """A copy of apps/limnet under `parent` (without trained or previous weights and logs), so that training in
    the tests never touches the committed weights."""
    dst = os.path.join(str(parent), "limnet")
    shutil.copytree(APP, dst, ignore=shutil.ignore_patterns("logs", "__pycache__", "*.prev.pt", "limnet.pt",
                                                            "*_train_stats.json"))
    return dst


@pytest.fixture(scope="session")
def app_dir(tmp_path_factory) -> str:
    return copy_app(tmp_path_factory.mktemp("app"))


def orthanc_missing_reason() -> str | None:
    """Why the DICOMweb tests cannot run here (None: they can, or CI requires them)."""
    import orthanc

    if orthanc.orthanc_binary() is None and not os.environ.get("LIMNET_REQUIRE_ORTHANC"):
        return "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb); CI installs it"
    return None


@pytest.fixture(scope="module")
def orthanc_server(tmp_path_factory):
    """Debian's Orthanc with its DICOMweb plugin on a free loopback port, empty; stopped after the module."""
    import orthanc

    work = tmp_path_factory.mktemp("orthanc")
    port = free_port()
    log = open(work / "orthanc.log", "w")
    proc = orthanc.start(str(work), port, free_port(), log=log)
    url = f"http://127.0.0.1:{port}"
    yield {"url": url, "dicomweb": f"{url}/dicom-web", "work": work}
    os.killpg(proc.pid, 15)
    proc.wait(20)
    log.close()


def viewer_index_space(folder: str) -> np.ndarray:
    """A DICOM series as a viewer indexes it: (column, row, slice), slices sorted along the orientation's normal
    (cornerstone in OHIF and GDCM/ITK both sort so). For a series written from LAS geometry that reverses the
    written slice order."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(folder))
    return sitk.GetArrayFromImage(reader.Execute()).transpose(2, 1, 0)


@pytest.fixture(scope="session")
def server(studies, app_dir, tmp_path_factory):
    """`monailabel start_server --app <copy of apps/limnet> --studies DIR --conf models limnet` on loopback."""
    log = open(tmp_path_factory.mktemp("log") / "server.log", "w+")
    home = str(tmp_path_factory.mktemp("home"))  # sessions and caches stay inside the test
    try:
        proc, url = start_server(app_dir, studies["folder"], log=log, HOME=home)
    except RuntimeError:
        log.seek(0)
        raise RuntimeError("server did not start:\n" + log.read()[-3000:]) from None
    yield {"url": url, "proc": proc, "log": log, "app_dir": app_dir}
    stop_server(proc)


def capsule_volume(depth=60, z0=15, z1=40, seed=0):
    """A bright capsule spanning slices z0..z1 on a noisy, textured background."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(np.arange(96), np.arange(96), np.arange(depth), indexing="ij")
    zc, half = (z0 + z1) / 2, (z1 - z0) / 2
    r = 14 * np.sqrt(np.clip(1 - ((z - zc) / (half + 0.5)) ** 2, 0, 1))
    label = ((x - 48) ** 2 + (y - 44) ** 2 <= r**2) & (z >= z0) & (z <= z1)
    image = 0.3 + 0.4 * label + rng.normal(0, 0.05, label.shape)
    image[20:30, 70:85] += 0.35  # a distractor
    return image.astype(np.float32), label


def anchor_probs(label, box, ks):
    return {k: crop_slices(label.astype(np.float32), box, np.array([[k]]), WORKING_SIZE)[0, 0] for k in ks}
