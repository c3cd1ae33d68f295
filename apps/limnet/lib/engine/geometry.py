"""Intensity normalisation, in-plane crops and click maps: shared by inference, training and evaluation."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from scipy.ndimage import gaussian_filter, label

from .denoise import DenoisedVolume, ct_padding, looks_like_ct

try:  # connected-components-3d: 3D labelling ~10x faster than scipy's (a round labels the whole object once)
    import cc3d
except ImportError:  # pragma: no cover - it is in requirements.txt
    cc3d = None


def normalize_intensity(volume: np.ndarray, low: float = 0.01, high: float = 99.99,
                        dtype: type = np.float32, known_finite: bool = False,
                        lazy: bool = False, padding: float | None = None) -> np.ndarray | ScaledVolume:
    """Modality-agnostic: clip to the volume's percentiles and scale to [0, 1] (design note). The percentiles only
    drop stray outliers: the network sees each box through its own window (`box_window`), so a bright lesion must
    not be clipped flat here. Works slab by slab (no whole-volume temporaries); `dtype` float16 halves what a
    cached CT volume holds. A Fortran-ordered input (NIfTI, ITK) keeps its layout: slab writes and the engine's
    slice reads stay contiguous (0.33 s instead of 1.1 s for 512x512x300 on this project's machine).
    `known_finite`: the caller has checked that every value is finite (a pass over the volume saved).
    `lazy`: an 8- or 16-bit integer volume (CT, most MR) or a float one comes back as a `ScaledVolume` that scales
    what is read of it, with the same values (float16 `dtype` only; 3D). `padding`: values at or below it are no
    data (a CT scanner's padding, `ct_padding`): left out of the percentiles, so they read as 0, the darkest
    tissue, and the image reads as it would without them."""
    v = np.asarray(volume)
    if not known_finite and v.dtype.kind == "f" and not np.isfinite(v).all():
        finite = np.isfinite(v)
        v = np.where(finite, v, np.nanmin(np.where(finite, v, np.inf)) if finite.any() else 0.0)
    sample = v[:: max(1, v.shape[0] // 64), :: max(1, v.shape[1] // 64), :] if v.ndim == 3 else v
    sample = sample.astype(np.float32)
    if padding is not None and sample.min() <= padding and (sample > padding).any():
        sample = sample[sample > padding]
    lo, hi = np.percentile(sample, [low, high])
    if hi - lo < 1e-6:
        return np.zeros(v.shape, dtype, order=_layout(v))
    scale = np.float32(1.0 / (hi - lo))
    if lazy and np.dtype(dtype) == np.float16 and v.ndim == 3 and (v.dtype.kind == "f" or (
            v.dtype.kind in "iu" and v.dtype.itemsize <= 2)):
        return ScaledVolume(v, np.float32(lo), scale)
    return _scaled_whole(v, np.float32(lo), scale, dtype)


def normalize_as_read(volume: np.ndarray, **kwargs) -> tuple[np.ndarray | ScaledVolume, bool]:
    """(`normalize_intensity` of a volume as read, whether it is a CT): a CT's padding left out of its range
    (`ct_padding`), as the server's image cache, the trainer and the training CTs read it. `kwargs`: for
    `normalize_intensity`."""
    hounsfield = bool(looks_like_ct(volume))
    return normalize_intensity(volume, padding=ct_padding(hounsfield), **kwargs), hounsfield


def _layout(v: np.ndarray) -> str:
    """The memory order a copy of `v` keeps: Fortran for a NIfTI's or ITK's volume, C otherwise."""
    return "F" if v.flags.f_contiguous and not v.flags.c_contiguous else "C"


def _scaled_whole(v: np.ndarray, lo: np.float32, scale: np.float32, dtype: type) -> np.ndarray:
    """`_scaled` over a whole volume, slab by slab (no whole-volume float32 temporary), in the volume's layout."""
    out = np.zeros(v.shape, dtype, order=_layout(v))
    step = max(1, (1 << 22) // max(1, v[..., :1].size)) if v.ndim == 3 else v.shape[-1]
    for z in range(0, v.shape[-1], step):
        out[..., z : z + step] = _scaled(v[..., z : z + step], lo, scale)
    return out


def _scaled(values: np.ndarray, lo: np.float32, scale: np.float32) -> np.ndarray:
    """(values - lo) * scale clipped to [0, 1], in float32: one slab of `normalize_intensity`."""
    s = np.array(values, dtype=np.float32)  # a copy, in the input's layout; 0-d for one voxel
    s -= lo
    s *= scale
    return np.clip(s, 0.0, 1.0, out=s)


class ScaledVolume:
    """A 3D volume read as `normalize_intensity` scales it (float16, the same values bit for bit), scaled where it
    is read. The engine reads crops around the object, so a cold first click on a CT no longer waits for the whole
    volume to be scaled (0.3-0.6 s for 512x512x300 on this project's machine, and as long again to fault in the
    pages of the float16 copy). 16-bit data take the memory float16 would, 8-bit data half; float data take two
    to four times as much until `settle` scales them whole, which the server does after the click that read them.
    Supports what the engine does with a volume: `shape`, `ndim`, `dtype` and indexing; `np.asarray` gives it
    whole."""

    def __init__(self, raw: np.ndarray, lo: np.float32, scale: np.float32) -> None:
        self._parts: tuple[np.ndarray, np.float32 | None, np.float32 | None] = (raw, lo, scale)
        self.shape, self.ndim, self.dtype = raw.shape, raw.ndim, np.dtype(np.float16)
        self._settling = threading.Lock()

    @property
    def raw(self) -> np.ndarray:
        """The voxels held: as read, or once settled the scaled float16 volume."""
        return self._parts[0]

    @property
    def nbytes(self) -> int:
        return self._parts[0].nbytes

    @property
    def settled(self) -> bool:
        """Whether the voxels held need no more scaling (after `settle`), or take no more memory than scaled ones."""
        raw, _, scale = self._parts
        return scale is None or raw.dtype.itemsize <= 2

    def settle(self) -> None:
        """Scale a float volume whole, once, and read from that: float16 is half of float32's memory (a quarter of
        float64's) and reads no longer scale. Safe while other threads read: they see the old or the new parts,
        which give the same values."""
        with self._settling:
            if self.settled:
                return
            raw, lo, scale = self._parts
            self._parts = (_scaled_whole(raw, lo, scale, np.float16), None, None)

    def __getitem__(self, key) -> np.ndarray:
        raw, lo, scale = self._parts
        if scale is None:
            return np.array(raw[key])  # a copy, as a scaled read gives: callers may write to it
        return _scaled(raw[key], lo, scale).astype(np.float16)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        raw, lo, scale = self._parts
        out = raw.copy(order="K") if scale is None else _scaled_whole(raw, lo, scale, np.float16)
        return out if dtype is None else out.astype(dtype)


@dataclass(frozen=True)
class Box:
    """A square in-plane region [x0, x1) x [y0, y1) of the volume's first two axes; may extend past the image."""

    x0: int
    y0: int
    size: int

    @property
    def x1(self) -> int:
        return self.x0 + self.size

    @property
    def y1(self) -> int:
        return self.y0 + self.size

    def contains(self, x: float, y: float) -> bool:
        """Whether the in-plane point (x, y) lies inside the box."""
        return self.x0 <= x < self.x1 and self.y0 <= y < self.y1

    @staticmethod
    def around(xmin: float, xmax: float, ymin: float, ymax: float, scale: float, min_size: int) -> "Box":
        """A square centred on a bounding box, `scale` times its larger side and at least `min_size`."""
        side = max(int(np.ceil(max(xmax - xmin + 1, ymax - ymin + 1) * scale)), min_size)
        cx, cy = (xmin + xmax) / 2.0, (ymin + ymax) / 2.0
        return Box(int(round(cx - side / 2.0)), int(round(cy - side / 2.0)), side)

    @staticmethod
    def of_mask(mask2d: np.ndarray, scale: float, min_size: int) -> "Box | None":
        xs, ys = np.nonzero(mask2d)
        if xs.size == 0:
            return None
        return Box.around(xs.min(), xs.max(), ys.min(), ys.max(), scale, min_size)

    def union(self, other: "Box") -> "Box":
        x0, y0 = min(self.x0, other.x0), min(self.y0, other.y0)
        side = max(max(self.x1, other.x1) - x0, max(self.y1, other.y1) - y0)
        return Box(x0, y0, side)

    def clamp_to(self, shape: tuple[int, int]) -> "Box":
        """Shrink to at most the image's larger side and shift inside the image where it fits."""
        side = min(self.size, max(shape))
        x0 = min(max(self.x0, 0), max(shape[0] - side, 0)) if side <= shape[0] else self.x0 + (self.size - side) // 2
        y0 = min(max(self.y0, 0), max(shape[1] - side, 0)) if side <= shape[1] else self.y0 + (self.size - side) // 2
        return Box(int(x0), int(y0), int(side))

    def to_working(self, x: float, y: float, size: int) -> tuple[float, float]:
        """Volume in-plane coordinates -> working-grid coordinates (pixel centres)."""
        s = size / self.size
        return (x - self.x0 + 0.5) * s - 0.5, (y - self.y0 + 0.5) * s - 0.5


Region = tuple[slice, slice, slice]  # a block of the volume outside which a mask holds no voxel


def enclosing_region(box: "Box", slices: list[int], points: list[tuple[int, int, int]],
                     shape: tuple[int, int, int]) -> Region:
    """The block spanned by a box (clipped to the image) on `slices`, grown to hold `points`."""
    xs = [max(box.x0, 0), min(box.x1, shape[0]) - 1] + [p[0] for p in points]
    ys = [max(box.y0, 0), min(box.y1, shape[1]) - 1] + [p[1] for p in points]
    ks = list(slices) + [p[2] for p in points]
    return slice(min(xs), max(xs) + 1), slice(min(ys), max(ys) + 1), slice(min(ks), max(ks) + 1)


def region_union(a: Region | None, b: Region | None) -> Region | None:
    """The smallest block holding both (either may be None: no voxel)."""
    if a is None or b is None:
        return a if b is None else b
    return tuple(slice(min(p.start, q.start), max(p.stop, q.stop)) for p, q in zip(a, b))  # type: ignore[return-value]


def label_3d(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """6-connected components of a 3D bool mask, as `scipy.ndimage.label` with its default structure gives them
    (the same partition; the numbering may differ), and their count."""
    if cc3d is not None:
        lab, n = cc3d.connected_components(np.asarray(mask, bool), connectivity=6, return_N=True)
        return lab, int(n)
    return label(mask)


def bounding_box(mask: np.ndarray) -> Region | None:
    """The smallest block holding every voxel of an H x W x N bool mask (None if it has none): `find_objects` of one
    label, from axis projections, about 10x faster on an organ-sized block (it updates three bounds per voxel).
    Each axis is projected over the other two at once: on a Fortran-ordered block that is 2.5-6 ms each where the
    in-plane projection over slices took 25 ms (350 x 350 x 140)."""
    zs = np.flatnonzero(mask.any(axis=(0, 1)))
    if not len(zs):
        return None
    stack = mask[:, :, zs[0] : zs[-1] + 1]
    xs, ys = np.flatnonzero(stack.any(axis=(1, 2))), np.flatnonzero(stack.any(axis=(0, 2)))
    return slice(int(xs[0]), int(xs[-1]) + 1), slice(int(ys[0]), int(ys[-1]) + 1), slice(int(zs[0]), int(zs[-1]) + 1)


def extent_xy(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(xmin, xmax, ymin, ymax) of a non-empty H x W x N mask (`bounding_box` in-plane)."""
    xs, ys, _ = bounding_box(mask)
    return xs.start, xs.stop - 1, ys.start, ys.stop - 1


def extent_span(extent: tuple[int, int, int, int]) -> int:
    """The larger side, in pixels, of an (xmin, xmax, ymin, ymax) extent."""
    return max(extent[1] - extent[0], extent[3] - extent[2]) + 1


Window = tuple[float, float]


def box_window(volume: np.ndarray, box: Box, slices, low: float = 0.5, high: float = 99.5,
               min_width: float = 0.05, coverage: float | None = None, anchor: float | None = None) -> Window:
    """The intensity window of a box: percentiles of the (normalised) volume inside it on `slices`, at least
    `min_width` wide. A region of interest's own contrast, as a reader windows an image: a small lesion's contrast
    is lost in a whole CT volume's range; the minimum width keeps noise in a flat region from being blown up.

    With `coverage`, the narrowest intensity range holding that share of the box's pixels (and `anchor`, the clicked
    tissue's intensity, if given) instead: a few percent of air or lung in a CT box otherwise stretch the window over
    1000 HU and leave two soft tissues 30 HU apart nearly the same grey, where a reader would pick a soft-tissue
    window; what lies outside is shown clipped, black or white."""
    h, w, _ = volume.shape
    sx0, sx1, sy0, sy1 = max(box.x0, 0), min(box.x1, h), max(box.y0, 0), min(box.y1, w)
    region = volume[sx0:sx1, sy0:sy1, np.unique(np.asarray(slices).ravel())]
    step = max(1, int(np.sqrt(region.shape[0] * region.shape[1] / 65536)))  # <= ~64k pixels a slice
    values = region[::step, ::step].astype(np.float32).ravel()
    lo, hi = np.percentile(values, [low, high])
    if coverage is not None and values.size > 16:
        v = np.sort(values)
        n = max(1, int(np.ceil(coverage * v.size)))
        starts = np.arange(v.size - n + 1)
        widths = v[starts + n - 1] - v[starts]
        if anchor is not None:  # windows that hold the clicked tissue only
            ok = (v[starts] <= anchor) & (v[starts + n - 1] >= anchor)
            widths = np.where(ok, widths, np.inf)
        i = int(np.argmin(widths))
        if np.isfinite(widths[i]):
            lo, hi = max(lo, v[i]), min(hi, v[i + n - 1])
    if hi - lo < min_width:
        mid = (lo + hi) / 2
        lo, hi = mid - min_width / 2, mid + min_width / 2
    return float(lo), float(hi)


def robust_spread(values: np.ndarray) -> float:
    """The standard deviation of a normal sample with these values' median absolute deviation: a spread that a
    few outliers (another tissue, an edge) do not move."""
    return 1.4826 * float(np.median(np.abs(values - np.median(values))))


def imaged_area(plane: np.ndarray, share: float = 0.1) -> int | None:
    """The area, in pixels, of the body or head a slice images (not the air of the field of view around it): the
    pixels brighter than `share` of the way from its 1st to its 99th intensity percentile, opened once, holes filled
    (the dark ventricles and lungs inside belong to it). None where nothing stands out. Slices over 256 pixels are
    read every `step`-th pixel."""
    step = max(1, max(plane.shape) // 256)
    small = np.asarray(plane[::step, ::step], dtype=np.float32)
    lo, hi = np.percentile(small, [1, 99])
    if hi <= lo:
        return None
    area = int(np.count_nonzero(ndi.binary_fill_holes(ndi.binary_opening(small > lo + share * (hi - lo)))))
    return area * step * step if area >= 16 else None


def shows_structure(volume: np.ndarray, box: Box, k: int, contrast: float = 8.0) -> bool:
    """Whether slice k inside `box` holds more than noise: its intensity range (0.5-99.5 percentiles) exceeds
    `contrast` times the noise level (robust spread of neighbouring-pixel differences). A box inside a uniform
    region shows no edge, so nothing there can tell the object's extent. Read on the image as it came
    (`DenoisedVolume.base`): the filter leaves the noise in blobs that hold no edge either."""
    if isinstance(volume, DenoisedVolume):
        volume = volume.base
    h, w, _ = volume.shape
    region = volume[max(box.x0, 0):min(box.x1, h), max(box.y0, 0):min(box.y1, w), k].astype(np.float32)
    if region.shape[0] < 2 or region.shape[1] < 2:
        return False
    d = np.diff(region, axis=0).ravel()
    noise = robust_spread(d) / np.sqrt(2)
    lo, hi = np.percentile(region, [0.5, 99.5])
    return bool(hi - lo > contrast * noise + 1e-6)


def distinctness(plane: np.ndarray, comp: np.ndarray) -> float:
    """How much a 2D component stands out from its surroundings: the share of the ring 2-5 pixels around it whose
    intensity lies outside the middle 80% of its own, times how much stronger the intensity gradient is on its
    outline than inside it (medians). Both are high for an object whose outline follows an edge, low for a patch of a
    larger region."""
    found = ndi.find_objects(comp.astype(np.uint8))
    if not found:
        return 0.0
    pad = 8  # the ring (5 pixels) and the gradient's reach: the rest of the plane does not matter
    crop = tuple(slice(max(s.start - pad, 0), s.stop + pad) for s in found[0])
    plane, comp = plane[crop].astype(np.float32), comp[crop]
    near = ndi.binary_dilation(comp, iterations=1)
    ring = ndi.binary_dilation(near, iterations=4) & ~near
    core = ndi.binary_erosion(comp)
    values = plane[core if np.count_nonzero(core) > 4 else comp]
    around = plane[ring]
    if values.size < 2 or around.size == 0:
        return 0.0
    lo, hi = np.percentile(values, [10, 90])
    share = float(np.mean((around < lo) | (around > hi)))
    inner = ndi.binary_erosion(comp, iterations=2)
    if np.count_nonzero(inner) <= 4:
        return 0.0
    gradient = ndi.gaussian_gradient_magnitude(plane, 1.0)
    outline = comp & ~core
    return share * float(np.median(gradient[outline]) / (np.median(gradient[inner]) + 1e-6))


def crop_slices(volume: np.ndarray, box: Box, slices: np.ndarray, size: int,
                window: Window | None = None) -> torch.Tensor:
    """N x C x size x size crops of volume[..., slices] (slices: N x C indices along the last axis), zero padded,
    rescaled so that `window` maps to [0, 1] (clipped) when given."""
    h, w, _ = volume.shape
    sx0, sx1 = max(box.x0, 0), min(box.x1, h)
    sy0, sy1 = max(box.y0, 0), min(box.y1, w)
    # each distinct slice is cut and resized once (neighbouring triplets share two of three), one 2D block at a
    # time: a fancy index along the last axis gathers voxel by voxel, 3-4x slower on a CT volume
    ks, which = np.unique(slices.ravel(), return_inverse=True)
    blocks = np.zeros((len(ks), 1, box.size, box.size), np.float32)
    if sx1 > sx0 and sy1 > sy0:
        for i, k in enumerate(ks):
            blocks[i, 0, sx0 - box.x0 : sx1 - box.x0, sy0 - box.y0 : sy1 - box.y0] = volume[sx0:sx1, sy0:sy1, k]
    t = torch.from_numpy(blocks)
    if box.size != size:
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=box.size > size)
    t = t[torch.from_numpy(which.reshape(-1))].reshape(*slices.shape, size, size)
    if window is not None:
        t = ((t - window[0]) / (window[1] - window[0])).clamp_(0.0, 1.0)
    return t


def paste_slices(prob: torch.Tensor, box: Box, shape: tuple[int, int]) -> np.ndarray:
    """N x size x size probabilities -> H x W x N in the volume's plane (zero outside the box)."""
    n = prob.shape[0]
    p = prob.unsqueeze(1).float()
    if box.size != p.shape[-1]:
        p = F.interpolate(p, size=(box.size, box.size), mode="bilinear", align_corners=False)
    p = p[:, 0].cpu().numpy().transpose(1, 2, 0)
    out = np.zeros(shape + (n,), np.float32)
    sx0, sx1 = max(box.x0, 0), min(box.x1, shape[0])
    sy0, sy1 = max(box.y0, 0), min(box.y1, shape[1])
    if sx1 > sx0 and sy1 > sy0:
        out[sx0:sx1, sy0:sy1] = p[sx0 - box.x0 : sx1 - box.x0, sy0 - box.y0 : sy1 - box.y0]
    return out


def paste_mask(prob: torch.Tensor, box: Box, mask: np.ndarray, slices: list[int], threshold: float) -> None:
    """Write N x size x size probabilities, thresholded, into `mask[..., slices]` inside the box only (the rest of
    the volume is never touched: the cost follows the object, not the volume)."""
    h, w = mask.shape[:2]
    sx0, sx1 = max(box.x0, 0), min(box.x1, h)
    sy0, sy1 = max(box.y0, 0), min(box.y1, w)
    if sx1 <= sx0 or sy1 <= sy0:
        return
    p = prob.unsqueeze(1).float()
    if box.size != p.shape[-1]:
        p = F.interpolate(p, size=(box.size, box.size), mode="bilinear", align_corners=False)
    region = (p[:, 0, sx0 - box.x0 : sx1 - box.x0, sy0 - box.y0 : sy1 - box.y0] > threshold).cpu().numpy()
    mask[sx0:sx1, sy0:sy1, slices] = region.transpose(1, 2, 0)


def neighbour_indices(k: np.ndarray | int, depth: int) -> np.ndarray:
    """(k-1, k, k+1) clamped to the volume: the 2.5D context of each slice."""
    k = np.atleast_1d(np.asarray(k))
    return np.clip(np.stack([k - 1, k, k + 1], axis=1), 0, depth - 1)


def click_maps(positive: list[tuple[float, float]], negative: list[tuple[float, float]], size: int,
               sigma: float = 2.5) -> torch.Tensor:
    """2 x size x size maps: a Gaussian bump (max-combined) at each positive and negative click."""
    grid = torch.arange(size, dtype=torch.float32)
    maps = torch.zeros(2, size, size)
    for c, pts in enumerate((positive, negative)):
        for x, y in pts:
            g = torch.exp(-((grid[:, None] - x) ** 2 + (grid[None, :] - y) ** 2) / (2 * sigma**2))
            maps[c] = torch.maximum(maps[c], g)
    return maps


def inner_edges_touched(mask: torch.Tensor, box: Box, shape: tuple[int, int]) -> int:
    """How many edges of `box` that lie inside an image of in-plane `shape` a bool working-grid mask of the box
    reaches: what runs into such an edge is cut by the box (edges on the image's border cut nothing)."""
    touched = (mask[0].any(), mask[-1].any(), mask[:, 0].any(), mask[:, -1].any())
    inside = (box.x0 > 0, box.x1 < shape[0], box.y0 > 0, box.y1 < shape[1])
    return sum(1 for t, i in zip(touched, inside) if bool(t) and i)


def geodesically_nearer(frame: np.ndarray, starts: list[tuple[int, int]], others: list[tuple[int, int]],
                        weight: float) -> np.ndarray:
    """Pixels of a 2D frame geodesically nearer one of `starts` than every one of `others` (bool). Paths cost 1 per
    pixel plus `weight` times the smoothed intensity gradient: a region of like intensity belongs to the seed in it."""
    from skimage.graph import MCP_Geometric

    gx, gy = np.gradient(gaussian_filter(frame.astype(np.float32), 1.0))
    cost = 1.0 + weight * np.hypot(gx, gy)
    return MCP_Geometric(cost).find_costs(starts)[0] < MCP_Geometric(cost).find_costs(others)[0]


def negative_claim(frame: np.ndarray, mask: np.ndarray, pos: list, neg: list, weight: float) -> np.ndarray:
    """The parts of a slice's 2D `mask` its negative clicks take back (bool, the frame's shape): pixels
    geodesically nearer a negative click than every positive one, in the connected parts holding a negative click.

    Paths cost as in `geodesically_nearer`, so a region of like intensity belongs to the click inside it: a
    negative click on the organ around a clicked lesion claims the organ, one on a leak claims the leak, and the
    object the positive clicks sit in stays theirs. Only the parts holding a click go: a click beside a thin rim
    takes the rim, not every weak edge of the object.
    """
    from scipy.ndimage import binary_fill_holes

    h, w = frame.shape

    def pixels(points: list) -> list[tuple[int, int]]:
        return [(min(max(int(round(x)), 0), h - 1), min(max(int(round(y)), 0), w - 1)) for x, y in points]

    nearer = geodesically_nearer(frame, pixels(neg), pixels(pos), weight)
    # the answer's holes count as the part around them: the module often answers a negative click inside an object
    # with a small hole at the click, and the part holding the click would otherwise be that empty hole
    parts, _ = label(nearer & binary_fill_holes(mask))
    ids = {parts[p] for p in pixels(neg)} - {0}
    return np.isin(parts, list(ids)) & mask if ids else np.zeros_like(mask, dtype=bool)


def clicked_components(prob: torch.Tensor, points: list[tuple[float, float]], threshold: float = 0.5,
                       near: int = 1, fragments: float = 0.0) -> torch.Tensor:
    """A working-grid probability map less the components (above `threshold`) that no point falls on, within `near`
    pixels, or encloses (a point in a hole of a ring); unchanged if none does. With `fragments`, components
    nearer to the kept ones than `fragments` times their equivalent radius stay too (an answer broken in pieces).

    A click points at one object: the interaction module, seeing a box of like tissue, also answers with patches
    of it elsewhere in the box (grey matter around a clicked caudate), and a prompt holding them teaches the memory
    that tissue, not the object."""
    from scipy.ndimage import binary_fill_holes, distance_transform_edt, find_objects

    mask = (prob > threshold).cpu().numpy()
    lab, n = label(mask)
    if n <= 1:
        return prob
    s = mask.shape
    pixels = [(i, j) for x, y in points
              for i in range(int(round(x)) - near, int(round(x)) + near + 1)
              for j in range(int(round(y)) - near, int(round(y)) + near + 1) if 0 <= i < s[0] and 0 <= j < s[1]]
    ids = {int(lab[p]) for p in pixels} - {0}
    for c, sl in enumerate(find_objects(lab), start=1):
        inside = [(i - sl[0].start, j - sl[1].start) for i, j in pixels
                  if sl[0].start <= i < sl[0].stop and sl[1].start <= j < sl[1].stop and lab[i, j] != c]
        if c not in ids and inside:
            filled = binary_fill_holes(lab[sl] == c)
            if any(filled[p] for p in inside):
                ids.add(c)
    if not ids:
        return prob
    clicked = np.isin(lab, list(ids))
    if fragments:  # pieces of the clicked object the module's answer broke off: nearer than its own radius
        reach = fragments * np.sqrt(clicked.sum() / np.pi)
        near_pixels = distance_transform_edt(~clicked) <= reach
        clicked = np.isin(lab, list(set(np.unique(lab[near_pixels & mask]).tolist()) - {0}))
    keep = clicked | ~mask  # soft values below the threshold stay as they are
    return prob * torch.from_numpy(keep).to(prob.device)
