"""Multi-Round Result Fusion scorer: which of two rounds' masks of one slice is the better one."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import Encoder


class SliceScorer(nn.Module):
    """(slice, mask of round t, mask of round t+1) -> logit of P(round t's mask is the better one)."""

    def __init__(self, widths: tuple[int, int, int, int] = (16, 24, 32, 48)) -> None:
        super().__init__()
        self.encoder = Encoder(4, widths)
        self.head = nn.Sequential(nn.Linear(widths[3] * 2 + 3, 32), nn.ReLU(inplace=True), nn.Linear(32, 1))

    def forward(self, image: torch.Tensor, mask_prev: torch.Tensor, mask_next: torch.Tensor) -> torch.Tensor:
        diff = (mask_prev - mask_next).abs()
        f = self.encoder(torch.cat([image, mask_prev, mask_next, diff], dim=1))[3]
        pooled = torch.cat([f.mean((2, 3)), f.amax((2, 3))], dim=1)
        stats = torch.stack([mask_prev.mean((1, 2, 3)), mask_next.mean((1, 2, 3)), diff.mean((1, 2, 3))], dim=1)
        return self.head(torch.cat([pooled, stats], dim=1)).squeeze(1)
