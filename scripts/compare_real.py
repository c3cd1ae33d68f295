"""Paired comparison of inference settings on the real validation sets, over several imperceptible noise draws.

The robot loop is chaotic: Gaussian noise of 0.2% of an image's intensity range, which no reader could see, moves
a real validation set's mean Dice after 8 clicks by up to 0.05 (design log, 2026-12-07). One run on the clean images
therefore says little about an effect of 0.01-0.02. This runs every setting on the same images with several noise
draws (`--noise-seeds`; a draw is the clean image when `--noise` is 0), pairs each setting with the first one
structure by structure and draw by draw, and prints per set and robot user the mean difference over clicks with a
bootstrap 95% interval over structures (their draws kept together), the difference on each draw (does its sign
hold?), Dice after the last click and the drops (steps where Dice falls by more than 0.01).

    .venv/bin/python scripts/compare_real.py --variant base='{}' --variant wider0='{"wider_adds": 0}'
    .venv/bin/python scripts/compare_real.py --variant base='{}' --variant thr4='{"propagation": {"threshold": 0.4}}' \\
        --sets ctval,brainval --users volume --noise-seeds 0,1,2 --jobs 2
    .venv/bin/python scripts/compare_real.py --variant base='{}' --variant new='{"weights": "runs/new.pt"}' \\
        --orientations stored,flip_xy

A variant is NAME=JSON, the keyword arguments of `LimNetSegmenter` (a `propagation` dict becomes its
`PropagationConfig`; a `weights` path runs that setting with that weights file instead of `--weights`); the first is
the reference. Jobs (setting x set x user x draw) run in `--jobs` processes of
`--threads` torch threads each. Choices are made here or on the generated cases (`validate.py`), never on the
held-out volumes of `evaluate.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "apps", "limnet"))

from lib.data.evaluation import VALIDATION_SETS as SETS  # noqa: E402
from lib.data.evaluation import bootstrap_interval, regressions, validation_set, with_noise  # noqa: E402


def segmenter_kwargs(settings: dict) -> dict:
    """`LimNetSegmenter` keyword arguments from a variant's JSON (a `propagation` dict -> `PropagationConfig`)."""
    from lib.engine.propagation import PropagationConfig

    kw = dict(settings)
    if isinstance(kw.get("propagation"), dict):
        kw["propagation"] = PropagationConfig(**kw["propagation"])
    return kw


# orientations a set's volumes can be read in (`--orientations`): as stored, an in-plane axis or both reversed (both:
# a RAS-stored brain as a DICOM series of it converts, LPS), the two swapped, turned a quarter either way, swapped with
# both reversed (the eight in-plane mirrors and turns), or the slices reversed
ORIENTATIONS = {
    "stored": lambda a: a,
    "flip_x": lambda a: a[::-1],
    "flip_y": lambda a: a[:, ::-1],
    "flip_xy": lambda a: a[::-1, ::-1],
    "swap_xy": lambda a: np.swapaxes(a, 0, 1),
    "turn_left": lambda a: np.swapaxes(a, 0, 1)[::-1],
    "turn_right": lambda a: np.swapaxes(a, 0, 1)[:, ::-1],
    "swap_flip_xy": lambda a: np.swapaxes(a, 0, 1)[::-1, ::-1],
    "flip_z": lambda a: a[:, :, ::-1],
}
SWAPPING = ("swap_xy", "turn_left", "turn_right", "swap_flip_xy")  # those that swap the in-plane axes


def oriented(image: np.ndarray, label: np.ndarray, spacing: tuple, orientation: str) -> tuple:
    """(image, label, spacing) read in another `orientation` (contiguous copies)."""
    turn = ORIENTATIONS[orientation]
    if orientation in SWAPPING:
        spacing = (spacing[1], spacing[0], *spacing[2:])
    return np.ascontiguousarray(turn(image)), np.ascontiguousarray(turn(label)), spacing


def run_job(job: dict) -> dict:
    """One setting on one set in one orientation, one robot user, one noise draw: {case name: Dice after each
    click}."""
    import torch

    from lib.data.robot import run_robot
    from lib.engine.segmenter import LimNetSegmenter
    from lib.net.bundle import LimNet

    torch.set_num_threads(job["threads"])
    settings = dict(job["settings"])
    net = LimNet.load(settings.pop("weights", job["weights"]))
    wanted = set(job["cases"])
    out = {}
    for i, case in enumerate(validation_set(job["set"])):
        if wanted and case.name not in wanted:
            continue
        image = with_noise(case.image, job["noise"], 1000 + i + job["seed"])
        image, label, spacing = oriented(image, case.label.astype(bool), case.spacing, job["orientation"])
        seg = LimNetSegmenter(net, "cpu", use_fusion=False, **segmenter_kwargs(settings))
        state = seg.new_state(image)
        run = run_robot(lambda fg, bg: seg.add_clicks(state, fg, bg), label, job["rounds"], spacing, user=job["user"])
        out[case.name] = [float(d) for d in run.dice]
    name = job["set"] if job["orientation"] == "stored" else f"{job['set']} ({job['orientation']})"
    return {**{k: job[k] for k in ("variant", "user", "seed")}, "set": name, "dice": out}


