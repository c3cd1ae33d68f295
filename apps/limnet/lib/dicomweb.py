"""The DICOMweb datastore's image list, widened from CT only to the imaging modalities OHIF's MONAI Label mode
opens (CT and MR by default).

MONAI Label 0.8.5 lists images with one QIDO search, `MONAI_LABEL_DICOMWEB_SEARCH_FILTER`, by default
`{"Modality": "CT"}`. For an MR series that means: not listed as an image, and a DICOM SEG referencing it (saved
from OHIF or by `PUT /datastore/label`) is "ignored" by `datalist()`, which even deletes the cached copy of a label
saved through the server. Training then never sees MR labels. Here the list is one search per modality (the
other keys of the search filter kept), merged: plain QIDO, so any DICOMweb server answers it.

    --conf dicomweb_modalities CT,MR     (default; e.g. `CT` for MONAI Label's original behaviour)
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
import threading

from cachetools import TTLCache, cached
from monailabel.config import settings
from monailabel.datastore.dicom import DICOMWebDatastore
from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

DEFAULT_MODALITIES = ("CT", "MR")


def parse_modalities(value: str | None) -> tuple[str, ...]:
    mods = tuple(m.strip().upper() for m in (value or "").split(",") if m.strip())
    return mods or DEFAULT_MODALITIES


def list_imaging_series(client, search_filter: dict, modalities: tuple[str, ...]) -> list[str]:
    """SeriesInstanceUIDs of every series of the given modalities that match the rest of `search_filter`."""
    series: list[str] = []
    for modality in modalities:
        for ds in client.search_for_series(search_filters={**search_filter, "Modality": modality}):
            uid = str(Dataset.from_json(ds)["SeriesInstanceUID"].value)
            if uid not in series:
                series.append(uid)
    return series


def widen_image_list(datastore: DICOMWebDatastore, modalities: tuple[str, ...]) -> DICOMWebDatastore:
    """Make `datastore.list_images()` (used by the image listing, `datalist()` and the labelled/unlabelled
    splits) return the series of all `modalities`, cached like MONAI Label's own list."""

    @cached(cache=TTLCache(maxsize=1, ttl=settings.MONAI_LABEL_DICOMWEB_CACHE_EXPIRY))
    def list_images() -> list[str]:
        return list_imaging_series(datastore._client, dict(datastore._search_filter or {}), modalities)

    datastore.list_images = list_images  # the instance attribute shadows the class's CT-only method
    logger.info("DICOMweb images: series of modalities %s", ",".join(modalities))
    return datastore


def serialize_downloads(datastore: DICOMWebDatastore) -> DICOMWebDatastore:
    """One download per series at a time, and always the stored copy's path. MONAI Label's `get_image_uri`
    downloads a series into its cache folder unless that folder exists and is not empty, then converts it: a second
    request for the same series during the download (a click while the viewer's prefetch runs, or a double click)
    would convert a half-written folder. Its first conversion also answers with the converter's temporary file
    (copied into the datastore, never removed): the image cache would read the series twice under two names, and
    /tmp would keep a copy of every series."""
    fetch = datastore.get_image_uri
    locks: dict[str, threading.Lock] = {}
    guard = threading.Lock()

    @functools.wraps(fetch)
    def get_image_uri(image_id: str) -> str:
        with guard:
            lock = locks.setdefault(image_id, threading.Lock())
        with lock:
            path = fetch(image_id)
            stored = os.path.realpath(os.path.join(datastore._datastore.image_path(), f"{image_id}.nii.gz"))
            if path and os.path.realpath(path) != stored and os.path.isfile(stored) and os.path.isfile(path):
                if os.path.dirname(os.path.realpath(path)) == os.path.realpath(tempfile.gettempdir()):
                    os.remove(path)  # the converter's temporary file, already copied into the datastore
                return stored
            return path

    datastore.get_image_uri = get_image_uri
    return datastore


def convert_series(series_dir: str, is_seg: bool = False) -> str:
    """MONAI Label's `dicom_to_nifti` for an image series, the same SimpleITK reader and NIfTI writer, with the gzip
    done by ISA-L at level 1: SimpleITK's own compression took 2.3 of the 2.6 s a 512x512x300 CT series needed here
    (now 0.7 s; the file is 5% larger, the voxels and geometry the same). SEG and single-file series go to MONAI
    Label's function. Returns a temporary `.nii.gz`, as the original does."""
    import SimpleITK

    from lib.infers.nifti_reader import fast_gzip

    if is_seg or not os.path.isdir(series_dir) or len(os.listdir(series_dir)) <= 1:
        return _monailabel_dicom_to_nifti(series_dir, is_seg)
    reader = SimpleITK.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(series_dir))
    image = reader.Execute()
    fd, out = tempfile.mkstemp(suffix=".nii.gz")
    os.close(fd)
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "image.nii")
        SimpleITK.WriteImage(image, raw)
        with open(raw, "rb") as src, fast_gzip.open(out, "wb", compresslevel=1) as dst:
            shutil.copyfileobj(src, dst, 4 << 20)
    logger.info("converted %s (%s) to %s", series_dir, "x".join(map(str, image.GetSize())), out)
    return out


def _monailabel_dicom_to_nifti(series_dir: str, is_seg: bool = False) -> str:
    from monailabel.datastore.utils.convert import dicom_to_nifti

    return dicom_to_nifti(series_dir, is_seg)


def use_fast_conversion() -> None:
    """Make MONAI Label's DICOMweb datastore convert downloaded series with `convert_series`."""
    import monailabel.datastore.dicom as dicom

    dicom.dicom_to_nifti = convert_series
