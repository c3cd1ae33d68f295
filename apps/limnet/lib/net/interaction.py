"""2D Interaction Module: the clicked slice (with its two neighbours) and click maps -> a slice mask."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import ConvBlock, Decoder, Encoder


class InteractionModule(nn.Module):
    """5 x H x W in (previous, current and next slice, positive and negative click maps), H x W logits out."""

    in_channels = 5

    def __init__(self, widths: tuple[int, int, int, int] = (16, 32, 64, 128)) -> None:
        super().__init__()
        self.encoder = Encoder(self.in_channels, widths)
        self.bottleneck = ConvBlock(widths[3], widths[3])
        self.decoder = Decoder(widths[3], widths[:3], width=16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(x)
        return self.decoder(self.bottleneck(feats[3]), feats[:3])
