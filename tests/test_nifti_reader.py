"""The fast NIfTI reader must give what MONAI's ITKReader gives (voxels, RAS affine) and leave every file it is not
sure about to ITK; the image the engine caches must not depend on which reader read it."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage
from scipy.spatial.transform import Rotation

from lib.engine.geometry import ScaledVolume, normalize_intensity
from lib.infers.limnet import VolumeCache, prepare_image, settle
from lib.infers.nifti_reader import _read_voxels, read_nifti

RNG = np.random.default_rng(0)
DATA = RNG.integers(-1000, 1000, (31, 23, 17)).astype(np.int16)
OBLIQUE = np.eye(4)
OBLIQUE[:3, :3] = Rotation.from_euler("xyz", [10, -20, 35], degrees=True).as_matrix() @ np.diag([0.8, -0.7, 2.5])
OBLIQUE[:3, 3] = [10.0, -20.0, 5.5]
FLIPPED = np.diag([-0.7, -0.7, 1.5, 1.0])
FLIPPED[:3, 3] = [100.0, 50.0, -20.0]


def _save(path, data, affine, qcode=1, scode=1, slope=None) -> str:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine if qcode else None, code=qcode)
    img.set_sform(affine if scode else None, code=scode)
    if slope is not None:
        img.header.set_slope_inter(*slope)
    nib.save(img, str(path))
    return str(path)


@pytest.mark.parametrize("name,data,affine,codes,slope", [
    ("plain.nii.gz", DATA, np.diag([0.7, 0.7, 1.5, 1.0]), (1, 1), None),
    ("oblique.nii.gz", DATA, OBLIQUE, (1, 1), None),
    ("flipped.nii", DATA, FLIPPED, (1, 1), None),
    ("qform_only.nii.gz", DATA.astype(np.float32) * 0.5, OBLIQUE, (1, 0), None),
    ("sform_only.nii.gz", DATA.astype(np.uint16), FLIPPED, (0, 2), None),
    ("uint8.nii", (DATA % 200).astype(np.uint8), OBLIQUE, (1, 1), None),
    ("scaled.nii.gz", DATA, FLIPPED, (1, 1), (2.0, -5.0)),
])
def test_same_image_as_itk(tmp_path, name, data, affine, codes, slope) -> None:
    path = _save(tmp_path / name, data, affine, *codes, slope=slope)
    ours, ref = read_nifti(path), LoadImage(reader="ITKReader", image_only=True)(path)
    assert ours is not None, "a plain 3D NIfTI must take the fast path"
    assert ours.shape == ref.shape
    assert np.allclose(ours.as_tensor().numpy().astype(np.float64), ref.numpy().astype(np.float64))
    assert np.allclose(ours.affine.numpy(), ref.affine.numpy(), atol=1e-4)
    if slope is not None:  # scaled values as ITK gives them: float32, not a float64 copy
        assert ours.dtype == ref.dtype
    a, b = prepare_image(ours), prepare_image(ref)  # what the engine caches: same values, same geometry
    assert np.array_equal(a.normalized, b.normalized)
    assert np.allclose(a.affine.numpy(), b.affine.numpy(), atol=1e-4)


def test_big_endian_file_reads_as_itk_reads_it(tmp_path) -> None:
    header = nib.Nifti1Header(endianness=">")
    header.set_data_dtype(np.int16)
    nib.save(nib.Nifti1Image(DATA, OBLIQUE, header=header), str(tmp_path / "be.nii.gz"))
    ours = read_nifti(str(tmp_path / "be.nii.gz"))
    ref = LoadImage(reader="ITKReader", image_only=True)(str(tmp_path / "be.nii.gz"))
    assert ours is not None and ours.dtype == torch.int16
    np.testing.assert_array_equal(ours.as_tensor().numpy(), ref.numpy())


@pytest.mark.parametrize("name", ["v.nii.gz", "v.nii"])
def test_voxels_are_read_whole_across_chunks(tmp_path, name) -> None:
    """The voxels inflated piece by piece into one buffer: the same array nibabel reads, in the file's order, and
    writable (the cache and the engine never need a copy)."""
    path = _save(tmp_path / name, DATA, FLIPPED)
    proxy = nib.load(path).dataobj
    got = _read_voxels(path, int(proxy.offset), DATA.shape, np.dtype(np.int16), chunk=1000)  # 1000 B: odd pieces
    np.testing.assert_array_equal(got, np.asarray(proxy))
    assert got.flags.f_contiguous and got.flags.writeable


def test_unsure_files_are_left_to_itk(tmp_path) -> None:
    sheared = np.eye(4)
    sheared[0, 1] = 0.3
    assert read_nifti(_save(tmp_path / "shear.nii.gz", DATA, sheared)) is None  # ITK orthonormalises it
    assert read_nifti(_save(tmp_path / "nocode.nii.gz", DATA, OBLIQUE, 0, 0)) is None  # each reader guesses
    img = nib.Nifti1Image(DATA, OBLIQUE)
    img.set_qform(OBLIQUE, code=1)
    img.set_sform(FLIPPED, code=2)
    nib.save(img, str(tmp_path / "disagree.nii.gz"))
    assert read_nifti(str(tmp_path / "disagree.nii.gz")) is None  # qform and sform say different things
    assert read_nifti(_save(tmp_path / "4d.nii.gz", DATA[..., None].repeat(2, 3), OBLIQUE)) is None
    assert read_nifti(_save(tmp_path / "u32.nii.gz", DATA.astype(np.uint32), OBLIQUE)) is None  # no torch uint32
    raw = open(_save(tmp_path / "whole.nii.gz", DATA, OBLIQUE), "rb").read()
    (tmp_path / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    assert read_nifti(str(tmp_path / "cut.nii.gz")) is None  # truncated: ITK and the checks report it
    nrrd_path = tmp_path / "x.nrrd"
    nrrd_path.write_bytes(b"")
    assert read_nifti(str(nrrd_path)) is None


def test_cache_keeps_fortran_order(tmp_path) -> None:
    """A NIfTI's slices are contiguous on disk; the cached image keeps them so (slice reads, slab writes): a 16-bit
    CT as read, scaled where the engine reads it; a float volume as read until it is scaled to float16 whole."""
    image = VolumeCache().load(_save(tmp_path / "plain.nii.gz", DATA, FLIPPED))
    assert isinstance(image.normalized, ScaledVolume) and image.normalized.raw.flags.f_contiguous
    assert image.normalized.dtype == np.float16 and image.normalized.shape == DATA.shape and image.normalized.settled
    image = VolumeCache().load(_save(tmp_path / "float.nii.gz", DATA.astype(np.float32), FLIPPED))
    lazy = image.normalized
    assert isinstance(lazy, ScaledVolume) and not lazy.settled and lazy.raw.dtype == np.float32
    before = lazy[:, :, :]
    settle(image)
    assert lazy.settled and lazy.raw.dtype == np.float16 and lazy.raw.flags.f_contiguous
    assert lazy.shape == DATA.shape and lazy.dtype == np.float16
    np.testing.assert_array_equal(lazy[:, :, :], before)


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.int8, np.uint16, np.float32, np.float64])
@pytest.mark.parametrize("order", ["F", "C"])
def test_scaled_volume_reads_what_the_eager_scaling_gives(dtype, order) -> None:
    """Every way the engine reads a volume (crops, clicked slices, scattered slice indices, one voxel, the whole)
    gives bit for bit what scaling it up front gives, and so does a float volume after `settle`; a 32-bit integer
    volume is still scaled up front."""
    if np.dtype(dtype).kind == "f":
        v = np.asarray(RNG.normal(40.0, 300.0, (40, 36, 12)).astype(dtype), order=order)
        v[3:9, 4:7, 2] = 3e4
    else:
        info = np.iinfo(dtype)
        v = np.asarray(RNG.integers(info.min, info.max, (40, 36, 12), endpoint=True).astype(dtype), order=order)
        v[3:9, 4:7, 2] = info.max  # outliers the percentiles clip
    eager = normalize_intensity(v, dtype=np.float16)
    lazy = normalize_intensity(v, dtype=np.float16, lazy=True)
    assert isinstance(lazy, ScaledVolume) and lazy.shape == v.shape and lazy.dtype == np.float16 and lazy.ndim == 3
    assert lazy.settled == (v.dtype.itemsize <= 2)
    keys = [np.s_[:, :, 5], np.s_[2:30, -4:40, 3:7], np.s_[5:25, 6:20, np.array([0, 4, 4, 11])],
            np.s_[7, 8, 9], np.s_[...], np.s_[::3, ::2, :]]
    for settled in (False, True):
        if settled:
            lazy.settle()
            assert lazy.settled and lazy.nbytes <= v.nbytes
        for key in keys:
            got = lazy[key]
            assert got.dtype == np.float16
            np.testing.assert_array_equal(got, eager[key])
        got[...] = 0  # a read is the caller's own copy
        whole = np.asarray(lazy)
        np.testing.assert_array_equal(whole, eager)
        assert whole.flags.f_contiguous == (order == "F")
    assert not isinstance(normalize_intensity(v.astype(np.int32), dtype=np.float16, lazy=True), ScaledVolume)
    assert not isinstance(normalize_intensity(v, dtype=np.float32, lazy=True), ScaledVolume)


@pytest.mark.parametrize("spoil", ["none", "nan", "inf", "-inf"])
def test_prepared_image_is_the_normalised_volume_with_or_without_non_finite_values(spoil):
    """`prepare_image` skips the voxel-by-voxel finiteness pass when min and max are finite: same answer."""
    v = np.random.default_rng(3).normal(100, 30, (40, 36, 12)).astype(np.float32)
    if spoil != "none":
        v[2:5, 3:6, 4] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[spoil]
    prepared = prepare_image(MetaTensor(torch.from_numpy(v), affine=torch.eye(4))).normalized
    assert np.isfinite(prepared).all()
    np.testing.assert_array_equal(prepared, normalize_intensity(v, dtype=np.float16))


def test_an_uncompressed_nifti_is_read_into_memory(tmp_path) -> None:
    """The cache may keep a 16-bit image's voxels as read (`ScaledVolume`): not a map of a file that can change."""
    path = _save(tmp_path / "plain.nii", DATA, FLIPPED)
    image = VolumeCache().load(path)
    before = np.asarray(image.normalized).copy()
    with open(path, "r+b") as f:  # the file is rewritten in place under the cached image
        f.seek(-DATA.nbytes, 2)
        f.write(np.zeros(DATA.shape, DATA.dtype).tobytes())
    np.testing.assert_array_equal(np.asarray(image.normalized), before)
