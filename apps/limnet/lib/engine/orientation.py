"""Which array axis an interaction propagates along: the one across which the slices have square pixels.

The engine reads a volume as slices along its last axis: the 2D modules were trained on slices with square pixels and
the memory model on sequences of them. Most volumes are stored that way (a DICOM series is stacked along its last
axis, in-plane pixels are square), but a NIfTI reoriented to RAS from a sagittal or coronal acquisition keeps its
thick axis first or second, and every slice along the last axis then has pixels 3-5 times longer than wide. Read as
it is stored, such a volume lost most of its Dice (validation, the robot's 6 clicks: 3 mm brain nuclei 0.769 ->
0.317, the 5 mm large brain structures 0.445 -> 0.318; design log, 2026-12-07 evening). `SliceAxis` turns a volume
into the engine's order and the engine's answer back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

SQUARE = 1.25  # in-plane pixel sides within this ratio count as square


@dataclass(frozen=True)
class SliceAxis:
    """The stored volume's axis the engine propagates along (2: as stored, no copies anywhere)."""

    axis: int = 2

    @classmethod
    def for_spacing(cls, spacing: Sequence[float] | None) -> SliceAxis:
        """The last axis unless its slices' pixels are not square (sides more than `SQUARE` apart) and another
        axis's are. Isotropic and the usual thick-slice volumes stay as stored, and so does a volume no axis of which
        has square slices (nothing the modules were trained on either way)."""
        if spacing is None or len(spacing) != 3:
            return cls()
        sp = np.abs(np.asarray(spacing, dtype=np.float64))
        if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
            return cls()

        def elongation(axis: int) -> float:
            a, b = (sp[i] for i in range(3) if i != axis)
            return max(a, b) / min(a, b)

        if elongation(2) <= SQUARE:
            return cls()
        best = min((0, 1), key=elongation)
        return cls(best) if elongation(best) <= SQUARE else cls()

    @classmethod
    def for_affine(cls, affine: np.ndarray | None) -> SliceAxis:
        """`for_spacing` of a voxel-to-world matrix's column lengths."""
        if affine is None:
            return cls()
        m = np.asarray(affine, dtype=np.float64)
        return cls.for_spacing(np.linalg.norm(m[:3, :3], axis=0)) if m.shape[0] >= 3 and m.shape[1] >= 3 else cls()

    @property
    def identity(self) -> bool:
        return self.axis == 2

    @property
    def axes(self) -> tuple[int, int, int]:
        """The permutation from stored to engine order: the other two axes in their order, then `axis`."""
        return tuple(i for i in range(3) if i != self.axis) + (self.axis,)

    @property
    def inverse(self) -> tuple[int, int, int]:
        return tuple(int(i) for i in np.argsort(self.axes))

    def volume(self, volume: np.ndarray) -> np.ndarray:
        """`volume` (or a label) in engine order: a view, no copy."""
        return volume if self.identity else np.transpose(volume, self.axes)

    def stored_shape(self, engine: Sequence[int]) -> tuple[int, ...]:
        return tuple(int(engine[i]) for i in self.inverse)

    def spacing(self, spacing: Sequence[float]) -> tuple[float, ...]:
        return tuple(float(spacing[i]) for i in self.axes)

    def clicks(self, clicks: Sequence[Sequence[int]]) -> list[tuple[int, int, int]]:
        """Stored voxel indices -> engine indices."""
        return [tuple(int(c[i]) for i in self.axes) for c in clicks]

    def stored_clicks(self, clicks: Sequence[Sequence[int]]) -> list[tuple[int, int, int]]:
        """Engine voxel indices -> stored indices."""
        return [tuple(int(c[i]) for i in self.inverse) for c in clicks]

    def mask(self, mask: np.ndarray) -> np.ndarray:
        """The engine's answer in stored order, Fortran-ordered as the NRRD writer sends it (a copy unless
        identity)."""
        return mask if self.identity else np.asfortranarray(np.transpose(mask, self.inverse))
