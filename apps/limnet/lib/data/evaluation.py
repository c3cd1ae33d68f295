"""Robot-user evaluation: the robot clicks on the errors of LIM-Net as the server runs it (no MRF, the default);
LIM-Net with MRF and the classical tools replay those clicks."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lib.engine.orientation import SliceAxis
from lib.engine.segmenter import LimNetSegmenter
from lib.net.bundle import LimNet

from .baseline import FloodFillTool, RandomWalkerTool
from .robot import dice, run_robot


@dataclass
class CaseResult:
    case: str
    dice: dict[str, list[float]] = field(default_factory=dict)  # method -> Dice after each round
    seconds: dict[str, list[float]] = field(default_factory=dict)


def with_noise(image: np.ndarray, percent: float, seed: int, blur: float = 0.0) -> np.ndarray:
    """`image` plus Gaussian noise whose spread is `percent` of its 1-99 percentile intensity range; `blur` (pixels):
    the noise blurred in-plane first and rescaled to the same spread, as a CT's reconstruction kernel correlates its
    noise between neighbouring pixels. For probes of how the first click holds up on noisier scans than ours."""
    if percent <= 0:
        return image
    from scipy import ndimage as ndi

    lo, hi = np.percentile(image, [1, 99])
    noise = np.random.default_rng(seed).normal(0, 1, image.shape).astype(np.float32)
    if blur > 0:
        noise = ndi.gaussian_filter(noise, (blur, blur, 0))
        noise /= noise.std()
    return (image + percent / 100 * (hi - lo) * noise).astype(np.float32)


VALIDATION_SETS = ("ctval", "ctval4", "brainval", "brainval2", "brainval256", "brainlarge")


def validation_set(name: str) -> list:
    """The real validation cases choices are made on (never the held-out ones): the real-CT series (`ctval`; at
    128 x 128, `ctval4`) or the deep grey nuclei of the brain template (`brainval`; at 2 mm, `brainval2`; on 256 x 256
    slices, `brainval256`), or its large structures (`brainlarge`: white matter, cerebellum, brainstem,
    lateral ventricles)."""
    if name in ("ctval", "ctval4"):
        from .totalseg import validation_cases

        return validation_cases(shrink=4 if name == "ctval4" else 1)
    if name in ("brainval", "brainval2", "brainval256"):
        from .brainval import validation_cases

        return validation_cases(shrink=4 if name == "brainval2" else 2, fov=256 if name == "brainval256" else None)
    if name == "brainlarge":
        from .brainval import large_cases

        return large_cases()
    raise ValueError(f"unknown validation set {name!r}; known: {list(VALIDATION_SETS)}")


def bootstrap_interval(values: np.ndarray, rng: np.random.Generator, draws: int = 2000) -> tuple[float, float]:
    """The 95% bootstrap interval of the mean of `values` (resampled with replacement `draws` times): how far a paired
    difference over a few structures could move with other structures of the same kind."""
    means = [rng.choice(values, len(values)).mean() for _ in range(draws)]
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


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
                  baseline: bool = True, device: str = "cpu", user: str = "volume") -> CaseResult:
    """`user`: `run_robot`'s ("volume": the challenge's robot; "slice": corrects the first click's slice first)."""
    res = CaseResult(name)
    slices = SliceAxis.for_spacing(spacing)  # as the server reads it: slices with square pixels (Dice is unchanged)
    image, label, spacing = slices.volume(image), slices.volume(label), slices.spacing(spacing)
    seg = LimNetSegmenter(net, device, use_fusion=False)
    state = seg.new_state(image)
    order: list[tuple[bool, tuple]] = []

    def limnet(fg, bg):
        seen = ([c for p, c in order if p], [c for p, c in order if not p])
        order.extend([(True, c) for c in fg[len(seen[0]):]] + [(False, c) for c in bg[len(seen[1]):]])
        return seg.add_clicks(state, fg, bg)

    run = run_robot(limnet, label, rounds, spacing, user=user)
    res.dice["limnet_no_mrf"], res.seconds["limnet_no_mrf"] = run.dice, run.seconds
    fused = LimNetSegmenter(net, device, use_fusion=True)
    fstate = fused.new_state(image)
    res.dice["limnet"], res.seconds["limnet"] = replay(lambda fg, bg: fused.add_clicks(fstate, fg, bg), order, label)
    if baseline:
        for method, tool in (("random_walker", RandomWalkerTool(image)), ("flood_fill", FloodFillTool(image))):
            res.dice[method], res.seconds[method] = replay(tool, order, label)
    for k in res.dice:  # the robot stops once perfect: carry the last value
        res.dice[k] += [res.dice[k][-1]] * (rounds - len(res.dice[k]))
    return res
