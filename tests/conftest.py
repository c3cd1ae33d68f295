"""Shared fixtures: the app's library on sys.path, trained weights, and a real server on loopback."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# monailabel.client saves results under tempfile's folder with the server's file name; on one machine that is the
# very file the server deletes after answering. Clients (like Slicer) keep their own temporary folder.
tempfile.tempdir = tempfile.mkdtemp(prefix="limnet-tests-")
APP = os.path.join(ROOT, "apps", "limnet")
sys.path.insert(0, APP)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from serverctl import free_port, start_server, stop_server  # noqa: E402,F401

from lib.data.heldout import cache_dir  # noqa: E402
from lib.data.synthetic import generate_case  # noqa: E402
from lib.net.bundle import LimNet  # noqa: E402


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
    real = {c.name: c for c in heldout_cases()}["lung2_lung_tumour"]
    shutil.copy(os.path.join(cache_dir(), "pyradiomics", "lung2_image.nrrd"), folder / "lung2.nrrd")
    return {"folder": str(folder), "blob": case, "touching": second, "lung2": real}


@pytest.fixture(scope="session")
def app_dir(tmp_path_factory) -> str:
    """A copy of apps/limnet, so that training in the tests never touches the committed weights."""
    dst = tmp_path_factory.mktemp("app") / "limnet"
    shutil.copytree(APP, dst, ignore=shutil.ignore_patterns("logs", "__pycache__", "*.prev.pt", "limnet.pt"))
    return str(dst)


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
