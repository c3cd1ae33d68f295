"""XMem-style memory model: keys from slices, values from (slice, mask), affinity readout, sensory state.

The network only computes; which frames are remembered, consolidated or forgotten is decided at inference
time by `lib.engine.memory_bank`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .blocks import ConvBlock, Decoder, Encoder


class KeyEncoder(nn.Module):
    """Query encoder: a 2.5D slice (3 channels) -> key at stride 8 plus skip features for the decoder."""

    def __init__(self, widths: tuple[int, int, int], key_dim: int) -> None:
        super().__init__()
        self.encoder = Encoder(3, widths)
        self.key_proj = nn.Conv2d(widths[2], key_dim, 1)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = self.encoder(frames)
        return self.key_proj(feats[2]), feats


class ValueEncoder(nn.Module):
    """(slice, mask) -> value at stride 8, fused with the slice's own key features."""

    def __init__(self, widths: tuple[int, int, int], value_dim: int) -> None:
        super().__init__()
        self.encoder = Encoder(4, (widths[0] // 2, widths[1] // 2, widths[2]))
        self.fuse = ConvBlock(widths[2] * 2, value_dim)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor, key_feat: torch.Tensor) -> torch.Tensor:
        f = self.encoder(torch.cat([frames, mask], dim=1))[2]
        return self.fuse(torch.cat([f, key_feat], dim=1))


class SensoryUpdate(nn.Module):
    """Convolutional GRU: the per-pixel hidden state carried from one slice to the next."""

    def __init__(self, cin: int, hidden_dim: int, keep: bool = False) -> None:
        super().__init__()
        self.gates = nn.Conv2d(cin + hidden_dim, hidden_dim * 2, 3, padding=1)
        self.cand = nn.Conv2d(cin + hidden_dim, hidden_dim, 3, padding=1)
        if keep:  # start close to "keep the hidden state": added to trained weights, it first changes little
            for conv in (self.gates, self.cand):
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)
            with torch.no_grad():
                self.gates.bias[:hidden_dim] = -4.0  # update gate z = sigmoid(-4) ~ 0.02

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        z, r = torch.sigmoid(self.gates(torch.cat([x, h], 1))).chunk(2, dim=1)
        c = torch.tanh(self.cand(torch.cat([x, r * h], 1)))
        return (1 - z) * h + z * c


def affinity_readout(
    query_key: torch.Tensor, mem_key: torch.Tensor, mem_value: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft-max over memory of the negative squared L2 distance (XMem), read values for every query pixel.

    query_key: B x Ck x N, mem_key: B x Ck x M, mem_value: B x Cv x M.
    Returns the readout (B x Cv x N) and each memory token's summed affinity (B x M), its usage.
    """
    scale = 1 / math.sqrt(query_key.shape[1])
    # sim[b, n, m] = (2 q.k - |k|^2) / sqrt(Ck), query-major so that the soft-max runs over contiguous memory:
    # 3-4x faster on the CPU than over the memory axis of a B x M x N array (1,792 memory tokens: 5.0 -> 1.4 ms)
    sim = torch.baddbmm(mem_key.pow(2).sum(1).unsqueeze(1), query_key.transpose(1, 2), mem_key,
                        beta=-scale, alpha=2 * scale)
    aff = torch.softmax(sim, dim=2)
    return torch.bmm(mem_value, aff.transpose(1, 2)), aff.sum(1)


class MemoryModel(nn.Module):
    """Propagates a mask from remembered slices to a new slice.

    With a deep update (XMem's deep sensory update, `add_deep_update`), every remembered (slice, mask) value also
    updates the sensory state, so the hidden state that reaches the next slice knows where the mask just was;
    without it (the committed weights) the state sees the mask only through the memory readout. Not there by
    default: fine-tuned into the committed weights it did not change validation Dice (README, 2026-12-03).
    """

    def __init__(
        self,
        widths: tuple[int, int, int] = (16, 32, 96),
        key_dim: int = 32,
        value_dim: int = 64,
        hidden_dim: int = 32,
    ) -> None:
        super().__init__()
        self.hidden_dim, self.value_dim = hidden_dim, value_dim
        self.key_encoder = KeyEncoder(widths, key_dim)
        self.value_encoder = ValueEncoder(widths, value_dim)
        self.fuse = ConvBlock(value_dim + hidden_dim + widths[2], widths[2])
        self.decoder = Decoder(widths[2], widths[:2], width=16)
        self.sensory = SensoryUpdate(widths[2], hidden_dim)
        self.deep_update: SensoryUpdate | None = None

    def encode_key(self, frames: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.key_encoder(frames)

    def encode_value(self, frames: torch.Tensor, mask: torch.Tensor, key_feat: torch.Tensor) -> torch.Tensor:
        return self.value_encoder(frames, mask, key_feat)

    def init_hidden(self, key: torch.Tensor) -> torch.Tensor:
        b, _, h, w = key.shape
        return key.new_zeros(b, self.hidden_dim, h, w)

    def add_deep_update(self) -> None:
        """Add the deep sensory update, started near "keep the state" so that trained weights first change little."""
        if self.deep_update is None:
            p = next(self.parameters())
            self.deep_update = SensoryUpdate(self.value_dim, self.hidden_dim, keep=True).to(p.device)

    def remember(self, value: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """The sensory state after a (slice, mask) value (B x Cv x h x w) is remembered (unchanged without
        `deep_update`)."""
        return hidden if self.deep_update is None else self.deep_update(value, hidden)

    def segment(
        self, readout: torch.Tensor, hidden: torch.Tensor, feats: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Readout (B x Cv x h x w) + sensory state + query skips -> (logits, next sensory state)."""
        x = self.fuse(torch.cat([readout, hidden, feats[2]], dim=1))
        return self.decoder(x, feats[:2]), self.sensory(x, hidden)

    def step(
        self,
        key: torch.Tensor,
        feats: list[torch.Tensor],
        mem_key: torch.Tensor,
        mem_value: torch.Tensor,
        hidden: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One propagation step: returns logits, next hidden state and memory usage."""
        b, ck, h, w = key.shape
        readout, usage = affinity_readout(key.flatten(2), mem_key, mem_value)
        logits, hidden = self.segment(readout.view(b, -1, h, w), hidden, feats)
        return logits, hidden, usage
