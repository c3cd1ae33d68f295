"""Design choices are made here, on generated validation volumes, never on the held-out real volumes of
`evaluate.py`. Robot user, LIM-Net without MRF, Dice after each click, per kind of structure, for several
variants of the inference pipeline side by side (`-x`: the default without x; `+mrf`: with round fusion).

    .venv/bin/python scripts/validate.py --cases 4 --rounds 4
    .venv/bin/python scripts/validate.py --variants guarded+window --weights a.pt,b.pt   # two weights files

The robot loop is chaotic (one changed pixel early changes every later click), so besides the means a paired
table compares each run with the first on the very same cases: the mean per-case difference with a bootstrap 95%
interval. A difference whose interval holds 0 is noise at this number of cases.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "apps", "limnet"))

from lib.data.evaluation import regressions  # noqa: E402
from lib.data.robot import run_robot  # noqa: E402
from lib.data.synthetic import VALIDATION_KINDS, generate_case  # noqa: E402
from lib.engine.propagation import PropagationConfig  # noqa: E402
from lib.engine.segmenter import LimNetSegmenter  # noqa: E402
from lib.net.bundle import LimNet  # noqa: E402

VALIDATION_SEED = 777_000  # training draws from other seeds (scripts/train.py)
VARIANTS = {
    "full_slice": dict(box_search="full", local_window=False),
    "window": dict(box_search="full", local_window=True),
    "search+window": dict(box_search="search", local_window=True),
    "guarded+window": dict(box_search="guarded", local_window=True),
    "guarded+window-split": dict(box_search="guarded", local_window=True, split_leaks=False),
    "guarded+window-local": dict(box_search="guarded", local_window=True, local_rounds=False),
    "guarded+window-posglobal": dict(box_search="guarded", local_window=True, positive_global=False),
    "guarded+window-ext0": dict(box_search="guarded", local_window=True, extend_slices=0),
    "guarded+window-ext1": dict(box_search="guarded", local_window=True, extend_slices=1),
    "guarded+window-mrmem": dict(box_search="guarded", local_window=True, mr_memory=False),
    "guarded+window-fill": dict(box_search="guarded", local_window=True, fill_step=None),
    "guarded+window+mrf": dict(box_search="guarded", local_window=True, use_fusion=True),
    "guarded+window-geo": dict(box_search="guarded", local_window=True, negative_geodesic=0.0),
    "guarded+window-adds": dict(box_search="guarded", local_window=True, positive_adds=False),
    "guarded+window-clicked": dict(box_search="guarded", local_window=True, clicked_only=False),
    "guarded+window+keep": dict(box_search="guarded", local_window=True, keep_answered=True),
    "guarded+window-guard": dict(box_search="guarded", local_window=True, guard_adds=False),
    "guarded+window-frag": dict(box_search="guarded", local_window=True, fragments=0.0),
    "guarded+window-union": dict(box_search="guarded", local_window=True, positive_union=False),
    "guarded+window-subset": dict(box_search="guarded", local_window=True, negative_subset=False),
    "guarded+window-oneway": dict(box_search="guarded", local_window=True, positive_union=False, negative_subset=False),
    "guarded+window+thr4": dict(box_search="guarded", local_window=True, propagation=PropagationConfig(threshold=0.4)),
    "guarded+window+thr6": dict(box_search="guarded", local_window=True, propagation=PropagationConfig(threshold=0.6)),
    "guarded+window+cap12": dict(box_search="guarded", local_window=True, propagation=PropagationConfig(working_capacity=12)),
    "guarded+window-unc": dict(box_search="guarded", local_window=True,
                               propagation=PropagationConfig(uncertain_stop=None)),
    "guarded+window+unc1": dict(box_search="guarded", local_window=True,
                                propagation=PropagationConfig(uncertain_rise=0.1)),
    "guarded+window+pat3": dict(box_search="guarded", local_window=True, propagation=PropagationConfig(patience=3)),
    "guarded+window-slice1way": dict(box_search="guarded", local_window=True, slice_one_way=False),
    "guarded+window-ext": dict(box_search="guarded", local_window=True, extend_slices=None),
    "guarded+window+hyst2": dict(box_search="guarded", local_window=True, change_margin=0.2),
    "guarded+window+hyst35": dict(box_search="guarded", local_window=True, change_margin=0.35),
    "guarded+window+follow": dict(box_search="guarded", local_window=True, follow=4),
    "guarded+window+foot1": dict(box_search="guarded", local_window=True, negative_footprint=1.0),
    "guarded+window+foot05": dict(box_search="guarded", local_window=True, negative_footprint=0.5),
    "guarded+window+foot0": dict(box_search="guarded", local_window=True, negative_footprint=0.0),
    "guarded+window+footnone": dict(box_search="guarded", local_window=True, negative_footprint=None),
    "guarded+window-reread": dict(box_search="guarded", local_window=True, reread=None),
    "guarded+window+reread2": dict(box_search="guarded", local_window=True, reread=2.0),
    "guarded+window-larger": dict(box_search="guarded", local_window=True, larger_reading=False),
    "guarded+window+guard5": dict(box_search="guarded", local_window=True, first_guard=0.5),
    "guarded+window+guard6": dict(box_search="guarded", local_window=True, first_guard=0.6),
    "guarded+window-ignore": dict(box_search="guarded", local_window=True, ignore_outside=False),
    "guarded+window-distinct": dict(box_search="guarded", local_window=True, first_pick="smallest"),
    "guarded+window-distinct-ignore": dict(box_search="guarded", local_window=True, first_pick="smallest",
                                           ignore_outside=False),
    "guarded+window+distinct": dict(box_search="guarded", local_window=True, first_pick="distinct"),
    "guarded+window-rguard": dict(box_search="guarded", local_window=True, reduced_guard=None),
    "guarded+window+rguard5": dict(box_search="guarded", local_window=True, reduced_guard=0.5),
    "guarded+window+rguard4": dict(box_search="guarded", local_window=True, reduced_guard=0.4),
    "guarded+window+rguard3": dict(box_search="guarded", local_window=True, reduced_guard=0.3),
    "guarded+window+rguard4+cov9": dict(box_search="guarded", local_window=True, reduced_guard=0.4,
                                        window_coverage=0.9),
    "guarded+window+rguard4+cov8": dict(box_search="guarded", local_window=True, reduced_guard=0.4,
                                        window_coverage=0.8),
    "guarded+window+firstbox32": dict(box_search="guarded", local_window=True, first_box_min=32),
    "guarded+window+firstbox20": dict(box_search="guarded", local_window=True, first_box_min=20),
    "guarded+window-keep": dict(box_search="guarded", local_window=True, keep_reading=None),
    "guarded+window+tol9": dict(box_search="guarded", local_window=True, distinct_tolerance=0.9),
    "guarded+window-kbox": dict(box_search="guarded", local_window=True, keep_in_box=False),
    "guarded+window-inner": dict(box_search="guarded", local_window=True, inner_pick=None),
    "guarded+window-old_first": dict(box_search="guarded", local_window=True, reduced_guard=0.4,
                                     keep_reading=None, first_box_min=32),
    "guarded+window+footnone-denoise": dict(box_search="guarded", local_window=True, negative_footprint=None,
                                            denoise=None),
    "guarded+window+footnone-ctguard": dict(box_search="guarded", local_window=True, negative_footprint=None,
                                            imaged_guard_ct=0.45),
    "guarded+window+footnone-ctfloor": dict(box_search="guarded", local_window=True, negative_footprint=None,
                                            denoise_ct_floor=None),
    "guarded+window+footnone+keepunder0": dict(box_search="guarded", local_window=True, negative_footprint=None,
                                               negative_keep_under=0, keep_under_clicked=False),
    "guarded+window+footnone+keepclicked": dict(box_search="guarded", local_window=True, negative_footprint=None,
                                                keep_under_clicked=True),
    "guarded+window+footnone+wider": dict(box_search="guarded", local_window=True, negative_footprint=None,
                                          wider_adds=3, wider_gain=1.5),
    "guarded+window+footnone-wider": dict(box_search="guarded", local_window=True, negative_footprint=None,
                                          wider_adds=0),
    "guarded+window+footnone-keepunder": dict(box_search="guarded", local_window=True, negative_footprint=None,
                                              negative_keep_under=None),
    "guarded+window-bridge": dict(box_search="guarded", local_window=True, bridge_gaps=False),
    "guarded+window+like": dict(box_search="guarded", local_window=True, added_like=True),
    "guarded+window-cut": dict(box_search="guarded", local_window=True, cut_beyond=None),
    "guarded+window+refnew": dict(box_search="guarded", local_window=True, refine_only_new=True),
    "guarded+window+refneg": dict(box_search="guarded", local_window=True, refine_negatives=True),
    "guarded+window-edge": dict(box_search="guarded", local_window=True, propagation=PropagationConfig(edge_stop=0)),
    "guarded+window+f32": dict(box_search="guarded", local_window=True, precision="float32"),
    "guarded+window+bf16": dict(box_search="guarded", local_window=True, precision="bfloat16"),
    "guarded+window+nreach2": dict(box_search="guarded", local_window=True, negative_reach=2.0),
    "guarded+window+nreach3": dict(box_search="guarded", local_window=True, negative_reach=3.0),
    "guarded+window+nreach4": dict(box_search="guarded", local_window=True, negative_reach=4.0),
    "guarded+window+nreach3+foot0": dict(box_search="guarded", local_window=True, negative_reach=3.0,
                                         negative_footprint=0.0),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=4, help="cases per kind")
    p.add_argument("--first-case", type=int, default=0,
                   help="index of the first case per kind (fresh cases for checking a choice made on the first ones)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--weights", default=os.path.join(ROOT, "apps", "limnet", "model", "pretrained_limnet.pt"),
                   help="weights file; several, comma-separated, run every variant with each (named variant@file)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--kinds", default=",".join(VALIDATION_KINDS), help="kinds of structure, comma-separated")
    p.add_argument("--json", help="also write each run's per-case Dice here (runs split over processes by kind "
                                  "are compared together with --merge)")
    p.add_argument("--merge", help="comma-separated --json files: print their tables together and exit")
    p.add_argument("--user", choices=("volume", "slice"), default="volume",
                   help="the robot user (`run_robot`): the challenge's, or one who corrects the first click's slice")
    args = p.parse_args()
    if args.merge:
        dice: dict[str, dict[str, list[list[float]]]] = {}
        for path in args.merge.split(","):
            with open(path) as f:
                for name, by_kind in json.load(f).items():
                    dice.setdefault(name, {}).update(by_kind)
        print(tables(dice, list(dice), [k for k in VALIDATION_KINDS if k in next(iter(dice.values()))]))
        return
    torch.set_num_threads(args.threads)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if set(kinds) - set(VALIDATION_KINDS):
        raise SystemExit(f"unknown kinds {sorted(set(kinds) - set(VALIDATION_KINDS))}; known: {VALIDATION_KINDS}")
    files = [w.strip() for w in args.weights.split(",") if w.strip()]
    nets = {w: LimNet.load(w) for w in files}
    runs_of = [(v.strip(), w) for w in files for v in args.variants.split(",")]  # (variant, weights file)
    names = [v if len(files) == 1 else f"{v}@{os.path.splitext(os.path.basename(w))[0]}" for v, w in runs_of]
    if len(set(names)) < len(names):
        raise SystemExit("two runs share a name: give the weights files different names")
    dice: dict[str, dict[str, list[list[float]]]] = {n: {k: [] for k in kinds} for n in names}
    t0 = time.time()
    for i in range(args.first_case, args.first_case + args.cases):
        for j, kind in enumerate(VALIDATION_KINDS):
            if kind not in kinds:
                continue
            case = generate_case(np.random.default_rng(VALIDATION_SEED + 100 * i + j), kind)
            for name, (v, w) in zip(names, runs_of):
                seg = LimNetSegmenter(nets[w], "cpu", **{"use_fusion": False, **VARIANTS[v]})
                state = seg.new_state(case.image)
                run = run_robot(lambda fg, bg: seg.add_clicks(state, fg, bg), case.label, args.rounds, case.spacing,
                                user=args.user)
                d = run.dice + [run.dice[-1]] * (args.rounds - len(run.dice))
                dice[name][kind].append(d)
        print(f"# {i + 1 - args.first_case}/{args.cases} cases per kind, {time.time() - t0:.0f}s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dice, f)
    print(tables(dice, names, kinds))


def tables(dice: dict[str, dict[str, list[list[float]]]], names: list[str], kinds: list[str]) -> str:
    """Mean Dice per click and drops per run and kind, then the paired comparison with the first run."""
    rounds = len(dice[names[0]][kinds[0]][0])
    lines = ["\n| variant | kind | " + " | ".join(f"Dice@{r + 1}" for r in range(rounds)) + " | drops > 0.01 |",
             "|---|---|" + "---|" * (rounds + 1)]
    for v in names:
        for kind in kinds:
            m = np.mean(dice[v][kind], axis=0)
            lines.append(f"| {v} | {kind} | " + " | ".join(f"{x:.3f}" for x in m) + f" | {drops(dice[v][kind])} |")
        runs = pooled(dice[v])
        m = np.mean(runs, axis=0)
        lines.append(f"| {v} | **all** | " + " | ".join(f"**{x:.3f}**" for x in m) + f" | **{drops(runs)}** |")
    if len(names) > 1:
        lines.append(paired_table(dice, names))
    return "\n".join(lines)


def paired_table(dice: dict[str, dict[str, list[list[float]]]], names: list[str], draws: int = 2000) -> str:
    """Each run against the first on the same cases: mean per-case difference of the mean Dice over all clicks and
    of the last click's Dice, each with a bootstrap 95% interval over cases, cases better / worse by > 0.01, and the
    difference in round-to-round drops (total over the cases, its interval from the same resampling of cases)."""
    ref = np.array(pooled(dice[names[0]]))
    rng = np.random.default_rng(0)
    lines = [f"\nagainst {names[0]}, same cases (bootstrap 95% intervals over {len(ref)} cases):",
             "| run | mean over clicks - ref | 95% interval | last click - ref | 95% interval | cases better / worse "
             "| drops - ref | 95% interval |",
             "|---|---|---|---|---|---|---|---|"]
    ref_drops = np.array([regressions(r) for r in pooled(dice[names[0]])])
    for v in names[1:]:
        diff = np.array(pooled(dice[v])) - ref
        drop_diff = np.array([regressions(r) for r in pooled(dice[v])]) - ref_drops

        def interval(col: np.ndarray, scale: float = 1.0) -> tuple[float, float]:
            boot = col[rng.integers(len(col), size=(draws, len(col)))].mean(axis=1) * scale
            return tuple(np.percentile(boot, [2.5, 97.5]))

        cells = []
        for col in (diff.mean(axis=1), diff[:, -1]):
            lo, hi = interval(col)
            cells += [f"{col.mean():+.3f}", f"[{lo:+.3f}, {hi:+.3f}]"]
        last = diff[:, -1]
        cells.append(f"{int((last > 0.01).sum())} / {int((last < -0.01).sum())}")
        lo, hi = interval(drop_diff, len(ref))  # a total over the cases: the mean's interval times their number
        cells += [f"{int(drop_diff.sum()):+d}", f"[{lo:+.0f}, {hi:+.0f}]"]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pooled(by_kind: dict[str, list[list[float]]]) -> list[list[float]]:
    """One run's per-case Dice lists of every kind, in the same case order for every run (so they pair)."""
    return [d for k in VALIDATION_KINDS if k in by_kind for d in by_kind[k]]


def drops(runs: list[list[float]]) -> str:
    """Round-to-round steps where Dice fell by more than 0.01, of all steps (issue 3's never-worse target)."""
    return f"{sum(regressions(r) for r in runs)} / {sum(len(r) - 1 for r in runs)}"


if __name__ == "__main__":
    main()
