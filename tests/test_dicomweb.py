"""OHIF's side of the wire against a real DICOMweb store: Orthanc (Debian's package) on loopback, DICOM series made
from NIfTI volumes, our server started with --studies http://127.0.0.1:PORT/dicom-web.

Orientation: OHIF indexes a series as (column, row, slice) and copies the raw NRRD answer straight into its
labelmap. A click on a known, off-centre structure must come back on that structure in the same index space, for
series written from RAS and from LAS (flipped) NIfTI geometry.

The viewer's index space is computed independently of the server (SimpleITK reading the written files)."""

from __future__ import annotations

import json
import os
import tempfile
import time

import nrrd
import numpy as np
import orthanc
import pytest
import requests
from conftest import copy_app, cube_volume, orthanc_missing_reason, start_server, stop_server, viewer_index_space
from relay import Relay

pytestmark = pytest.mark.skipif(orthanc_missing_reason() is not None, reason=str(orthanc_missing_reason()))


@pytest.fixture(scope="module")
def dicom_stack(orthanc_server, tmp_path_factory):
    work, url = orthanc_server["work"], orthanc_server["url"]
    img, truth = cube_volume()
    series, viewer_truth = {}, {}
    for name, affine in {"ras": np.diag([0.8, 0.8, 2.5, 1.0]), "las": np.diag([-0.8, 0.8, 2.5, 1.0])}.items():
        folder = work / name
        series[name] = orthanc.write_series(img, affine, str(folder), "CT", name)
        orthanc.upload(url, str(folder))
        viewer_truth[name] = viewer_index_space(str(folder)) > 200
    # the same volume as an MR series (MONAI Label's DICOMweb datastore listed only CT)
    series["mr"] = orthanc.write_series(img, np.diag([0.8, 0.8, 2.5, 1.0]), str(work / "mr"), "MR", "mr")
    orthanc.upload(url, str(work / "mr"))
    viewer_truth["mr"] = viewer_truth["ras"]
    # a series only the viewer-prefetch test touches first
    series["viewed"] = orthanc.write_series(img, np.diag([0.8, 0.8, 2.5, 1.0]), str(work / "viewed"), "CT", "viewed")
    orthanc.upload(url, str(work / "viewed"))
    viewer_truth["viewed"] = viewer_truth["ras"]
    app = copy_app(tmp_path_factory.mktemp("app"))
    mlog = open(work / "server.log", "w+")
    # the server reaches Orthanc through a relay that a test can slow down (a PACS that takes its time)
    relay = Relay(int(url.rsplit(":", 1)[1]))
    server, murl = start_server(app, f"http://127.0.0.1:{relay.port}/dicom-web", log=mlog,
                                HOME=str(tmp_path_factory.mktemp("home")))
    yield {"orthanc": url, "server": murl, "series": series, "truth": truth, "viewer_truth": viewer_truth,
           "log": work / "server.log", "relay": relay, "work": work}
    stop_server(server)
    relay.close()


def _ohif_infer(murl: str, series_uid: str, fg: list) -> tuple[np.ndarray, str]:
    """The request OHIF's MONAI Label panel sends, and the buffer it copies into its labelmap."""
    params = {"foreground": fg, "background": [], "result_extension": ".nrrd", "result_dtype": "uint8",
              "result_compress": False, "restore_label_idx": False}
    r = requests.post(f"{murl}/infer/limnet?image={series_uid}&output=image", data={"params": json.dumps(params)},
                      timeout=300)
    assert r.status_code == 200, r.text[:500]
    path = os.path.join(tempfile.gettempdir(), f"ohif-{series_uid[-6:]}.nrrd")
    with open(path, "wb") as f:
        f.write(r.content)
    data, header = nrrd.read(path)  # index order i fastest: how OHIF reads the raw buffer
    assert header["encoding"] == "raw", "OHIF's parser needs an uncompressed NRRD"
    return data > 0, path


