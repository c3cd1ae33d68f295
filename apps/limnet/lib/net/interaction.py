"""2D Interaction Module: the clicked slice (with its two neighbours) and click maps -> a slice mask."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import ConvBlock, Decoder, Encoder


class InteractionModule(nn.Module):
    """5 x H x W in (previous, current and next slice, positive and negative click maps), H x W logits out.

    With a mask input (`add_mask_input`, RITM-style) a sixth channel holds the last round's mask on the slice
    (zeros on a first click), so a correction click is answered as a change to what is there, not from scratch.
    """

    in_channels = 5

    def __init__(self, widths: tuple[int, int, int, int] = (16, 32, 64, 128)) -> None:
        super().__init__()
        self.encoder = Encoder(self.in_channels, widths)
        self.bottleneck = ConvBlock(widths[3], widths[3])
        self.decoder = Decoder(widths[3], widths[:3], width=16)

    @property
    def takes_mask(self) -> bool:
        """Whether the module reads the last round's mask as a sixth input channel."""
        return self.encoder.stem[0].in_channels == self.in_channels + 1

    def add_mask_input(self) -> None:
        """Widen the stem by one input channel, the last mask, with zero weights: the trained module answers
        exactly as before until it is fine-tuned with masks."""
        if self.takes_mask:
            return
        old = self.encoder.stem[0]
        new = nn.Conv2d(old.in_channels + 1, old.out_channels, old.kernel_size, old.stride, old.padding)
        with torch.no_grad():
            new.weight.zero_()
            new.weight[:, : old.in_channels] = old.weight
            new.bias.copy_(old.bias)
        self.encoder.stem[0] = new.to(old.weight.device)

    @property
    def depth(self) -> tuple[int, ...]:
        """Residual blocks added after each encoder stage (`deepen`), finest first."""
        return tuple(len(more) for more in self.encoder.deeper)

    def deepen(self, blocks: tuple[int, ...]) -> None:
        """`blocks[i]` residual blocks in all after encoder stage i (`Encoder.deepen`): the trained module answers
        exactly as before, and a fine-tune grows its capacity from there (`train.py --deepen`)."""
        self.encoder.deepen(blocks)

    def forward(self, x: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
        """`x`: B x 5 x H x W; `prior`: B x 1 x H x W, the last mask (read only with a mask input; zeros if None)."""
        if self.takes_mask:
            x = torch.cat([x, prior if prior is not None else x.new_zeros(x[:, :1].shape)], dim=1)
        feats = self.encoder(x)
        return self.decoder(self.bottleneck(feats[3]), feats[:3])
