"""3D Slicer's MONAI Label plugin, replayed call by call with monailabel.client (the plugin's own wire code):
/info, next sample, clicks on a datastore image (NRRD, the plugin's default), a local volume uploaded as a session
and segmented with session_id, the label saved back, training started and its status read."""

from __future__ import annotations

import time

import nrrd
import numpy as np
from conftest import write_nifti
from monailabel.client import MONAILabelClient


def _click(case):
    k = int(np.argmax(case.label.sum((0, 1))))
    xs, ys = np.nonzero(case.label[:, :, k])
    i = len(xs) // 2
    return [int(xs[i]), int(ys[i]), k]


def test_slicer_session_round_trip(server, studies, tmp_path):
    client = MONAILabelClient(server["url"], client_id="slicer-user")
    info = client.info()
    model = info["models"]["limnet"]
    assert model["type"] in ("deepgrow", "deepedit")  # Slicer treats these as interactive

    sample = client.next_sample("first", {})
    assert sample["id"]

    # Slicer sends the model's /info config values with every click request, plus its own fields
    base = {**model["config"], "label": "object", "result_extension": ".nrrd", "result_dtype": "uint8",
            "client_id": "slicer-user"}
    base.pop("device", None)
    case = studies["blob"]
    click = _click(case)
    path, params = client.infer("limnet", "blob", {**base, "foreground": [click], "background": []})
    seg, header = nrrd.read(path)
    assert seg.shape == case.image.shape and seg.dtype == np.uint8
    assert params["label_names"] == {"object": 1} and seg[tuple(click)] == 1

    # a volume loaded locally in Slicer: uploaded as a session, then inferred with session_id
    local = tmp_path / "local_volume.nii.gz"
    write_nifti(str(local), case.image.astype(np.float32), case.spacing)
    session = client.create_session(str(local))
    session_id = session["session_id"]
    path2, _ = client.infer("limnet", "", {**base, "foreground": [click], "background": [], "reset_state": True},
                            session_id=session_id)
    seg2, _ = nrrd.read(path2)
    assert seg2.shape == case.image.shape and seg2[tuple(click)] == 1

    # the user saves the result as the image's final label; the datastore keeps it
    label_file = tmp_path / "label.nrrd"
    nrrd.write(str(label_file), seg, header)
    client.save_label("blob", str(label_file), tag="final")
    assert "final" in client.datastore()["objects"]["blob"]["labels"]
    client.remove_session(session_id)

    # the Training section: status first (the plugin polls it), then a short run
    assert client.train_status(check_if_running=True) is False
    client.train_start("limnet", {"max_epochs": 1, "steps_per_epoch": 2, "val_rounds": 1})
    deadline = time.time() + 600
    while time.time() < deadline and client.train_status()["status"] not in ("DONE", "ERROR"):
        time.sleep(3)
    assert client.train_status()["status"] in ("DONE", "ERROR")
    assert client.train_status()["status"] == "DONE", client.train_status()
