"""Where Dice is lost: each module given the truth where the other would answer (validation sets only).

    .venv/bin/python scripts/oracle_propagation.py --set brainval
    .venv/bin/python scripts/oracle_propagation.py --set ctval --weights runs/train/other.pt

Per structure, in a box 1.5 times the object's in-plane extent (as a later round's box sees it):
- `2D x1`, `2D x3`: the interaction module alone on every slice of the object, with one click at the slice's deepest
  point, then 2 robot corrections on that slice (3D Dice of the stacked answers);
- `prop 1`, `prop 3`: the memory model propagating the true mask of the largest slice (of 3 slices, at the quarters
  of the object's extent) through the volume, as a round does (`propagate`);
- `prop 1 in range`: the same, the answer cut to the slices the object spans; `past ends`: how many slices the
  answer runs on below its first and past its last slice (negative: stops short).
A propagation far past the ends with a good Dice in range says the memory does not see where the object ends; a low
Dice in range, that it loses the object's outline. Each volume takes the memory model it is served with
(`LimNet.memory_for`: an MR one where the weights hold it and the volume is not read as a CT). Never run this on
the held-out set: choices are made here.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "apps", "limnet"))

from lib.data.evaluation import VALIDATION_SETS, validation_set  # noqa: E402
from lib.data.robot import dice  # noqa: E402
from lib.engine.geometry import Box, extent_xy, neighbour_indices, paste_slices  # noqa: E402
from lib.engine.propagation import SliceFeatures, propagate  # noqa: E402
from lib.engine.segmenter import LimNetSegmenter  # noqa: E402
from lib.net.bundle import LimNet  # noqa: E402
from lib.training.samplers import add_error_clicks, deepest_point  # noqa: E402


def slice_answer(seg: LimNetSegmenter, image: np.ndarray, box: Box, k: int, truth: np.ndarray,
                 clicks: int) -> np.ndarray:
    """The interaction module's answer on slice k after `clicks` robot clicks on that slice alone (the training's
    2D robot, `add_error_clicks`)."""
    pos, neg = [deepest_point(truth)], []
    target = torch.from_numpy(truth)[None, None].float()
    while True:
        pred = paste_slices(seg._interact(image, box, k, pos, neg)[None], box, truth.shape)[:, :, 0] > 0.5
        if len(pos) + len(neg) >= clicks:
            return pred
        [(more_pos, more_neg)] = add_error_clicks(torch.from_numpy(pred)[None, None].float(), target, [(pos, neg)])
        if len(more_pos) + len(more_neg) == len(pos) + len(neg):  # no error left
            return pred
        pos, neg = more_pos, more_neg


def propagated(seg: LimNetSegmenter, features: SliceFeatures, truth: np.ndarray, ks: list[int]) -> np.ndarray:
    anchors = {k: seg._working(truth[:, :, k], features.box) for k in ks}
    probs = propagate(features.memory, features, anchors, seg.propagation, precision=seg.precision)
    out = np.zeros_like(truth)
    for k, p in probs.items():
        out[:, :, k] = paste_slices(p[None], features.box, truth.shape[:2])[:, :, 0] > seg.propagation.threshold
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", choices=VALIDATION_SETS, default="brainval")
    p.add_argument("--weights", default=os.path.join(ROOT, "apps", "limnet", "model", "pretrained_limnet.pt"))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    net = LimNet.load(args.weights)
    seg = LimNetSegmenter(net, "cpu", use_fusion=False)
    cols = ("2D x1", "2D x3", "prop 1", "prop 3", "prop 1 in range")
    print("| structure | slices | " + " | ".join(cols) + " | past ends |")
    print("|---|---|" + "---|" * (len(cols) + 1))
    rows = []
    for case in validation_set(args.set):
        state, truth = seg.new_state(case.image), case.label.astype(bool)
        image = state.image
        zs = np.flatnonzero(truth.any((0, 1)))
        box = Box.around(*extent_xy(truth), 1.5, 32).clamp_to(image.shape[:2])
        row = []
        for clicks in (1, 3):
            stack = np.zeros_like(truth)
            for k in zs:
                stack[:, :, k] = slice_answer(seg, image, box, int(k), truth[:, :, k], clicks)
            row.append(dice(stack, truth))
        features = SliceFeatures(net.memory_for(state.hounsfield), image, box, seg.size, seg.device,
                                 seg._window(image, box, neighbour_indices(zs, image.shape[2]), []))
        largest = int(np.argmax(truth.sum((0, 1))))
        one = propagated(seg, features, truth, [largest])
        three = propagated(seg, features, truth, sorted({int(zs[len(zs) // 4]), largest, int(zs[3 * len(zs) // 4])}))
        in_range = one.copy()
        in_range[:, :, : zs[0]] = in_range[:, :, zs[-1] + 1 :] = False
        row += [dice(one, truth), dice(three, truth), dice(in_range, truth)]
        found = np.flatnonzero(one.any((0, 1)))
        ends = f"{zs[0] - found[0]:+d} / {found[-1] - zs[-1]:+d}" if len(found) else "none"
        rows.append(row)
        print(f"| {case.name} | {len(zs)} | " + " | ".join(f"{v:.3f}" for v in row) + f" | {ends} |", flush=True)
    print("| **mean** | | " + " | ".join(f"**{v:.3f}**" for v in np.mean(rows, axis=0)) + " | |")


if __name__ == "__main__":
    main()
