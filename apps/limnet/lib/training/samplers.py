"""Training samples cut from 3D cases the way inference cuts them: square in-plane boxes around the object,
resized to the working size, seen through the box's own intensity window, 2.5D slices, click maps in working
coordinates."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from lib.engine.geometry import Box, box_window, click_maps, crop_slices, neighbour_indices


@dataclass
class Case:
    """A normalised image (H x W x D in [0, 1]) and a binary target of the same shape; `hounsfield`: whether the
    image as read was a CT (`looks_like_ct`), which decides its memory model (`LimNet.memory_for`)."""

    image: np.ndarray
    label: np.ndarray
    hounsfield: bool = False


def _object_slices(label: np.ndarray, min_area: int = 1) -> np.ndarray:
    return np.nonzero(label.sum((0, 1)) >= min_area)[0]


@dataclass(frozen=True)
class BoxScale:
    """How large a training box is against its object: `lo` to `hi` times it, drawn uniform or, with `log`,
    log-uniform (a wide range then does not favour its large end)."""

    lo: float = 1.25
    hi: float = 2.5
    log: bool = False

    def draw(self, rng: np.random.Generator) -> float:
        if self.log:
            return float(np.exp(rng.uniform(np.log(self.lo), np.log(self.hi))))
        return float(rng.uniform(self.lo, self.hi))


BOX_SCALE = BoxScale()  # the committed weights' boxes, about as a round's box (1.4-1.5 times the extent) sees it


@dataclass(frozen=True)
class InPlaneMirror:
    """One of the eight in-plane mirrors and quarter turns of a training crop (first axis reversed, second reversed,
    then the two swapped): real files come in every in-plane orientation (a DICOM series converts LPS, a NIfTI is
    often RAS) while the training volumes each keep one, and the modules learnt answers that move with a mirror
    (design log, 2026-12-07, 20:50 UTC)."""

    flip_x: bool = False
    flip_y: bool = False
    swap: bool = False

    @classmethod
    def draw(cls, rng: np.random.Generator, p: float) -> "InPlaneMirror":
        """With probability `p` a random one of the eight (the identity among them), else the identity."""
        if p <= 0 or rng.random() >= p:
            return cls()
        return cls(*(bool(b) for b in rng.random(3) < 0.5))

    def tensor(self, t: torch.Tensor) -> torch.Tensor:
        """`t` (... x S x S) mirrored over its last two axes."""
        if self.flip_x:
            t = t.flip(-2)
        if self.flip_y:
            t = t.flip(-1)
        return t.transpose(-2, -1).contiguous() if self.swap else t

    def points(self, pts: list[tuple[float, float]], size: int) -> list[tuple[float, float]]:
        """Working-grid points (pixel centres) of an S x S crop, mirrored as `tensor` mirrors the crop."""
        out = []
        for x, y in pts:
            x, y = (size - 1 - x if self.flip_x else x), (size - 1 - y if self.flip_y else y)
            out.append((y, x) if self.swap else (x, y))
        return out


def _jittered_box(rng: np.random.Generator, mask2d: np.ndarray, shape: tuple[int, int],
                  scale: BoxScale = BOX_SCALE) -> Box:
    """A training box: the whole slice (a fifth of the time), else a square `scale` times the object, shifted."""
    if rng.random() < 0.2:  # the coarse first pass sees the whole slice
        return Box.around(0, shape[0] - 1, 0, shape[1] - 1, 1.0, 8)
    box = Box.of_mask(mask2d, scale.draw(rng), 24)
    shift = (rng.uniform(-0.15, 0.15, 2) * box.size).astype(int)
    return Box(box.x0 + int(shift[0]), box.y0 + int(shift[1]), box.size)


def _random_points(rng: np.random.Generator, region: np.ndarray, n: int) -> list[tuple[int, int]]:
    xs, ys = np.nonzero(region)
    if xs.size == 0 or n == 0:
        return []
    pick = rng.integers(0, xs.size, n)
    return [(int(xs[i]), int(ys[i])) for i in pick]


def deepest_point(region: np.ndarray) -> tuple[int, ...]:
    """The pixel/voxel farthest from the region's border (region must be non-empty)."""
    d = ndi.distance_transform_edt(np.pad(region, 1))
    d = d[tuple(slice(1, -1) for _ in region.shape)]
    return tuple(int(v) for v in np.unravel_index(np.argmax(d), d.shape))


