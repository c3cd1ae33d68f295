"""No request reads or writes outside the app and studies folders: ids, tags, file names, session ids and model
names with path separators or '..' are refused with 4xx, and the files a traversal would reach are untouched.

Each attack aims at a real NIfTI file outside the studies folder, so a server that followed the path would answer
200 with a segmentation of it (or create, or delete it) and the test would fail."""

from __future__ import annotations

import json
import os

import numpy as np
import psutil
import pytest
import requests
from conftest import write_nifti


@pytest.fixture()
def victim(tmp_path) -> str:
    """A readable volume outside the studies folder."""
    path = str(tmp_path / "victim.nii.gz")
    write_nifti(path, np.random.default_rng(0).random((20, 20, 8)).astype(np.float32))
    return path


def _refused(r: requests.Response) -> None:
    assert 400 <= r.status_code < 500, (r.request.method, r.request.url[:200], r.status_code, r.text[:200])
    assert r.json().get("detail")


def _ids_reaching(target_without_ext: str, folder: str) -> list[str]:
    return [os.path.relpath(target_without_ext, folder), target_without_ext, "..", ".", "a/../../b", "..\\..\\x"]


def test_datastore_upload_cannot_write_outside(server, studies, victim, tmp_path):
    url = server["url"]
    payload = open(victim, "rb").read()
    for route in ("/datastore/image", "/datastore/"):  # the second is 0.8.5's deprecated alias
        for image_id in _ids_reaching(str(tmp_path / "escape"), studies["folder"]):
            _refused(requests.put(url + route, params={"image": image_id}, files={"file": ("x.nii.gz", payload)}))
    assert not [f for f in os.listdir(tmp_path) if f.startswith("escape")]
    assert not os.path.exists(os.path.join(os.path.dirname(studies["folder"]), "escape.nii.gz"))
    # a file name with folders in it is reduced to its base name, inside the studies folder; a non-image is refused
    r = requests.put(url + "/datastore/image", files={"file": ("../../escape_by_name.nii.gz", payload)})
    assert r.ok and r.json()["image"] == "escape_by_name"
    assert os.path.exists(os.path.join(studies["folder"], "escape_by_name.nii.gz"))
    assert requests.delete(url + "/datastore/image", params={"id": "escape_by_name"}).ok
    _refused(requests.put(url + "/datastore/image", params={"image": "script"}, files={"file": ("x.py", b"print(1)")}))
    assert not os.path.exists(os.path.join(studies["folder"], "script.py"))


def test_label_save_cannot_write_outside(server, studies, victim, tmp_path):
    url = server["url"]
    label = {"label": ("l.nii.gz", open(victim, "rb").read())}
    for image_id in _ids_reaching(str(tmp_path / "escape_label"), studies["folder"]):
        _refused(requests.put(url + "/datastore/label", params={"image": image_id, "tag": "final"}, files=label))
    for tag in ("../../escape", "..", "a/b", "/tmp/x", ".hidden"):
        _refused(requests.put(url + "/datastore/label", params={"image": "blob", "tag": tag}, files=label))
    _refused(requests.put(url + "/datastore/label", params={"image": "blob", "tag": "final"},
                          files={"label": ("../../evil.py", b"print(1)")}))
    labels = os.path.join(studies["folder"], "labels")
    written = [os.path.join(d, f) for d, _, fs in os.walk(os.path.dirname(studies["folder"])) for f in fs
               if "escape" in f or f.startswith("evil") or f == "blob.py"]
    assert not written, written
    blob_labels = requests.get(url + "/datastore/?output=all").json()["objects"]["blob"]["labels"]
    assert all(v["ext"] in (".nii.gz", ".nii", ".nrrd") for v in blob_labels.values()), blob_labels
    assert not os.path.exists(os.path.join(labels, "final", "blob.py"))


def test_reads_and_deletes_cannot_leave_the_studies_folder(server, studies, victim):
    url = server["url"]
    for image_id in _ids_reaching(victim[: -len(".nii.gz")], studies["folder"]) + [victim]:
        r = requests.get(url + "/datastore/image", params={"image": image_id})
        _refused(r)
        _refused(requests.delete(url + "/datastore/", params={"id": image_id}))
        _refused(requests.delete(url + "/datastore/image", params={"id": image_id}))
        _refused(requests.get(url + "/datastore/image/info", params={"image": image_id}))
    for tag in ("../..", "../final/../../x"):
        _refused(requests.get(url + "/datastore/label", params={"label": "blob", "tag": tag}))
        _refused(requests.delete(url + "/datastore/label", params={"id": "blob", "tag": tag}))
    assert os.path.exists(victim)
    assert "blob" in requests.get(url + "/datastore/?output=all").json()["objects"]


