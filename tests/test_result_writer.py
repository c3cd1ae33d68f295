"""The direct NRRD writer must say what MONAI Label's ITK writer says: same voxels, same geometry, same header."""

from __future__ import annotations

import os

import itk
import nrrd
import numpy as np
import pytest
import torch
from monailabel.transform.writer import write_itk

from lib.infers.result_writer import write_label_nrrd


@pytest.mark.parametrize("dtype", ["uint8", "int16", "float32"])
@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("order", ["F", "C"])
def test_same_file_as_itk(tmp_path, dtype: str, compress: bool, order: str) -> None:
    rng = np.random.default_rng(0)
    mask = np.array(rng.random((17, 23, 11)) > 0.5, order=order)
    affine = np.eye(4)  # oblique, flipped and anisotropic: every part of the geometry is checked
    affine[:3, :3] = np.array([[0.0, -0.8, 0.1], [0.7, 0.0, 0.0], [0.0, 0.05, -2.5]])
    affine[:3, 3] = [10.0, -20.0, 5.5]
    ref, ours = str(tmp_path / "itk.nrrd"), str(tmp_path / "ours.nrrd")
    write_itk(mask, ref, torch.tensor(affine), dtype, compress)
    assert write_label_nrrd(mask, torch.tensor(affine), dtype, compress, path=ours) == ours
    a, b = itk.imread(ref), itk.imread(ours)
    assert np.array_equal(itk.array_view_from_image(a), itk.array_view_from_image(b))
    assert np.allclose(a.GetSpacing(), b.GetSpacing()) and np.allclose(a.GetOrigin(), b.GetOrigin())
    assert np.allclose(itk.array_from_matrix(a.GetDirection()), itk.array_from_matrix(b.GetDirection()))
    (da, ha), (db, hb) = nrrd.read(ref), nrrd.read(ours)
    assert da.dtype == db.dtype and np.array_equal(da, db) and np.array_equal(db > 0, mask)
    assert {k: str(v) for k, v in ha.items()} == {k: str(v) for k, v in hb.items()}
    if not compress:  # OHIF copies the raw buffer: it must be the mask, first index fastest, after the header
        raw = open(ours, "rb").read()
        body = raw[raw.index(b"\n\n") + 2 :]
        assert body == np.asarray(mask, dtype=dtype).tobytes(order="F")
    os.remove(ours)
