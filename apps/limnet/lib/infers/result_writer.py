"""The answer of a click as a NRRD label volume, written straight from the mask's buffer.

MONAI Label's `Writer` goes through ITK: it transposes the mask into a new array, converts its type into another
and copies it into an ITK image before writing, three passes over a 78 M-voxel CT volume for every click. Here
the mask is kept in Fortran order (the first index fastest, as NRRD and OHIF's labelmap buffer expect), so a raw
answer is one header plus one write of the mask's own bytes. The header says what ITK's NRRD writer says for the
same affine (LPS space, direction x spacing per axis, origin), so clients read the same geometry.
"""

from __future__ import annotations

import tempfile
from contextvars import ContextVar

import numpy as np
import torch

try:  # ISA-L's deflate: the same gzip stream, some 10x faster than zlib at level 1 on a label volume
    from isal import isal_zlib as _zlib
except ImportError:  # pragma: no cover - isal is in requirements.txt
    import zlib as _zlib

NRRD_TYPES = {"uint8": "unsigned char", "uint16": "unsigned short", "int16": "short", "int32": "int",
              "float32": "float"}
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Whether a NRRD answer is gzip-encoded when its request does not say (`result_compress`). Set per request by the
# server (`lib.server_patches.CompressAnswers`): true for an answer that goes to another machine and whose client
# takes no HTTP gzip, as Slicer's (78 MB of a CT's label become some 0.1 MB; Slicer's NRRD reader inflates them).
GZIP_BY_DEFAULT: ContextVar[bool] = ContextVar("limnet_gzip_nrrd_by_default", default=False)


def gzip_stream(level: int = 1):
    """A deflate stream in gzip framing (ISA-L where installed): `.compress(bytes)` piece by piece, then `.flush()`.
    Level 1: a mostly empty label volume compresses about as well as at higher levels, at a fraction of the time."""
    return _zlib.compressobj(level, _zlib.DEFLATED, 16 + _zlib.MAX_WBITS)


def nrrd_header(shape: tuple[int, int, int], affine: np.ndarray, dtype: str, compress: bool) -> bytes:
    """A NRRD header for a volume of `shape` (i, j, k) whose voxel-to-RAS matrix is `affine`."""
    lps = RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)
    vector = lambda v: "(" + ",".join(f"{float(x):.17g}" for x in v) + ")"  # noqa: E731
    lines = [
        "NRRD0004",
        "# Complete NRRD file format specification at:",
        "# http://teem.sourceforge.net/nrrd/format.html",
        f"type: {NRRD_TYPES[dtype]}",
        "dimension: 3",
        "space: left-posterior-superior",
        "sizes: " + " ".join(str(int(s)) for s in shape),
        "space directions: " + " ".join(vector(lps[:3, j]) for j in range(3)),
        "kinds: domain domain domain",
        *(["endian: little"] if np.dtype(dtype).itemsize > 1 else []),  # as ITK: none for single bytes
        f"encoding: {'gzip' if compress else 'raw'}",
        "space origin: " + vector(lps[:3, 3]),
    ]
    return ("\n".join(lines) + "\n\n").encode("ascii")


def write_label_nrrd(mask: np.ndarray, affine, dtype: str = "uint8", compress: bool = False,
                     path: str | None = None) -> str:
    """Write an H x W x D mask (bool or integer) as a NRRD label volume; returns the file's path.

    A Fortran-ordered uint8/bool mask is written without any copy."""
    if mask.ndim != 3:
        raise ValueError(f"a label volume must be 3D, got shape {mask.shape}")
    if isinstance(affine, torch.Tensor):
        affine = affine.detach().cpu().numpy()
    if dtype not in NRRD_TYPES:
        raise ValueError(f"unsupported result dtype {dtype}")
    data = mask.view(np.uint8) if mask.dtype == bool and dtype == "uint8" else mask.astype(dtype, order="F")
    flat = np.asfortranarray(data).T  # C-contiguous view of the Fortran buffer: first index fastest
    if flat.dtype.byteorder == ">":
        flat = flat.byteswap().view(flat.dtype.newbyteorder("<"))
    if path is None:
        with tempfile.NamedTemporaryFile(suffix=".nrrd", delete=False) as f:
            path = f.name
    with open(path, "wb") as f:
        f.write(nrrd_header(mask.shape, affine, dtype, compress))
        if compress:  # in slabs, in gzip framing as NRRD's "gzip" encoding wants
            z = gzip_stream()
            for k in range(0, flat.shape[0], 16):
                f.write(z.compress(flat[k : k + 16].tobytes()))
            f.write(z.flush())
        else:
            flat.tofile(f)
    return path
