"""Checks on what clients send before it reaches a file or the network: names that become file names, and image
files that the readers would accept silently although they are broken.

Every check raises MONAILabelException(INVALID_INPUT), which `lib.server_patches` answers with HTTP 422.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib

import numpy as np
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException

MAX_NAME = 255  # a file name's limit on common file systems
MAX_VOXELS = 1 << 29  # 536 M voxels (e.g. 512 x 512 x 2048): larger headers are refused before anything is allocated


def invalid(msg: str) -> MONAILabelException:
    return MONAILabelException(MONAILabelError.INVALID_INPUT, msg)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_name(value: object, what: str) -> str:
    """`value` is joined into a folder as one file name: no separators, no '.' or '..', no control characters."""
    if (not isinstance(value, str) or not value or len(value) > MAX_NAME or value in (".", "..")
            or any(c in "/\\" or ord(c) < 32 for c in value)):
        raise invalid(f"{what} must be a plain name of at most {MAX_NAME} characters, without '/', '\\' "
                      f"or control characters, and not '.' or '..'; got {_short(value)}")
    return value


def inside(path: str, folders: list[str]) -> bool:
    """True when `path` (links resolved) lies in one of `folders`."""
    real = os.path.realpath(path)
    for folder in folders:
        root = os.path.realpath(folder)
        if os.path.commonpath([root, real]) == root:
            return True
    return False


def _gzip_payload_size(path: str) -> int:
    """Bytes in a gzip file once inflated; EOFError/BadGzipFile/zlib.error when it is truncated or corrupt."""
    total = 0
    with gzip.open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            total += len(chunk)
    return total


def check_image_header(path: str) -> None:
    """Refuse, from the header alone, files that are not NIfTI/NRRD though named so, and images too large to hold
    in memory (before the reader allocates them)."""
    name = path.lower()
    if name.endswith(".nrrd"):
        import nrrd

        try:
            sizes = nrrd.read_header(path).get("sizes")
        except Exception as e:
            raise invalid(f"could not read the image: not a valid NRRD header ({type(e).__name__})") from e
        _check_voxels(sizes)
    elif name.endswith((".nii", ".nii.gz")):
        _check_voxels(_nifti_header(path)[0])


def _nifti_header(path: str) -> tuple[tuple, int]:
    """(shape, bytes the file must hold) from a NIfTI header."""
    import nibabel as nib

    try:
        header = nib.load(path).header  # reads the header only
        shape = header.get_data_shape()
        return shape, int(header.get_data_offset()) + int(np.prod(shape)) * header.get_data_dtype().itemsize
    except Exception as e:
        raise invalid(f"could not read the image: not a valid NIfTI header ({type(e).__name__})") from e


def check_image_complete(path: str, image) -> None:
    """Refuse a NIfTI file whose data is shorter than its header says. ITK reads those without an error and fills
    the missing voxels with zeros, so only an image whose last voxel (in file order) is 0 can be one; only then is
    the file measured (a .nii.gz is inflated once: ~1 s for 150 MB). ITK itself raises on short NRRD data."""
    name = path.lower()
    if not name.endswith((".nii", ".nii.gz")) or float(image[(-1,) * image.ndim]) != 0:  # no reshape: a copy
        return
    _, need = _nifti_header(path)
    try:
        have = _gzip_payload_size(path) if name.endswith(".gz") else os.path.getsize(path)
    except (EOFError, OSError, zlib.error) as e:
        raise invalid("could not read the image: the compressed file is truncated or corrupt") from e
    if have < need:
        raise invalid(f"could not read the image: the file is truncated ({have} of the {need} bytes its header "
                      "announces)")


def _check_voxels(shape) -> None:
    if shape is not None and int(np.prod([int(s) for s in shape], dtype=np.float64)) > MAX_VOXELS:
        raise invalid(f"the image is too large: shape {[int(s) for s in shape]} has more than {MAX_VOXELS} voxels")


def check_volume(image) -> None:
    """A single-channel 3D volume: colour or vector images (ITK puts the components on the last axis, so an RGB
    picture would otherwise look like a 3-slice volume), 2D and 4D+ images are refused."""
    meta = getattr(image, "meta", {}) or {}
    channel = meta.get("original_channel_dim")
    if channel is not None and not (isinstance(channel, float) and math.isnan(channel)) and channel != "no_channel":
        raise invalid("LIM-Net needs a 3D image with one value per voxel; this one has several (a 4D, colour or "
                      f"vector image of shape {list(image.shape)})")
    if image.ndim != 3:
        raise invalid(f"LIM-Net needs a 3D image; this one has shape {list(image.shape)}")
