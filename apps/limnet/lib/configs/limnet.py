"""TaskConfig for LIM-Net: where the weights are, which device, which labels; builds infer/train/strategies."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from monailabel.interfaces.config import TaskConfig

from lib.activelearning.uncertainty import MostUncertain, ProbeUncertaintyScoring
from lib.infers.limnet import LimNetInfer, is_on
from lib.trainers.limnet import LimNetTrainer

logger = logging.getLogger(__name__)

DEFAULT_LABELS = ["object", "organ", "lesion", "tumor", "vessel"]
TORCH_DEFAULT_THREADS = torch.get_num_threads()  # before `_set_cpu_threads` changes it: init may run more than once


class LimNetConfig(TaskConfig):
    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs) -> None:
        super().init(name, model_dir, conf, planner, **kwargs)
        labels = conf.get("labels")
        self.labels = [s.strip() for s in labels.split(",") if s.strip()] if labels else list(DEFAULT_LABELS)
        # the last existing path wins (MONAI Label's convention): trained weights beat the shipped ones
        self.path = [os.path.join(model_dir, f"pretrained_{name}.pt"), os.path.join(model_dir, f"{name}.pt")]
        # MRF is off by default for now: on the held-out scans its scorer lowers mean Dice (README, evaluation)
        self.use_fusion = is_on(conf.get("use_fusion", False))
        # off by default: on held-out real scans it ran onto neighbours of first-clicked organs (README)
        self.follow_object = is_on(conf.get("follow_object", False))
        # on by default: a sweep ends where the memory model's answer turns into a blur (README, design log)
        self.stop_at_blur = is_on(conf.get("stop_at_blur", True))
        # on by default: a later click is answered reading the last mask on its slice (README, design log)
        self.use_refiner = is_on(conf.get("use_refiner", True))
        self.max_interactions = int(conf.get("max_interactions", "8"))
        self.interaction_ttl = float(conf.get("interaction_ttl", "1800"))
        self._set_cpu_threads(conf.get("torch_threads"))

    @staticmethod
    def _set_cpu_threads(value: str | None) -> None:
        """On the CPU a round runs its two propagation sweeps in two threads (`PropagationConfig.parallel`), so
        each gets half the cores: with torch's default (all of them) per sweep the cores are oversubscribed (this
        machine, 2 cores, 512x512x300: first click 0.66 -> 0.55 s, later clicks 0.24 -> 0.18 s, README).
        `--conf torch_threads N` overrides; with a GPU the default is left alone."""
        if value:
            torch.set_num_threads(max(1, int(value)))
        elif not torch.cuda.is_available():
            torch.set_num_threads(max(1, TORCH_DEFAULT_THREADS // 2))
        logger.info("torch CPU threads: %d", torch.get_num_threads())

    def infer(self) -> LimNetInfer:
        return LimNetInfer(
            path=self.path,
            labels=self.labels,
            use_fusion=self.use_fusion,
            follow_object=self.follow_object,
            stop_at_blur=self.stop_at_blur,
            use_refiner=self.use_refiner,
            max_interactions=self.max_interactions,
            ttl_seconds=self.interaction_ttl,
        )

    def trainer(self) -> LimNetTrainer:
        return LimNetTrainer(model_dir=self.model_dir, name=self.name, path=self.path)

    def scoring_method(self) -> dict:
        return {f"{self.name}_uncertainty": self._scoring()}

    def strategy(self) -> dict:
        return {f"{self.name}_uncertainty": MostUncertain(self._scoring())}

    def _scoring(self) -> ProbeUncertaintyScoring:
        if not hasattr(self, "_scoring_method"):
            self._scoring_method = ProbeUncertaintyScoring(self.path)
        return self._scoring_method
