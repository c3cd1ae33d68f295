"""The memory model's deep sensory update (weights files with and without it, and that training reaches it) and the
second memory model for volumes not read as a CT (stored, chosen per volume, trained by its own stage)."""

from __future__ import annotations

import os

import numpy as np
import torch
from conftest import anchor_probs, capsule_volume, weights_path

from lib.engine.geometry import Box
from lib.engine.propagation import SliceFeatures, propagate
from lib.net.bundle import WORKING_SIZE, LimNet
from lib.training.stages import memory_sequence_loss


def _propagate(net: LimNet, image: np.ndarray, label: np.ndarray) -> dict[int, torch.Tensor]:
    box = Box.of_mask(label.any(2), 1.5, 32)
    feats = SliceFeatures(net.memory, image, box, WORKING_SIZE, torch.device("cpu"))
    return propagate(net.memory, feats, anchor_probs(label, box, [27]))


def test_weights_without_the_deep_update_load_without_it_and_keep_their_answers(net, tmp_path):
    """A weights file without the deep update (the committed one, or an existing install's) must propagate
    exactly as it did: the update is left out, not added with fresh weights."""
    image, label = capsule_volume()
    before = _propagate(net, image, label)
    path = str(tmp_path / "w.pt")
    net.save(path)
    old = LimNet.load(path)
    assert old.memory.deep_update is None
    after = _propagate(old, image, label)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)

    old.memory.add_deep_update()  # what `scripts/train.py --deep-update` does before fine-tuning
    old.save(path)
    new = LimNet.load(path)
    assert new.memory.deep_update is not None
    assert set(new.state_dict()) == set(old.state_dict())
    # it starts near "keep the sensory state", so the fine-tune starts from the old answers
    fresh = _propagate(new, image, label)
    assert set(fresh) & set(before)
    agree = [((fresh[k] > 0.5) == (before[k] > 0.5)).float().mean().item() for k in set(fresh) & set(before)]
    assert min(agree) > 0.95