@pytest.mark.parametrize("geometry", ["ras", "las"])
def test_click_returns_the_structure_where_the_viewer_draws_it(dicom_stack, geometry):
    truth = dicom_stack["viewer_truth"][geometry]
    click = [int(round(v)) for v in np.argwhere(truth).mean(0)]
    mask, _ = _ohif_infer(dicom_stack["server"], dicom_stack["series"][geometry], [click])
    assert mask.shape == truth.shape
    inter = (mask & truth).sum()
    assert inter / truth.sum() > 0.6 and inter / max(mask.sum(), 1) > 0.6, (mask.sum(), truth.sum(), inter)


def test_saved_label_reaches_orthanc_as_dicom_seg(dicom_stack, tmp_path):
    from monailabel.client import MONAILabelClient

    uid = dicom_stack["series"]["ras"]
    before = len(requests.get(dicom_stack["orthanc"] + "/dicom-web/series").json())
    truth = dicom_stack["viewer_truth"]["ras"]
    _, label = _ohif_infer(dicom_stack["server"], uid, [[int(round(v)) for v in np.argwhere(truth).mean(0)]])
    MONAILabelClient(dicom_stack["server"]).save_label(uid, label, tag="final",
                                                        params={"label_info": [{"name": "box"}]})
    series = requests.get(dicom_stack["orthanc"] + "/dicom-web/series").json()
    assert len(series) == before + 1
    assert any(s.get("00080060", {}).get("Value") == ["SEG"] for s in series)
    ds = requests.get(dicom_stack["server"] + "/datastore/?output=all").json()
    assert "final" in ds["objects"][uid]["labels"], "the datastore lists the SEG as the image's final label"


def test_label_of_an_mr_series_reaches_the_trainers_datalist(dicom_stack):
    """MONAI Label 0.8.5 lists only CT series as images, so datalist() ignored (and deleted) the final label of an MR
    series; lib/dicomweb.py lists CT and MR. The SEG covers only the box's slices: the trainer puts it back on the
    image's grid."""
    from monailabel.client import MONAILabelClient

    from lib.trainers.limnet import load_labelled_cases

    uid, truth = dicom_stack["series"]["mr"], dicom_stack["viewer_truth"]["mr"]
    mask, label = _ohif_infer(dicom_stack["server"], uid, [[int(round(v)) for v in np.argwhere(truth).mean(0)]])
    MONAILabelClient(dicom_stack["server"]).save_label(uid, label, tag="final",
                                                        params={"label_info": [{"name": "box"}]})
    datalist = requests.get(dicom_stack["server"] + "/datastore/?output=train", timeout=120).json()
    items = [d for d in datalist if os.path.basename(d["image"]).startswith(uid)]
    assert len(items) == 1, datalist
    cases = load_labelled_cases(items)
    assert len(cases) == 1 and np.array_equal(cases[0][1].label > 0, mask), \
        "the trainer reads the saved mask on the image's grid"


def test_viewer_reading_a_series_prefetches_it(dicom_stack):
    """OHIF reads a series through the server's DICOMweb proxy when it opens it; the server then downloads, converts
    and normalises the series in the background, so the first click does not. A click sent right after the proxied
    read gets the right answer (one download per series at a time in the server: the click waits for the
    prefetch's, it does not convert a half-downloaded folder). The converter hands the volume it read to the image
    cache (`SeriesConverter`): the stored file is not read again."""
    murl, uid = dicom_stack["server"], dicom_stack["series"]["viewed"]
    found = requests.get(f"{dicom_stack['orthanc']}/dicom-web/series", params={"SeriesInstanceUID": uid}).json()
    study = found[0]["0020000D"]["Value"][0]
    r = requests.get(f"{murl}/proxy/dicom/wado/studies/{study}/series/{uid}/metadata", timeout=120)
    assert r.status_code == 200 and len(r.json()) == 40, "the proxy answers the viewer as before"
    truth = dicom_stack["viewer_truth"]["viewed"]
    mask, _ = _ohif_infer(murl, uid, [[int(round(v)) for v in np.argwhere(truth).mean(0)]])
    inter = (mask & truth).sum()
    assert inter / truth.sum() > 0.6 and inter / max(mask.sum(), 1) > 0.6, (mask.sum(), truth.sum(), inter)
    deadline = time.time() + 60
    while "prefetched" not in _log_lines_with(dicom_stack["log"], uid) and time.time() < deadline:
        time.sleep(0.5)
    lines = _log_lines_with(dicom_stack["log"], uid)
    assert "prefetched" in lines, "the proxied read started a prefetch of the series"
    assert "handed over" in lines, "the converted volume went to the image cache without a second read"
    assert lines.count("Image Dir (cache)") >= 1 and "Traceback" not in lines
    for line in lines.splitlines():  # the converter's temporary copy is not left behind in /tmp
        if "Adding Image:" in line:
            assert not os.path.exists(line.split("=> ")[-1].strip()), line


