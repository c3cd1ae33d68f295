"""TaskConfig for LIM-Net: where the weights are, which device, which labels; builds infer/train/strategies."""

from __future__ import annotations

import logging
import os
from typing import Any

from monailabel.interfaces.config import TaskConfig

from lib.activelearning.uncertainty import MostUncertain, ProbeUncertaintyScoring
from lib.infers.limnet import LimNetInfer
from lib.trainers.limnet import LimNetTrainer

logger = logging.getLogger(__name__)

DEFAULT_LABELS = ["object", "organ", "lesion", "tumor", "vessel"]


class LimNetConfig(TaskConfig):
    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs) -> None:
        super().init(name, model_dir, conf, planner, **kwargs)
        labels = conf.get("labels")
        self.labels = [s.strip() for s in labels.split(",") if s.strip()] if labels else list(DEFAULT_LABELS)
        # the last existing path wins (MONAI Label's convention): trained weights beat the shipped ones
        self.path = [os.path.join(model_dir, f"pretrained_{name}.pt"), os.path.join(model_dir, f"{name}.pt")]
        # MRF is off by default for now: on the held-out scans its scorer lowers mean Dice (README, evaluation)
        self.use_fusion = conf.get("use_fusion", "false").lower() in ("1", "true", "yes")
        self.max_interactions = int(conf.get("max_interactions", "8"))
        self.interaction_ttl = float(conf.get("interaction_ttl", "1800"))

    def infer(self) -> LimNetInfer:
        return LimNetInfer(
            path=self.path,
            labels=self.labels,
            use_fusion=self.use_fusion,
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
