"""Procedurally generated 3D volumes with one target object, for training without downloads.

Objects: deformed blobs, tubes (optionally branching), thin curved sheets, small spots, a lesion nested in
an organ and objects touching a look-alike neighbour. Images: textured background, distractors, partial
volume, bias field, noise, CT-like or MR-like contrast, and 1-5x thicker slices than in-plane pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

KINDS = ("blob", "tube", "sheet", "spot", "nested", "touching")
# validation also has "lookalike": neighbours of the target's own intensity behind a gap of 1-2 voxels (deep grey
# matter among grey matter); "alongside": a long structure of the target's intensity running past it along the slice
# axis (a vessel, ventricle or bowel loop beside an organ), where propagation can walk on past the object's end;
# "ct_organ": a CT-sized slice stack (384-512 pixels across, a body in air) with a target from lesion to organ size,
# whose whole-slice first pass the interaction module sees reduced 3-4x;
# training draws from KINDS only, so the committed weights' recipe is unchanged
VALIDATION_KINDS = KINDS + ("lookalike", "alongside", "ct_organ")


@dataclass
class SyntheticCase:
    image: np.ndarray  # float32, H x W x D
    label: np.ndarray  # uint8 {0, 1}, H x W x D
    spacing: tuple[float, float, float]
    kind: str


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field."""
    f = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return (f - f.mean()) / (f.std() + 1e-6)


