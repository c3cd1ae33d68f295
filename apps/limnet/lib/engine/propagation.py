"""Bidirectional propagation of prompt masks through a volume with the memory model."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage as ndi

from lib.net.memory import MemoryModel

from .geometry import Box, Window, crop_slices, inner_edges_touched, neighbour_indices
from .memory_bank import MemoryBank


class SliceFeatures:
    """Query-encoder outputs per slice for one volume, one box and its intensity window, computed in chunks and
    cached.

    Lives in the interaction state, so a later round in the same box re-encodes nothing. The two sweeps of a round
    may call `get` from two threads: each sweep encodes the chunk ahead of itself, so they rarely ask for the same
    slice, and when they do (the anchors) both store the same tensors. The anchors' memory values are cached too
    (`value`): both sweeps remember every anchor, and a later round keeps most anchors as they were.
    """

    def __init__(self, memory: MemoryModel, volume: np.ndarray, box: Box, size: int, device: torch.device,
                 window: Window | None = None, chunk: int = 16) -> None:
        self.memory, self.volume, self.box, self.size, self.device, self.chunk = memory, volume, box, size, device, chunk
        self.window = window
        self.cache: dict[int, tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]] = {}
        self.values: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # slice -> (anchor mask, its value)

    def get(self, k: int, direction: int = 1) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(frame 1x3xSxS, key 1xCkxhxw, feats) of slice k; encodes the next `chunk` slices in `direction` too."""
        if k not in self.cache:
            depth = self.volume.shape[2]
            ks = [j for j in range(k, k + direction * self.chunk, direction) if 0 <= j < depth and j not in self.cache]
            frames = crop_slices(self.volume, self.box, neighbour_indices(np.array(ks), depth), self.size,
                                 self.window)
            frames = frames.to(self.device)
            with torch.inference_mode():
                keys, feats = self.memory.encode_key(frames)
            for i, j in enumerate(ks):
                self.cache[j] = (frames[i : i + 1], keys[i : i + 1], [f[i : i + 1] for f in feats])
        return self.cache[k]

    def value(self, k: int, mask: torch.Tensor) -> torch.Tensor:
        """The memory value of slice k holding `mask` (1 x 1 x S x S), encoded once per slice and mask."""
        hit = self.values.get(k)
        if hit is not None and hit[0].dtype == mask.dtype and torch.equal(hit[0], mask):
            return hit[1]
        frame, _, feats = self.get(k)
        value = self.memory.encode_value(frame, mask, feats[2])
        self.values[k] = (mask.clone(), value)
        return value


@dataclass
class PropagationConfig:
    stop_area: float = 8.0  # working-grid pixels under which a slice counts as empty
    patience: int = 2  # empty slices in a row after the last anchor before a sweep stops
    working_capacity: int = 6
    threshold: float = 0.5
    reach: int = 6  # working-grid pixels a slice's mask may move from the previous slice's and still connect
    settle: int = 2  # slices in a row that match the last round before a sweep hands over to the last round
    same_iou: float = 0.97  # a slice "matches" the last round at this IoU of the masks
    edge_stop: int = 2  # a propagated slice whose mask runs into this many edges of the box (inside the image) ends
    # the sweep: the box holds the object with a margin, so filling it means the memory ran onto a neighbour
    uncertain_stop: float | None = 0.4  # a sweep past its last anchor ends after `uncertain_run` slices in a row
    # whose mask is more uncertain than this (`uncertainty`) and `uncertain_rise` more than the sweep's first two
    # slices, dropping them: where the memory model runs past an object's end into tissue like it (a brain nucleus
    # into the brain around it), its answer turns from an outline into a blur (None: off; design log, 2026-12-05)
    uncertain_run: int = 2
    uncertain_rise: float | None = 0.2
    parallel: bool = True  # on the CPU, run the two sweeps in two threads: they are independent, and one sweep's
    # small convolutions do not keep two cores busy (first click on a 95-slice object: 2.5 s -> 1.5 s, README);
    # the segmenter owns the one worker thread (a thread per round grew the server's memory: malloc arenas)


