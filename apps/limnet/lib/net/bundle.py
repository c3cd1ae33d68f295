"""The LIM-Net modules as one weights file (a plain state dict: torch>=2.6 loads with weights_only)."""

from __future__ import annotations

import copy
import os
import tempfile

import torch
from torch import nn

from .fusion import SliceScorer
from .interaction import InteractionModule
from .memory import MemoryModel
from .ranker import ReadingRanker

WORKING_SIZE = 128  # in-plane side of every crop the networks see


class LimNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.interaction = InteractionModule()
        self.memory = MemoryModel()
        self.memory_mr: MemoryModel | None = None  # trained by `train.py --stage memory_mr`
        self.scorer = SliceScorer()
        self.refiner: InteractionModule | None = None
        self.ranker: ReadingRanker | None = None  # trained by `train.py --stage ranker`

    def add_refiner(self) -> None:
        """A second interaction module that also reads the last round's mask on the slice (`add_mask_input`),
        started as a copy of the first: it answers clicks on a slice that already has a mask, while the first
        click's search and readings keep the first module."""
        if self.refiner is None:
            self.refiner = copy.deepcopy(self.interaction)
            self.refiner.add_mask_input()

    def add_memory_mr(self) -> None:
        """A second memory model for volumes not read as a CT, started as a copy of the first. An MR's objects end
        and look unlike a CT's: fine-tuned on brain MR structures the memory model gains on the brain validation sets
        and loses on the real CT ones, so each kind of volume keeps its own (design log, 2026-12-07 afternoon)."""
        if self.memory_mr is None:
            self.memory_mr = copy.deepcopy(self.memory)

    def memory_for(self, hounsfield: bool) -> MemoryModel:
        """The memory model that propagates a volume: the MR one where the weights hold it and the volume was not
        read as a CT (`looks_like_ct`), else the first."""
        return self.memory if hounsfield or self.memory_mr is None else self.memory_mr

    @classmethod
    def load(cls, path: str, device: str | torch.device = "cpu") -> "LimNet":
        net = cls()
        state = torch.load(path, map_location="cpu", weights_only=True)
        weights = {k: v.float() if v.dtype == torch.float16 else v for k, v in state["state_dict"].items()}
        if any(k.startswith("memory.deep_update.") for k in weights):  # trained with `train.py --deep-update`
            net.memory.add_deep_update()
        if any(k.startswith("memory_mr.") for k in weights):  # trained with `train.py --stage memory_mr`
            net.memory_mr = MemoryModel()
            if any(k.startswith("memory_mr.deep_update.") for k in weights):
                net.memory_mr.add_deep_update()
        if any(k.startswith("refiner.") for k in weights):  # trained with `train.py --stage refiner`
            net.add_refiner()
        if "ranker.root" in weights:  # trained with `train.py --stage ranker`
            net.ranker = ReadingRanker(weights["ranker.feature"].numel(), weights["ranker.root"].numel())
        for name in ("interaction", "refiner"):  # blocks added by `train.py --deepen`
            depth = [0, 0, 0, 0]
            for k in weights:
                if k.startswith(f"{name}.encoder.deeper."):
                    i, j = (int(v) for v in k.split(".")[3:5])
                    depth[i] = max(depth[i], j + 1)
            if any(depth):
                getattr(net, name).deepen(tuple(depth))
        net.load_state_dict(weights)
        return net.to(device).eval()

    def save(self, path: str, meta: dict | None = None) -> None:
        """Write atomically (temp file + rename): a reader never sees half a file. Weights stored in fp16 to stay
        small; float64 tensors (the reading ranker's thresholds and leaf values) as they are."""
        state = {"state_dict": {k: v.detach().cpu().half() if v.dtype == torch.float32 else v.cpu()
                                for k, v in self.state_dict().items()}, "meta": meta or {}}
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        os.close(fd)
        try:
            torch.save(state, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
