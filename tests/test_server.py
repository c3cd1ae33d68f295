"""The app through the real server on loopback, driven by monailabel.client (the wire code Slicer's plugin shares)."""

from __future__ import annotations

import json

import nibabel as nib
import nrrd
import numpy as np
import pytest
import requests
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

from lib.data.robot import dice, next_click


def test_info_lists_the_app(server):
    info = requests.get(server["url"] + "/info/").json()
    model = info["models"]["limnet"]
    assert model["type"] == "deepgrow" and model["dimension"] == 3
    assert "limnet" in info["trainers"]
    assert {"random", "first"} <= set(info["strategies"])
    assert "config" not in info  # Slicer refuses a server whose /info has a top-level config key


def _robot_rounds(client, image_id, gt, rounds, spacing, **extra):
    fg, bg, scores, shapes = [], [], [], []
    pred = np.zeros(gt.shape, bool)
    for _ in range(rounds):
        (idx, positive) = next_click(pred, gt, spacing)
        (fg if positive else bg).append(list(idx))
        params = {"foreground": fg, "background": bg, "label": "target", **extra}
        path, meta = client.infer("limnet", image_id, params)
        if path.endswith(".nrrd"):
            pred, _ = nrrd.read(path)
        else:
            pred = np.asarray(nib.load(path).dataobj)
        shapes.append(pred.shape)
        pred = pred > 0
        assert meta["label_names"] == {"target": 1}
        scores.append(dice(pred, gt))
    return scores, shapes


def test_robot_rounds_on_real_unseen_volume(server, studies):
    """Three robot clicks on a real chest CT with a lung tumour (pyradiomics' lung2, 5 mm slices; never used in
    training): masks of the image's shape and Dice of at least 0.5 after the third click."""
    client = MONAILabelClient(server["url"])
    case = studies["lung2"]
    scores, shapes = _robot_rounds(client, "lung2", case.label.astype(bool), 3, case.spacing, client_id="real")
    assert all(s == case.image.shape for s in shapes)
    assert scores[-1] >= 0.5, scores


def test_a_volume_stored_with_its_thick_axis_first_is_read_across_it(server, studies):
    """The same real CT stored with its 5 mm axis first (a NIfTI reoriented from a sagittal acquisition): the server
    propagates across the thick axis (`SliceAxis`), so the robot's clicks find the tumour as on the axial copy, and
    answers keep the stored shape. Read along the stored last axis, slices of 5:1 pixels, the same clicks gave Dice
    0.10 / 0.56 / 0.73 (0.88 / 0.88 / 0.89 across the thick axis, measured in process, 2026-12-07)."""
    client = MONAILabelClient(server["url"])
    case = studies["lung2_sagittal"]
    assert case.image.shape[0] < case.image.shape[2], "the thick axis is the first"
    scores, shapes = _robot_rounds(client, "lung2_sagittal", case.label.astype(bool), 3, case.spacing,
                                   client_id="sagittal")
    assert all(s == case.image.shape for s in shapes)
    assert scores[0] >= 0.7 and scores[-1] >= 0.8, scores


