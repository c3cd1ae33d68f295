"""LIM-Net's training stages, each resumable from its own checkpoint: interaction, memory, fusion."""

from __future__ import annotations

import logging
import os
import time
from typing import Callable

import numpy as np
import torch

from lib.net.bundle import WORKING_SIZE, LimNet

from .losses import seg_loss
from .samplers import (
    BOX_SCALE,
    BoxScale,
    Case,
    add_error_clicks,
    corrupted_masks,
    interaction_batch,
    interaction_inputs,
    perturb_mask,
    sequence_batch,
)

logger = logging.getLogger(__name__)

CaseSource = Callable[[], list[Case]]  # returns the current pool of training cases


def _world() -> tuple[int, int]:
    """(rank, world size) under torch.distributed (torchrun), else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _sync_grads(module: torch.nn.Module) -> None:
    """Average gradients over processes (data parallel); each process drew its own samples."""
    rank, world = _world()
    if world == 1:
        return
    for p in module.parameters():
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad /= world


def _load_ckpt(path: str, module: torch.nn.Module, opt: torch.optim.Optimizer) -> int:
    if not os.path.exists(path):
        return 0
    ck = torch.load(path, map_location="cpu", weights_only=False)  # our own checkpoint (optimizer state)
    module.load_state_dict(ck["model"])
    opt.load_state_dict(ck["opt"])
    logger.info("resumed %s at step %d", path, ck["step"])
    return int(ck["step"])


def _save_ckpt(path: str, module: torch.nn.Module, opt: torch.optim.Optimizer, step: int) -> None:
    if _world()[0] != 0:
        return
    tmp = path + ".tmp"
    torch.save({"model": module.state_dict(), "opt": opt.state_dict(), "step": step}, tmp)
    os.replace(tmp, path)


def _lr_at(step: int, steps: int, lr: float) -> float:
    warm = min(1.0, (step + 1) / 100)
    return float(lr * warm * 0.5 * (1 + np.cos(np.pi * min(step / max(steps, 1), 1.0))))


REFINER_PROB, REFINER_ROUNDS = 0.8, 3  # the refiner's share of batches on a mask to correct, its most rounds


def train_interaction(net: LimNet, cases: CaseSource, steps: int, ckpt: str, seed: int, batch: int = 16,
                      lr: float = 2e-3, log_every: int = 25, refine_prob: float = 0.5, refine_rounds: int = 1,
                      box_scale: BoxScale = BOX_SCALE, refiner: bool = False, noise: float = 0.0,
                      mirror: float = 0.0) -> None:
    """Simulated iterative clicks on single slices: the 2D interaction module (on the module's device), or with
    `refiner` the later rounds' module (`LimNet.add_refiner`).

    With probability `refine_prob` a batch gets 1 to `refine_rounds` robot corrections on the module's own
    predictions before the step (RITM-style iterative training): later rounds are where a user's negative clicks
    must take back what the first answer took too much of. A module with a mask input (`add_mask_input`) sees the
    mask each correction was made on; half its correction batches start from a corrupted truth (`corrupted_masks`,
    a propagated mask too large, too small or shifted) with only the corrections as clicks, as a later round's
    slice is clicked. `noise`, `mirror`: see `interaction_batch`.
    """
    module = (net.refiner if refiner else net.interaction).train()
    dev = next(module.parameters()).device
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=1e-4)
    start = _load_ckpt(ckpt, module, opt)
    rng = np.random.default_rng([seed, start, _world()[0]])
    t0, run = time.time(), []
    for step in range(start, steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, lr)
        images, target, clicks = interaction_batch(cases(), rng, batch, WORKING_SIZE, box_scale, noise, mirror)
        prior = torch.zeros_like(target) if module.takes_mask else None
        if rng.random() < refine_prob:  # simulated correction rounds on the model's own predictions
            rounds = 1 if refine_rounds <= 1 else int(rng.integers(1, refine_rounds + 1))
            module.eval()
            if module.takes_mask and rng.random() < 0.5:  # a later round's slice: a propagated mask, its clicks alone
                pred, clicks = corrupted_masks(target, rng), [([], []) for _ in clicks]
            else:
                with torch.no_grad():
                    pred = torch.sigmoid(module(interaction_inputs(images, clicks).to(dev), _on(prior, dev))).cpu()
            for r in range(rounds):
                clicks = add_error_clicks(pred, target, clicks)
                if module.takes_mask:
                    prior = (pred > 0.5).float()
                if r + 1 < rounds:
                    with torch.no_grad():
                        pred = torch.sigmoid(module(interaction_inputs(images, clicks).to(dev), _on(prior, dev))).cpu()
            module.train()
        loss = seg_loss(module(interaction_inputs(images, clicks).to(dev), _on(prior, dev)), target.to(dev))
        opt.zero_grad()
        loss.backward()
        _sync_grads(module)
        opt.step()
        run.append(loss.item())
        if ((step + 1) % log_every == 0 or step + 1 == steps) and _world()[0] == 0:
            logger.info("%s step %d/%d loss %.4f (%.2fs/step)", "refiner" if refiner else "interaction", step + 1,
                        steps, np.mean(run), (time.time() - t0) / len(run))
            run, t0 = [], time.time()
            _save_ckpt(ckpt, module, opt, step + 1)
    module.eval()


def _on(t: torch.Tensor | None, dev: torch.device) -> torch.Tensor | None:
    return None if t is None else t.to(dev)


def memory_sequence_loss(memory, frames: torch.Tensor, masks: torch.Tensor, first_mask: torch.Tensor,
                         empty_area: float | None = None):
    """Propagate from frame 0 (given mask) through frames 1..T-1, remembering every predicted frame (`empty_area`:
    see `seg_loss`)."""
    b, t, _, s, _ = frames.shape
    keys, feats = memory.encode_key(frames.flatten(0, 1))
    keys = keys.unflatten(0, (b, t))
    feats = [f.unflatten(0, (b, t)) for f in feats]
    value = memory.encode_value(frames[:, 0], first_mask, feats[2][:, 0])
    mem_k, mem_v = [keys[:, 0].flatten(2)], [value.flatten(2)]
    hidden = memory.remember(value, memory.init_hidden(keys[:, 0]))
    loss = 0.0
    for i in range(1, t):
        fi = [f[:, i] for f in feats]
        logits, hidden, _ = memory.step(keys[:, i], fi, torch.cat(mem_k, 2), torch.cat(mem_v, 2), hidden)
        loss = loss + seg_loss(logits, masks[:, i], empty_area)
        if i == t - 1:
            break  # no frame after the last reads its value or state
        prob = torch.sigmoid(logits)
        value = memory.encode_value(frames[:, i], prob, fi[2])
        mem_k.append(keys[:, i].flatten(2))
        mem_v.append(value.flatten(2))
        hidden = memory.remember(value, hidden)
    return loss / (t - 1)


def train_memory(net: LimNet, cases: CaseSource, steps: int, ckpt: str, seed: int, batch: int = 8,
                 length: int = 4, lr: float = 2e-3, log_every: int = 25, past_end: float = 0.5,
                 empty_area: float | None = None, mr: bool = False, mirror: float = 0.0) -> None:
    """Slice sequences: the memory model propagates the first slice's mask through the next ones (on the module's
    device). `past_end`: the share of sequences that run past the object's end; `empty_area`: see `seg_loss`; `mr`:
    train the memory model for volumes not read as a CT (`LimNet.memory_mr`, added as a copy of the first); `mirror`:
    see `sequence_batch`."""
    if mr:
        net.add_memory_mr()  # a copy of the first, on its device
    module = (net.memory_mr if mr else net.memory).train()
    dev = next(module.parameters()).device
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=1e-4)
    start = _load_ckpt(ckpt, module, opt)
    rng = np.random.default_rng([seed, 7919, start, _world()[0]])
    t0, run = time.time(), []
    for step in range(start, steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, lr)
        frames, masks = sequence_batch(cases(), rng, batch, WORKING_SIZE, length, past_end, mirror)
        frames, masks = frames.to(dev), masks.to(dev)
        loss = memory_sequence_loss(module, frames, masks, perturb_mask(masks[:, 0], rng), empty_area)
        opt.zero_grad()
        loss.backward()
        _sync_grads(module)
        torch.nn.utils.clip_grad_norm_(module.parameters(), 5.0)
        opt.step()
        run.append(loss.item())
        if ((step + 1) % log_every == 0 or step + 1 == steps) and _world()[0] == 0:
            logger.info("memory step %d/%d loss %.4f (%.2fs/step)", step + 1, steps, np.mean(run),
                        (time.time() - t0) / len(run))
            run, t0 = [], time.time()
            _save_ckpt(ckpt, module, opt, step + 1)
    module.eval()
