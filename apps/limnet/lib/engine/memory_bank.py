"""Inference-time memory of the propagation, one small class per kind (XMem's split):

- `WorkingMemory`: keys/values of the prompted slices (pinned) and of the most recent slices;
- `LongTermMemory`: the most used tokens of slices evicted from working memory (bounded prototypes);
- `SensoryMemory`: the per-pixel hidden state carried from one slice to the next.
"""

from __future__ import annotations

import torch


class WorkingMemory:
    """Pinned anchor frames plus a FIFO of at most `capacity` recent frames (keys B x Ck x N)."""

    def __init__(self, capacity: int = 6) -> None:
        self.capacity = capacity
        self.pinned: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.recent: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # key, value, usage

    def add(self, key: torch.Tensor, value: torch.Tensor, pinned: bool) -> tuple | None:
        """Add a frame; returns the evicted (key, value, usage) frame if the FIFO overflowed."""
        if pinned:
            self.pinned.append((key, value))
            return None
        self.recent.append((key, value, key.new_zeros(key.shape[-1])))
        return self.recent.pop(0) if len(self.recent) > self.capacity else None

    def tensors(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        frames = [(k, v) for k, v in self.pinned] + [(k, v) for k, v, _ in self.recent]
        return [k for k, _ in frames], [v for _, v in frames]

    def record_usage(self, usage: torch.Tensor, offset: int) -> None:
        """usage: affinity mass per token of the recent frames, laid out after `offset` pinned tokens."""
        pos = offset
        for i, (k, v, u) in enumerate(self.recent):
            n = k.shape[-1]
            self.recent[i] = (k, v, u + usage[pos : pos + n])
            pos += n

    @property
    def pinned_tokens(self) -> int:
        return sum(k.shape[-1] for k, _ in self.pinned)


class LongTermMemory:
    """Consolidated prototypes: the `per_frame` most used tokens of each evicted frame, at most `capacity`."""

    def __init__(self, per_frame: int = 32, capacity: int = 512) -> None:
        self.per_frame, self.capacity = per_frame, capacity
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def consolidate(self, key: torch.Tensor, value: torch.Tensor, usage: torch.Tensor) -> None:
        top = torch.topk(usage, min(self.per_frame, usage.numel())).indices
        k, v = key[..., top], value[..., top]
        self.keys = k if self.keys is None else torch.cat([self.keys, k], -1)[..., -self.capacity :]
        self.values = v if self.values is None else torch.cat([self.values, v], -1)[..., -self.capacity :]


class SensoryMemory:
    """The hidden state of the current sweep; reset when a sweep starts."""

    def __init__(self) -> None:
        self.hidden: torch.Tensor | None = None


class MemoryBank:
    """Everything the readout of one sweep attends to."""

    def __init__(self, working_capacity: int = 6, long_term_capacity: int = 512) -> None:
        self.working = WorkingMemory(working_capacity)
        self.long_term = LongTermMemory(capacity=long_term_capacity)
        self.sensory = SensoryMemory()

    def add(self, key: torch.Tensor, value: torch.Tensor, pinned: bool = False) -> None:
        evicted = self.working.add(key, value, pinned)
        if evicted is not None:
            self.long_term.consolidate(*evicted)

    def readout_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.working.tensors()
        if self.long_term.keys is not None:
            keys, values = keys + [self.long_term.keys], values + [self.long_term.values]
        return torch.cat(keys, -1), torch.cat(values, -1)

    def record_usage(self, usage: torch.Tensor) -> None:
        self.working.record_usage(usage[0], self.working.pinned_tokens)