def noisier(crop: torch.Tensor, rng: np.random.Generator, spread: float) -> torch.Tensor:
    """`crop` (C x S x S, windowed to [0, 1]) with Gaussian noise of up to `spread` added, half the time blurred
    in-plane (a CT's reconstruction kernel correlates its noise between neighbouring pixels), clipped again: the
    templates and most training scans are cleaner than a clinical scan."""
    sigma = float(rng.uniform(0.0, spread))
    noise = rng.normal(0.0, 1.0, crop.shape).astype(np.float32)
    if rng.random() < 0.5:
        noise = ndi.gaussian_filter(noise, (0, *([float(rng.uniform(0.5, 1.2))] * 2)))
        noise /= max(float(noise.std()), 1e-6)
    return (crop + sigma * torch.from_numpy(noise)).clamp_(0.0, 1.0)


def interaction_batch(cases: list[Case], rng: np.random.Generator, batch: int, size: int,
                      box_scale: BoxScale = BOX_SCALE, noise: float = 0.0, mirror: float = 0.0):
    """Inputs (B x 3 x S x S slices), targets (B x 1 x S x S) and the click lists in working coordinates
    (`box_scale`: see `_jittered_box`; `noise`: half the samples get `noisier` with that spread; `mirror`: that
    share of the samples is mirrored in-plane, `InPlaneMirror`)."""
    images, targets, clicks = [], [], []
    for _ in range(batch):
        case = cases[rng.integers(len(cases))]
        ks = _object_slices(case.label)
        k = int(ks[rng.integers(len(ks))])
        m = case.label[:, :, k] > 0
        box = _jittered_box(rng, m, m.shape, box_scale)
        ks3 = neighbour_indices(k, case.image.shape[2])
        crop = crop_slices(case.image, box, ks3, size, box_window(case.image, box, ks3))[0]
        crop = noisier(crop, rng, noise) if noise > 0 and rng.random() < 0.5 else crop
        turn = InPlaneMirror.draw(rng, mirror)
        images.append(turn.tensor(crop))
        targets.append(turn.tensor(crop_slices(case.label.astype(np.float32), box, np.array([[k]]), size)[0]))
        pos = [deepest_point(m)] if rng.random() < 0.7 else _random_points(rng, m, 1)
        pos += _random_points(rng, m, int(rng.choice([0, 0, 1, 2, 3])))
        ring = ndi.binary_dilation(m, iterations=int(rng.integers(2, 12))) & ~m
        neg = _random_points(rng, ring if rng.random() < 0.7 else ~m, int(rng.choice([0, 0, 0, 1, 2, 3])))
        to_w = lambda pts: turn.points([box.to_working(x, y, size) for x, y in pts], size)  # noqa: E731
        clicks.append((to_w(pos), to_w(neg)))
    return torch.stack(images), (torch.stack(targets) > 0.5).float(), clicks


def add_error_clicks(pred: torch.Tensor, target: torch.Tensor, clicks: list) -> list:
    """Robot user on a 2D batch: one click at the deepest point of the largest error region of each sample."""
    out = []
    for b, (pos, neg) in enumerate(clicks):
        p, t = pred[b, 0].numpy() > 0.5, target[b, 0].numpy() > 0.5
        err = p != t
        lab, n = ndi.label(err)
        if n == 0:
            out.append((pos, neg))
            continue
        sizes = ndi.sum(err, lab, index=np.arange(1, n + 1))
        comp = lab == (int(np.argmax(sizes)) + 1)
        x, y = deepest_point(comp)
        out.append((pos + [(x, y)], neg) if t[x, y] else (pos, neg + [(x, y)]))
    return out


