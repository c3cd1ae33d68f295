"""Small convolutional building blocks shared by LIM-Net's three modules."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm and ReLU; the first may downsample."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        groups = max(1, cout // 8)
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.GroupNorm(groups, cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.GroupNorm(groups, cout),
        )
        self.skip = (
            nn.Identity()
            if cin == cout and stride == 1
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.GroupNorm(groups, cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.skip(x))


class Encoder(nn.Module):
    """A plain residual encoder returning features at strides 2, 4, 8 and 16 (a strided stem keeps it cheap).

    Each stage may be followed by blocks added later (`deepen`; none by default, so no weights)."""

    def __init__(self, cin: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(cin, widths[0], 3, stride=2, padding=1), nn.ReLU(inplace=True))
        self.stages = nn.ModuleList(
            [ConvBlock(widths[0], widths[0], 1)]
            + [ConvBlock(widths[i - 1], widths[i], 2) for i in range(1, len(widths))]
        )
        self.deeper = nn.ModuleList([nn.Sequential() for _ in widths])

    def deepen(self, blocks: tuple[int, ...]) -> None:
        """Add residual blocks after the stages up to `blocks[i]` after stage i, each started as the identity (its
        last GroupNorm's scale and shift at zero, so it passes its non-negative input through): the encoder answers
        exactly as before, and fine-tuning grows capacity from there."""
        dev = next(self.parameters()).device
        for stage, more, n in zip(self.stages, self.deeper, blocks):
            width = stage.body[0].out_channels
            while len(more) < n:
                block = ConvBlock(width, width)
                nn.init.zeros_(block.body[-1].weight)
                nn.init.zeros_(block.body[-1].bias)
                more.append(block.to(dev))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        x = self.stem(x)
        for stage, more in zip(self.stages, self.deeper):
            x = more(stage(x))
            feats.append(x)
        return feats


class UpBlock(nn.Module):
    """Upsample by two and fuse with a skip connection."""

    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.conv = ConvBlock(cin + cskip, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([x, skip], dim=1))


class Decoder(nn.Module):
    """Deepest features plus encoder skips (finest first) -> one logit map at the network input's size.

    The finest skip is at stride 2, so the logits are upsampled once more at the end.
    """

    def __init__(self, cin: int, skips: tuple[int, ...], width: int = 32) -> None:
        super().__init__()
        ups, c = [], cin
        for i, cs in enumerate(reversed(skips)):
            cout = width * 2 if i < len(skips) - 2 else width
            ups.append(UpBlock(c, cs, cout))
            c = cout
        self.ups = nn.ModuleList(ups)
        self.head = nn.Conv2d(c, 1, 1)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for up, skip in zip(self.ups, reversed(skips)):
            x = up(x, skip)
        return F.interpolate(self.head(x), scale_factor=2, mode="bilinear", align_corners=False)
