"""Robot-user evaluation: LIM-Net with MRF clicks; LIM-Net without MRF and the classical tool replay its clicks."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lib.engine.segmenter import LimNetSegmenter
from lib.net.bundle import LimNet

from .baseline import RandomWalkerTool
from .robot import dice, run_robot


@dataclass
class CaseResult:
    case: str
    dice: dict[str, list[float]] = field(default_factory=dict)  # method -> Dice after each round
    seconds: dict[str, list[float]] = field(default_factory=dict)


def regressions(curve: list[float], tol: float = 0.01) -> int:
    return sum(1 for a, b in zip(curve[:-1], curve[1:]) if b < a - tol)


def replay(segment, order, gt) -> tuple[list[float], list[float]]:
    """Feed a recorded click sequence to another tool, round by round."""
    import time

    fg, bg, dices, secs = [], [], [], []
    for positive, click in order:
        (fg if positive else bg).append(click)
        t = time.perf_counter()
        m = segment(list(fg), list(bg))
        secs.append(time.perf_counter() - t)
        dices.append(dice(m, gt))
    return dices, secs


def evaluate_case(net: LimNet, name: str, image: np.ndarray, label: np.ndarray, spacing, rounds: int,
                  baseline: bool = True, device: str = "cpu") -> CaseResult:
    res = CaseResult(name)
    seg = LimNetSegmenter(net, device, use_fusion=True)
    state = seg.new_state(image)
    order: list[tuple[bool, tuple]] = []

    def limnet(fg, bg):
        new = [(True, c) for c in fg if (True, c) not in order] + [(False, c) for c in bg if (False, c) not in order]
        order.extend(new)
        return seg.add_clicks(state, fg, bg)

    run = run_robot(limnet, label, rounds, spacing)
    res.dice["limnet"], res.seconds["limnet"] = run.dice, run.seconds
    plain = LimNetSegmenter(net, device, use_fusion=False)
    pstate = plain.new_state(image)
    res.dice["limnet_no_mrf"], res.seconds["limnet_no_mrf"] = replay(
        lambda fg, bg: plain.add_clicks(pstate, fg, bg), order, label)
    if baseline:
        rw = RandomWalkerTool(image)
        res.dice["random_walker"], res.seconds["random_walker"] = replay(rw, order, label)
    for k in res.dice:  # the robot stops once perfect: carry the last value
        res.dice[k] += [res.dice[k][-1]] * (rounds - len(res.dice[k]))
    return res
