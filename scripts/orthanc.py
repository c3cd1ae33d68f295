"""Orthanc (Debian's `orthanc` + `orthanc-dicomweb`) on loopback, and DICOM series made from NIfTI volumes.

    .venv/bin/python scripts/orthanc.py start WORKDIR [--port 8042]     # runs in the foreground
    .venv/bin/python scripts/orthanc.py upload URL volume.nii.gz ...   # writes a CT/MR series per volume, uploads

Used by scripts/serve_ohif.sh (the whole OHIF stack) and by the DICOMweb tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import requests

PLUGINS = "/usr/share/orthanc/plugins"


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc") or (os.path.exists("/usr/sbin/Orthanc") and "/usr/sbin/Orthanc") or None


def write_config(workdir: str, http_port: int, dicom_port: int) -> str:
    os.makedirs(os.path.join(workdir, "storage"), exist_ok=True)
    config = {
        "Name": "LIMNET-ORTHANC",
        "StorageDirectory": os.path.join(workdir, "storage"),
        "IndexDirectory": os.path.join(workdir, "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [os.path.join(PLUGINS, "libOrthancDicomWeb.so")],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Host": "127.0.0.1", "Ssl": False},
        "HttpTimeout": 60,
        "StableAge": 1,
    }
    path = os.path.join(workdir, "orthanc.json")
    with open(path, "w") as f:
        json.dump(config, f, indent=1)
    return path


def start(workdir: str, http_port: int = 8042, dicom_port: int = 4242, log=None) -> subprocess.Popen:
    """Start Orthanc and wait until its REST API answers."""
    binary = orthanc_binary()
    if binary is None:
        raise SystemExit("Orthanc is not installed: apt-get install orthanc orthanc-dicomweb")
    cfg = write_config(workdir, http_port, dicom_port)
    proc = subprocess.Popen([binary, cfg], stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{http_port}"
    for _ in range(60):
        try:
            if requests.get(url + "/system", timeout=2).ok:
                return proc
        except requests.RequestException:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("Orthanc did not start")


def write_series(volume: np.ndarray, affine: np.ndarray, folder: str, modality: str = "CT",
                 description: str = "LIM-Net sample") -> str:
    """One DICOM file per slice (last array axis) with the geometry of `affine` (RAS, NIfTI); returns the
    SeriesInstanceUID. Pixel data are int16 (CT: Hounsfield-like values kept; MR: rescaled to 0..4000)."""
    import SimpleITK as sitk
    from pydicom.uid import generate_uid

    os.makedirs(folder, exist_ok=True)
    data = np.asarray(volume, np.float32)
    if modality != "CT":
        lo, hi = np.percentile(data, [0.5, 99.5])
        data = (np.clip((data - lo) / max(hi - lo, 1e-6), 0, 1) * 4000)
    data = np.clip(np.round(data), -32768, 32767).astype(np.int16)
    lps = np.diag([-1, -1, 1, 1]) @ affine  # RAS -> LPS
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    img = sitk.GetImageFromArray(data.transpose(2, 1, 0))  # (k, j, i) for SimpleITK
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(v) for v in direction.flatten()])
    img.SetOrigin([float(v) for v in lps[:3, 3]])
    study, series = generate_uid(), generate_uid()
    frame = generate_uid()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    date = time.strftime("%Y%m%d")
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        pos = img.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2" if modality == "CT" else "1.2.840.10008.5.1.4.1.1.4",
            "0008|0018": generate_uid(),
            "0008|0020": date,
            "0008|0060": modality,
            "0008|103e": description,
            "0010|0010": "LIMNET^SAMPLE",
            "0010|0020": "LIMNET-" + series[-8:],
            "0020|000d": study,
            "0020|000e": series,
            "0020|0052": frame,
            "0020|0011": "1",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in pos),
            "0020|0037": "\\".join(f"{v:.6f}" for v in list(direction[:, 0]) + list(direction[:, 1])),
            "0018|0050": f"{spacing[2]:.6f}",
            "0028|1052": "0",
            "0028|1053": "1",
        }
        for key, val in tags.items():
            sl.SetMetaData(key, val)
        writer.SetFileName(os.path.join(folder, f"slice{k:04d}.dcm"))
        writer.Execute(sl)
    return series


def upload(url: str, folder: str) -> None:
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            r = requests.post(url.rstrip("/") + "/instances", data=f.read(), timeout=60)
            r.raise_for_status()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start")
    s.add_argument("workdir")
    s.add_argument("--port", type=int, default=8042)
    s.add_argument("--dicom-port", type=int, default=4242)
    u = sub.add_parser("upload")
    u.add_argument("url")
    u.add_argument("volumes", nargs="+")
    u.add_argument("--modality", default="MR")
    args = p.parse_args()
    if args.cmd == "start":
        proc = start(args.workdir, args.port, args.dicom_port, log=sys.stdout)
        print(f"Orthanc on http://127.0.0.1:{args.port} (DICOMweb: /dicom-web)", flush=True)
        proc.wait()
    else:
        import nibabel as nib

        for v in args.volumes:
            img = nib.load(v)
            with tempfile.TemporaryDirectory() as tmp:
                uid = write_series(np.asarray(img.dataobj), img.affine, tmp, args.modality, os.path.basename(v))
                upload(args.url, tmp)
            print(f"uploaded {v} as series {uid}")


if __name__ == "__main__":
    main()