def keep_connected(prob: torch.Tensor, previous: torch.Tensor, threshold: float, reach: int) -> torch.Tensor:
    """Zero the parts of a slice's mask that do not touch the previous slice's mask (grown by `reach`).

    An object continues from slice to slice; a blob that appears away from it is a neighbour the memory drifted
    onto, and remembering it would carry the leak on to the next slices.
    """
    mask = (prob > threshold).cpu().numpy()
    if not mask.any():
        return prob
    grown = torch.nn.functional.max_pool2d(previous.float()[None, None], (1, 2 * reach + 1), 1, (0, reach))
    near = (torch.nn.functional.max_pool2d(grown, (2 * reach + 1, 1), 1, (reach, 0))[0, 0] > 0).cpu().numpy()
    if near[mask].all():  # the usual slice: all of it near the previous mask, nothing to label
        return prob
    lab, n = ndi.label(mask)
    hits = np.unique(lab[near & mask])
    keep = np.isin(lab, hits[hits > 0]) | ~mask  # soft values below threshold stay as they are
    return prob * torch.from_numpy(keep).to(prob.device)


def uncertainty(prob: torch.Tensor, low: float = 0.2, high: float = 0.8) -> float:
    """The share of a slice's candidate pixels (probability above `low`) that the model is unsure of (below `high`):
    low for a mask with a sharp outline, high for a blur."""
    candidate = prob > low
    n = int(candidate.sum())
    return float((candidate & (prob < high)).sum()) / n if n else 0.0


def _blurred(prob: torch.Tensor, reference: float, cfg: PropagationConfig) -> bool:
    """Whether a propagated slice is more uncertain than `cfg.uncertain_stop` and, with `cfg.uncertain_rise`, by that
    much more than `reference` (the sweep's first slices)."""
    u = uncertainty(prob)
    return u > cfg.uncertain_stop and (cfg.uncertain_rise is None or u > reference + cfg.uncertain_rise)


def _same(a: torch.Tensor, b: torch.Tensor, threshold: float, iou: float) -> bool:
    ma, mb = a > threshold, b > threshold
    union = int((ma | mb).sum())
    return union == 0 or int((ma & mb).sum()) >= iou * union


def _sweep(memory: MemoryModel, features: SliceFeatures, anchors: dict[int, torch.Tensor], direction: int,
           cfg: PropagationConfig, previous: dict[int, torch.Tensor] | None = None,
           span: tuple[int, int] | None = None) -> dict[int, torch.Tensor]:
    """One direction: start at the first non-empty anchor met, remember every anchor, walk until the object ends.

    An empty anchor (a slice the user cleared) says the object is absent there: the sweep stops at it.
    With `previous` (the last round's result in the same box), a sweep past the new anchors that lands on the last
    round's masks for `settle` slices in a row hands over to it: a refinement click re-propagates only where masks
    change. With `span` (first, last slice), the sweep starts from the last anchor before it and stops after it.
    """
    depth = features.volume.shape[2]
    order = sorted(anchors, reverse=direction < 0)
    present = [k for k in order if float((anchors[k] > cfg.threshold).sum()) >= cfg.stop_area]
    if not present:
        return {}
    last_anchor = present[-1]
    bank = MemoryBank(cfg.working_capacity)
    values = {}
    for k in order:  # every prompted slice is a pinned memory anchor, the cleared ones too
        _, key, _ = features.get(k, direction)
        values[k] = features.value(k, anchors[k])
        bank.add(key.flatten(2), values[k].flatten(2), pinned=True)
    out: dict[int, torch.Tensor] = {}
    empty = settled = 0
    unsure: list[int] = []  # the run of uncertain slices past the last anchor
    first_uncertainty: list[float] = []  # of the sweep's first propagated slices, the reference for `uncertain_rise`
    start, below, above = present[0], -1, depth  # the walk stays strictly between `below` and `above`
    if span is not None:  # start from the last anchor before the span, stop once past it
        entry = span[0] if direction > 0 else span[1]
        start = ([p for p in present if (entry - p) * direction >= 0] or [present[0]])[-1]
        below, above = (below, span[1] + 1) if direction > 0 else (span[0] - 1, above)
    k = start + direction
    hidden, source = None, start  # a fresh sensory state starts from the mask of the anchor `source`
    last_round, previous = previous, anchors[start][0, 0] > cfg.threshold
    while below < k < above:
        if k in anchors:
            if k not in present:
                break
            hidden, source = None, k  # a prompted slice restarts the sensory state from its own mask
            empty = 0
            previous = anchors[k][0, 0] > cfg.threshold
            k += direction
            continue
        frame, key, feats = features.get(k, direction)
        if hidden is None:
            hidden = memory.remember(values[source], memory.init_hidden(key))
        mem_k, mem_v = bank.readout_tensors()
        logits, hidden, usage = memory.step(key, feats, mem_k, mem_v, hidden)
        prob = keep_connected(torch.sigmoid(logits.float())[0, 0], previous, cfg.threshold, cfg.reach)[None, None]
        bank.record_usage(usage)
        out[k] = prob[0, 0]
        area = float((prob > cfg.threshold).sum())
        if cfg.edge_stop and inner_edges_touched(prob[0, 0] > cfg.threshold, features.box,
                                                 features.volume.shape[:2]) >= cfg.edge_stop:
            del out[k]
            break
        if cfg.uncertain_stop is not None and area >= cfg.stop_area:
            if len(first_uncertainty) < 2:
                first_uncertainty.append(uncertainty(prob[0, 0]))
            elif (k - last_anchor) * direction > 0 and _blurred(prob[0, 0], sum(first_uncertainty) / 2, cfg):
                unsure.append(k)
                if len(unsure) >= cfg.uncertain_run:
                    for j in unsure:
                        del out[j]
                    break
            else:
                unsure = []
        if area < cfg.stop_area:
            empty = empty + 1 if (k - last_anchor) * direction > 0 else 0
            if empty >= cfg.patience:
                break
        else:
            empty = 0
            previous = prob[0, 0] > cfg.threshold
            value = memory.encode_value(frame, prob, feats[2])
            bank.add(key.flatten(2), value.flatten(2))
            hidden = memory.remember(value, hidden)
        if last_round is not None and (k - last_anchor) * direction > 0:
            settled = settled + 1 if k in last_round and _same(prob[0, 0], last_round[k], cfg.threshold,
                                                               cfg.same_iou) else 0
            if settled >= cfg.settle:  # from here on this round would repeat the last one
                j = k + direction
                while j in last_round and j not in anchors:
                    out[j] = last_round[j]
                    j += direction
                break
        k += direction
    return out