def _click_inside(case) -> tuple:
    """The case and a voxel of its label on the slice where the label is largest."""
    k = int(np.argmax(case.label.sum((0, 1))))
    xs, ys = np.nonzero(case.label[:, :, k])
    return case, [int(xs[len(xs) // 2]), int(ys[len(ys) // 2]), k]


def test_nifti_result_keeps_image_geometry(server, studies):
    client = MONAILabelClient(server["url"])
    case, click = _click_inside(studies["blob"])
    path, meta = client.infer("limnet", "blob", {"foreground": [click], "background": [], "client_id": "geom",
                                                 "result_extension": ".nii.gz", "reset_state": True})
    out = nib.load(path)
    src = nib.load(studies["folder"] + "/blob.nii.gz")
    assert out.shape == src.shape
    np.testing.assert_allclose(out.affine, src.affine, atol=1e-4)
    pred = np.asarray(out.dataobj) > 0
    assert pred[tuple(click)], "a positive click is honoured on its own slice"
    assert pred[:, :, click[2]].any()


def test_rounds_on_generated_volume_improve(server, studies):
    client = MONAILabelClient(server["url"])
    case = studies["blob"]
    scores, _ = _robot_rounds(client, "blob", case.label.astype(bool), 3, case.spacing, client_id="gen")
    assert scores[-1] >= 0.6, scores
    assert scores[-1] >= scores[0] - 0.01, scores


def test_clicks_taken_back_return_the_round_before(server, studies):
    """Undo through REST, as Slicer sends it after a point is deleted: the remaining clicks return the round the user
    saw with them, bit for bit (before: a new interaction computed all of them at once, round 1); the same clicks
    again return the same answer; a new click after the deletion goes on from the restored round."""
    client = MONAILabelClient(server["url"])
    case = studies["blob"]
    gt = case.label.astype(bool)
    fg, bg, masks, sent = [], [], [np.zeros(gt.shape, bool)], []
    for _ in range(3):
        idx, positive = next_click(masks[-1], gt, case.spacing)
        (fg if positive else bg).append(list(idx))
        sent.append({"foreground": list(fg), "background": list(bg), "label": "target", "client_id": "undo",
                     "reset_state": not sent})
        path, meta = client.infer("limnet", "blob", sent[-1])
        masks.append(nrrd.read(path)[0] > 0)
    assert meta["round"] == 3 and not np.array_equal(masks[2], masks[3])
    for _ in range(2):  # the third click deleted; and the same request again
        path, meta = client.infer("limnet", "blob", sent[1])
        assert meta["round"] == 2 and np.array_equal(nrrd.read(path)[0] > 0, masks[2])
    path, meta = client.infer("limnet", "blob", sent[2])  # clicked again: a new third round from the second
    assert meta["round"] == 3 and dice(nrrd.read(path)[0] > 0, masks[3]) > 0.95


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({"foreground": [[10_000, 0, 0]], "background": []}, "outside"),
        ({"foreground": [[-1, 0, 0]], "background": []}, "outside"),
        ({"foreground": [[1.5, 2, 3]], "background": []}, "integer"),
        ({"foreground": [[1, 2]], "background": []}, "[i, j, k]"),
        ({"foreground": [], "background": []}, "at least one click"),
        ({"foreground": "1,2,3"}, "must be a list"),
        ({"foreground": [[1, 2, 3]], "result_extension": "../../x.py"}, "result_extension"),
        ({"foreground": [[1, 2, 3]], "label": "a" * 1000}, "label"),
    ],
)
def test_bad_clicks_get_4xx_and_server_keeps_serving(server, params, fragment):
    r = requests.post(server["url"] + "/infer/limnet?image=blob&output=json", data={"params": json.dumps(params)})
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    assert fragment in r.json()["detail"]
    assert requests.get(server["url"] + "/info/").ok


def test_unknown_image_is_an_error(server):
    client = MONAILabelClient(server["url"])
    with pytest.raises(MONAILabelClientException):
        client.infer("limnet", "no_such_image", {"foreground": [[1, 2, 3]], "background": []})
    assert requests.get(server["url"] + "/info/").ok


def test_malformed_params_and_unknown_model_are_client_errors(server):
    url = server["url"]
    r = requests.post(url + "/infer/limnet?image=blob&output=json", data={"params": "{not json"})
    assert r.status_code == 422 and "JSON" in r.json()["detail"]
    r = requests.post(url + "/infer/nosuchmodel?image=blob&output=json", data={"params": "{}"})
    assert 400 <= r.status_code < 500, r.text[:300]
    r = requests.post(url + "/infer/limnet?image=nosuchimage&output=json", data={"params": '{"foreground": [[1,2,3]]}'})
    assert r.status_code == 404, r.text[:300]
    assert requests.get(url + "/info/").ok


@pytest.mark.parametrize("strategy", ["random", "first", "limnet_uncertainty"])
def test_every_strategy_returns_an_unlabelled_image(server, strategy):
    client = MONAILabelClient(server["url"])
    ds = client.datastore()
    unlabelled = {k for k, o in ds["objects"].items() if "final" not in o["labels"]}
    sample = client.next_sample(strategy, {})
    assert sample["id"] in unlabelled


def test_ohif_bundle_is_served_file_by_file(server):
    import os

    import monailabel

    root = os.path.join(os.path.dirname(monailabel.__file__), "endpoints", "static", "ohif")
    index = requests.get(server["url"] + "/ohif/")
    assert index.ok and "<html" in index.text.lower()
    nested = []
    for folder, _, files in os.walk(root):
        for f in files:
            rel = os.path.relpath(os.path.join(folder, f), root)
            if "/" in rel:
                nested.append(rel)
    assert nested, "the OHIF bundle has files in sub-folders"
    picks = [r for r in sorted(nested) if r.endswith((".js", ".wasm", ".json"))][:4]
    picks += [r for r in sorted(nested) if r.endswith((".svg", ".png"))][:2]
    for rel in picks:
        r = requests.get(server["url"] + "/ohif/" + rel)
        assert r.ok
        with open(os.path.join(root, rel), "rb") as f:
            assert r.content == f.read(), rel
        assert "text/html" not in r.headers["content-type"], (rel, r.headers["content-type"])
    assert requests.get(server["url"] + "/ohif/../../../../etc/passwd").text.lower().count("root:") == 0


def test_label_saves_are_atomic_and_keep_earlier_versions(server, studies, tmp_path):
    import glob
    import os

    from conftest import write_nifti

    client = MONAILabelClient(server["url"])
    case = studies["touching"]
    first, second = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    write_nifti(str(first), case.label.astype(np.uint8), case.spacing)
    write_nifti(str(second), (1 - case.label).astype(np.uint8), case.spacing)
    client.save_label("touching", str(first), tag="draft")
    client.save_label("touching", str(second), tag="draft")
    folder = os.path.join(studies["folder"], "labels", "draft")
    saved = np.asarray(nib.load(os.path.join(folder, "touching.nii.gz")).dataobj)
    assert (saved == 1 - case.label).all()
    history = glob.glob(os.path.join(folder, ".history", "*touching.nii.gz"))
    assert len(history) == 1 and (np.asarray(nib.load(history[0]).dataobj) == case.label).all()
    assert not glob.glob(os.path.join(folder, ".saving-*"))
    # a tag that is a path is refused, and nothing is written outside the studies folder
    r = requests.put(server["url"] + "/datastore/label?image=touching&tag=../../escape",
                     files={"label": ("l.nii.gz", open(first, "rb"))})
    assert 400 <= r.status_code < 500, r.text[:300]
    assert not os.path.exists(os.path.join(os.path.dirname(studies["folder"]), "escape"))


def test_follow_object_is_a_per_request_option(server, studies):
    """Slicer shows an infer task's config as options and sends them back with the clicks: `follow_object` (off by
    default) is listed, and a request that turns it on is answered like any other."""
    model = requests.get(server["url"] + "/info/").json()["models"]["limnet"]
    assert model["config"]["follow_object"] is False
    client = MONAILabelClient(server["url"])
    case, click = _click_inside(studies["blob"])
    path, meta = client.infer("limnet", "blob", {"foreground": [click], "background": [], "client_id": "follow",
                                                 "follow_object": True, "reset_state": True})
    pred, _ = nrrd.read(path)
    assert pred[tuple(click)] > 0 and dice(pred > 0, case.label.astype(bool)) > 0.5


def test_stop_at_blur_is_a_per_request_option(server, studies):
    """`stop_at_blur` (on by default: a sweep ends where the memory model's answer blurs) is listed with the task's
    options, and a request that turns it off is answered, as is the same click sent again with it on (the option is
    part of the round's settings, `test_a_round_may_turn_the_blur_stop_off`)."""
    model = requests.get(server["url"] + "/info/").json()["models"]["limnet"]
    assert model["config"]["stop_at_blur"] is True
    client = MONAILabelClient(server["url"])
    case, click = _click_inside(studies["blob"])
    params = {"foreground": [click], "background": [], "client_id": "blur", "reset_state": True,
              "stop_at_blur": False}
    path, meta = client.infer("limnet", "blob", params)
    pred, _ = nrrd.read(path)
    assert pred[tuple(click)] > 0 and dice(pred > 0, case.label.astype(bool)) > 0.5
    path, meta = client.infer("limnet", "blob", {**params, "reset_state": False, "stop_at_blur": True})
    assert meta["round"] == 1 and nrrd.read(path)[0][tuple(click)] > 0


def test_use_refiner_is_a_per_request_option(server, studies):
    """`use_refiner` (on by default: a later click is answered reading the last mask on its slice) is listed with
    the task's options; a later round asked without it is answered from the clicks alone, and the same clicks sent
    again with it on are computed afresh (the option is part of the round's settings,
    `test_a_round_may_turn_the_refiner_off`)."""
    model = requests.get(server["url"] + "/info/").json()["models"]["limnet"]
    assert model["config"]["use_refiner"] is True
    client = MONAILabelClient(server["url"])
    case, click = _click_inside(studies["blob"])
    first = {"foreground": [click], "background": [], "client_id": "refiner", "reset_state": True}
    client.infer("limnet", "blob", first)
    gt = case.label.astype(bool)
    inside = np.argwhere(gt[:, :, click[2]])
    second = [int(v) for v in inside[len(inside) // 3]] + [click[2]]
    later = {**first, "foreground": [click, second], "reset_state": False, "use_refiner": False}
    path, meta = client.infer("limnet", "blob", later)
    assert meta["round"] == 2 and nrrd.read(path)[0][tuple(second)] > 0
    path, meta = client.infer("limnet", "blob", {**later, "use_refiner": True})
    assert meta["round"] == 1 and nrrd.read(path)[0][tuple(second)] > 0  # afresh: both clicks in one round


def test_a_float_image_is_scaled_whole_after_its_first_answer(server, studies):
    """A float32 study is answered before it is scaled whole (`ScaledVolume`); the scaling to float16 follows in the
    background, and the next rounds, read from the scaled copy, go on as before: the same clicks again give the
    same answer, and a further click gives a new round."""
    import time

    client = MONAILabelClient(server["url"])
    case = studies["touching"]
    assert nib.load(studies["folder"] + "/touching.nii.gz").get_data_dtype() == np.float32
    gt = case.label.astype(bool)
    idx, _ = next_click(np.zeros(gt.shape, bool), gt, case.spacing)
    first = {"foreground": [list(idx)], "background": [], "client_id": "settle", "reset_state": True}
    path, meta = client.infer("limnet", "touching", first)
    answer = nrrd.read(path)[0] > 0
    deadline = time.time() + 60
    while time.time() < deadline and "touching.nii.gz (" not in _scaled_lines(server["log"].name):
        time.sleep(0.5)
    assert "touching.nii.gz (" in _scaled_lines(server["log"].name), "the float image was scaled whole"
    path, meta = client.infer("limnet", "touching", {**first, "reset_state": False})
    assert meta["round"] == 1 and np.array_equal(nrrd.read(path)[0] > 0, answer)
    path, meta = client.infer("limnet", "touching", {**first, "reset_state": True})  # afresh, on the scaled copy
    assert meta["round"] == 1 and np.array_equal(nrrd.read(path)[0] > 0, answer)
    nxt, positive = next_click(answer, gt, case.spacing)
    more = {**first, "reset_state": False, ("foreground" if positive else "background"): (
        first["foreground"] + [list(nxt)] if positive else [list(nxt)])}
    path, meta = client.infer("limnet", "touching", more)
    assert meta["round"] == 2


def _scaled_lines(log_path: str) -> str:
    with open(log_path, errors="replace") as f:
        return "\n".join(line for line in f if "scaled to float16" in line)