def _log_lines_with(path, text: str) -> str:
    with open(path, errors="replace") as f:
        return "".join(line for line in f if text in line)


@pytest.mark.parametrize("affine", [np.diag([0.8, 0.8, 2.5, 1.0]), np.diag([-0.8, 0.8, 2.5, 1.0])])
def test_fast_series_conversion_matches_monailabels(tmp_path, affine):
    """The converter the server uses for downloaded series (ISA-L gzip) writes what MONAI Label's would: same voxels,
    same geometry, read back by SimpleITK."""
    import SimpleITK as sitk
    from monailabel.datastore.utils.convert import dicom_to_nifti

    from lib.dicomweb import convert_series

    img, _ = cube_volume(3)
    orthanc.write_series(img, affine, str(tmp_path / "series"), "CT", "conv")
    ours, ref = convert_series(str(tmp_path / "series")), dicom_to_nifti(str(tmp_path / "series"))
    try:
        a, b = sitk.ReadImage(ours), sitk.ReadImage(ref)
        assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
        assert a.GetOrigin() == b.GetOrigin() and a.GetSpacing() == b.GetSpacing()
        assert a.GetDirection() == b.GetDirection()
    finally:
        os.remove(ours)
        os.remove(ref)


def _oblique(spacing=(0.8, 0.9, 2.5)) -> np.ndarray:
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.diag([1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = rot * np.asarray(spacing)[None, :]
    affine[:3, 3] = (-12.5, 40.0, 7.25)
    return affine


@pytest.mark.parametrize("modality, affine", [("CT", np.diag([-0.8, 0.8, 2.5, 1.0])), ("MR", _oblique())])
def test_converted_series_is_handed_to_the_image_cache_as_read(tmp_path, modality, affine):
    """The volume the converter hands to the image cache (normalised while the file was compressed) is what the
    cache would read from the stored file: the same normalised voxels, the same voxel-to-world matrix."""
    import shutil

    from lib.dicomweb import SeriesConverter
    from lib.infers.limnet import VolumeCache, prepare_volume

    img, _ = cube_volume(4)
    orthanc.write_series(img, affine, str(tmp_path / "series"), modality, "handover")
    handed: dict = {}
    converter = SeriesConverter(prepare=prepare_volume, on_prepared=handed.__setitem__)
    converted = converter(str(tmp_path / "series"))
    stored = str(tmp_path / "stored.nii.gz")
    shutil.copy(converted, stored)
    os.remove(converted)
    converter.hand_over(converted, stored)
    assert list(handed) == [stored]
    read = VolumeCache().load(stored)
    assert read.normalized.dtype == handed[stored].normalized.dtype
    assert np.array_equal(read.normalized, handed[stored].normalized)
    assert np.allclose(np.asarray(read.affine), np.asarray(handed[stored].affine), atol=1e-4)
    converter.hand_over(converted, stored)  # handed over once only
    assert list(handed) == [stored]
    again = converter(str(tmp_path / "series"))  # a fetch that failed after converting: nothing stays pending
    converter.discard()
    converter.hand_over(again, str(tmp_path / "other.nii.gz"))
    os.remove(again)
    assert list(handed) == [stored] and converter._pending == {}


def test_constant_series_is_not_handed_over(tmp_path):
    """A series the cache refuses (constant) is left to the file read, which answers the click with a 4xx."""
    from lib.dicomweb import SeriesConverter
    from lib.infers.limnet import prepare_volume

    orthanc.write_series(np.full((16, 16, 6), 7.0, np.float32), np.eye(4), str(tmp_path / "flat"), "CT", "flat")
    handed: dict = {}
    converter = SeriesConverter(prepare=prepare_volume, on_prepared=handed.__setitem__)
    converted = converter(str(tmp_path / "flat"))
    converter.hand_over(converted, converted)
    os.remove(converted)
    assert handed == {}


def test_series_download_is_complete_or_absent(dicom_stack, tmp_path):
    """A downloaded series appears in the datastore's folder only whole (every instance, readable), moved in from
    beside it; a download that breaks off leaves neither a partial series folder (MONAI Label would take a
    non-empty folder for the whole series) nor its working folder."""
    import pydicom
    from dicomweb_client import DICOMwebClient

    from lib.dicomweb import download_series

    uid = dicom_stack["series"]["ras"]
    client = DICOMwebClient(url=f"{dicom_stack['orthanc']}/dicom-web")
    watched = tmp_path / "store" / "hash"
    watched.mkdir(parents=True)
    download_series(None, uid, str(watched / uid), client)
    files = sorted(os.listdir(watched / uid))
    assert len(files) == 40 and all(f.endswith(".dcm") for f in files)
    slices = [pydicom.dcmread(watched / uid / f) for f in files]
    assert {str(s.SeriesInstanceUID) for s in slices} == {uid} and len({str(s.SOPInstanceUID) for s in slices}) == 40
    assert sorted(os.listdir(tmp_path / "store")) == ["hash"], "the working folder was moved in, not left beside"

    class BrokenOff(DICOMwebClient):  # the real server, a connection lost after a few instances
        def iter_series(self, *args, **kwargs):
            for k, instance in enumerate(super().iter_series(*args, **kwargs)):
                if k == 3:
                    raise ConnectionError("connection lost")
                yield instance

    other = dicom_stack["series"]["las"]
    with pytest.raises(ConnectionError):
        download_series(None, other, str(watched / other), BrokenOff(url=f"{dicom_stack['orthanc']}/dicom-web"))
    assert not (watched / other).exists() and sorted(os.listdir(tmp_path / "store")) == ["hash"]
    with pytest.raises(ValueError, match="not found"):
        download_series(None, "1.2.3.4.5", str(watched / "1.2.3.4.5"), client)
    assert sorted(os.listdir(watched)) == [uid]


def test_datastore_watcher_sees_only_what_its_patterns_can_match(tmp_path):
    """`match_only_watched_folders` drops, before pattern matching, the events of series folders (one per downloaded
    instance) and lets through those of images, labels and the datastore's config, which the handler then matches
    as before (real watchdog observer on a real folder)."""
    from monailabel.datastore.local import LocalDatastore

    from lib.dicomweb import match_only_watched_folders

    ds = LocalDatastore(str(tmp_path / "store"), extensions=("*.nii.gz", "*.nii"), auto_reload=True)
    try:
        seen: list[str] = []
        handler = ds._handler
        dispatch = handler.dispatch

        def recording(event):
            seen.append(os.fsdecode(event.src_path))
            dispatch(event)

        handler.dispatch = recording
        match_only_watched_folders(ds)
        image_dir = ds._datastore.image_path()
        os.makedirs(os.path.join(image_dir, "1.2.3"))
        for k in range(20):
            with open(os.path.join(image_dir, "1.2.3", f"{k}.dcm"), "wb") as f:
                f.write(b"x" * 1000)
        img, _ = cube_volume()
        import nibabel as nib

        nib.save(nib.Nifti1Image(img, np.eye(4)), os.path.join(image_dir, "case.nii.gz"))
        deadline = time.time() + 10
        while not any(p.endswith("case.nii.gz") for p in seen) and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        assert any(p.endswith("case.nii.gz") for p in seen), seen
        assert not any(os.sep + "1.2.3" + os.sep in p for p in seen), seen  # the folder itself: one event
        deadline = time.time() + 10
        while "case" not in ds.list_images() and time.time() < deadline:
            time.sleep(0.1)
        assert "case" in ds.list_images(), "the handler still reloads the datastore on an image event"
    finally:
        ds._observer.stop()


def test_working_folders_of_killed_downloads_are_removed_when_stale(tmp_path):
    """A download killed outright leaves its working folder beside the datastore; the server removes those that
    have not changed for an hour when it starts, and leaves a fresh one (another server's download) alone."""
    from lib.dicomweb import PARTIAL_PREFIX, remove_stale_downloads

    old, fresh, other = (tmp_path / f"{PARTIAL_PREFIX}1.2.3-a", tmp_path / f"{PARTIAL_PREFIX}1.2.4-b",
                         tmp_path / "8e2aac048fbb844e")
    for folder in (old, fresh, other):
        folder.mkdir()
        (folder / "x.dcm").write_bytes(b"x")
    hours_ago = time.time() - 7200
    for path in (old, other):
        os.utime(path, (hours_ago, hours_ago))
    assert remove_stale_downloads(str(tmp_path)) == [str(old)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, other.name])


def test_the_dicomweb_proxy_forwards_in_parallel_and_the_server_keeps_answering(dicom_stack):
    """A viewer's reads through the server's `/proxy/dicom` while the PACS takes 1 s per answer: four at once take
    about 1 s, not 4 (MONAI Label 0.8.5 forwarded them one at a time inside the event loop), and the server answers
    other requests meanwhile."""
    from concurrent.futures import ThreadPoolExecutor

    murl, relay = dicom_stack["server"], dicom_stack["relay"]
    query = f"{murl}/proxy/dicom/qido/studies?ModalitiesInStudy=CT"
    requests.get(query, timeout=60).raise_for_status()
    relay.delay = 1.0
    try:
        with ThreadPoolExecutor(5) as pool:
            t0 = time.perf_counter()
            reads = [pool.submit(requests.get, query, timeout=60) for _ in range(4)]
            time.sleep(0.3)
            t = time.perf_counter()
            info = requests.get(f"{murl}/info/", timeout=60)
            info_seconds = time.perf_counter() - t
            answers = [r.result() for r in reads]
            elapsed = time.perf_counter() - t0
    finally:
        relay.delay = 0.0
    assert all(a.status_code == 200 and a.json() for a in answers)
    assert info.status_code == 200 and info_seconds < 0.5, f"/info/ waited {info_seconds:.2f} s behind the proxy"
    assert elapsed < 2.5, f"four proxied reads took {elapsed:.2f} s: forwarded one at a time"


def test_files_are_served_while_a_click_is_computed(dicom_stack):
    """A click runs in a worker thread: while a first click downloads its series from a slow PACS (the relay holds
    every answer 1 s), the viewer's files are served at once (MONAI Label 0.8.5 computed clicks inside its event
    loop, and every other request waited for the click to end)."""
    from concurrent.futures import ThreadPoolExecutor

    murl, relay = dicom_stack["server"], dicom_stack["relay"]
    # a series stored only now: neither the server's start-up scoring nor another test has downloaded it
    img, _ = cube_volume()
    folder = dicom_stack["work"] / "slow"
    uid = orthanc.write_series(img, np.diag([0.8, 0.8, 2.5, 1.0]), str(folder), "CT", "slow")
    orthanc.upload(dicom_stack["orthanc"], str(folder))
    relay.delay = 1.0
    try:
        with ThreadPoolExecutor(1) as pool:
            t0 = time.perf_counter()
            click = pool.submit(_ohif_infer, murl, uid, [[24, 58, 15]])
            time.sleep(0.3)
            t = time.perf_counter()
            page = requests.get(f"{murl}/ohif/index.html", timeout=60)
            page_seconds = time.perf_counter() - t
            mask, _ = click.result(timeout=300)
            click_seconds = time.perf_counter() - t0
    finally:
        relay.delay = 0.0
    assert mask.any()
    assert page.status_code == 200 and b"<html" in page.content.lower()
    assert click_seconds > 1.0, f"the click took only {click_seconds:.2f} s: the PACS was not slow"
    assert page_seconds < 0.5, \
        f"a viewer's file waited {page_seconds:.2f} s behind a {click_seconds:.2f} s click"

