"""The 2D interaction module alone, on crops as training cuts them: several weights files paired on the same slices.

    .venv/bin/python scripts/probe_interaction.py --weights A.pt B.pt            # the real validation sets
    .venv/bin/python scripts/probe_interaction.py --weights A.pt --train --rounds 15
    .venv/bin/python scripts/probe_interaction.py --weights A.pt B.pt --noise 3   # 3% noise on the volumes

Per source, up to `--slices` slices of each structure (at least 20 pixels of it), in a box 1.5 times the object
centred on it, seen through the box's window (`box_window`, `crop_slices`): one click at the deepest point, then
the training's 2D robot (`add_error_clicks`), the module answering afresh from all clicks each time. Prints mean Dice
after clicks 1, 2, 3, 5 (and 10, 15), and against the first weights file the mean paired difference with a
bootstrap interval over structures. `--train` adds the training sources (generated cases, MNI152 targets, TotalSegmentator
organs, atlas structures) to tell a module that fits its data no better than unseen data (short of capacity or of
information) from one that overfits. 1-4 minutes on two threads, not the half hour of robot runs: for weights, not for
inference rules.
Never run it on the held-out set.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "apps", "limnet"))

from lib.data.evaluation import VALIDATION_SETS, bootstrap_interval, validation_set, with_noise  # noqa: E402
from lib.engine.geometry import Box, box_window, crop_slices, neighbour_indices, normalize_intensity  # noqa: E402
from lib.net.bundle import WORKING_SIZE, LimNet  # noqa: E402
from lib.training.samplers import Case, add_error_clicks, deepest_point, interaction_inputs  # noqa: E402

Task = tuple[torch.Tensor, torch.Tensor, tuple[int, int]]  # 3 x S x S crop, 1 x S x S truth, first click


def crop_tasks(case: Case, rng: np.random.Generator, slices: int) -> list[Task]:
    """Up to `slices` slices of the case's object, each cut in a box 1.5 times the object, as a round's box."""
    label = case.label > 0
    ks = np.nonzero(label.sum((0, 1)) >= 20)[0]
    tasks = []
    for k in rng.choice(ks, min(slices, ks.size), replace=False) if ks.size else []:
        m = label[:, :, k]
        box = Box.of_mask(m, 1.5, 24)
        ks3 = neighbour_indices(int(k), case.image.shape[2])
        crop = crop_slices(case.image, box, ks3, WORKING_SIZE, box_window(case.image, box, ks3))[0]
        truth = crop_slices(label.astype(np.float32), box, np.array([[k]]), WORKING_SIZE)[0] > 0.5
        x, y = deepest_point(m)
        tasks.append((crop, truth.float(), box.to_working(x, y, WORKING_SIZE)))
    return tasks


@torch.no_grad()
def robot_dice(module: torch.nn.Module, tasks: list[Task], rounds: int, batch: int = 32) -> np.ndarray:
    """Dice (rounds x tasks) of the module's fresh answers after each of the 2D robot's clicks."""
    images, truth = torch.stack([t[0] for t in tasks]), torch.stack([t[1] for t in tasks])
    clicks = [([t[2]], []) for t in tasks]
    out = []
    for _ in range(rounds):
        pred = torch.cat([torch.sigmoid(module(interaction_inputs(images[i:i + batch], clicks[i:i + batch])))
                          for i in range(0, len(tasks), batch)])
        p, t = pred > 0.5, truth > 0.5
        inter, total = (p & t).sum((1, 2, 3)), p.sum((1, 2, 3)) + t.sum((1, 2, 3))
        out.append((2 * inter / total.clamp(min=1)).numpy())
        clicks = add_error_clicks(pred, truth, clicks)
    return np.array(out)


def sources(sets: list[str], train: bool, noise: float) -> dict[str, list[Case]]:
    """Cases by source name: training sources first (with `train`), then the validation sets (`noise`: percent of
    each volume's 1-99 percentile range, one fixed draw per case)."""
    out: dict[str, list[Case]] = {}
    if train:
        from lib.data.atlas_nuclei import training_cases as atlas_cases
        from lib.data.real_targets import mni_training_cases
        from lib.data.totalseg import training_cases
        from lib.training.pool import synthetic_case

        out["generated (train)"] = [synthetic_case(np.random.default_rng(1000 + i)) for i in range(24)]
        out["mni152 (train)"] = mni_training_cases(np.random.default_rng(1))[:24]
        out["totalseg (train)"] = training_cases(np.random.default_rng(2))
        out["atlas (refiner's train)"] = atlas_cases(np.random.default_rng(3))[:24]
    for name in sets:
        out[name] = [Case(normalize_intensity(with_noise(c.image.astype(np.float32), noise, 1000 + i)), c.label)
                     for i, c in enumerate(validation_set(name))]
    return out


def main(argv: list[str] | None = None) -> dict[str, list[np.ndarray]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", nargs="+", default=[os.path.join(ROOT, "apps/limnet/model/pretrained_limnet.pt")])
    p.add_argument("--sets", default=",".join(VALIDATION_SETS), help="validation sets, comma-separated ('' none)")
    p.add_argument("--train", action="store_true", help="also the training sources")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--slices", type=int, default=6, help="slices per structure")
    p.add_argument("--noise", type=float, default=0.0, help="percent of the intensity range, on the volumes")
    p.add_argument("--module", choices=("interaction", "refiner"), default="interaction",
                   help="the refiner reads an empty last mask here, as on a first click")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    modules = [getattr(LimNet.load(w), args.module) for w in args.weights]
    shown = [i for i in (0, 1, 2, 4, 9, 14) if i < args.rounds]
    print(f"| source | slices | weights | {' | '.join(f'Dice@{i + 1}' for i in shown)} | "
          f"vs first, Dice@1 | vs first, Dice@{args.rounds} |")
    print("|---|---|---|" + "---|" * (len(shown) + 2))
    results = {}
    for name, cases in sources([s for s in args.sets.split(",") if s], args.train, args.noise).items():
        rng = np.random.default_rng(0)  # the same slices for every weights file
        per_case = [crop_tasks(c, rng, args.slices) for c in cases]
        tasks = [t for ts in per_case for t in ts]
        owner = np.repeat(np.arange(len(per_case)), [len(ts) for ts in per_case])
        if not tasks:
            continue
        results[name] = [robot_dice(m, tasks, args.rounds) for m in modules]
        boot = np.random.default_rng(0)
        for w, d in zip(args.weights, results[name]):
            cells = []
            for r in (0, args.rounds - 1):  # the interval over structures: a structure's slices are alike
                diff = d[r] - results[name][0][r]
                by_case = np.array([diff[owner == i].mean() for i in np.unique(owner)])
                low, high = bootstrap_interval(by_case, boot, draws=1000)
                cells.append(f"{diff.mean():+.3f} [{low:+.3f}, {high:+.3f}]")
            print(f"| {name} | {len(tasks)} | {os.path.basename(w)} | "
                  + " | ".join(f"{d[i].mean():.3f}" for i in shown) + f" | {cells[0]} | {cells[1]} |", flush=True)
    return results


if __name__ == "__main__":
    main()