def test_infer_cannot_read_outside(server, victim):
    url = server["url"]
    params = json.dumps({"foreground": [[10, 10, 4]], "background": [], "client_id": "traversal"})
    cwd_relative = os.path.relpath(victim, os.getcwd())  # the server runs in the tests' working folder
    for image in (victim, cwd_relative, "../" * 12 + victim.lstrip("/"), "README.md", "pyproject.toml"):
        r = requests.post(url + "/infer/limnet", params={"image": image, "output": "json"}, data={"params": params})
        _refused(r)
    r = requests.post(url + "/infer/limnet", params={"image": "blob", "output": "json"},
                      data={"params": json.dumps({"foreground": [[10, 10, 4]], "image": victim})})
    _refused(r)
    assert "may not set 'image'" in r.json()["detail"]


def test_session_ids_cannot_leave_the_sessions_folder(server, victim):
    """A session id of '..' reaches the folder above the sessions; a meta.info placed there points at a file
    outside. Reading it as a session, or deleting that 'session' (shutil.rmtree), must be refused."""
    url = server["url"]
    home = psutil.Process(server["proc"].pid).environ()["HOME"]
    sessions = os.path.join(home, ".cache", "monailabel", "sessions")
    os.makedirs(sessions, exist_ok=True)
    above = os.path.dirname(sessions)
    with open(os.path.join(above, "meta.info"), "w") as f:
        f.write(json.dumps({"name": "..", "path": above, "image": victim, "meta": {}, "create_ts": 0,
                            "last_access_ts": 0, "expiry": 10**9}) + "\n")
    try:
        params = json.dumps({"foreground": [[10, 10, 4]], "background": []})
        for sid in ("..", "../..", "x/../.."):
            _refused(requests.post(url + "/infer/limnet", params={"session_id": sid, "output": "json"},
                                   data={"params": params}))
        for method in ("GET", "DELETE"):
            _refused(requests.request(method, url + "/session/%2E%2E"))
        assert os.path.exists(os.path.join(above, "meta.info")) and os.path.isdir(sessions)
    finally:
        os.remove(os.path.join(above, "meta.info"))


def test_unknown_or_path_like_model_names_are_4xx(server):
    url = server["url"]
    for name in ("%2E%2E", "nosuch", "limnet%2F..%2F.."):
        for method, route in (("GET", "/model/{}"), ("GET", "/model/info/{}"), ("PUT", "/model/{}"),
                              ("DELETE", "/model/{}"), ("POST", "/infer/{}?image=blob"), ("POST", "/train/{}"),
                              ("POST", "/activelearning/{}"), ("POST", "/scoring/{}"), ("POST", "/batch/infer/{}")):
            files = {"file": ("x.pt", b"garbage")} if method == "PUT" else None
            r = requests.request(method, url + route.format(name), files=files, json=None if files else {})
            assert 400 <= r.status_code < 500, (method, route, name, r.status_code, r.text[:200])
    assert requests.get(url + "/train/?check_if_running=true").status_code == 404, "no training was started"


def test_model_upload_must_be_lim_net_weights(server, tmp_path):
    """PUT /model/limnet replaced the served weights with any bytes (every later click failed); now a file that
    does not load as LIM-Net weights is refused and the served model stays as it was."""
    url = server["url"]
    model_dir = os.path.join(server["app_dir"], "model")
    before = {f: open(os.path.join(model_dir, f), "rb").read() for f in os.listdir(model_dir) if f.endswith(".pt")}
    r = requests.put(url + "/model/limnet", files={"file": ("limnet.pt", b"not weights at all")})
    _refused(r)
    after = {f: open(os.path.join(model_dir, f), "rb").read() for f in os.listdir(model_dir) if f.endswith(".pt")}
    assert after == before
    assert not [f for f in os.listdir(model_dir) if f.startswith(".upload-")]
    r = requests.post(url + "/infer/limnet?image=blob&output=json",
                      data={"params": json.dumps({"foreground": [[56, 56, 18]], "reset_state": True})}, timeout=300)
    assert r.status_code == 200, r.text[:300]


def test_ohif_files_cannot_leave_the_bundle(server, tmp_path):
    url = server["url"]
    for path in ("/ohif/../../../../etc/passwd", "/ohif/%2E%2E/%2E%2E/%2E%2E/%2E%2E/etc/passwd",
                 "/ohif/..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd"):
        r = requests.get(url + path)
        assert "root:" not in r.text, path

