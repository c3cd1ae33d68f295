"""Our active-learning signal: how unsure LIM-Net is after an automatic probe click.

The probe is one positive click at the centre voxel of the volume; the score is the mean binary entropy of the
propagated masks over their soft region. Images the model is least sure about are labelled first.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np
import torch
from monai.transforms import LoadImage
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy

from lib.engine.orientation import SliceAxis
from lib.engine.segmenter import LimNetSegmenter
from lib.net.bundle import LimNet

logger = logging.getLogger(__name__)

INFO_KEY = "limnet_uncertainty"


def _weights(paths: Sequence[str]) -> str | None:
    return next((p for p in reversed(paths) if os.path.exists(p)), None)


def mask_entropy(probs: dict[int, torch.Tensor]) -> float:
    """Mean binary entropy (bits) over the soft object region of every reached slice; 1 if nothing was found."""
    p = torch.stack(list(probs.values())).float().clamp(1e-6, 1 - 1e-6)
    region = p > 0.05
    if not region.any():
        return 1.0
    h = -(p * torch.log2(p) + (1 - p) * torch.log2(1 - p))
    return float(h[region].mean())


def probe_uncertainty(segmenter: LimNetSegmenter, volume: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """Mask entropy after a positive click at the centre voxel; `spacing` picks the slices as the server does."""
    volume = SliceAxis.for_spacing(spacing).volume(volume)
    state = segmenter.new_state(volume)
    centre = tuple(s // 2 for s in volume.shape)
    segmenter.add_clicks(state, [centre], [])
    return mask_entropy(state.probs)  # the round's working-grid probabilities, as they came from propagation


class ProbeUncertaintyScoring(ScoringMethod):
    """Scores unlabelled images (datastore info `limnet_uncertainty`, tagged with the weights it came from)."""

    def __init__(self, paths: Sequence[str], max_images: int = 16) -> None:
        super().__init__("LIM-Net mask entropy after an automatic probe click, for unlabelled images")
        self.paths, self.max_images = list(paths), max_images

    def score(self, datastore: Datastore, image_ids: list[str], limit: int) -> dict[str, float]:
        weights = _weights(self.paths)
        if weights is None:
            return {}
        tag = f"{os.path.basename(weights)}:{os.stat(weights).st_mtime_ns}"
        segmenter = LimNetSegmenter(LimNet.load(weights), "cpu")
        loader = LoadImage(reader="ITKReader", image_only=True)
        result, computed = {}, 0
        for image_id in image_ids:
            info = datastore.get_image_info(image_id) or {}
            cached = info.get(INFO_KEY)
            if isinstance(cached, dict) and cached.get("weights") == tag:
                result[image_id] = float(cached["score"])
                continue
            if computed >= limit:
                continue
            try:
                image = loader(datastore.get_image_uri(image_id))
                volume = np.asarray(image, np.float32)
                if volume.ndim != 3:
                    continue
                score = probe_uncertainty(segmenter, volume, getattr(image, "pixdim", None))
            except Exception as e:  # an unreadable image is skipped, not fatal
                logger.warning("cannot score %s: %s", image_id, e)
                continue
            computed += 1
            datastore.update_image_info(image_id, {INFO_KEY: {"score": score, "weights": tag}})
            result[image_id] = score
        return result

    def __call__(self, request, datastore: Datastore):
        ids = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        return self.score(datastore, ids, int(request.get("max_images", self.max_images)))


class MostUncertain(Strategy):
    """The unlabelled image with the highest probe uncertainty (scores missing ones on demand)."""

    def __init__(self, scoring: ProbeUncertaintyScoring, max_compute: int = 4) -> None:
        super().__init__("Unlabelled image LIM-Net is least sure about (mask entropy after a probe click)")
        self.scoring, self.max_compute = scoring, max_compute

    def __call__(self, request, datastore: Datastore):
        ids = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not ids:
            return None
        scores = self.scoring.score(datastore, sorted(ids), int(request.get("max_compute", self.max_compute)))
        if not scores:
            return {"id": sorted(ids)[0]}
        best = max(scores, key=scores.get)
        logger.info("most uncertain: %s (%.4f)", best, scores[best])
        return {"id": best, "limnet_uncertainty": scores[best]}
