"""MRF stage: the slice scorer learns, from pairs of consecutive rounds produced by the pipeline itself, which
round's mask of a slice is closer to the truth."""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from lib.data.robot import run_robot
from lib.engine.geometry import Box, crop_slices
from lib.engine.round_fusion import SCORER_SIZE
from lib.engine.segmenter import LimNetSegmenter
from lib.net.bundle import LimNet

from .pool import synthetic_case
from .stages import _load_ckpt, _lr_at, _save_ckpt

logger = logging.getLogger(__name__)


def _slice_dice(m: np.ndarray, g: np.ndarray) -> np.ndarray:
    inter = (m & g).sum((0, 1))
    denom = m.sum((0, 1)) + g.sum((0, 1))
    return np.where(denom == 0, 1.0, 2 * inter / np.maximum(denom, 1))


def _slice_batch(cases, rng: np.random.Generator, n: int):
    """Image slices and true masks cropped as the fusion crops them (a box around the object)."""
    imgs, masks = [], []
    while len(imgs) < n:
        c = cases[rng.integers(len(cases))]
        ks = np.nonzero(c.label.any((0, 1)))[0]
        k = int(ks[rng.integers(len(ks))])
        box = Box.of_mask(c.label[:, :, k] > 0, rng.uniform(1.2, 2.0), 16)
        if rng.random() < 0.3:  # a slice just past the object's end: there the empty mask is the right one
            k = int(np.clip(ks.max() + rng.integers(1, 4) if rng.random() < 0.5 else ks.min() - rng.integers(1, 4),
                            0, c.label.shape[2] - 1))
        imgs.append(crop_slices(c.image, box, np.array([[k]]), SCORER_SIZE)[0])
        masks.append((crop_slices(c.label.astype(np.float32), box, np.array([[k]]), SCORER_SIZE)[0] > 0.5).float())
    return torch.stack(imgs), torch.stack(masks)


def round_pairs(net: LimNet, rng: np.random.Generator, n_cases: int, rounds: int):
    """(image crops, mask t, mask t+1, target: 1 where round t is better) for every slice two rounds differ on."""
    seg = LimNetSegmenter(net, "cpu", use_fusion=False)
    imgs, prevs, nexts, ys = [], [], [], []
    for i in range(n_cases):
        case = synthetic_case(rng)
        state = seg.new_state(case.image, normalized=True, hounsfield=case.hounsfield)  # already normalised

        run = run_robot(lambda fg, bg: seg.add_clicks(state, fg, bg), case.label, rounds, keep_masks=True)
        g = case.label.astype(bool)
        for a, b in zip(run.masks[:-1], run.masks[1:]):
            da, db = _slice_dice(a, g), _slice_dice(b, g)
            ks = [k for k in np.nonzero((a != b).any((0, 1)))[0] if abs(da[k] - db[k]) > 0.01]
            if not ks:
                continue
            xs, ys_, _ = np.nonzero(a[:, :, ks] | b[:, :, ks] | g[:, :, ks])
            box = Box.around(xs.min(), xs.max(), ys_.min(), ys_.max(), 1.3, 16)
            kk = np.array(ks)[:, None]
            imgs.append(crop_slices(case.image, box, kk, SCORER_SIZE))
            prevs.append((crop_slices(a.astype(np.float32), box, kk, SCORER_SIZE) > 0.5).float())
            nexts.append((crop_slices(b.astype(np.float32), box, kk, SCORER_SIZE) > 0.5).float())
            ys.append(torch.tensor([float(da[k] > db[k]) for k in ks]))
        logger.info("fusion data: case %d/%d, %d slice pairs so far", i + 1, n_cases, sum(len(y) for y in ys))
    return torch.cat(imgs), torch.cat(prevs), torch.cat(nexts), torch.cat(ys)


