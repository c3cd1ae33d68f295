"""The memory model's deep sensory update: weights files with and without it, and that training reaches it."""

from __future__ import annotations

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
