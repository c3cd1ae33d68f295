"""Broken images and oversized or path-like fields through the real server: each is refused with HTTP 4xx and a
message saying what is wrong, whether it arrives as an uploaded session (how 3D Slicer sends a local volume) or as
an image added to the datastore, and a good click is answered right after."""

from __future__ import annotations

import gzip
import io
import json
import os

import nibabel as nib
import nrrd
import numpy as np
import pytest
import requests
from PIL import Image


def _nifti(array: np.ndarray, compressed: bool = True) -> bytes:
    img = nib.Nifti1Image(array, np.eye(4))
    raw = img.to_bytes()
    return gzip.compress(raw) if compressed else raw


def _nrrd(array: np.ndarray, encoding: str = "raw") -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "x.nrrd")
        nrrd.write(path, array, {"encoding": encoding})
        return open(path, "rb").read()


def _png_rgb() -> bytes:
    out = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((40, 30, 3)) * 255).astype(np.uint8)).save(out, "PNG")
    return out.getvalue()


RNG = np.random.default_rng(5)
VOL = RNG.random((24, 24, 10)).astype(np.float32)
SOME_NAN = VOL.copy()
SOME_NAN[:4, :4, :] = np.nan

# name -> (file name, bytes, fragment of the expected message)
BAD = {
    "2d": ("flat.nii.gz", _nifti(RNG.random((32, 32)).astype(np.float32)), "3D image"),
    "4d": ("series.nii.gz", _nifti(RNG.random((16, 16, 8, 3)).astype(np.float32)), "one value per voxel"),
    "rgb_picture": ("photo.png", _png_rgb(), "one value per voxel"),
    "constant": ("constant.nii.gz", _nifti(np.full((16, 16, 8), 7, np.float32)), "constant"),
    "all_nan": ("nan.nii.gz", _nifti(np.full((16, 16, 8), np.nan, np.float32)), "no finite values"),
    "truncated_nii_gz": ("cut.nii.gz", _nifti(VOL)[: len(_nifti(VOL)) // 2], "truncated"),
    "truncated_nii": ("cut.nii", _nifti(VOL, compressed=False)[:2000], "truncated"),
    "truncated_nrrd": ("cut.nrrd", _nrrd(VOL)[:-1500], "could not read the image"),
    "truncated_gzip_nrrd": ("cut.nrrd", _nrrd(VOL, "gzip")[:-100], "could not read the image"),
    "garbage_nrrd": ("garbage.nrrd", np.random.default_rng(1).bytes(6000), "not a valid NRRD header"),
    "garbage_nii_gz": ("garbage.nii.gz", np.random.default_rng(2).bytes(6000), "not a valid NIfTI header"),
    "empty_file": ("empty.nii.gz", b"", "could not read the image"),
    "huge_header": ("huge.nrrd", b"NRRD0004\ntype: float\ndimension: 3\nsizes: 4000 4000 4000\nencoding: raw\n\n" +
                    b"\0" * 64, "too large"),
}


def _good_click(url: str, studies: dict) -> None:
    case = studies["blob"]
    k = int(np.argmax(case.label.sum((0, 1))))
    xs, ys = np.nonzero(case.label[:, :, k])
    params = {"foreground": [[int(xs[len(xs) // 2]), int(ys[len(ys) // 2]), k]], "background": [],
              "client_id": "after-bad-input", "reset_state": True}
    r = requests.post(url + "/infer/limnet?image=blob&output=json", data={"params": json.dumps(params)}, timeout=300)
    assert r.status_code == 200, r.text[:300]
    assert r.json()["voxels"] > 0


def _click(url: str, query: str) -> requests.Response:
    params = json.dumps({"foreground": [[0, 0, 0]], "background": [], "client_id": "bad-input"})
    return requests.post(url + f"/infer/limnet?{query}&output=json", data={"params": params}, timeout=300)


def _assert_refused(r: requests.Response, fragment: str) -> None:
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    assert fragment in r.json()["detail"], r.json()["detail"]


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_image_is_refused_as_session_and_datastore_image(server, studies, name):
    url = server["url"]
    filename, content, fragment = BAD[name]
    # as a session (3D Slicer uploads a volume loaded locally this way)
    r = requests.put(url + "/session/", files={"files": (filename, content)})
    assert r.ok, r.text[:300]
    session_id = r.json()["session_id"]
    _assert_refused(_click(url, f"session_id={session_id}"), fragment)
    assert requests.delete(url + f"/session/{session_id}").ok
    # as an image of the datastore
    image_id = f"bad_{name}"
    r = requests.put(url + f"/datastore/image?image={image_id}", files={"file": (filename, content)})
    assert r.ok, r.text[:300]
    try:
        _assert_refused(_click(url, f"image={image_id}"), fragment)
    finally:
        assert requests.delete(url + "/datastore/image", params={"id": image_id}).ok
    assert image_id not in requests.get(url + "/datastore/?output=all").json()["objects"]
    _good_click(url, studies)


def test_volume_with_some_nan_voxels_is_segmented(server):
    url = server["url"]
    r = requests.put(url + "/session/", files={"files": ("some_nan.nii.gz", _nifti(SOME_NAN))})
    session_id = r.json()["session_id"]
    params = json.dumps({"foreground": [[12, 12, 5]], "background": [], "client_id": "nan"})
    r = requests.post(url + f"/infer/limnet?session_id={session_id}&output=json", data={"params": params}, timeout=300)
    assert r.status_code == 200, r.text[:300]


@pytest.mark.parametrize("extension", ["/etc/passwd", ".nii.gz/../../../x", "..\\..\\x.nrrd", ".nrrd\x00.py",
                                       "../.nrrd", ".NRRD", " .nrrd"])
def test_path_like_result_extension_is_refused(server, studies, extension):
    params = {"foreground": [[1, 2, 3]], "background": [], "result_extension": extension}
    r = requests.post(server["url"] + "/infer/limnet?image=blob&output=json", data={"params": json.dumps(params)})
    _assert_refused(r, "result_extension")


def test_huge_names_are_refused(server, studies, tmp_path):
    url = server["url"]
    for label in ("x" * 129, "y" * 1_000_000):
        params = {"foreground": [[1, 2, 3]], "background": [], "label": label}
        r = requests.post(url + "/infer/limnet?image=blob&output=json", data={"params": json.dumps(params)})
        _assert_refused(r, "label must be a name of at most 128 characters")
    label_file = tmp_path / "l.nii.gz"
    label_file.write_bytes(_nifti(np.zeros((4, 4, 4), np.uint8)))
    r = requests.put(url + "/datastore/label", params={"image": "blob", "tag": "t" * 10_000},
                     files={"label": ("l.nii.gz", label_file.read_bytes())})
    _assert_refused(r, "label tag")
    r = requests.get(url + "/datastore/image", params={"image": "i" * 5000})
    _assert_refused(r, "image id must be a plain name")
    _good_click(url, studies)
