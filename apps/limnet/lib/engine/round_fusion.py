"""Multi-Round Result Fusion: keep, slice by slice, the better of the last two rounds' masks."""

from __future__ import annotations

import numpy as np
import torch

from lib.net.fusion import SliceScorer

from .geometry import Box, Region, crop_slices, extent_xy

SCORER_SIZE = 64


class RoundFusion:
    """Scores every slice where two rounds differ and keeps round t's mask where the scorer prefers it.

    Slices holding a click are never reverted: the newest round honours the user's clicks there.
    """

    def __init__(self, scorer: SliceScorer, device: torch.device, threshold: float = 0.5) -> None:
        self.scorer, self.device, self.threshold = scorer, device, threshold

    def prefer_previous(self, image: np.ndarray, prev: np.ndarray, new: np.ndarray, slices: list[int]) -> np.ndarray:
        """P(previous round is better) for each listed slice (all volumes H x W x D)."""
        if not slices:
            return np.zeros(0)
        p, n = prev[:, :, slices], new[:, :, slices]  # only the compared slices, never the whole volume
        box = Box.around(*extent_xy(p | n), 1.3, 16)
        idx = np.arange(len(slices))[:, None]
        img = crop_slices(image, box, np.array(slices)[:, None], SCORER_SIZE)
        mp = (crop_slices(p.astype(np.float32), box, idx, SCORER_SIZE) > 0.5).float()
        mn = (crop_slices(n.astype(np.float32), box, idx, SCORER_SIZE) > 0.5).float()
        img, mp, mn = img.to(self.device), mp.to(self.device), mn.to(self.device)
        with torch.inference_mode():  # both orders, so that which round came first cannot sway the choice
            p = (torch.sigmoid(self.scorer(img, mp, mn)) + 1 - torch.sigmoid(self.scorer(img, mn, mp))) / 2
        return p.float().cpu().numpy()

    def fuse(self, image: np.ndarray, prev: np.ndarray, new: np.ndarray, clicked: set[int],
             region: Region | None = None) -> tuple[np.ndarray, list[int]]:
        """The fused mask (`new` itself when no slice is reverted) and the slices where round t was kept. `region`: a block
        holding every voxel of both masks (None: the whole volume); nothing outside it is read."""
        region = region or tuple(slice(0, n) for n in new.shape)
        changed = np.nonzero((prev[region] != new[region]).any(axis=(0, 1)))[0] + region[2].start
        candidates = [int(k) for k in changed if int(k) not in clicked]
        p = self.prefer_previous(image, prev, new, candidates)
        kept = [k for k, pk in zip(candidates, p) if pk > self.threshold]
        if kept:
            new = new.copy(order="A")
            new[:, :, kept] = prev[:, :, kept]
        return new, kept
