"""Training samples: the interaction stage's boxes cover the scale range asked for; the memory stage's sequences run
past the object's end as often as asked, and its loss scores a false mask there by its area when asked; mirrored
samples keep their clicks on the pixels they were made on."""

from __future__ import annotations

import numpy as np
import torch

from lib.training.losses import seg_loss
from lib.training.samplers import (
    BOX_SCALE,
    BoxScale,
    Case,
    InPlaneMirror,
    _jittered_box,
    corrupted_masks,
    interaction_batch,
    noisier,
    sequence_batch,
)


def _scales(scale: BoxScale, n: int = 400) -> np.ndarray:
    rng = np.random.default_rng(0)
    mask = np.zeros((400, 400), bool)
    mask[180:220, 185:215] = True  # 40 pixels across: the box's size over 40 is its scale
    sizes = [_jittered_box(rng, mask, mask.shape, scale).size for _ in range(n)]
    return np.array([s for s in sizes if s < 400]) / 40.0  # the whole-slice boxes (a fifth) left out


def test_training_boxes_span_the_default_scale_uniformly():
    s = _scales(BOX_SCALE)
    assert 0.7 * 400 < s.size < 0.9 * 400
    assert s.min() >= 1.2 and s.max() <= 2.55
    assert abs(np.median(s) - 1.875) < 0.15  # uniform: the middle of the range


def test_a_wider_box_scale_is_drawn_log_uniform():
    s = _scales(BoxScale(1.25, 4.0, log=True))
    assert s.min() >= 1.2 and s.max() <= 4.05 and s.max() > 3.5
    assert abs(np.median(s) - np.sqrt(1.25 * 4.0)) < 0.25  # log-uniform: the geometric middle (2.24), not 2.6


def test_noise_augmentation_adds_noise_to_half_the_crops_and_leaves_the_rest_as_drawn():
    """`train.py --noise-aug`: half the crops get noise of up to the spread, clipped to the window; without it the
    batches are drawn exactly as before (the committed weights' draws)."""
    rng = np.random.default_rng(0)
    crop = torch.full((3, 64, 64), 0.5)
    spreads = []
    for _ in range(40):
        out = noisier(crop, rng, 0.08)
        assert out.shape == crop.shape and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        spreads.append(float((out - crop).std()))
    assert 0.0 <= min(spreads) < 0.02 and 0.06 < max(spreads) <= 0.085
    image = np.random.default_rng(1).random((48, 48, 12)).astype(np.float32)
    label = np.zeros(image.shape, np.uint8)
    label[14:34, 14:34, 3:9] = 1
    plain = interaction_batch([Case(image, label)], np.random.default_rng(2), 32, 32, noise=0.0)[0]
    again = interaction_batch([Case(image, label)], np.random.default_rng(2), 32, 32)[0]
    assert torch.equal(plain, again)
    flat = np.full(image.shape, 0.5, np.float32)  # every crop of it is flat: a crop with any spread got noise
    noisy = interaction_batch([Case(flat, label)], np.random.default_rng(3), 64, 32, noise=0.2)[0]
    assert 0.3 < float((noisy.flatten(1).std(1) > 1e-4).float().mean()) < 0.7


def _past_end_share(past_end: float, n: int = 64) -> float:
    """The share of sequences whose last frame holds no object (a 20-slice block in a 60-slice volume)."""
    image = np.random.default_rng(1).random((48, 48, 60)).astype(np.float32)
    label = np.zeros(image.shape, np.uint8)
    label[14:34, 14:34, 20:40] = 1
    _, masks = sequence_batch([Case(image, label)], np.random.default_rng(2), n, 32, 4, past_end)
    return float((masks[:, -1].flatten(1).sum(1) == 0).float().mean())


def test_memory_sequences_run_past_the_end_as_often_as_asked():
    never, half, always = _past_end_share(0.0), _past_end_share(0.5), _past_end_share(1.0)
    assert always == 1.0
    assert never < 0.35  # only those that start within 3 steps of an end by chance
    assert never + 0.15 < half < always - 0.15


def test_a_false_mask_past_the_end_is_scored_by_its_area_when_asked():
    empty = torch.zeros(2, 1, 32, 32)
    logits = torch.full((2, 1, 32, 32), -12.0)
    logits[0, 0, :10, :10] = 12.0  # 100 false pixels on the first slice, none on the second
    plain, scored = seg_loss(logits, empty), seg_loss(logits, empty, empty_area=16)
    assert scored - plain > 0.4  # (100 / 116 + ~0) / 2 on top of the cross-entropy
    none = torch.full((1, 1, 32, 32), -12.0)
    assert abs(float(seg_loss(none, empty[:1], empty_area=16) - seg_loss(none, empty[:1]))) < 0.01
    target = torch.zeros(1, 1, 32, 32)
    target[0, 0, 5:15, 5:15] = 1
    assert torch.equal(seg_loss(logits[:1], target, empty_area=16), seg_loss(logits[:1], target))  # object: Dice


