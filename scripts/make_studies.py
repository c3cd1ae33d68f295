"""Write sample studies from packaged real data (nilearn's MNI152 T1) plus one generated CT-like volume.

    .venv/bin/python scripts/make_studies.py studies/
"""

from __future__ import annotations

import argparse
import os
import sys

import nibabel as nib
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "apps", "limnet"))

from lib.data.packaged import mni152, thick_slices  # noqa: E402
from lib.data.synthetic import generate_case  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("folder")
    args = p.parse_args()
    os.makedirs(args.folder, exist_ok=True)
    t1, _, _, affine = mni152()
    out = {"mni152_t1.nii.gz": (t1, affine)}
    img5, _ = thick_slices(t1, np.zeros(t1.shape, np.uint8), 5)
    aff5 = affine.copy()
    aff5[:3, 2] *= 5
    out["mni152_t1_5mm.nii.gz"] = (img5, aff5)
    case = generate_case(np.random.default_rng(2024), "nested", size=(160, 160), depth=(60, 60))
    out["synthetic_ct.nii.gz"] = (case.image, np.diag(list(case.spacing) + [1.0]))
    for name, (img, aff) in out.items():
        path = os.path.join(args.folder, name)
        if not os.path.exists(path):
            nib.save(nib.Nifti1Image(img.astype(np.float32), aff), path)
            print("wrote", path, img.shape)


if __name__ == "__main__":
    main()
