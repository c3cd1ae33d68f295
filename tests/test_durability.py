"""No data loss: a server killed with SIGKILL in the middle of label saves leaves each label as the old or the new
version (never a torn file), restarts with its datastore and labels; a training job that is killed or fails
leaves the served model as it was and clicks answered as before."""

from __future__ import annotations

import errno
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time

import nibabel as nib
import numpy as np
import psutil
import pytest
import requests
from conftest import APP, write_nifti
from load_test import decode
from serverctl import start_server, stop_server

from lib.data.synthetic import generate_case

TRIALS = 3


class Server:
    """A server on a fixed app and studies folder that can be killed and started again."""

    def __init__(self, root) -> None:
        self.root, self.proc, self.url = root, None, None
        self.studies, self.app = str(root / "studies"), str(root / "app")
        self.log = open(root / "server.log", "a+")

    def start(self) -> str:
        self.proc, self.url = start_server(self.app, self.studies, log=self.log, HOME=str(self.root),
                                           MONAI_LABEL_AUTO_UPDATE_SCORING="false")
        return self.url

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)


@pytest.fixture(scope="module")
def durable(tmp_path_factory):
    root = tmp_path_factory.mktemp("durable")
    os.makedirs(root / "studies")
    shutil.copytree(APP, root / "app", ignore=shutil.ignore_patterns("logs", "__pycache__", "*.prev.pt", "limnet.pt"))
    # "big": a volume whose labels are large (11 MB uncompressed), "obj": a small case to train on and click
    write_nifti(str(root / "studies" / "big.nii.gz"), np.zeros((224, 224, 224), np.int16))
    case = generate_case(np.random.default_rng(31), "blob", size=(56, 56), depth=(16, 16))
    write_nifti(str(root / "studies" / "obj.nii.gz"), case.image.astype(np.float32), case.spacing)
    versions = {}
    for name, seed in (("A", 1), ("B", 2)):
        data = np.random.default_rng(seed).integers(0, 5, (224, 224, 224), dtype=np.uint8)
        path = str(root / f"label_{name}.nii")
        nib.save(nib.Nifti1Image(data, np.eye(4)), path)
        versions[name] = (path, data)
    server = Server(root)
    yield {"server": server, "versions": versions, "case": case, "root": root}
    if server.proc is not None and server.proc.poll() is None:
        stop_server(server.proc)


def _save(url: str, image: str, path: str, tag: str = "final", timeout: float = 120) -> requests.Response:
    with open(path, "rb") as f:
        return requests.put(f"{url}/datastore/label", params={"image": image, "tag": tag},
                            files={"label": (os.path.basename(path), f)}, timeout=timeout)


def _which_version(path: str, versions: dict) -> str:
    data = np.asarray(nib.load(path).dataobj)  # a torn file fails to load or differs from both
    for name, (_, expected) in versions.items():
        if data.shape == expected.shape and np.array_equal(data, expected):
            return name
    raise AssertionError(f"{path} is neither the old nor the new label")


def _kill_during_saves(server: Server, versions: dict, folder: str, triggered: bool) -> None:
    """Save B, A, B, ... continuously; SIGKILL the server either the moment a save starts writing (a temporary
    file appears or the label file changes) plus a random few ms, or at a random moment."""
    dest = os.path.join(folder, "big.nii")
    before = os.stat(dest)
    stop = threading.Event()

    def saver() -> None:
        names = ["B", "A"]
        i = 0
        while not stop.is_set():
            try:
                _save(server.url, "big", versions[names[i % 2]][0])
            except requests.RequestException:
                return
            i += 1

    t = threading.Thread(target=saver, daemon=True)
    t.start()
    if triggered:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            names = os.listdir(folder)
            if any(n.startswith(".saving-") for n in names):
                break
            st = os.stat(dest) if "big.nii" in names else None
            if st is None or (st.st_ino, st.st_size, st.st_mtime_ns) != (before.st_ino, before.st_size, before.st_mtime_ns):
                break
            time.sleep(0.0005)
        time.sleep(random.uniform(0, 0.003))
    else:
        time.sleep(random.uniform(0.2, 2.0))
    server.kill()
    stop.set()
    t.join(30)


