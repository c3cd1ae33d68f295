"""The `limnet` trainer: fine-tune the served weights on the datastore's `final` labels, validate with the
robot user's clicks, and publish only weights that are not worse (the previous ones are kept)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from typing import Any, Sequence

import numpy as np
import torch
from monai.transforms import LoadImage
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.train import TrainTask

from lib.data.robot import run_robot
from lib.engine.geometry import normalize_as_read
from lib.engine.orientation import SliceAxis
from lib.engine.segmenter import LimNetSegmenter
from lib.net.bundle import LimNet
from lib.training.samplers import Case
from lib.training.stages import REFINER_PROB, REFINER_ROUNDS, train_interaction, train_memory

logger = logging.getLogger(__name__)


def label_on_image_grid(image_path: str, label_path: str) -> np.ndarray:
    """The label resampled (nearest neighbour, by physical position) onto the image's voxel grid, in the array
    order of MONAI's ITKReader. A DICOM SEG holds only the frames that contain a segment, so a label saved from a
    viewer (OHIF's export to DICOM SEG) usually covers fewer slices than its image."""
    import SimpleITK as sitk

    image, label = sitk.ReadImage(image_path), sitk.ReadImage(label_path)
    if label.GetNumberOfComponentsPerPixel() != 1 or label.GetDimension() != image.GetDimension():
        raise ValueError(f"label {label_path} is not a single-channel volume like its image")
    out = sitk.Resample(label, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, label.GetPixelID())
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0)


def load_labelled_cases(datalist: list[dict], max_objects: int = 4) -> list[tuple[str, Case, tuple]]:
    """(image id, case, spacing) per object: each non-zero label value of a `final` label is one object. Each case
    is in the engine's order, slices along its last axis (`SliceAxis`), as the server reads its image."""
    loader = LoadImage(reader="ITKReader", image_only=True)
    cases = []
    for item in datalist:
        image, label = loader(item["image"]), loader(item["label"])
        img, lab = np.asarray(image, np.float32), np.asarray(label)
        if img.ndim == 3 and lab.ndim == 3 and lab.shape != img.shape:
            try:
                lab = label_on_image_grid(item["image"], item["label"])
            except Exception as e:  # noqa: BLE001 - an unreadable label is skipped below, not fatal
                logger.warning("cannot put label %s on its image's grid: %s", item["label"], e)
        if img.ndim != 3 or lab.shape != img.shape:
            logger.warning("skipping %s: image %s and label %s do not match", item["image"], img.shape, lab.shape)
            continue
        spacing = tuple(float(s) for s in image.pixdim[:3]) if hasattr(image, "pixdim") else (1.0, 1.0, 1.0)
        slices = SliceAxis.for_spacing(spacing)  # as the server reads it: slices with square pixels
        img, lab = np.ascontiguousarray(slices.volume(img)), np.ascontiguousarray(slices.volume(lab))
        spacing = slices.spacing(spacing)
        norm, hounsfield = normalize_as_read(img)
        for v in [v for v in np.unique(lab) if v != 0][:max_objects]:
            cases.append((os.path.basename(item["image"]), Case(norm, (lab == v).astype(np.uint8), hounsfield),
                          spacing))
    return cases


def robot_dice(net: LimNet, cases: list[tuple[str, Case, tuple]], rounds: int, device: str) -> float:
    """Mean Dice after `rounds` robot clicks over the cases."""
    seg = LimNetSegmenter(net, device)
    scores = []
    for _, case, spacing in cases:
        def segment(fg, bg, _state=[None], _case=case):  # noqa: B006 - a fresh state per case
            if _state[0] is None:
                _state[0] = seg.new_state(_case.image, hounsfield=_case.hounsfield)  # read as served
            return seg.add_clicks(_state[0], fg, bg)

        scores.append(run_robot(segment, case.label, rounds, spacing).dice[-1])
    return float(np.mean(scores)) if scores else 0.0


def memory_pools(net: LimNet, pool: list[Case]) -> list[tuple[bool, list[Case]]]:
    """(mr, cases) per memory model to fine-tune: with an MR memory model (`LimNet.memory_mr`) the CT cases train the
    first and the others the MR one; without, every case trains the first."""
    if net.memory_mr is None:
        return [(False, pool)]
    parts = [(False, [c for c in pool if c.hounsfield]), (True, [c for c in pool if not c.hounsfield])]
    return [(mr, part) for mr, part in parts if part]