def _grid(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij", sparse=True)


def _blob(rng, shape, center, radii, roughness: float) -> np.ndarray:
    x, y, z = _grid(shape)
    # random rotation in-plane and a tilt, so blobs are not axis aligned
    a, b = rng.uniform(0, np.pi), rng.uniform(-0.4, 0.4)
    dx, dy, dz = x - center[0], y - center[1], z - center[2]
    u = np.cos(a) * dx + np.sin(a) * dy
    v = -np.sin(a) * dx + np.cos(a) * dy
    w = dz + b * u
    d = (u / radii[0]) ** 2 + (v / radii[1]) ** 2 + (w / radii[2]) ** 2
    noise = _smooth_noise(rng, shape, sigma=max(2.0, min(radii) / 2)) if roughness > 0 else 0
    return (d + roughness * noise) < 1.0


def _tube(rng, shape, radius: float, branches: int) -> np.ndarray:
    out = np.zeros(shape, bool)
    start = np.array([rng.uniform(0.25, 0.75) * shape[0], rng.uniform(0.25, 0.75) * shape[1], 0.0])
    pts = start[None]
    for b in range(branches):
        n = 200
        t = np.linspace(0, 1, n)
        if b == 0:
            p0 = start
            direction = np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5), 1.0])
        else:
            p0 = pts[rng.integers(n // 4, 3 * n // 4)]
            direction = np.array([rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0.2, 1.0)])
        direction = direction / np.linalg.norm(direction) * shape[2] * rng.uniform(0.6, 1.2)
        wiggle = np.stack([rng.uniform(-1, 1) * shape[i] * 0.15 * np.sin(2 * np.pi * rng.uniform(0.3, 1.5) * t
                                                                      + rng.uniform(0, 6)) for i in range(3)], 1)
        pts = p0 + t[:, None] * direction + wiggle * np.array([1, 1, 0.2])
        r = radius * (0.7 if b else 1.0)
        idx = np.round(pts).astype(int)
        ok = np.all((idx >= 0) & (idx < np.array(shape)), axis=1)
        seed = np.zeros(shape, bool)
        seed[tuple(idx[ok].T)] = True
        out |= ndi.distance_transform_edt(~seed) <= r
    return out


def _sheet(rng, shape) -> np.ndarray:
    x, y, z = _grid(shape)
    surf = shape[2] / 2 + _smooth_noise(rng, shape[:2], sigma=shape[0] / 6)[..., None] * shape[2] * 0.15
    thick = rng.uniform(1.0, 2.5)
    cx, cy = rng.uniform(0.3, 0.7) * shape[0], rng.uniform(0.3, 0.7) * shape[1]
    disk = ((x - cx) / (shape[0] * 0.3)) ** 2 + ((y - cy) / (shape[1] * 0.3)) ** 2 < 1
    return (np.abs(z - surf) < thick) & disk


def _alongside(rng, target: np.ndarray) -> np.ndarray:
    """A tube along the slice axis, over 70-100% of the depth, touching the target's side or 1-2 voxels from it."""
    shape = target.shape
    gaps = int(rng.integers(0, 3))
    gap = ndi.binary_dilation(target, iterations=gaps) if gaps else target
    zs = np.nonzero(target.any((0, 1)))[0]
    zm = int(zs[len(zs) // 2])
    area = target[:, :, zm].sum()
    radius = max(2.0, rng.uniform(0.3, 0.8) * np.sqrt(area / np.pi))
    edge = np.argwhere(ndi.binary_dilation(gap[:, :, zm]) & ~gap[:, :, zm])
    c = edge[rng.integers(len(edge))].astype(np.float32)
    out = c - np.argwhere(target[:, :, zm]).mean(0)
    c = c + out / (np.linalg.norm(out) + 1e-6) * radius
    length = int(shape[2] * rng.uniform(0.7, 1.0))
    z_start = int(np.clip(zm - rng.integers(0, length + 1), 0, shape[2] - length))
    x, y = np.ogrid[: shape[0], : shape[1]]
    tube = np.zeros(shape, bool)
    phase, period, amp = rng.uniform(0, 6), rng.uniform(0.5, 2.0) * shape[2], rng.uniform(0, 0.5) * radius
    for z in range(z_start, z_start + length):
        shift = amp * np.sin(2 * np.pi * (z - zm) / period + phase) - amp * np.sin(phase)
        tube[:, :, z] = (x - c[0] - shift) ** 2 + (y - c[1]) ** 2 <= radius**2
    return tube & ~gap


def _local_blob(rng, shape, center, radii, roughness: float) -> np.ndarray:
    """`_blob` computed in a box around its centre only (CT-sized volumes)."""
    out = np.zeros(shape, bool)
    lo = [max(0, int(c - 1.7 * r) - 2) for c, r in zip(center, radii)]
    hi = [min(s, int(c + 1.7 * r) + 3) for c, r, s in zip(center, radii, shape)]
    if any(h <= low for low, h in zip(lo, hi)):
        return out
    sub = tuple(h - low for low, h in zip(lo, hi))
    out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = _blob(rng, sub, np.asarray(center) - lo, radii, roughness)
    return out


def ct_scene(rng: np.random.Generator, size: tuple[int, int] = (384, 512),
             depth: tuple[int, int] = (16, 28)) -> SyntheticCase:
    """A CT-like stack in HU: a body in air with a fat rim, sometimes lungs, soft-tissue organs, and one target from
    lesion to organ size (in-plane radius 2-28% of the slice) inside the body. Validation only: on slices this
    large the interaction module's whole-slice pass sees a 3-4x reduction, where it can take the body for an object."""
    thick = float(rng.choice([1.0, 2.0, 3.0, 5.0]))
    hw = int(rng.integers(size[0], size[1] + 1))
    shape = (hw, int(hw * rng.uniform(0.85, 1.0)), int(rng.integers(depth[0], depth[1] + 1)))
    x, y, _ = _grid(shape)
    cx, cy = shape[0] / 2 + rng.uniform(-0.03, 0.03) * hw, shape[1] / 2 + rng.uniform(-0.03, 0.03) * hw
    ax, ay = rng.uniform(0.40, 0.47) * shape[0], rng.uniform(0.33, 0.45) * shape[1]
    ellipse = ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2
    body = np.broadcast_to(ellipse < 1, shape)
    inner = np.broadcast_to(ellipse < (1 - rng.uniform(0.03, 0.1)) ** 2, shape)
    img = np.full(shape, -1000.0, np.float32)
    img[body] = rng.uniform(-120, -80)  # subcutaneous fat
    img[inner] = rng.uniform(20, 60)  # soft tissue

    def inside_centre(radii) -> np.ndarray:
        for _ in range(100):
            c = np.array([cx, cy, 0.0]) + np.array([rng.uniform(-1, 1) * (ax - radii[0]),
                                                     rng.uniform(-1, 1) * (ay - radii[1]), 0.0]) * 0.8
            c[2] = rng.uniform(0.3, 0.7) * shape[2]
            if ((c[0] - cx) / ax) ** 2 + ((c[1] - cy) / ay) ** 2 < 0.5:
                return c
        return np.array([cx, cy, shape[2] / 2])

    def radii_of(r_mm: float, flat: float) -> np.ndarray:
        return np.array([r_mm, r_mm * flat, max(1.5, r_mm * rng.uniform(0.6, 1.4) / thick)])

    if rng.random() < 0.4:  # lungs
        for side in (-1, 1):
            r = radii_of(rng.uniform(0.12, 0.18) * hw, rng.uniform(0.8, 1.2))
            c = np.array([cx + side * 0.45 * ax, cy, shape[2] / 2])
            r[2] = shape[2]
            img[_local_blob(rng, shape, c, r, 0.2) & inner] = rng.uniform(-880, -780)
    target_r = hw * float(np.exp(rng.uniform(np.log(0.02), np.log(0.28))))
    radii = radii_of(target_r, rng.uniform(0.6, 1.0))
    target = _local_blob(rng, shape, inside_centre(radii), radii, rng.uniform(0, 0.5)) & inner
    if target.sum() < 20:
        radii = radii_of(0.05 * hw, 1.0)
        target = _local_blob(rng, shape, np.array([cx, cy, shape[2] / 2]), radii, 0.0)
    soft = float(img[inner].mean())
    for _ in range(int(rng.integers(2, 6))):  # other organs, some touching the target
        r = radii_of(rng.uniform(0.04, 0.18) * hw, rng.uniform(0.6, 1.0))
        m = _local_blob(rng, shape, inside_centre(r), r, 0.3) & inner & ~target
        img[m] = soft + rng.uniform(-60, 160)
    contrast = rng.uniform(25, 150) * rng.choice([-1, 1])
    img[target] = soft + contrast
    img = ndi.gaussian_filter(img, (rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0), 0.3))
    img += rng.normal(0, rng.uniform(5, 25), shape).astype(np.float32)
    return SyntheticCase(img, target.astype(np.uint8), (1.0, 1.0, thick), "ct_organ")


def _random_center(rng, shape, radii) -> np.ndarray:
    return np.array([rng.uniform(min(r + 2, s / 2), max(s - r - 2, s / 2)) for s, r in zip(shape, radii)])


def _body_ellipse(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, float]:
    """An elliptic body nearly filling the slice: its normalised radius per pixel (< 1 inside) and its rim width."""
    x, y = np.ogrid[: shape[0], : shape[1]]
    ax, ay = shape[0] * rng.uniform(0.42, 0.49), shape[1] * rng.uniform(0.40, 0.49)
    return ((x - shape[0] / 2) / ax) ** 2 + ((y - shape[1] / 2) / ay) ** 2, rng.uniform(0.02, 0.05)


def generate_case(rng: np.random.Generator, kind: str | None = None,
                  size: tuple[int, int] = (96, 160), depth: tuple[int, int] = (24, 56),
                  body_in_air: float = 0.0) -> SyntheticCase:
    """One volume and its target label. Geometry is built isotropically then thickened along the last axis.
    `body_in_air`: the share of cases drawn on a slice 1.7-2.6x as wide (objects scaled with it, small ones not)
    inside a body surrounded by air (`_body_ellipse`): what a click sees when a CT or MR slice is in view whole, air
    far darker than any tissue contrast. Training only; 0 keeps every validation case as it was."""
    if kind == "ct_organ":
        return ct_scene(rng)
    kind = kind or KINDS[rng.integers(len(KINDS))]
    thick = int(rng.choice([1, 1, 2, 3, 4, 5]))
    hw = int(rng.integers(size[0], size[1] + 1))
    in_body = bool(body_in_air) and rng.random() < body_in_air
    if in_body:
        hw = int(hw * min(rng.uniform(1.7, 2.6), 384 / hw))
    d_out = int(rng.integers(depth[0], depth[1] + 1))
    shape = (hw, int(hw * rng.uniform(0.8, 1.0)), d_out * thick)
    shape = (shape[0], shape[1], min(shape[2], 200))
    thick = max(1, shape[2] // d_out)

    def rand_radii(lo, hi):
        r = rng.uniform(lo, hi, 3)
        r[2] = min(r[2], shape[2] * 0.45)
        return r

    body, rim = _body_ellipse(rng, shape) if in_body else (None, 0.0)

    def target_center(radii) -> np.ndarray:  # inside the body's inner part where there is one
        for _ in range(50):
            c = _random_center(rng, shape, radii)
            if body is None or body[int(c[0]), int(c[1])] < 0.5:
                return c
        return np.array([shape[0] / 2, shape[1] / 2, shape[2] / 2])

    others: list[tuple[np.ndarray, float]] = []  # (mask, intensity) of non-target structures
    if kind in ("blob", "nested", "touching", "lookalike", "alongside"):
        radii = rand_radii(0.08 * hw, 0.3 * hw)
        target = _blob(rng, shape, target_center(radii), radii, rng.uniform(0, 0.6))
    elif kind == "tube":
        target = _tube(rng, shape, rng.uniform(1.5, 5), int(rng.integers(1, 4)))
    elif kind == "sheet":
        target = _sheet(rng, shape)
    else:  # spot: a small lesion
        radii = rand_radii(2.0, 6.0)
        target = _blob(rng, shape, target_center(radii), radii, rng.uniform(0, 0.3))
    if body is not None:  # what lies outside the body's inner part is not there
        target &= (body < (1 - rim) ** 2)[:, :, None]
    if target.sum() < 20:
        radii = rand_radii(6, 14)
        target = _blob(rng, shape, target_center(radii), radii, 0.2)

    base = rng.uniform(0.2, 0.5)
    contrast = rng.uniform(0.12, 0.5) * rng.choice([-1, 1])
    if kind == "nested":
        # an organ around a lesion: the target is the lesion or the organ (with the lesion inside it)
        coords = np.argwhere(target)
        c = coords[rng.integers(len(coords))]
        lr = rand_radii(2.5, max(3.0, 0.1 * hw))
        lesion = _blob(rng, shape, c, lr, 0.3) & ndi.binary_erosion(target, iterations=2)
        if lesion.sum() > 20:
            organ_val = base + contrast
            lesion_val = organ_val + rng.uniform(0.15, 0.35) * rng.choice([-1, 1])
            if rng.random() < 0.5:
                others.append((target & ~lesion, organ_val))
                target = lesion
                contrast = lesion_val - base
            else:
                others.append((lesion, lesion_val))
    elif kind == "touching":
        coords = np.argwhere(ndi.binary_dilation(target) & ~target)
        c = coords[rng.integers(len(coords))]
        nr = rand_radii(0.08 * hw, 0.25 * hw)
        neighbour = _blob(rng, shape, c + (c - np.argwhere(target).mean(0)) * 0.5, nr, 0.3) & ~target
        others.append((neighbour, base + contrast + rng.uniform(0.08, 0.25) * rng.choice([-1, 1])))
    elif kind == "lookalike":
        gap = ndi.binary_dilation(target, iterations=int(rng.integers(1, 3)))
        shell = np.argwhere(ndi.binary_dilation(gap, iterations=2) & ~gap)
        centre = np.argwhere(target).mean(0)
        for _ in range(int(rng.integers(3, 7))):
            c = shell[rng.integers(len(shell))]
            nr = rand_radii(0.06 * hw, 0.2 * hw)
            neighbour = _blob(rng, shape, c + (c - centre) * 0.2, nr, 0.4) & ~gap
            others.append((neighbour, base + contrast + rng.uniform(-0.03, 0.03)))
    elif kind == "alongside":
        others.append((_alongside(rng, target), base + contrast + rng.uniform(-0.04, 0.04)))
    for _ in range(int(rng.integers(1, 5))):  # distractors elsewhere
        r = rand_radii(0.04 * hw, 0.2 * hw)
        m = _blob(rng, shape, _random_center(rng, shape, r), r, 0.4) & ~ndi.binary_dilation(target, iterations=2)
        others.append((m, base + rng.uniform(-0.5, 0.5)))

    if body is not None:
        air = base - rng.uniform(0.6, 1.5)
        outside = np.broadcast_to((body >= 1)[:, :, None], shape)
    img = np.full(shape, base, np.float32)
    img += _smooth_noise(rng, shape, rng.uniform(2, 8)) * rng.uniform(0.0, 0.06)
    for m, val in others:
        img[m] = val + _smooth_noise(rng, shape, 2)[m] * rng.uniform(0, 0.04)
    tex = _smooth_noise(rng, shape, rng.uniform(0.8, 3)) * rng.uniform(0, 0.08)
    img[target] = base + contrast + tex[target]
    if body is not None:
        img[np.broadcast_to(((body < 1) & (body >= (1 - rim) ** 2))[:, :, None], shape)] = base + rng.uniform(-0.2, 0.3)
        img[outside] = air  # the rim above: fat, skin
    img = ndi.gaussian_filter(img, rng.uniform(0.4, 1.2))  # partial volume at edges
    if rng.random() < 0.6:  # bias field (MR-like)
        bias = 1 + 0.25 * _smooth_noise(rng, tuple(max(4, s // 8) for s in shape), 2)
        img *= ndi.zoom(bias, [s / b for s, b in zip(shape, bias.shape)], order=1)[: shape[0], : shape[1], : shape[2]]
        if body is not None:  # air stays air
            img[outside] = air
    label = target.astype(np.float32)
    if thick > 1:  # thick slices: average the isotropic slab (partial volume across slices)
        d = shape[2] // thick
        img = img[:, :, : d * thick].reshape(shape[0], shape[1], d, thick).mean(3)
        label = label[:, :, : d * thick].reshape(shape[0], shape[1], d, thick).mean(3)
    img = img + rng.normal(0, rng.uniform(0.005, 0.05), img.shape).astype(np.float32)
    if rng.random() < 0.5:  # CT-like scale and offset; MR-like otherwise
        img = img * 1500 - 1000
    lab = (label >= 0.5).astype(np.uint8)
    if lab.sum() == 0:
        lab = (label >= label.max() * 0.5).astype(np.uint8)
    return SyntheticCase(img.astype(np.float32), lab, (1.0, 1.0, float(thick)), kind)