def propagate(memory: MemoryModel, features: SliceFeatures, anchors: dict[int, torch.Tensor],
              cfg: PropagationConfig | None = None, previous: dict[int, torch.Tensor] | None = None,
              span: tuple[int, int] | None = None, executor: ThreadPoolExecutor | None = None,
              precision: torch.dtype | None = None) -> dict[int, torch.Tensor]:
    """Working-grid probabilities for every slice reached from the anchors (slice -> S x S).

    Slices between two anchors get both sweeps, weighted by closeness to the anchor each sweep came from.
    `previous`: the last round's result on the same features; `span`: the only slices wanted (see `_sweep`);
    `executor`: runs the backward sweep while this thread runs the forward one (None: one after the other);
    `precision`: the autocast type the sweeps run in (None: float32).
    """
    cfg = cfg or PropagationConfig()
    anchors = {k: v.reshape(1, 1, *v.shape[-2:]) for k, v in anchors.items()}

    def sweep(direction: int) -> dict[int, torch.Tensor]:
        # thread-local, both: entered in the thread that runs the sweep
        with torch.inference_mode(), torch.autocast(torch.device(features.device).type, dtype=precision or torch.float32,
                                                    enabled=precision is not None):
            return _sweep(memory, features, anchors, direction, cfg, previous, span)

    if executor is not None:
        backward = executor.submit(sweep, -1)
        fwd = sweep(+1)
        bwd = backward.result()
    else:
        fwd, bwd = sweep(+1), sweep(-1)
    ks = np.array(sorted(anchors))
    result = {k: v[0, 0] for k, v in anchors.items()}
    for k in set(fwd) | set(bwd):
        if k in fwd and k in bwd:  # between two non-empty anchors: the sweeps stop at empty ones
            d_f = k - ks[ks < k].max()
            d_b = ks[ks > k].min() - k
            result[k] = (fwd[k] * d_b + bwd[k] * d_f) / (d_f + d_b)
        else:
            result[k] = fwd[k] if k in fwd else bwd[k]
    return result
