"""LIM-Net's networks: pure nn.Modules that know nothing of REST, volumes or rounds."""

from .fusion import SliceScorer
from .interaction import InteractionModule
from .memory import MemoryModel, affinity_readout

__all__ = ["InteractionModule", "MemoryModel", "SliceScorer", "affinity_readout"]
