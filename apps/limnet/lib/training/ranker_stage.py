"""Ranker stage: the reading ranker learns, from the interaction module's own readings of first clicks on training
slices, which of two readings is closer to the truth (`lib/net/ranker.py`). Runs after the interaction stage
(the readings are that module's answers); reading 500 slices per source took 8 min here beside two validation
runs (the trees fit in seconds), no checkpoint needed."""

from __future__ import annotations

import logging
import time

import numpy as np

from lib.data.robot import dice
from lib.engine.segmenter import LimNetSegmenter
from lib.net.bundle import LimNet
from lib.net.ranker import ReadingRanker, reading_features

from .pool import real_targets, synthetic_case
from .samplers import Case, deepest_point

logger = logging.getLogger(__name__)

MARGIN = 0.05  # pairs of readings whose Dice differ by less say nothing about which is the object


def ranker_sources(seed: int = 0, generated: int = 60) -> dict[str, list[Case]]:
    """The training sources the slices are drawn from: generated volumes (their own seeds), the MNI152 training
    targets, the TotalSegmentator training organs and the atlas nuclei (never the validation or held-out cases)."""
    return {"generated": [synthetic_case(np.random.default_rng(100_000 * seed + 5000 + i)) for i in range(generated)],
            **real_targets(seed)}


def ranker_slices(net: LimNet, sources: dict[str, list[Case]], per_source: int = 500,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, Dice against the truth, slice index) of every reading of a click at the deepest point of the
    object on `per_source` random slices (with at least 20 object pixels) of each source."""
    segmenter = LimNetSegmenter(net, "cpu", use_fusion=False)
    rng = np.random.default_rng(seed)
    xs, ys, groups, g, t = [], [], [], 0, time.time()
    for name, cases in sources.items():
        for _ in range(per_source):
            case = cases[rng.integers(len(cases))]
            label = case.label > 0
            ks = np.nonzero(label.sum((0, 1)) >= 20)[0]
            if ks.size == 0:
                continue
            k = int(ks[rng.integers(ks.size)])
            x, y = deepest_point(label[:, :, k])
            readings = segmenter._readings(case.image, k, [(x, y)], [])
            if readings:
                xs.append(reading_features(readings))
                ys += [dice(reading.mask, label[:, :, k]) for reading, _ in readings]
                groups += [g] * len(readings)
            g += 1
        logger.info("ranker: %s slices read, %d readings so far, %.0fs", name, len(ys), time.time() - t)
    return np.concatenate(xs), np.asarray(ys), np.asarray(groups)


def comparison_pairs(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Feature differences of every ordered pair of readings of one slice whose Dice differ by more than `MARGIN`,
    labelled 1 where the first is the better."""
    diffs, better = [], []
    for g in np.unique(groups):
        i = np.nonzero(groups == g)[0]
        for p in i:
            for q in i:
                if p != q and abs(y[p] - y[q]) > MARGIN:
                    diffs.append(x[p] - x[q])
                    better.append(int(y[p] > y[q]))
    return np.asarray(diffs), np.asarray(better)


def fit_ranker(x: np.ndarray, y: np.ndarray, groups: np.ndarray, trees: int = 150, depth: int = 3) -> ReadingRanker:
    """Gradient-boosted trees on the comparison pairs (scikit-learn, installed with MONAI Label)."""
    from sklearn.ensemble import GradientBoostingClassifier

    model = GradientBoostingClassifier(n_estimators=trees, max_depth=depth, random_state=0)
    return ReadingRanker.from_sklearn(model.fit(*comparison_pairs(x, y, groups)))


def train_ranker(net: LimNet, seed: int = 0, per_source: int = 500,
                 sources: dict[str, list[Case]] | None = None) -> ReadingRanker:
    """Read the training slices with `net`'s interaction module, fit the ranker and attach it to `net`."""
    t = time.time()
    x, y, groups = ranker_slices(net, sources if sources is not None else ranker_sources(seed), per_source, seed)
    net.ranker = fit_ranker(x, y, groups)
    logger.info("ranker: %d trees from %d readings of %d slices in %.0fs", net.ranker.root.numel(), len(y),
                len(np.unique(groups)), time.time() - t)
    return net.ranker