def _perturb(m: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A plausible wrong mask: grown, shrunk, shifted, cut, leaking into a blob, or emptied (B x 1 x S x S)."""
    out = m.clone()
    b, _, s, _ = m.shape
    for i in range(b):
        x = out[i : i + 1]
        for _ in range(int(torch.randint(1, 3, (1,), generator=g))):
            op = int(torch.randint(0, 7, (1,), generator=g))
            r = int(torch.randint(1, 7, (1,), generator=g))
            if op == 0:
                x = F.max_pool2d(x, 2 * r + 1, 1, r)
            elif op == 1:
                x = -F.max_pool2d(-x, 2 * r + 1, 1, r)
            elif op == 2:
                dx, dy = (torch.randint(-3 * r, 3 * r + 1, (2,), generator=g)).tolist()
                x = torch.roll(x, (dx, dy), (2, 3))
            elif op == 3:  # cut off a part
                c = int(torch.randint(s // 4, 3 * s // 4, (1,), generator=g))
                x = x.clone()
                x[..., c:, :] = 0 if torch.rand(1, generator=g) < 0.5 else x[..., c:, :]
                x[..., :, c:] = 0 if torch.rand(1, generator=g) < 0.5 else x[..., :, c:]
            elif op == 4:  # leak into a blob
                cx, cy = torch.randint(0, s, (2,), generator=g).tolist()
                yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
                rad = float(torch.randint(4, s // 3, (1,), generator=g))
                x = torch.maximum(x, (((yy - cx) ** 2 + (xx - cy) ** 2) < rad**2).float()[None, None])
            elif op == 5:
                x = torch.zeros_like(x)
        out[i : i + 1] = x
    return out


def _dice(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    inter = (a * b).sum((1, 2, 3))
    den = a.sum((1, 2, 3)) + b.sum((1, 2, 3))
    return torch.where(den > 0, 2 * inter / den.clamp(min=1), torch.ones_like(den))


def perturbation_pairs(images: torch.Tensor, masks: torch.Tensor, g: torch.Generator):
    """Two differently wrong versions of each true mask; target 1 where the first is closer to the truth."""
    a, b = _perturb(masks, g), _perturb(masks, g)
    if torch.rand(1, generator=g) < 0.3:  # sometimes one of the two is (nearly) right
        b = _perturb(masks, g) if torch.rand(1, generator=g) < 0.5 else masks.clone()
    da, db = _dice(a, masks), _dice(b, masks)
    keep = (da - db).abs() > 0.02
    return images[keep], a[keep], b[keep], (da > db).float()[keep]


def train_fusion(net: LimNet, steps: int, ckpt: str, seed: int, n_cases: int = 24, rounds: int = 6,
                 batch: int = 64, lr: float = 1e-3, cases=None) -> None:
    data_path = ckpt + ".data.pt"
    if os.path.exists(data_path):
        img, prev, nxt, y = torch.load(data_path, weights_only=True)
    else:
        net.eval()
        img, prev, nxt, y = round_pairs(net, np.random.default_rng(seed + 104729), n_cases, rounds)
        torch.save((img, prev, nxt, y), data_path)
    logger.info("fusion: %d slice pairs, %.0f%% where the earlier round is better", len(y), 100 * y.mean())
    module = net.scorer.train()
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=1e-4)
    start = _load_ckpt(ckpt, module, opt)
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed + start)
    pos_weight = ((1 - y.mean()) / y.mean().clamp(min=1e-3)).clamp(0.2, 5.0)
    t0 = time.time()
    for step in range(start, steps):
        for grp in opt.param_groups:
            grp["lr"] = _lr_at(step, steps, lr)
        idx = torch.randint(0, len(y), (batch,), generator=g)
        a, p, n, t = img[idx], prev[idx], nxt[idx], y[idx]
        if cases is not None:  # half of each batch: perturbed true masks on real and generated slices
            si, sm = _slice_batch(cases(), rng, batch // 2)
            pa, pp, pn, pt = perturbation_pairs(si, sm, g)
            a, p, n, t = torch.cat([a[: batch // 2], pa]), torch.cat([p[: batch // 2], pp]), \
                torch.cat([n[: batch // 2], pn]), torch.cat([t[: batch // 2], pt])
        if step % 2:  # the two rounds swapped: the label flips
            p, n, t = n, p, 1 - t
        if torch.rand(1, generator=g) < 0.5:
            a, p, n = a.flip(-1), p.flip(-1), n.flip(-1)
        loss = F.binary_cross_entropy_with_logits(module(a, p, n), t, pos_weight=pos_weight if step % 2 == 0 else 1 / pos_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 50 == 0 or step + 1 == steps:
            with torch.no_grad():
                acc = ((module(a, p, n) > 0).float() == t).float().mean().item()
            logger.info("fusion step %d/%d loss %.4f acc %.2f (%.2fs/step)", step + 1, steps, loss.item(), acc,
                        (time.time() - t0) / 50)
            t0 = time.time()
            _save_ckpt(ckpt, module, opt, step + 1)
    net.scorer.eval()
