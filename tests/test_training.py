"""Retraining through the REST API: save labels for two cases, train one short epoch on the CPU, and the served
model follows what the trainer published while clicks are still answered."""

from __future__ import annotations

import os
import time

import numpy as np
import requests
from conftest import write_nifti
from monailabel.client import MONAILabelClient


def test_save_labels_train_and_serve(server, studies, tmp_path):
    client = MONAILabelClient(server["url"])
    for name in ("blob", "touching"):
        case = studies[name]
        path = str(tmp_path / f"{name}_label.nii.gz")
        write_nifti(path, case.label.astype(np.uint8), case.spacing)
        client.save_label(name, path, tag="final")
    ds = client.datastore()
    assert sum(1 for o in ds["objects"].values() if "final" in o["labels"]) == 2

    model_dir = os.path.join(server["app_dir"], "model")
    served = os.path.join(model_dir, "limnet.pt")
    before = open(served, "rb").read() if os.path.exists(served) else None
    client.train_start("limnet", {"max_epochs": 1, "steps_per_epoch": 4, "val_rounds": 2, "val_split": 0.5})
    deadline = time.time() + 900
    while time.time() < deadline and client.train_status()["status"] not in ("DONE", "ERROR"):
        time.sleep(3)
    status = client.train_status()
    assert status["status"] == "DONE", status
    stats = requests.get(server["url"] + "/info/").json()["train_stats"]["limnet"]
    assert stats["val_objects"] >= 1 and len(stats["epochs"]) == 1
    assert 0.0 <= stats["val_dice_before"] <= 1.0
    # published exactly when validation Dice did not fall; the served file follows
    assert stats["published"] == (stats["epochs"][0]["val_dice"] >= stats["val_dice_before"])
    after = open(served, "rb").read() if os.path.exists(served) else None
    assert (after is not None and after != before) == stats["published"]
    if stats["published"] and before is not None:
        assert open(os.path.join(model_dir, "limnet.prev.pt"), "rb").read() == before, "the previous weights are kept"

    case = studies["blob"]
    k = int(np.argmax(case.label.sum((0, 1))))
    xs, ys = np.nonzero(case.label[:, :, k])
    path, meta = client.infer("limnet", "blob", {"foreground": [[int(xs[0]), int(ys[0]), k]], "background": [],
                                                 "client_id": "after-train", "reset_state": True})
    assert os.path.exists(path)

    # the previous weights can be restored without a restart (scripts/restore_model.py)
    from restore_model import restore

    if stats["published"]:
        now = restore(server["app_dir"], base=before is None)
        if before is None:
            assert not os.path.exists(served) and now.endswith("pretrained_limnet.pt")
        else:
            assert open(served, "rb").read() == before
        path, meta = client.infer("limnet", "blob", {"foreground": [[int(xs[0]), int(ys[0]), k]], "background": [],
                                                     "client_id": "after-restore", "reset_state": True})
        assert os.path.exists(path)