def test_sigkill_during_label_saves_keeps_old_or_new(durable):
    server, versions = durable["server"], durable["versions"]
    folder = os.path.join(server.studies, "labels", "final")
    url = server.start()
    assert _save(url, "big", versions["A"][0]).ok
    seen, torn_temporaries = set(), 0
    for trial in range(TRIALS):
        _kill_during_saves(server, versions, folder, triggered=trial % 2 == 0)
        # on disk, as the killed server left it (a temporary file left behind: the kill hit a save mid-write)
        torn_temporaries += len([f for f in os.listdir(folder) if f.startswith(".saving-")])
        seen.add(_which_version(os.path.join(folder, "big.nii"), versions))
        for kept in glob.glob(os.path.join(folder, ".history", "*big.nii")):
            _which_version(kept, versions)
        json.load(open(os.path.join(server.studies, "datastore_v2.json")))  # never half written
        url = server.start()
        objects = requests.get(url + "/datastore/?output=all").json()["objects"]
        assert {"big", "obj"} <= set(objects) and "final" in objects["big"]["labels"], objects.keys()
        r = requests.get(url + "/datastore/label", params={"label": "big", "tag": "final"})
        assert r.ok and r.content == open(os.path.join(folder, "big.nii"), "rb").read()
        assert not [f for f in os.listdir(folder) if f.startswith(".saving-")], "leftovers removed at start"
    print(f"versions found after the kills: {sorted(seen)}; saves cut mid-write: {torn_temporaries}")


def _train_process(server: Server):
    for child in psutil.Process(server.proc.pid).children(recursive=True):
        try:
            if "-m" in child.cmdline() and "train" in child.cmdline():
                return child
        except psutil.NoSuchProcess:
            pass
    return None


