"""Per image, label and client interaction state, and a bounded store of them (LRU + expiry).

As in SAM2's video predictor, the state is an explicit object handed to every call; nothing is global.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .denoise import DenoisedVolume
from .geometry import Box, Region

Click = tuple[int, int, int]
ROUNDS_KEPT = 16  # rounds an interaction can go back to (undo), at most
ROUND_BYTES_KEPT = 32 << 20  # and at most this many bytes of their packed masks


def as_clicks(clicks) -> list[Click]:
    """Clicks as tuples of ints (requests send lists, of numpy or Python ints)."""
    return [tuple(map(int, c)) for c in clicks]


def starts_with(foreground: list[Click], background: list[Click], fg: Sequence[Click], bg: Sequence[Click]) -> bool:
    """Whether both click lists start with `fg` and `bg`: a later round of the interaction those clicks made."""
    return list(foreground[: len(fg)]) == list(fg) and list(background[: len(bg)]) == list(bg)


@dataclass(frozen=True)
class RoundRecord:
    """One finished round as the user saw it: its clicks and its mask, packed 8 voxels a byte inside the block that
    can hold voxels. Kept so that taking clicks back returns that round exactly, not a recomputation."""

    foreground: tuple[Click, ...]
    background: tuple[Click, ...]
    region: Region
    bits: np.ndarray
    box: Box | None
    rounds: int
    settings: tuple

    @staticmethod
    def of(state: "InteractionState") -> "RoundRecord":
        block = state.mask[state.region].ravel(order="F")  # the mask is Fortran-ordered: this order reads it in turn
        return RoundRecord(tuple(state.foreground), tuple(state.background), state.region, np.packbits(block),
                           state.box, state.rounds, state.settings)

    def mask(self, shape: tuple[int, ...]) -> np.ndarray:
        """The round's mask as `add_clicks` returned it (bool, Fortran order)."""
        out = np.zeros(shape, bool, order="F")
        block = tuple(r.stop - r.start for r in self.region)
        out[self.region] = np.unpackbits(self.bits, count=int(np.prod(block))).view(bool).reshape(block, order="F")
        return out



@dataclass
class InteractionState:
    """One interaction: the volume it runs on, the clicks so far, and the last fused round."""

    image: np.ndarray  # normalised H x W x D volume
    reading_view: DenoisedVolume | None = None  # the volume the clicked slices' readings see (noise filtered); None: `image`
    hounsfield: bool = False  # the volume was read as a CT (`looks_like_ct`): the first click's guards are a CT's
    foreground: list[Click] = field(default_factory=list)
    background: list[Click] = field(default_factory=list)
    mask: np.ndarray | None = None  # last round's fused mask (bool, H x W x D, Fortran order as NRRD writes it)
    region: Region | None = None  # the block of `mask` that can hold voxels: later work stays inside it
    box: Box | None = None
    features: object | None = None  # SliceFeatures for `box`, reused by later rounds
    probs: dict | None = None  # last round's working-grid probabilities per slice (before pasting and fusion)
    probs_features: object | None = None  # the SliceFeatures `probs` were computed on
    rounds: int = 0
    settings: tuple = ()  # the options the last round ran with (MRF on, follow, stop at blur, refiner), as `add_clicks` took them
    refine: bool = True  # this round's `use_refiner`: whether a later round's clicked slice is answered reading the last mask
    history: list[RoundRecord] = field(default_factory=list)  # the last rounds, oldest first (`rewind`)

    @property
    def readable(self) -> np.ndarray | DenoisedVolume:
        """The volume the readings of the clicked slices look at: `reading_view`, or the image itself."""
        return self.image if self.reading_view is None else self.reading_view

    def mask_voxels(self) -> int:
        return 0 if self.mask is None or self.region is None else int(np.count_nonzero(self.mask[self.region]))

    def new_clicks(self, foreground: list[Click], background: list[Click]) -> list[Click] | None:
        """The clicks appended to this state's lists (foreground first), or None when the lists do not start with
        this state's clicks. A click repeated on an earlier voxel counts as new."""
        fg, bg = as_clicks(foreground), as_clicks(background)
        if not starts_with(fg, bg, self.foreground, self.background):
            return None
        return fg[len(self.foreground):] + bg[len(self.background):]

    def extends(self, foreground: list[Click], background: list[Click]) -> bool:
        """True when the new click lists start with this state's clicks and add at least one."""
        return bool(self.new_clicks(foreground, background))

    def record_round(self, max_rounds: int = ROUNDS_KEPT, max_bytes: int = ROUND_BYTES_KEPT) -> None:
        """Keep the round just finished for `rewind`, dropping the oldest beyond `max_rounds` or `max_bytes`."""
        if self.mask is None or self.region is None:
            return
        self.history.append(RoundRecord.of(self))
        while len(self.history) > max_rounds or (len(self.history) > 1
                                                 and sum(r.bits.nbytes for r in self.history) > max_bytes):
            self.history.pop(0)

    def rewind(self, foreground: list[Click], background: list[Click]) -> bool:
        """Go back to the latest kept round whose clicks both lists start with (the user took clicks back, or took
        some back and clicked anew): its mask, clicks and box become the state's again and later rounds are
        forgotten. False, and nothing changed, when no kept round fits."""
        fg, bg = as_clicks(foreground), as_clicks(background)
        for i in range(len(self.history) - 1, -1, -1):
            record = self.history[i]
            if starts_with(fg, bg, record.foreground, record.background):
                break
        else:
            return False
        if record.rounds != self.rounds:
            self.mask = record.mask(self.image.shape)
            self.region, self.box, self.rounds = record.region, record.box, record.rounds
            self.settings = record.settings
            self.foreground, self.background = list(record.foreground), list(record.background)
            self.probs = self.probs_features = None  # the later round's probabilities no longer describe the mask
            del self.history[i + 1:]
        return True


class InteractionStore:
    """Thread-safe LRU of interaction states with expiry; least recently used states go first."""

    def __init__(self, max_items: int = 8, ttl_seconds: float = 1800.0) -> None:
        self.max_items, self.ttl = max_items, ttl_seconds
        self._items: OrderedDict[tuple, tuple[float, InteractionState]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> InteractionState | None:
        with self._lock:
            self._expire()
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            self._items[key] = (time.monotonic(), item[1])
            return item[1]

    def put(self, key: tuple, state: InteractionState) -> None:
        with self._lock:
            self._items[key] = (time.monotonic(), state)
            self._items.move_to_end(key)
            self._expire()
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def drop(self, key: tuple) -> None:
        with self._lock:
            self._items.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def _expire(self) -> None:
        now = time.monotonic()
        for k in [k for k, (t, _) in self._items.items() if now - t > self.ttl]:
            del self._items[k]
