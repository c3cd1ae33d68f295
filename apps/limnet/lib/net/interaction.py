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
        return tuple(len(d) for d in self.deeper) if hasattr(self, "deeper") else (0, 0, 0, 0)

    def deepen(self, blocks: tuple[int, ...]) -> None:
        """Add `blocks[i]` residual blocks after encoder stage i, each started as the identity (its last GroupNorm's
        scale and shift at zero, so it passes its non-negative input through): the trained module answers exactly as
        before, and fine-tuning grows capacity from there. Already added blocks are kept; `blocks` is the total."""
        widths = [stage.body[0].out_channels for stage in self.encoder.stages]
        if not hasattr(self, "deeper"):
            self.deeper = nn.ModuleList([nn.Sequential() for _ in widths])
        dev = next(self.parameters()).device
        for i, n in enumerate(blocks):
            while len(self.deeper[i]) < n:
                block = ConvBlock(widths[i], widths[i])
                nn.init.zeros_(block.body[-1].weight)
                nn.init.zeros_(block.body[-1].bias)
                self.deeper[i].append(block.to(dev))

    def forward(self, x: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
        """`x`: B x 5 x H x W; `prior`: B x 1 x H x W, the last mask (read only with a mask input; zeros if None)."""
        if self.takes_mask:
            x = torch.cat([x, prior if prior is not None else x.new_zeros(x[:, :1].shape)], dim=1)
        if hasattr(self, "deeper"):  # each stage's added blocks on the main path, before the next stage
            feats, x = [], self.encoder.stem(x)
            for stage, more in zip(self.encoder.stages, self.deeper):
                x = more(stage(x))
                feats.append(x)
        else:
            feats = self.encoder(x)
        return self.decoder(self.bottleneck(feats[3]), feats[:3])
