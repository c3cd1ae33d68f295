"""The robot user (CVPR 2025 interactive 3D segmentation challenge): click the voxel deepest inside the
largest 26-connected error component; positive where the ground truth is foreground.

Shared by evaluation, the trainer's validation and the tests.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy import ndimage as ndi

Click = tuple[int, int, int]


def next_click(pred: np.ndarray, gt: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> tuple[Click, bool] | None:
    """The next click, or None when the prediction is already perfect."""
    err = pred.astype(bool) != gt.astype(bool)
    if not err.any():
        return None
    lab, n = ndi.label(err, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(lab.ravel())[1:]
    comp_id = int(np.argmax(sizes)) + 1
    sl = ndi.find_objects((lab == comp_id).astype(np.uint8))[0]
    comp = lab[sl] == comp_id
    dist = ndi.distance_transform_edt(np.pad(comp, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    local = np.unravel_index(int(np.argmax(dist)), dist.shape)
    idx = tuple(int(s.start + i) for s, i in zip(sl, local))
    return idx, bool(gt[idx])


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    p, g = pred.astype(bool), gt.astype(bool)
    denom = p.sum() + g.sum()
    return 1.0 if denom == 0 else float(2 * (p & g).sum() / denom)


@dataclass
class RobotRun:
    dice: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    foreground: list[Click] = field(default_factory=list)
    background: list[Click] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)


def run_robot(segment: Callable[[list[Click], list[Click]], np.ndarray], gt: np.ndarray, rounds: int,
              spacing=(1.0, 1.0, 1.0), keep_masks: bool = False) -> RobotRun:
    """Click `rounds` times; `segment(foreground, background)` returns the mask after all clicks so far."""
    run = RobotRun()
    pred = np.zeros(gt.shape, bool)
    for _ in range(rounds):
        click = next_click(pred, gt, spacing)
        if click is None:  # perfect: the robot stops clicking, Dice stays
            run.dice.append(run.dice[-1] if run.dice else 1.0)
            run.seconds.append(0.0)
            continue
        idx, positive = click
        (run.foreground if positive else run.background).append(idx)
        t = time.perf_counter()
        pred = segment(list(run.foreground), list(run.background)).astype(bool)
        run.seconds.append(time.perf_counter() - t)
        run.dice.append(dice(pred, gt))
        if keep_masks:
            run.masks.append(pred)
    return run
