"""The image noise measured and filtered where the first click's rules read the volume (`lib.engine.denoise`)."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from lib.engine.denoise import DenoisedVolume, bilateral_valid, denoised, looks_like_ct, noise_level, reading_step
from lib.engine.geometry import Box, shows_structure
from lib.engine.segmenter import LimNetSegmenter


def head_like(noise: float, seed: int = 0, shape=(160, 180, 24)) -> np.ndarray:
    """A smooth bright ellipse (a head) with a darker blob inside, in air, plus white noise of `noise`."""
    rng = np.random.default_rng(seed)
    x, y, _ = np.ogrid[: shape[0], : shape[1], : shape[2]]
    head = ((x - 80) / 70.0) ** 2 + ((y - 90) / 80.0) ** 2 < 1
    blob = ((x - 70) / 15.0) ** 2 + ((y - 100) / 12.0) ** 2 < 1
    image = np.where(head, 0.8, 0.0) - np.where(blob, 0.3, 0.0) + np.zeros((1, 1, shape[2]))
    image = ndi.gaussian_filter(image, (1.0, 1.0, 0))
    return (image + rng.normal(0, noise, image.shape)).astype(np.float32)


@pytest.mark.parametrize("noise", [0.008, 0.02, 0.05])
def test_the_noise_is_measured_in_the_volumes_units(noise):
    sigma, extent = noise_level(head_like(noise))
    assert abs(sigma / noise - 1) < 0.2, (sigma, noise)
    assert 0.7 < extent < 1.1  # the head (0.8) against air, widened by the noise


def test_a_noise_free_image_measures_almost_no_noise_and_is_read_as_it_is():
    clean = head_like(0.0)
    sigma, extent = noise_level(clean)
    assert sigma < 0.002 * extent, sigma
    assert denoised(clean, 2.0, above=0.002) is clean
    assert denoised(head_like(0.02), None) is not None and isinstance(denoised(head_like(0.02), 2.0), DenoisedVolume)
    noisy = head_like(0.02)
    assert denoised(noisy, None) is noisy


def test_a_floor_filters_only_the_noise_beyond_it():
    """`floor`: an image as noisy as the floor is read as it is; a noisier one through a filter whose range
    follows the excess, sqrt(noise^2 - floor^2), not the whole noise."""
    noisy = head_like(0.03)
    sigma, extent = noise_level(noisy)
    assert denoised(noisy, 2.0, floor=1.1 * sigma / extent) is noisy
    view = denoised(noisy, 2.0, floor=0.6 * sigma / extent)
    assert isinstance(view, DenoisedVolume)
    assert view.range_sigma == pytest.approx(2.0 * 0.8 * sigma, rel=1e-5)  # sqrt(1 - 0.6^2) = 0.8


def test_the_filter_takes_out_noise_and_keeps_an_edge():
    noisy, clean = head_like(0.03), head_like(0.0)
    filtered = np.asarray(DenoisedVolume(noisy, 2 * 0.03))
    flat = ndi.binary_erosion(np.abs(ndi.sobel(clean[:, :, 0])) < 1e-3, iterations=3)
    before = np.std((noisy - clean)[:, :, 0][flat])
    after = np.std((filtered - clean)[:, :, 0][flat])
    assert after < 0.5 * before, (before, after)
    # across the head's outline (0.8 against air) the filtered image steps as sharply as the clean one
    row_clean, row_filtered = clean[80, :, 5], filtered[80, :, 5]
    edge = int(np.argmax(np.abs(np.diff(row_clean))))
    assert abs((row_filtered[edge + 2] - row_filtered[edge - 2]) - (row_clean[edge + 2] - row_clean[edge - 2])) < 0.1


def test_reads_give_what_filtering_whole_slices_gives():
    rng = np.random.default_rng(0)
    volume = rng.random((40, 50, 7)).astype(np.float32)
    wrapped = DenoisedVolume(volume, 0.1)
    whole = bilateral_valid(np.pad(volume, ((2, 2), (2, 2), (0, 0)), mode="edge"), 0.1)
    assert np.array_equal(np.asarray(wrapped), whole)
    for key in [(slice(3, 17), slice(0, 50), 2), (slice(None), slice(None), np.array([0, 3, 3, 6])),
                (5, slice(2, 9), 4), (slice(0, 40, 3), slice(1, 50, 4), 1), (slice(35, 60), slice(-5, None), slice(2, 5)),
                (Ellipsis, 3), (7, 8, 2), (slice(None), 5, [1, 2])]:
        assert wrapped[key].shape == whole[key].shape, key
        assert np.allclose(wrapped[key], whole[key]), key
    assert wrapped[0:0, :, 1].shape == (0, 50)
    with pytest.raises(IndexError):
        wrapped[np.array([1, 2]), :, 0]
    assert wrapped.shape == volume.shape and wrapped.dtype == volume.dtype and wrapped.ndim == 3
    spaced = DenoisedVolume(volume, 0.1, pitch=2)  # neighbours every other pixel: the border extends by 4
    assert np.array_equal(np.asarray(spaced), bilateral_valid(np.pad(volume, ((4, 4), (4, 4), (0, 0)), mode="edge"),
                                                              0.1, pitch=2))
    assert np.allclose(spaced[3:17, 5, 2:4], np.asarray(spaced)[3:17, 5, 2:4])


def test_noise_correlated_from_pixel_to_pixel_is_filtered_with_neighbours_as_far_apart_as_it_is_read():
    """A slice over 256 pixels has its noise read every other pixel (`reading_step`), and filtered with neighbours
    as far apart: noise that a CT's reconstruction kernel correlates over adjacent pixels (here white noise blurred
    0.8 pixels) is averaged far less by adjacent neighbours. An image up to 256 across is read and filtered at every
    pixel."""
    assert reading_step((512, 512, 3)) == 2 and reading_step((256, 200, 9)) == 1 and reading_step((768, 300, 1)) == 3
    rng = np.random.default_rng(1)
    noise = ndi.gaussian_filter(rng.normal(0, 1, (300, 300, 2)), (0.8, 0.8, 0))
    noise = (0.02 * noise / noise.std()).astype(np.float32)
    flat = np.full((300, 300, 2), 0.5, np.float32)
    left = {p: np.std(np.asarray(DenoisedVolume(flat + noise, 2 * 0.02, pitch=p))[20:-20, 20:-20]) for p in (1, 2)}
    assert left[2] < 0.8 * left[1], left  # 0.70 of it
    image = np.zeros((520, 520, 4), np.float32)
    image[60:460, 60:460] = 0.8
    image += np.random.default_rng(2).normal(0, 0.02, image.shape).astype(np.float32)
    view = denoised(image, 2.0)
    assert isinstance(view, DenoisedVolume) and view.pitch == 2
    assert denoised(image[::2, ::2], 2.0).pitch == 1


def test_the_structure_check_reads_the_image_as_it_came():
    """`shows_structure` measures the noise itself; the filter leaves it in smooth blobs that hold no edge either,
    which the check, read on the filtered image, took for structure (first clicks on a CT-like stack then took a
    blob in the organ for the object)."""
    noisy = head_like(0.03)
    wrapped = DenoisedVolume(noisy, 0.06)
    inside = Box(60, 70, 12)  # flat tissue of the head: noise only
    assert not shows_structure(noisy, inside, 4) and not shows_structure(wrapped, inside, 4)
    assert shows_structure(wrapped, Box(40, 60, 64), 4)  # the blob's outline


def test_a_noisy_mr_is_read_through_the_filter_and_a_clean_one_or_a_ct_as_it_is(net):
    """Only the first click's readings see the filtered volume (`InteractionState.readable`); the modules' other
    reads see the image as it came. A CT (Hounsfield units) is left as it is unless its noise exceeds the floor of
    what the modules learnt CT with (`denoise_ct_floor`), and then only that excess is filtered."""
    seg = LimNetSegmenter(net, "cpu", use_fusion=False)
    noisy = head_like(0.03)
    state = seg.new_state(noisy)
    assert isinstance(state.reading_view, DenoisedVolume) and state.readable is state.reading_view
    assert isinstance(state.image, np.ndarray) and state.reading_view.base is state.image
    assert state.reading_view.range_sigma == pytest.approx(2 * 0.03 / (noisy.max() - noisy.min()), rel=0.3)
    clean = seg.new_state(head_like(0.0))
    assert clean.reading_view is None and clean.readable is clean.image
    assert LimNetSegmenter(net, "cpu", use_fusion=False, denoise=None).new_state(noisy).reading_view is None
    ct = head_like(0.008) * 1250 - 1000  # air at -1000 HU, the head at 0; noise 1% of the range, as a CT's
    assert looks_like_ct(ct) and not looks_like_ct(noisy) and not looks_like_ct(head_like(0.008))
    assert seg.new_state(ct).reading_view is None
    assert isinstance(LimNetSegmenter(net, "cpu", use_fusion=False, denoise_ct_floor=0.0).new_state(ct).reading_view,
                      DenoisedVolume)
    very_noisy_ct = head_like(0.05) * 1250 - 1000  # noise beyond the training CTs' (5% of the range)
    view = seg.new_state(very_noisy_ct).reading_view
    sigma, extent = noise_level(view.base)
    assert view.range_sigma == pytest.approx(2 * np.sqrt(sigma**2 - (seg.denoise_ct_floor * extent) ** 2), rel=1e-5)
    assert LimNetSegmenter(net, "cpu", use_fusion=False, denoise_ct_floor=None).new_state(very_noisy_ct).reading_view \
        is None
    assert seg.new_state(head_like(0.008), normalized=True, hounsfield=True).reading_view is None
    assert seg.new_state(head_like(0.008), normalized=True, hounsfield=False).reading_view is not None
    mask = seg.add_clicks(state, [(70, 100, 12)], [])  # the dark blob
    assert mask[70, 100, 12] and mask.sum() < 0.5 * (noisy > 0.4).sum()


def test_a_noise_measured_once_is_reused_and_the_server_tells_a_ct_when_it_reads_an_image(net):
    """The server measures an image's noise once (`CachedImage.noise`) and hands it to every interaction on it; it
    tells a CT by its Hounsfield units when it reads the image (`CachedImage.hounsfield`)."""
    import torch
    from monai.data import MetaTensor

    from lib.infers.limnet import prepare_image

    seg = LimNetSegmenter(net, "cpu", use_fusion=False)
    noisy = head_like(0.03)
    assert seg.new_state(noisy, noise=(0.0, 1.0)).reading_view is None  # taken as measured: no noise
    assert seg.new_state(noisy, noise=(0.05, 1.0)).reading_view.range_sigma == pytest.approx(0.1)
    mr = prepare_image(MetaTensor(torch.from_numpy(noisy), affine=torch.eye(4)))
    ct = prepare_image(MetaTensor(torch.from_numpy(head_like(0.008) * 1250 - 1000), affine=torch.eye(4)))
    assert not mr.hounsfield and ct.hounsfield and mr.noise is None
