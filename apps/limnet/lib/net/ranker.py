"""Which of a first click's readings is the object meant: gradient-boosted trees that compare two readings.

A first click is read in boxes from small to the whole slice (the segmenter's `_readings`); the interaction module
answers each box with an object of about the box's scale, so the readings are nested views of one another, and the
whole-slice answer may be a region many times the object around it (a rib's click on a 128 x 128 CT answered with
1,099 pixels). Scored one at a time, no learnt scorer carried over from the training slices to the validation sets
(design log, 2026-12-07); compared in pairs, by the differences of six numbers that do not depend on the slice's
size, it found the object where the guard had accepted such a whole-slice answer, and also took a piece of a large
structure for the structure, so the segmenter uses it only when asked (`ranked_first`, off by default). The trees
are stored in the weights file as buffers (thresholds in float64, kept exact by `LimNet.save`) and evaluated in
numpy.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np
import torch
from torch import nn

FEATURES = ("distinctness", "fill", "iou_smaller", "iou_larger", "span", "relative_distinctness")


class ReadingLike(Protocol):
    mask: np.ndarray
    extent: tuple[int, int, int, int]
    seen_in: int


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def reading_features(readings: Sequence[tuple[ReadingLike, float]]) -> np.ndarray:
    """One row of `FEATURES` per (reading, distinctness), readings ordered from the smallest box to the largest:
    distinctness, area over the box's area, IoU with the readings in the next smaller and larger boxes (-1 where
    there is none), larger side over the box's side, distinctness over the most distinct reading's."""
    top = max((float(s) for _, s in readings), default=0.0)
    rows = []
    for i, (reading, score) in enumerate(readings):
        x0, x1, y0, y1 = reading.extent
        rows.append([float(score), max(1, np.count_nonzero(reading.mask)) / reading.seen_in ** 2,
                     _iou(reading.mask, readings[i - 1][0].mask) if i > 0 else -1.0,
                     _iou(reading.mask, readings[i + 1][0].mask) if i + 1 < len(readings) else -1.0,
                     max(x1 - x0 + 1, y1 - y0 + 1) / reading.seen_in, float(score) / max(top, 1e-6)])
    return np.asarray(rows, dtype=np.float64).reshape(-1, len(FEATURES))


class ReadingRanker(nn.Module):
    """P(reading a is closer to the object than reading b) from the difference of their features: a binary
    gradient-boosted classifier (log-loss), its trees flattened into node arrays."""

    def __init__(self, nodes: int = 1, trees: int = 1) -> None:
        super().__init__()
        self.register_buffer("feature", torch.zeros(nodes, dtype=torch.int64))
        self.register_buffer("threshold", torch.zeros(nodes, dtype=torch.float64))
        self.register_buffer("left", torch.full((nodes,), -1, dtype=torch.int64))
        self.register_buffer("right", torch.full((nodes,), -1, dtype=torch.int64))
        self.register_buffer("value", torch.zeros(nodes, dtype=torch.float64))
        self.register_buffer("root", torch.zeros(trees, dtype=torch.int64))
        self.register_buffer("bias", torch.zeros(2, dtype=torch.float64))  # (initial log-odds, learning rate)
        self._arrays: tuple | None = None

    @classmethod
    def from_sklearn(cls, model) -> "ReadingRanker":
        """From a fitted `sklearn.ensemble.GradientBoostingClassifier` (two classes, log-loss)."""
        trees = [est[0].tree_ for est in model.estimators_]
        sizes = [t.node_count for t in trees]
        ranker = cls(sum(sizes), len(trees))
        offsets = np.cumsum([0] + sizes[:-1])
        parts = {name: [] for name in ("feature", "threshold", "left", "right", "value")}
        for tree, off in zip(trees, offsets):
            leaf = tree.children_left < 0
            parts["feature"].append(np.where(leaf, 0, tree.feature))
            parts["threshold"].append(np.where(leaf, 0.0, tree.threshold))
            parts["left"].append(np.where(leaf, -1, tree.children_left + off))
            parts["right"].append(np.where(leaf, -1, tree.children_right + off))
            parts["value"].append(tree.value[:, 0, 0])
        with torch.no_grad():
            for name, values in parts.items():
                getattr(ranker, name).copy_(torch.from_numpy(np.concatenate(values)))
            ranker.root.copy_(torch.from_numpy(offsets.astype(np.int64)))
            prior = float(model.init_.class_prior_[1])
            ranker.bias.copy_(torch.tensor([np.log(prior / (1.0 - prior)), model.learning_rate], dtype=torch.float64))
        return ranker

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._arrays = None

    def _numpy(self) -> tuple:
        if self._arrays is None:
            self._arrays = tuple(getattr(self, name).detach().cpu().numpy()
                                 for name in ("feature", "threshold", "left", "right", "value", "root", "bias"))
        return self._arrays

    def beats(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """P(row i of `a` is the better reading than row i of `b`), features as `reading_features` gives them."""
        feature, threshold, left, right, value, root, bias = self._numpy()
        diff = (np.atleast_2d(a) - np.atleast_2d(b)).astype(np.float32).astype(np.float64)  # as sklearn compares
        node = np.broadcast_to(root, (diff.shape[0], root.size)).copy()
        rows = np.arange(diff.shape[0])[:, None]
        while True:
            inner = left[node] >= 0
            if not inner.any():
                break
            go = np.where(diff[rows, feature[node]] <= threshold[node], left[node], right[node])
            node = np.where(inner, go, node)
        raw = bias[0] + bias[1] * value[node].sum(axis=1)
        return 1.0 / (1.0 + np.exp(-raw))

    def choose(self, readings: Sequence[tuple[ReadingLike, float]]) -> tuple[int, float]:
        """(index of the reading that wins most comparisons against the others, P that it beats the last reading,
        the answer in the largest box); (last, 0.0) when there is one reading."""
        n = len(readings)
        if n < 2:
            return n - 1, 0.0
        x = reading_features(readings)
        p, q = np.nonzero(~np.eye(n, dtype=bool))
        beats = self.beats(x[p], x[q])
        wins = np.zeros(n)
        np.add.at(wins, p, beats)
        best = int(np.argmax(wins))
        return best, (0.0 if best == n - 1 else float(beats[(p == best) & (q == n - 1)][0]))