def test_memory_training_reaches_the_deep_update():
    net = LimNet.load(weights_path())  # not the shared fixture: this one is changed and trained
    net.memory.add_deep_update()
    memory = net.memory.train()
    image, label = capsule_volume()
    frames = torch.from_numpy(np.stack([np.stack([image[:, :, k - 1], image[:, :, k], image[:, :, k + 1]])
                                        for k in range(25, 29)]))[None]
    masks = torch.from_numpy(label[:, :, 25:29].transpose(2, 0, 1).astype(np.float32))[None, :, None]
    loss = memory_sequence_loss(memory, frames, masks, masks[:, 0])
    loss.backward()
    grads = [p.grad for p in memory.deep_update.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_affinity_readout_is_the_softmax_over_memory_of_negative_squared_distance():
    """The readout is XMem's: each query pixel reads the memory values weighted by a soft-max over memory tokens of
    -|q - k|^2 / sqrt(Ck); usage is each token's summed weight. Checked against that formula written out."""
    from lib.net.memory import affinity_readout

    g = torch.Generator().manual_seed(0)
    q, mk, mv = torch.randn(2, 8, 30, generator=g), torch.randn(2, 8, 50, generator=g), torch.randn(2, 5, 50, generator=g)
    dist = ((q[:, :, None, :] - mk[:, :, :, None]) ** 2).sum(1)  # B x M x N
    weights = torch.softmax(-dist / np.sqrt(8), dim=1)
    readout, usage = affinity_readout(q, mk, mv)
    assert readout.shape == (2, 5, 30) and usage.shape == (2, 50)
    assert torch.allclose(readout, torch.einsum("bcm,bmn->bcn", mv, weights), atol=1e-5)
    assert torch.allclose(usage, weights.sum(2), atol=1e-5)


def test_mr_memory_model_round_trips_and_is_chosen_for_volumes_not_read_as_ct(net, tmp_path):
    """`LimNet.memory_mr` (`train.py --stage memory_mr`): saved and loaded with the weights, it propagates the volumes
    not read as a CT, the first memory model the CTs; weights without it propagate everything with the first."""
    path = str(tmp_path / "w.pt")
    plain = LimNet.load(weights_path())
    plain.memory_mr = None
    plain.save(path)
    assert LimNet.load(path).memory_mr is None
    assert LimNet.load(path).memory_for(False) is not None
    with_mr = LimNet.load(path)
    with_mr.add_memory_mr()
    with torch.no_grad():
        for p in with_mr.memory_mr.parameters():
            p.add_(0.01)
    with_mr.save(path)
    back = LimNet.load(path)
    assert back.memory_mr is not None
    stored = [(a, b) for a, b in zip(back.memory_mr.state_dict().values(), with_mr.memory_mr.state_dict().values())
              if b.is_floating_point()]
    assert all(torch.equal(a, b.half().float()) for a, b in stored)  # as written: fp16
    assert not torch.equal(next(back.memory_mr.parameters()), next(back.memory.parameters()))
    assert back.memory_for(True) is back.memory and back.memory_for(False) is back.memory_mr


def test_segmenter_propagates_an_mr_with_the_mr_memory_model_and_a_ct_with_the_first():
    from lib.engine.denoise import looks_like_ct
    from lib.engine.segmenter import LimNetSegmenter

    net = LimNet.load(weights_path())  # not the shared fixture: its memory models are watched
    net.add_memory_mr()
    calls = []
    for name in ("memory", "memory_mr"):
        module = getattr(net, name)
        encode = module.encode_value
        module.encode_value = lambda *a, _e=encode, _n=name: calls.append(_n) or _e(*a)
    image, label = capsule_volume()
    click = [(48, 44, 27)]
    mr = image * 1000.0  # an MR's intensities: none negative
    ct = (image - np.percentile(image, 1)) * 1400.0 - 1000.0  # Hounsfield units: its darkest voxels air
    assert looks_like_ct(ct) and not looks_like_ct(mr)
    for volume, want, switch in ((mr, "memory_mr", True), (ct, "memory", True), (mr, "memory", False)):
        seg = LimNetSegmenter(net, "cpu", use_fusion=False, mr_memory=switch)
        state = seg.new_state(volume)
        calls.clear()
        assert seg.add_clicks(state, click, []).any()
        assert calls and set(calls) == {want}, (want, switch, set(calls))


def test_train_memory_mr_stage_adds_the_mr_model_and_keeps_the_rest(tmp_path):
    """`train.py --stage memory_mr` fine-tunes a copy of the memory model into `memory_mr` and leaves every other
    tensor and the weights' provenance as they were."""
    import shutil
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "w.pt"
    shutil.copy(weights_path(), out)
    before = torch.load(out, weights_only=True)
    cmd = [sys.executable, os.path.join(root, "scripts", "train.py"), "--stage", "memory_mr", "--steps-memory-mr", "2",
           "--pool-mr", "2", "--no-real", "--threads", "1", "--workdir", str(tmp_path / "work"), "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=root)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    after = torch.load(out, weights_only=True)
    old, new = before["state_dict"], after["state_dict"]
    assert all(torch.equal(v, new[k]) for k, v in old.items() if not k.startswith("memory_mr."))
    mr = {k[len("memory_mr."):]: v for k, v in new.items() if k.startswith("memory_mr.")}
    assert set(mr) == {k[len("memory."):] for k in new if k.startswith("memory.")}
    start = {k: old.get("memory_mr." + k, old["memory." + k]) for k in mr}  # a copy of the first, where none was
    assert any(not torch.equal(v, start[k]) for k, v in mr.items())  # it trained
    assert {k: v for k, v in after["meta"].items() if k != "memory_mr"} == {
        k: v for k, v in before["meta"].items() if k != "memory_mr"}
    assert "2 steps" in after["meta"]["memory_mr"]