def test_corrupted_masks_look_like_a_later_rounds_masks():
    """The refiner's training masks: 0/1, the target's shape, and every kind drawn: grown past the object, inside it
    (a core, a part, a cut), shifted, empty."""
    rng = np.random.default_rng(0)
    target = torch.zeros(200, 1, 64, 64)
    target[:, :, 20:44, 16:48] = 1
    out = corrupted_masks(target, rng)
    assert out.shape == target.shape and set(out.unique().tolist()) <= {0.0, 1.0}
    t = target[0, 0] > 0.5
    areas = out.sum((1, 2, 3))
    inside = torch.tensor([not bool((m[0] > 0.5)[~t].any()) for m in out])
    assert (areas > t.sum()).any() and (areas == 0).any()  # grown ones and empty ones
    assert (inside & (areas > 0) & (areas < 0.5 * t.sum())).sum() > 20  # cores, parts, cuts well inside
    assert (~inside & (areas <= t.sum())).any()  # shifted ones


def test_refiner_training_changes_the_refiner_alone(tmp_path):
    """`train_interaction(refiner=True)`: the later rounds' module learns to read the mask (its mask weights leave
    zero), the interaction module the first click uses stays as it was."""
    from conftest import capsule_volume

    from lib.net.bundle import LimNet
    from lib.training.stages import train_interaction

    image, label = capsule_volume()
    net = LimNet()
    net.add_refiner()
    before = {k: v.clone() for k, v in net.interaction.state_dict().items()}
    train_interaction(net, lambda: [Case(image, label)], 3, str(tmp_path / "r.ckpt"), 0, batch=2, refine_prob=1.0,
                      refine_rounds=2, refiner=True)
    assert all(torch.equal(before[k], v) for k, v in net.interaction.state_dict().items())
    assert net.refiner.encoder.stem[0].weight[:, 5].abs().sum() > 0
    assert (tmp_path / "r.ckpt").exists()


def test_retraining_fine_tunes_each_memory_model_on_the_volumes_it_propagates():
    """The app's trainer (`memory_pools`): with an MR memory model the CT cases train the first, the others the MR
    one; without one every case trains the first."""
    from lib.net.bundle import LimNet
    from lib.trainers.limnet import memory_pools

    z = np.zeros((4, 4, 4), np.float32)
    ct, mr = Case(z, z.astype(np.uint8), True), Case(z, z.astype(np.uint8), False)
    net = LimNet()
    assert memory_pools(net, [ct, mr]) == [(False, [ct, mr])]
    net.add_memory_mr()
    assert memory_pools(net, [ct, mr]) == [(False, [ct]), (True, [mr])]
    assert memory_pools(net, [mr]) == [(True, [mr])]


def test_each_in_plane_mirror_moves_a_click_with_the_pixel_it_was_made_on():
    """`InPlaneMirror`: the click's working coordinates follow its pixel through all eight mirrors and turns."""
    size, (x, y) = 16, (3, 11)
    crop = torch.zeros(1, size, size)
    crop[0, x, y] = 1.0
    seen = set()
    for fx in (False, True):
        for fy in (False, True):
            for sw in (False, True):
                turn = InPlaneMirror(fx, fy, sw)
                out = turn.tensor(crop)
                [(px, py)] = turn.points([(x, y)], size)
                assert out[0, int(px), int(py)] == 1.0 and float(out.sum()) == 1.0
                seen.add((int(px), int(py)))
    assert len(seen) == 8


def test_mirrored_training_samples_keep_clicks_on_their_target_and_unmirrored_draws_as_before():
    """`train.py --mirror`: the clicks of mirrored samples lie on their mirrored target as those of plain ones do
    (a few positive ones on its resampled edge miss), and the crops are mirrored (an L-shaped target shows up in
    several orientations); without it the draws are as before."""
    image = np.random.default_rng(1).random((48, 48, 12)).astype(np.float32)
    label = np.zeros(image.shape, np.uint8)
    label[10:38, 10:18, 2:10] = 1  # an L: no mirror or turn maps it onto itself
    label[30:38, 10:34, 2:10] = 1
    images, targets, clicks = interaction_batch([Case(image, label)], np.random.default_rng(4), 48, 32, mirror=1.0)
    hits = [(float(t[0, int(round(x)), int(round(y))]) > 0.5) == positive
            for t, (pos, neg) in zip(targets, clicks)
            for positive, pts in ((True, pos), (False, neg)) for x, y in pts
            if 0 <= round(x) < 32 and 0 <= round(y) < 32]  # a negative click may lie outside the box
    assert len(hits) > 80 and np.mean(hits) > 0.9  # the L covers about a fifth of a crop: misplaced clicks miss
    corner = targets[:, 0, :16, :16].flatten(1).sum(1) > targets[:, 0, 16:, 16:].flatten(1).sum(1)
    assert 0 < int(corner.sum()) < len(corner)  # the L's heavy quarter moves between samples
    plain = interaction_batch([Case(image, label)], np.random.default_rng(2), 16, 32)[0]
    again = interaction_batch([Case(image, label)], np.random.default_rng(2), 16, 32, mirror=0.0)[0]
    assert torch.equal(plain, again)
    frames, masks = sequence_batch([Case(image, label)], np.random.default_rng(5), 16, 32, 4, 0.0, mirror=1.0)
    assert frames.shape == (16, 4, 3, 32, 32) and masks.shape == (16, 4, 1, 32, 32)
