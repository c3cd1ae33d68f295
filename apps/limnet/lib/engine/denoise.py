"""Image noise, measured and taken out where a first click's readings look at the volume.

Why: the modules learnt brain MR on templates, averages of many subjects with almost no noise, as are the brain
validation sets and the held-out MNI152; a single subject's MRI is noisier. Gaussian noise of 1% of the intensity
range cost the brain sets' first clicks 0.06-0.23 Dice, mostly through the interaction module's answers to the
clicked slice. An edge-preserving (bilateral) filter whose range follows the noise measured in the image gives it
back and leaves a clean template nearly as it is (docs/design_log.md, 2026-12-06, early afternoon).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
from scipy import ndimage as ndi

_RESIDUAL = np.array([[0, 0.25, 0], [0.25, 0, 0.25], [0, 0.25, 0]], np.float32)


def reading_step(shape) -> int:
    """The pixel pitch a volume's noise is read at (`noise_level`) and filtered at (`DenoisedVolume`): every
    pixel up to 256 across, every other one above (every k-th above 256 k). A CT reconstructed at 512 x 512 has noise
    that is correlated from pixel to pixel (the reconstruction kernel; the thin-slice chest CT's residual grows
    1.6x from neighbours 1 pixel away to 2 pixels away) and close to white at every other pixel."""
    return max(1, max(int(shape[0]), int(shape[1])) // 256)


def noise_level(volume, planes: int = 8, window: int = 7, share: float = 0.1) -> tuple[float, float]:
    """The white noise of a volume (its standard deviation, in the volume's intensity units) and the 1-99
    percentile intensity range it is measured against, both read on the same slices.

    Read on `planes` slices of the middle 60% of the slices that image the body or head (air added around it does
    not move the reading): the residual of each pixel against its four neighbours
    (1.25 times the noise's variance where the image is flat), its local spread in `window` x `window` pixels, and
    the 10th percentile of that spread inside the body or head (`share` of the range above the 1st percentile): the
    flattest tissue shows only the noise, edges and texture raise the rest. As a fraction of the range, a clean
    template reads 0.003-0.004, a 2 mm template's texture 0.013, a routine CT 0.0075, 1% noise added to a template
    0.010. Slices over 256 pixels are read every other pixel or more (`reading_step`).
    `volume`: anything indexable as volume[x0:x1:s, y0:y1:s, k] (an array or a `ScaledVolume`)."""
    h, w, d = volume.shape
    coarse = np.asarray(volume[:: max(1, h // 32), :: max(1, w // 32), :], np.float32)
    lo, hi = np.percentile(coarse, [1, 99])
    held = np.flatnonzero((coarse > lo + share * (hi - lo)).mean((0, 1)) > 0.05)  # slices that image the body
    first, last = (int(held[0]), int(held[-1])) if held.size else (0, d - 1)
    ks = np.unique(np.linspace(first + 0.2 * (last - first), first + 0.8 * (last - first), planes).round().astype(int))
    step = reading_step(volume.shape)
    stack = np.stack([np.asarray(volume[::step, ::step, int(k)], np.float32) for k in ks], -1)
    lo, hi = np.percentile(stack, [1, 99])
    if hi <= lo or min(stack.shape[:2]) < 3 * window:
        return 0.0, float(hi - lo)
    spreads = []
    for j in range(stack.shape[2]):
        plane = stack[:, :, j]
        inside = ndi.binary_erosion(plane > lo + share * (hi - lo), iterations=window // 2 + 1)
        if np.count_nonzero(inside) < 50:
            continue
        r = plane - ndi.convolve(plane, _RESIDUAL, mode="nearest")
        mean = ndi.uniform_filter(r, window)
        spread = np.sqrt(np.maximum(ndi.uniform_filter(r * r, window) - mean * mean, 0.0))
        spreads.append(spread[inside])
    if not spreads:
        return 0.0, float(hi - lo)
    return float(np.percentile(np.concatenate(spreads), 10) / np.sqrt(1.25)), float(hi - lo)


def _reach(spatial_sigma: float, pitch: int = 1) -> int:
    """How many pixels the filter reads on each side of a pixel: two spatial sigmas, in steps of `pitch` pixels."""
    return int(np.ceil(2 * spatial_sigma)) * pitch


def bilateral_valid(block: np.ndarray, range_sigma: float, spatial_sigma: float = 1.0, pitch: int = 1) -> np.ndarray:
    """An in-plane bilateral filter of an H x W x N float32 block, answering its inner (H - 2r) x (W - 2r) x N part
    (r = `_reach`): neighbours are averaged with a weight that falls with their distance and with their intensity
    difference (`range_sigma`), so noise is averaged and an edge stronger than a few noise levels is kept. The
    neighbours lie `pitch` pixels apart and `spatial_sigma` counts in those steps: noise that is correlated over
    neighbouring pixels is averaged only by neighbours further apart. Slices are filtered apart (a thick-slice CT's
    neighbours show other anatomy)."""
    r, q = _reach(spatial_sigma, pitch), _reach(spatial_sigma)
    h, w = block.shape[0] - 2 * r, block.shape[1] - 2 * r
    centre = block[r:r + h, r:r + w]
    num = np.zeros(centre.shape, np.float32)
    den = np.zeros(centre.shape, np.float32)
    scale = np.float32(-0.5 / (range_sigma * range_sigma))
    for a in range(-q, q + 1):
        for b in range(-q, q + 1):
            near = np.float32(np.exp(-(a * a + b * b) / (2 * spatial_sigma * spatial_sigma)))
            dx, dy = a * pitch, b * pitch
            shifted = block[r + dx:r + dx + h, r + dy:r + dy + w]
            weight = shifted - centre
            np.square(weight, out=weight)
            weight *= scale
            np.exp(weight, out=weight)
            weight *= near
            num += weight * shifted
            den += weight
    return num / den


def _check_inplane(key, n: int) -> None:
    """Refuses an in-plane index other than an int in range or a forward slice (the reads the engine makes)."""
    if isinstance(key, (int, np.integer)):
        if not -n <= int(key) < n:
            raise IndexError(f"index {int(key)} is out of bounds for an axis of size {n}")
    elif not isinstance(key, slice):
        raise IndexError(f"a DenoisedVolume reads in-plane ints or slices, not {type(key).__name__}")
    elif key.indices(n)[2] < 1:
        raise IndexError("a DenoisedVolume reads in-plane slices forwards only")


class DenoisedVolume:
    """A 3D volume read through an in-plane bilateral filter (`bilateral_valid`), filtered where it is read: the
    engine reads crops around the object, so a click pays for the slices it looks at, not for the volume. Each slice
    read is filtered whole once (the plane's border extended by its edge pixels) and kept for the next reads, up to
    `planes` slices: a first click on a CT-sized slice reads the clicked slice and its neighbours some 30 times, in
    boxes from 24 pixels to the whole slice (filtering each read apart cost 0.18 s a click at 512 x 512). Supports
    what the engine does with a volume: `shape`, `ndim`, `dtype`, indexing with in-plane ints or slices and any
    index along the slices; `np.asarray` gives it whole. `pitch`: how far apart the filter's neighbours lie
    (`bilateral_valid`; `denoised` sets it to the noise's `reading_step`)."""

    def __init__(self, base, range_sigma: float, spatial_sigma: float = 1.0, planes: int = 16,
                 pitch: int = 1) -> None:
        self.base, self.range_sigma, self.spatial_sigma = base, float(range_sigma), float(spatial_sigma)
        self.pitch = int(pitch)
        self.shape, self.ndim, self.dtype = tuple(base.shape), 3, np.dtype(base.dtype)
        self._planes: OrderedDict[int, np.ndarray] = OrderedDict()
        self._capacity = planes
        self._lock = threading.Lock()

    def _filtered(self, ks) -> np.ndarray:
        """Slices `ks` (an index along the slices that keeps the axis) filtered whole."""
        r = _reach(self.spatial_sigma, self.pitch)
        block = np.pad(np.asarray(self.base[:, :, ks], dtype=np.float32), ((r, r), (r, r), (0, 0)), mode="edge")
        return bilateral_valid(block, self.range_sigma, self.spatial_sigma, self.pitch).astype(self.dtype, copy=False)

    def plane(self, k: int) -> np.ndarray:
        """Slice k filtered whole, kept for the next reads (the last `planes` slices read)."""
        with self._lock:
            got = self._planes.get(k)
            if got is not None:
                self._planes.move_to_end(k)
                return got
        got = self._filtered(slice(k, k + 1))[:, :, 0]
        with self._lock:
            self._planes[k] = got
            while len(self._planes) > self._capacity:
                self._planes.popitem(last=False)
        return got

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (3 - len(key) + 1) + key[i + 1:]
        key = key + (slice(None),) * (3 - len(key))
        if len(key) != 3:
            raise IndexError(f"too many indices for a 3D volume: {len(key)}")
        _check_inplane(key[0], self.shape[0])
        _check_inplane(key[1], self.shape[1])
        ks, inplane = np.arange(self.shape[2])[key[2]], key[:2]
        if np.ndim(ks) == 0:
            return self.plane(int(ks))[inplane]
        if ks.size == 0:
            return np.asarray(self.base[key]).astype(self.dtype, copy=False)
        return np.stack([self.plane(int(k))[inplane] for k in ks], axis=-1)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.empty(self.shape, self.dtype)
        step = max(1, (1 << 21) // max(1, self.shape[0] * self.shape[1]))
        for z in range(0, self.shape[2], step):
            out[:, :, z:z + step] = self._filtered(slice(z, z + step))
        return out if dtype is None else out.astype(dtype)


PADDING_HU = -2000.0  # at or below: no tissue, nor noisy air (the generator's noisiest air reaches -1,540), but the
# padding many scanners write outside their reconstruction circle (-2048, -3024)


def ct_padding(hounsfield: bool) -> float | None:
    """`normalize_intensity`'s `padding` for an image: PADDING_HU for a CT, so that a scanner's padding outside the
    reconstruction circle reads as the darkest tissue (the air around the body) instead of stretching the intensity
    range by half (the real-CT validation set with such padding lost 0.16 of Dice@6; design log, 2026-12-07
    evening); None for other images."""
    return PADDING_HU if hounsfield else None


def looks_like_ct(volume: np.ndarray, air: float = -900.0) -> bool:
    """Whether a volume as read holds Hounsfield units: its 1st intensity percentile (every 8th voxel in-plane,
    every 4th slice) at or below `air` (air is -1000 HU; an MR's intensities are not negative)."""
    sample = np.asarray(volume[::8, ::8, ::4], dtype=np.float32)
    sample = sample[np.isfinite(sample)]
    return bool(sample.size) and float(np.percentile(sample, 1)) <= air


def denoised(volume, strength: float | None, above: float = 0.0, spatial_sigma: float = 1.0,
             noise: tuple[float, float] | None = None, floor: float = 0.0):
    """`volume` read through a bilateral filter whose range is `strength` times its measured noise (`noise_level`,
    or `noise` where the caller measured it already), where that noise exceeds `above` of its intensity range; the
    volume itself otherwise or when `strength` is None. `floor` (a fraction of the range): only the noise beyond
    it is taken out (the range follows sqrt(noise^2 - floor^2)), for images whose readers learnt that much noise.
    The filter's neighbours lie as far apart as the pixels the noise was read on (`reading_step`)."""
    if strength is None:
        return volume
    sigma, extent = noise_level(volume) if noise is None else noise
    if sigma <= 0.0 or sigma <= above * extent:
        return volume
    excess = float(np.sqrt(max(sigma * sigma - (floor * extent) ** 2, 0.0)))
    if excess <= 0.0:
        return volume
    return DenoisedVolume(volume, strength * excess, spatial_sigma, pitch=reading_step(volume.shape))
