"""Does retraining on newly labelled cases help? Fine-tune through the running server on a few labelled cases of a
structure the base weights handle poorly, and measure Dice on held-out cases of that structure before and after.

    .venv/bin/python scripts/benchmark_finetune.py                  # thin curved sheets, 4 labelled, 6 held out
    .venv/bin/python scripts/benchmark_finetune.py --kind tube --epochs 3

The labelled cases are saved with `PUT /datastore/label?tag=final` and trained with `POST /train/limnet`, exactly as
a client does; the held-out cases are other volumes of the same kind (other seeds), never seen by the trainer.
Prints a table (mean Dice after each robot click, before and after, and the trainer's own validation Dice).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import nibabel as nib
import numpy as np
import requests
import torch
from serverctl import start_server, stop_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "apps", "limnet"))

from lib.data.robot import run_robot  # noqa: E402
from lib.data.synthetic import generate_case  # noqa: E402
from lib.engine.segmenter import LimNetSegmenter  # noqa: E402
from lib.net.bundle import LimNet  # noqa: E402

TRAIN_SEED, TEST_SEED = 880_000, 990_000  # neither is used by scripts/train.py or scripts/validate.py


def robot_dice(weights: str, cases: list, rounds: int) -> np.ndarray:
    """Mean Dice after each click (no MRF, the served default) over the cases."""
    seg = LimNetSegmenter(LimNet.load(weights), "cpu", use_fusion=False)
    curves = []
    for case in cases:
        state = seg.new_state(case.image)
        d = run_robot(lambda fg, bg: seg.add_clicks(state, fg, bg), case.label, rounds, case.spacing).dice
        curves.append(d + [d[-1]] * (rounds - len(d)))
    return np.mean(curves, axis=0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", default="sheet", help="a kind of lib.data.synthetic.KINDS")
    p.add_argument("--train-cases", type=int, default=4)
    p.add_argument("--test-cases", type=int, default=6)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps-per-epoch", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(2)
    work = tempfile.mkdtemp(prefix="limnet-finetune-")
    studies = os.path.join(work, "studies")
    os.makedirs(studies)
    app = os.path.join(work, "limnet")
    shutil.copytree(os.path.join(ROOT, "apps", "limnet"), app,
                    ignore=shutil.ignore_patterns("logs", "__pycache__", "*.prev.pt", "*_train_stats.json"))
    labelled = [generate_case(np.random.default_rng(TRAIN_SEED + i), args.kind) for i in range(args.train_cases)]
    held_out = [generate_case(np.random.default_rng(TEST_SEED + i), args.kind) for i in range(args.test_cases)]
    for i, c in enumerate(labelled):
        nib.save(nib.Nifti1Image(c.image, np.diag(list(c.spacing) + [1.0])), os.path.join(studies, f"{args.kind}{i}.nii.gz"))
    model = os.path.join(app, "model")
    served = next(os.path.join(model, n) for n in ("limnet.pt", "pretrained_limnet.pt")
                  if os.path.exists(os.path.join(model, n)))
    before = robot_dice(served, held_out, args.rounds)
    proc, url = start_server(app, studies, MONAI_LABEL_AUTO_UPDATE_SCORING="false")
    try:
        for i, c in enumerate(labelled):  # what a user does in Slicer: save the finished label as final
            path = os.path.join(work, f"label{i}.nii.gz")
            nib.save(nib.Nifti1Image(c.label.astype(np.uint8), np.diag(list(c.spacing) + [1.0])), path)
            with open(path, "rb") as f:
                requests.put(f"{url}/datastore/label", params={"image": f"{args.kind}{i}", "tag": "final"},
                             files={"label": (os.path.basename(path), f)}).raise_for_status()
        t = time.time()
        requests.post(f"{url}/train/limnet", json={"max_epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch,
                                                   "val_split": 0.25}).raise_for_status()
        while requests.get(f"{url}/train/").json().get("status") not in ("DONE", "ERROR"):
            time.sleep(5)
        minutes = (time.time() - t) / 60
        status = requests.get(f"{url}/train/").json()["status"]
        stats = requests.get(f"{url}/info/").json()["train_stats"]["limnet"]
        c = labelled[0]
        k = int(np.argmax(c.label.sum((0, 1))))
        xs, ys = np.nonzero(c.label[:, :, k])
        click = requests.post(f"{url}/infer/limnet?image={args.kind}0&output=json",
                              data={"params": json.dumps({"foreground": [[int(xs[0]), int(ys[0]), k]]})})
    finally:
        stop_server(proc)
    after_path = os.path.join(model, "limnet.pt")
    after = robot_dice(after_path, held_out, args.rounds) if stats.get("published") else before
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}; kind {args.kind}; "
          f"{args.train_cases} labelled cases (trainer's validation split 0.25), {args.test_cases} held-out cases; "
          f"training {args.epochs} x {args.steps_per_epoch} steps: {minutes:.1f} min, status {status}; "
          f"published: {stats.get('published')}; a click after publishing: HTTP {click.status_code}")
    print(f"trainer's validation Dice (robot, {stats.get('val_objects')} objects): {stats.get('val_dice_before'):.3f} "
          f"-> {stats.get('val_dice_after'):.3f}")
    print("\n| weights | " + " | ".join(f"held-out Dice@{r + 1}" for r in range(args.rounds)) + " |")
    print("|---|" + "---|" * args.rounds)
    print(f"| before ({os.path.basename(served)}) | " + " | ".join(f"{v:.3f}" for v in before) + " |")
    print("| after fine-tuning | " + " | ".join(f"{v:.3f}" for v in after) + " |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