def _wait_train_end(url: str, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = requests.get(url + "/train/")
        if r.ok and r.json()["status"] not in ("SUBMITTED", "RUNNING"):
            return r.json()
        time.sleep(1)
    raise AssertionError("training did not end")


def _obj_click(url: str, case) -> np.ndarray:
    k = int(np.argmax(case.label.sum((0, 1))))
    xs, ys = np.nonzero(case.label[:, :, k])
    params = {"foreground": [[int(xs[len(xs) // 2]), int(ys[len(ys) // 2]), k]], "background": [],
              "client_id": "durable", "reset_state": True}
    r = requests.post(url + "/infer/limnet?image=obj&output=image", data={"params": json.dumps(params)}, timeout=300)
    assert r.status_code == 200, r.text[:300]
    return decode(r.content, ".nrrd")


def _model_files(server: Server) -> dict:
    folder = os.path.join(server.app, "model")
    return {f: open(os.path.join(folder, f), "rb").read() for f in os.listdir(folder) if f.endswith(".pt")}


def test_killed_or_failing_training_leaves_the_served_model(durable, tmp_path):
    server, case = durable["server"], durable["case"]
    url = server.url if server.proc is not None and server.proc.poll() is None else server.start()
    label = str(tmp_path / "obj_label.nii.gz")
    write_nifti(label, case.label.astype(np.uint8), case.spacing)
    assert _save(url, "obj", label).ok
    before, model = _obj_click(url, case), _model_files(server)

    # killed: SIGKILL the training subprocess once it is training (its stats file is written after the
    # validation before training), at a random moment after that
    stats = os.path.join(server.app, "model", "limnet_train_stats.json")
    r = requests.post(url + "/train/limnet", json={"max_epochs": 5, "steps_per_epoch": 200, "val_rounds": 1})
    assert r.ok, r.text[:300]
    deadline = time.time() + 300
    while time.time() < deadline and not (os.path.exists(stats) and _train_process(server)):
        time.sleep(0.5)
    proc = _train_process(server)
    assert proc is not None, "the training subprocess was not seen"
    time.sleep(random.uniform(0, 3))
    proc.kill()
    assert _wait_train_end(url)["status"] == "ERROR"
    assert _model_files(server) == model
    assert np.array_equal(_obj_click(url, case), before), "the same model answers the same click the same way"

    # failing: a request the trainer cannot use
    r = requests.post(url + "/train/limnet", json={"max_epochs": "many"})
    assert r.ok, r.text[:300]  # not 429: the killed job does not count as running
    assert _wait_train_end(url)["status"] == "ERROR"
    assert _model_files(server) == model
    assert np.array_equal(_obj_click(url, case), before)
    assert server.proc.poll() is None


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs: a disk that really fills (ENOSPC), where mounting is allowed (root; CI runs as root)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(path) -> None:
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC


def test_full_disk_refuses_a_save_with_507_and_keeps_the_label(small_disk, tmp_path):
    """A save onto a full disk answers 507 with a message (not a bare 500); the label saved before is unchanged,
    no temporary file or history entry is left, the server keeps answering, and once there is room the save works."""
    studies = small_disk / "studies"
    studies.mkdir()
    case = generate_case(np.random.default_rng(41), "blob", size=(64, 64), depth=(16, 16))
    write_nifti(str(studies / "obj.nii.gz"), case.image.astype(np.int16), case.spacing)
    versions = {}
    for name, seed in (("A", 1), ("B", 2)):  # noise: it does not compress, so B cannot fit into a full disk
        data = np.random.default_rng(seed).integers(0, 5, case.image.shape, dtype=np.uint8)
        versions[name] = (str(tmp_path / f"label_{name}.nii.gz"), data)
        nib.save(nib.Nifti1Image(data, np.eye(4)), versions[name][0])
    app = tmp_path / "app"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("logs", "__pycache__", "*.prev.pt"))
    with open(tmp_path / "server.log", "w") as log:
        proc, url = start_server(str(app), str(studies), log=log, HOME=str(tmp_path))
    try:
        assert _save(url, "obj", versions["A"][0]).status_code == 200
        label = studies / "labels" / "final" / "obj.nii.gz"
        history = studies / "labels" / "final" / ".history"
        _fill(small_disk / "filler")
        r = _save(url, "obj", versions["B"][0])
        assert r.status_code == 507, (r.status_code, r.text[:300])
        assert "disk is full" in r.json()["detail"]
        assert _which_version(str(label), versions) == "A"
        leftovers = [f for d in (studies, label.parent) for f in os.listdir(d) if f.startswith(".")]
        assert sorted(leftovers) == [".history", ".lock"] or sorted(leftovers) == [".lock"], leftovers
        assert not os.path.isdir(history) or not os.listdir(history), "a refused save adds no history entry"
        click = [int(v) for v in np.argwhere(case.label).mean(0)]
        r = requests.post(f"{url}/infer/limnet?image=obj&output=json",
                          data={"params": json.dumps({"foreground": [click], "background": []})}, timeout=120)
        assert r.status_code == 200, r.text[:300]
        listed = requests.get(f"{url}/datastore/?output=all", timeout=30).json()
        assert listed["objects"]["obj"]["labels"]["final"]["info"]["name"] == "obj.nii.gz"
        os.remove(small_disk / "filler")
        assert _save(url, "obj", versions["B"][0]).status_code == 200
        assert _which_version(str(label), versions) == "B"
        assert [_which_version(str(history / f), versions) for f in os.listdir(history)] == ["A"]
    finally:
        stop_server(proc)


def test_a_save_whose_index_write_fails_puts_the_label_back(tmp_path, monkeypatch):
    """The label file is replaced first, the datastore's index second: when the second step fails (a full disk),
    the save is undone, so the 507's "what was saved before is unchanged" holds for the file and the index."""
    from lib.datastore import SafeLocalDatastore

    studies = tmp_path / "studies"
    studies.mkdir()
    write_nifti(str(studies / "obj.nii.gz"), np.zeros((8, 8, 4), np.int16))
    versions = {}
    for name, seed in (("A", 1), ("B", 2)):
        data = np.random.default_rng(seed).integers(0, 5, (8, 8, 4), dtype=np.uint8)
        versions[name] = (str(tmp_path / f"label_{name}.nii.gz"), data)
        nib.save(nib.Nifti1Image(data, np.eye(4)), versions[name][0])
    ds = SafeLocalDatastore(str(studies), extensions=("*.nii.gz", "*.nii"), auto_reload=False)
    ds.save_label("obj", versions["A"][0], "final", {"by": "first"})
    label = studies / "labels" / "final" / "obj.nii.gz"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ds, "_update_datastore_file", full)
    with pytest.raises(OSError):
        ds.save_label("obj", versions["B"][0], "final", {"by": "second"})
    assert _which_version(str(label), versions) == "A"
    assert not os.listdir(label.parent / ".history")
    assert ds.get_label_info("obj", "final")["by"] == "first"
    monkeypatch.undo()
    with pytest.raises(OSError):  # a first label whose index write fails is removed again
        monkeypatch.setattr(ds, "_update_datastore_file", full)
        ds.save_label("obj", versions["B"][0], "other", {})
    assert not (studies / "labels" / "other" / "obj.nii.gz").exists()
    assert "other" not in ds.get_labels_by_image_id("obj")