class LimNetTrainer(TrainTask):
    def __init__(self, model_dir: str, name: str, path: Sequence[str], description: str = "") -> None:
        super().__init__(description or "Fine-tune LIM-Net on the datastore's final labels (robot-user clicks)")
        self.model_dir, self.name, self.paths = model_dir, name, list(path)
        self.stats_path = os.path.join(model_dir, f"{name}_train_stats.json")

    def config(self) -> dict[str, Any]:
        return {
            "max_epochs": 2,
            "steps_per_epoch": 40,
            "learning_rate": 3e-4,
            "val_split": 0.2,
            "val_rounds": 3,
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "seed": 0,
        }

    def stats(self) -> dict[str, Any]:
        if os.path.exists(self.stats_path):
            with open(self.stats_path) as f:
                return json.load(f)
        return {}

    def served_path(self) -> str | None:
        for p in reversed(self.paths):
            if os.path.exists(p):
                return p
        return None

    def _write_stats(self, stats: dict) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.model_dir, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(stats, f, indent=2)
        os.replace(tmp, self.stats_path)

    def __call__(self, request: dict, datastore: Datastore) -> dict:
        req = {**self.config(), **request}
        device = str(req["device"]) if torch.cuda.is_available() or "cuda" not in str(req["device"]) else "cpu"
        epochs, spe = int(req["max_epochs"]), int(req["steps_per_epoch"])
        lr, val_split, rounds, seed = float(req["learning_rate"]), float(req["val_split"]), int(req["val_rounds"]), int(req["seed"])
        served = self.served_path()
        if served is None:
            raise RuntimeError("no LIM-Net weights to fine-tune from")
        cases = load_labelled_cases(datastore.datalist())
        if not cases:
            raise RuntimeError("no images with final labels in the datastore: save labels first")
        ids = sorted({c[0] for c in cases})
        rng = np.random.default_rng(seed)
        rng.shuffle(ids)
        n_val = max(1, int(round(len(ids) * val_split))) if len(ids) > 1 else 0
        val_ids = set(ids[:n_val])
        train = [c for c in cases if c[0] not in val_ids]
        val = [c for c in cases if c[0] in val_ids] or train
        logger.info("training on %d objects, validating on %d (%s)", len(train), len(val), sorted(val_ids))

        torch.manual_seed(seed)
        net = LimNet.load(served, device)
        base = robot_dice(net, val, rounds, device)
        stats: dict[str, Any] = {"name": self.name, "start": time.strftime("%Y-%m-%d %H:%M:%S"), "served_before": served,
                                 "train_objects": len(train), "val_objects": len(val), "val_dice_before": base,
                                 "epochs": [], "published": False}
        logger.info("validation Dice before training: %.4f", base)
        self._write_stats(stats)
        pool = [c for _, c, _ in train]
        best, best_state = base, None
        with tempfile.TemporaryDirectory() as work:
            for epoch in range(epochs):
                total = (epoch + 1) * spe
                net.train()
                train_interaction(net, lambda: pool, total, os.path.join(work, "i.ckpt"), seed, batch=8, lr=lr,
                                  log_every=max(1, spe // 2))
                if net.refiner is not None:  # the later rounds' module learns the new labels too
                    train_interaction(net, lambda: pool, total, os.path.join(work, "r.ckpt"), seed, batch=8, lr=lr,
                                      log_every=max(1, spe // 2), refine_prob=REFINER_PROB,
                                      refine_rounds=REFINER_ROUNDS, refiner=True)
                for mr, part in memory_pools(net, pool):  # each memory model learns the volumes it propagates
                    train_memory(net, lambda part=part: part, total, os.path.join(work, f"m{int(mr)}.ckpt"), seed,
                                 batch=4, length=3, lr=lr, log_every=max(1, spe // 2), mr=mr)
                net.eval()
                d = robot_dice(net, val, rounds, device)
                logger.info("epoch %d/%d validation Dice %.4f (before %.4f)", epoch + 1, epochs, d, base)
                stats["epochs"].append({"epoch": epoch + 1, "val_dice": d})
                if d >= best:
                    best, best_state = d, {k: v.clone() for k, v in net.state_dict().items()}
                self._write_stats(stats)
        if best_state is not None:
            net.load_state_dict(best_state)
            target = self.paths[-1]
            if os.path.exists(target):
                shutil.copy2(target, target.replace(".pt", ".prev.pt"))
            net.save(target, {"val_dice": best, "fine_tuned_from": os.path.basename(served)})
            stats["published"] = True
            logger.info("published %s (validation Dice %.4f >= %.4f)", target, best, base)
        else:
            logger.info("kept the served weights: no epoch reached the previous validation Dice %.4f", base)
        stats.update({"val_dice_after": best, "end": time.strftime("%Y-%m-%d %H:%M:%S")})
        self._write_stats(stats)
        return stats
