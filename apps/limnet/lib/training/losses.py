"""Segmentation loss shared by the training stages."""

import torch
import torch.nn.functional as F


def seg_loss(logits: torch.Tensor, target: torch.Tensor, empty_area: float | None = None) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice (per sample; empty targets are scored by BCE alone).

    With `empty_area`, an empty target also scores its predicted area A as A / (A + empty_area), from 0 to 1 as
    Dice does: BCE alone, averaged over the grid, let a slice past an object's end hold a false mask of a tenth of
    the grid for about a third of what a missed object costs, and propagation carried such masks on for dozens of
    slices."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    inter = (p * t).sum(1)
    denom = p.sum(1) + t.sum(1)
    has = t.sum(1) > 0
    dice = 1 - (2 * inter + 1) / (denom + 1)
    if empty_area is not None:
        dice = torch.where(has, dice, p.sum(1) / (p.sum(1) + empty_area))
        return bce + dice.mean()
    dice = (dice * has).sum() / has.sum().clamp(min=1)
    return bce + dice


def dice_score(pred: torch.Tensor, target: torch.Tensor) -> float:
    inter = (pred * target).sum().item()
    denom = pred.sum().item() + target.sum().item()
    return 1.0 if denom == 0 else 2 * inter / denom
