"""A refreshed pool of generated training cases: generating a volume costs ~1 s, a training step less."""

from __future__ import annotations

import numpy as np

from lib.data.synthetic import generate_case
from lib.engine.geometry import normalize_as_read

from .samplers import Case


def synthetic_case(rng: np.random.Generator, body_in_air: float = 0.0) -> Case:
    """A generated case normalised as the server reads it (a CT's padding, if its noise reaches it, left out)."""
    c = generate_case(rng, body_in_air=body_in_air)
    image, hounsfield = normalize_as_read(c.image)
    return Case(image, c.label, hounsfield)


def real_targets(seed: int, mni: bool = True, totalseg: bool = True, atlas: bool = True,
                 mni_tissues: tuple[str, ...] | None = None) -> dict[str, list[Case]]:
    """The real training targets by source: the MNI152 templates' structures, the TotalSegmentator training organs and
    the atlas nuclei (never a validation or held-out case), each source drawn with its own seed (`seed` + 1, 2, 3), so
    that every stage that reads them sees the same cases. `mni_tissues`: the MNI152 tissue targets kept (None: all)."""
    sources: dict[str, list[Case]] = {}
    if mni:
        from lib.data.real_targets import mni_training_cases

        sources["mni"] = mni_training_cases(np.random.default_rng(seed + 1), tissues=mni_tissues)
    if totalseg:
        from lib.data.totalseg import training_cases

        sources["totalseg"] = training_cases(np.random.default_rng(seed + 2))
    if atlas:
        from lib.data.atlas_nuclei import training_cases as atlas_cases

        sources["atlas"] = atlas_cases(np.random.default_rng(seed + 3))
    return sources


class CasePool:
    """Keeps `size` cases and replaces `refresh` of them every `every` calls."""

    def __init__(self, seed: int, size: int = 96, refresh: int = 4, every: int = 50, extra: list[Case] | None = None,
                 body_in_air: float = 0.0):
        self.rng = np.random.default_rng(seed)
        self.body_in_air = body_in_air
        self.cases = [synthetic_case(self.rng, body_in_air) for _ in range(size)]
        self.extra = extra or []
        self.refresh, self.every, self.calls = refresh, every, 0

    def __call__(self) -> list[Case]:
        self.calls += 1
        if self.calls % self.every == 0:
            for _ in range(self.refresh):
                self.cases[int(self.rng.integers(len(self.cases)))] = synthetic_case(self.rng, self.body_in_air)
        return self.cases + self.extra