def corrupted_masks(target: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """What a propagated mask on a later round's slice looks like (B x 1 x S x S, 0/1): the truth grown into a patch,
    shrunk to a core, shifted, cut by a straight line, a small part of it (a large object first found in part), or
    empty past where propagation stopped."""
    out = []
    for t in target[:, 0].numpy() > 0.5:
        m = t.copy()
        kind = rng.choice(["grow", "shrink", "shift", "cut", "part", "empty"], p=[0.25, 0.15, 0.15, 0.15, 0.2, 0.1])
        if kind == "grow":
            m = ndi.binary_dilation(m, iterations=int(rng.integers(2, 16)))
        elif kind == "shrink":
            m = ndi.binary_erosion(m, iterations=int(rng.integers(1, 8)))
        elif kind == "shift":
            d = (rng.uniform(-0.25, 0.25, 2) * max(1, np.sqrt(m.sum()))).astype(int)
            m = np.roll(m, tuple(int(v) for v in d), (0, 1))
        elif kind == "cut":
            xs, ys = np.nonzero(m) if m.any() else (np.array([0]), np.array([0]))
            a = rng.uniform(0, 2 * np.pi)
            gx, gy = np.ogrid[: m.shape[0], : m.shape[1]]
            proj = (gx - xs.mean()) * np.cos(a) + (gy - ys.mean()) * np.sin(a)
            m = m & (proj < rng.uniform(-0.5, 0.5) * max(1.0, np.sqrt(m.sum())))
        elif kind == "part":  # a large object first found in part: a disc of it around one of its pixels
            xs, ys = np.nonzero(m)
            i = int(rng.integers(len(xs))) if len(xs) else 0
            cx, cy = (xs[i], ys[i]) if len(xs) else (0, 0)
            r = rng.uniform(0.1, 0.35) * 2 * np.sqrt(max(1, m.sum()) / np.pi)
            gx, gy = np.ogrid[: m.shape[0], : m.shape[1]]
            m = m & ((gx - cx) ** 2 + (gy - cy) ** 2 <= r * r)
        else:
            m = np.zeros_like(m)
        out.append(torch.from_numpy(m.astype(np.float32)))
    return torch.stack(out)[:, None]


def interaction_inputs(images: torch.Tensor, clicks: list) -> torch.Tensor:
    size = images.shape[-1]
    maps = torch.stack([click_maps(p, n, size) for p, n in clicks])
    return torch.cat([images, maps], dim=1)


def sequence_batch(cases: list[Case], rng: np.random.Generator, batch: int, size: int, length: int,
                   past_end: float = 0.5, mirror: float = 0.0):
    """Frames (B x T x 3 x S x S) and masks (B x T x 1 x S x S) along the slice axis, either direction.

    The box comes from the first slice only, as at inference, so later slices may outgrow it or lose the object.
    A share `past_end` of the sequences runs past the object's end; a share `mirror` is mirrored in-plane, every
    slice alike (`InPlaneMirror`).
    """
    frames, masks = [], []
    while len(frames) < batch:
        case = cases[rng.integers(len(cases))]
        depth = case.image.shape[2]
        step = int(rng.choice([-1, 1])) * int(rng.choice([1, 1, 1, 2]))
        ks = _object_slices(case.label, 4)
        ks = ks[(ks + step * (length - 1) >= 0) & (ks + step * (length - 1) < depth)]
        if ks.size == 0:
            continue
        if rng.random() < past_end:  # sequences that run past the object's end: learn to stop there
            last = ks.max() if step > 0 else ks.min()
            near_end = ks[np.abs(ks - last) < abs(step) * (length - 1)]
            ks = near_end if near_end.size else ks
        k0 = int(ks[rng.integers(len(ks))])
        idx = k0 + step * np.arange(length)
        box = _jittered_box(rng, case.label[:, :, k0] > 0, case.label.shape[:2])
        window = box_window(case.image, box, neighbour_indices(k0, depth))  # the prompted slice's, as at inference
        turn = InPlaneMirror.draw(rng, mirror)
        frames.append(turn.tensor(crop_slices(case.image, box, neighbour_indices(idx, depth), size, window)))
        masks.append(turn.tensor(crop_slices(case.label.astype(np.float32), box, idx[:, None], size)))
    return torch.stack(frames), (torch.stack(masks) > 0.5).float()


def perturb_mask(mask: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Imitate an imperfect prompt mask: grow or shrink it by a pixel or two."""
    r = int(rng.choice([0, 0, 1, 2]))
    if r == 0:
        return mask
    k = 2 * r + 1
    if rng.random() < 0.5:
        return F.max_pool2d(mask, k, 1, r)
    return -F.max_pool2d(-mask, k, 1, r)
