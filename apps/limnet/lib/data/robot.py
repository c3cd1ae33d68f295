"""The robot user (CVPR 2025 interactive 3D segmentation challenge): click the voxel deepest inside the
largest 26-connected error component; positive where the ground truth is foreground. `run_robot(user="slice")`: a
user as in Slicer or OHIF, who corrects the slice of the first click until it is right, then goes on as the robot.

Shared by evaluation, the trainer's validation and the tests.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy import ndimage as ndi

Click = tuple[int, int, int]


def _deepest_in_largest(err: np.ndarray, structure: np.ndarray | None = None, spacing=None) -> tuple[int, ...]:
    """The voxel (or pixel) deepest inside the largest connected component of `err` (`structure`: its connectivity,
    scipy's default where None; `spacing`: the distance's sampling)."""
    lab, _ = ndi.label(err, structure=structure)
    comp_id = int(np.argmax(np.bincount(lab.ravel())[1:])) + 1
    sl = ndi.find_objects((lab == comp_id).astype(np.uint8))[0]
    comp = lab[sl] == comp_id
    inner = tuple(slice(1, -1) for _ in comp.shape)
    dist = ndi.distance_transform_edt(np.pad(comp, 1), sampling=spacing)[inner]
    local = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return tuple(int(s.start + i) for s, i in zip(sl, local))


def next_click(pred: np.ndarray, gt: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> tuple[Click, bool] | None:
    """The next click, or None when the prediction is already perfect."""
    err = pred.astype(bool) != gt.astype(bool)
    if not err.any():
        return None
    idx = _deepest_in_largest(err, np.ones((3, 3, 3), bool), spacing)
    return idx, bool(gt[idx])


def next_click_on_slice(pred: np.ndarray, gt: np.ndarray, k: int, good: float = 0.9) -> tuple[Click, bool] | None:
    """The click of a user looking at slice k: the pixel deepest inside the largest 2D error component there, or
    None once the slice's Dice reaches `good` (the user then looks elsewhere)."""
    p, g = pred[:, :, k].astype(bool), gt[:, :, k].astype(bool)
    err = p != g
    if not err.any() or dice(p, g) >= good:
        return None
    x, y = _deepest_in_largest(err)
    return (x, y, int(k)), bool(g[x, y])


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
              spacing=(1.0, 1.0, 1.0), keep_masks: bool = False, user: str = "volume") -> RobotRun:
    """Click `rounds` times; `segment(foreground, background)` returns the mask after all clicks so far. `user`:
    "volume" (the challenge's robot) or "slice" (`next_click_on_slice` on the first click's slice while it is
    wrong, then the robot's click)."""
    if user not in ("volume", "slice"):
        raise ValueError(f"user must be 'volume' or 'slice', not {user!r}")
    run = RobotRun()
    pred = np.zeros(gt.shape, bool)
    for _ in range(rounds):
        click = None
        if user == "slice" and run.foreground:  # the first click is positive: the prediction starts empty
            click = next_click_on_slice(pred, gt, run.foreground[0][2])
        click = click or next_click(pred, gt, spacing)
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