def paired(reference: dict[int, dict[str, list]], other: dict[int, dict[str, list]], seed: int = 0) -> dict:
    """Mean over clicks of `other` minus `reference`, per structure averaged over the draws both hold, with a
    bootstrap 95% interval over structures; and the same difference on each draw alone."""
    draws = sorted(set(reference) & set(other))
    names = sorted(set.intersection(*(set(reference[s]) & set(other[s]) for s in draws)))
    diff = np.array([[np.mean(other[s][n]) - np.mean(reference[s][n]) for s in draws] for n in names])
    per_structure = diff.mean(axis=1)
    low, high = bootstrap_interval(per_structure, np.random.default_rng(seed))
    return {"mean": float(per_structure.mean()), "low": low, "high": high,
            "per_draw": [float(d) for d in diff.mean(axis=0)],
            "structures": len(names), "draws": draws}


def table(results: list[dict], variants: list[str]) -> str:
    """Per set and user: each variant's Dice after the last click and drops (summed over draws), and its paired
    difference against the first variant."""
    lines = ["| set | user | variant | Dice@last (mean of draws) | drops | over clicks vs " + variants[0] +
             " [95%] | per draw |", "|---|---|---|---|---|---|---|"]
    by = {}
    for r in results:
        by.setdefault((r["set"], r["user"]), {}).setdefault(r["variant"], {})[r["seed"]] = r["dice"]
    for (set_, user), runs in sorted(by.items()):
        for v in variants:
            if v not in runs:
                continue
            last = np.mean([np.mean([d[-1] for d in dice.values()]) for dice in runs[v].values()])
            drops = sum(regressions(d) for dice in runs[v].values() for d in dice.values())
            if v != variants[0] and variants[0] in runs:
                p = paired(runs[variants[0]], runs[v])
                cmp = (f"{p['mean']:+.4f} [{p['low']:+.4f}, {p['high']:+.4f}] | "
                       + " ".join(f"{d:+.4f}" for d in p["per_draw"]))
            else:
                cmp = " | "
            lines.append(f"| {set_} | {user} | {v} | {last:.3f} | {drops} | {cmp} |")
    return "\n".join(lines)


def parse_variant(text: str) -> tuple[str, dict]:
    name, sep, settings = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"a variant is NAME=JSON, not {text!r}")
    try:
        value = json.loads(settings)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"variant {name}: {e}") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"variant {name}: the JSON must be an object of keyword arguments")
    return name, value


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", action="append", type=parse_variant, required=True,
                   help="NAME=JSON of LimNetSegmenter keyword arguments; the first is the reference (repeat)")
    p.add_argument("--sets", default=",".join(SETS))
    p.add_argument("--users", default="volume,slice", help="robot users: volume (the challenge's), slice")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--noise", type=float, default=0.2, help="noise spread, percent of each image's 1-99%% range")
    p.add_argument("--noise-seeds", default="0,50", help="noise draws (case i of a set is seeded 1000 + i + draw)")
    p.add_argument("--cases", default="", help="comma-separated case names (default: all of each set)")
    p.add_argument("--orientations", default="stored",
                   help=f"orientations each set is read in, each its own row ({', '.join(ORIENTATIONS)})")
    p.add_argument("--weights", default=os.path.join(ROOT, "apps", "limnet", "model", "pretrained_limnet.pt"))
    p.add_argument("--jobs", type=int, default=2, help="processes")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--json", help="write every run's per-case Dice here")
    args = p.parse_args()
    variants = dict(args.variant)
    if len(variants) < len(args.variant):
        raise SystemExit("variant names must differ")
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    if set(sets) - set(SETS):
        raise SystemExit(f"unknown sets {sorted(set(sets) - set(SETS))}; known: {list(SETS)}")
    users = [u.strip() for u in args.users.split(",") if u.strip()]
    if set(users) - {"volume", "slice"}:
        raise SystemExit("users are volume and/or slice")
    seeds = [int(s) for s in args.noise_seeds.split(",") if s.strip()]
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    orientations = [o.strip() for o in args.orientations.split(",") if o.strip()]
    if set(orientations) - set(ORIENTATIONS):
        raise SystemExit(f"unknown orientations {sorted(set(orientations) - set(ORIENTATIONS))}; "
                         f"known: {list(ORIENTATIONS)}")
    jobs = [dict(variant=v, settings=variants[v], set=s, orientation=o, user=u, seed=seed, noise=args.noise,
                 rounds=args.rounds, cases=cases, weights=args.weights, threads=args.threads)
            for s in sets for o in orientations for u in users for seed in seeds for v in variants]
    start = time.time()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(run_job, jobs))
    print(f"{len(jobs)} runs ({len(variants)} settings x {len(sets)} sets x {len(orientations)} orientations x "
          f"{len(users)} users x {len(seeds)} draws of {args.noise:g}% noise), {args.rounds} clicks, "
          f"{time.time() - start:.0f} s\n")
    print(table(results, list(variants)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"variants": variants, "noise": args.noise, "rounds": args.rounds, "runs": results}, f)


if __name__ == "__main__":
    main()
