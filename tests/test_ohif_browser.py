"""OHIF in headless Chromium against the real stack: Orthanc (Debian's package, DICOMweb) on loopback, our server
started with `monailabel start_server --studies <Orthanc's DICOMweb>`, the OHIF viewer bundled in monailabel served
by that server, and Debian's `chromium` driven by Playwright (`executable_path`; Playwright's own browser download
is never used). Nothing is mocked.

The study: nilearn's MNI152 2009 T1 (packaged real data) with 5 mm slices, written as an MR DICOM series; the
structure is its white matter (bright on T1), whose truth comes from the same package's tissue map.

Flow 1, segmentation: open the study in OHIF's MONAI Label mode, connect the panel, Point Prompts, model
`limnet`, label `object`, click a white-matter voxel in the axial viewport (its canvas position from cornerstone's
worldToCanvas), Run. Checked: the click reaches the server as that voxel; the viewer's labelmap is exactly the
server's answer; it covers the clicked voxel and overlaps the white matter (Dice); the axial viewport changed where
the mask is drawn. The screenshot goes to `$LIMNET_ARTIFACTS` (default `runs/artifacts/`): `ohif_limnet.png`.

Flow 2, saving. Path taken for the label that training uses: the MONAI Label client's save (below), sent from
the page with the viewer's labelmap. Why: the viewer's own path to Orthanc (OHIF's DICOM SEG export) exists and is
driven too, but in this OHIF build it stores the slices in reverse order, so a label saved that way would train
the model on a mirrored mask. Both ways, from the page:
- The MONAI Label extension's own client has `save_label(image, label)`: `PUT /datastore/label?image=<series>`
  with the labelmap's raw bytes as `label.bin`; the panel has no button calling it, so the page sends that very
  request with the viewer's labelmap. The server's DICOMweb datastore turns it into a DICOM SEG (dcmqi) and stores
  it in Orthanc. This is the path a label for training should take: the test checks the SEG in Orthanc references
  the image, `GET /datastore/?output=train` (the trainer's datalist) lists it, the trainer's loader gets back
  exactly the viewer's mask, and `POST /train/limnet` (one short epoch) trains on it.
- OHIF's own "Export DICOM SEG" (the cornerstone-dicom-seg `storeSegmentation` command with its "Create Report"
  dialog, STOW-RS through the server's /proxy/dicom to Orthanc). The MONAI Label mode shows no button for it, so
  the test runs the command and fills the dialog. The SEG does reach Orthanc, but this OHIF build writes the slices
  in reverse order (dcmjs sorts the referenced images the other way round than cornerstone's volume; upstream
  OHIF/Viewers#5038, #5183, cornerstone3D#2580): that check is an expected failure (xfail) while the reversal is
  exactly what is seen, and the SEG is removed afterwards so that it does not reach training.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import time

import numpy as np
import orthanc
import pytest
import requests
from conftest import ROOT, copy_app, orthanc_missing_reason, start_server, stop_server, viewer_index_space

from lib.data.packaged import mni152, mni152_structures, thick_slices


def chromium_path() -> str | None:
    path = os.environ.get("LIMNET_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    return path if os.path.exists(path) else None


def browser_missing_reason() -> str | None:
    if os.environ.get("LIMNET_REQUIRE_BROWSER"):
        return None
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (bash scripts/install_browser.sh); CI installs it"
    if chromium_path() is None:
        return "Debian's chromium is not installed (bash scripts/install_browser.sh); CI installs it"
    return None


_skip = orthanc_missing_reason() or browser_missing_reason()
pytestmark = pytest.mark.skipif(_skip is not None, reason=str(_skip))

ARTIFACTS = os.environ.get("LIMNET_ARTIFACTS") or os.path.join(ROOT, "runs", "artifacts")
VP = "window.services.cornerstoneViewportService.getRenderingEngine().getViewport('mpr-axial')"
PANEL = ".monaiLabelPanel .tab:has(label.tab-label:has-text('Point Prompts'))"
# the labelmap volume the MONAI Label panel creates (segmentation '1'), as base64 of its raw bytes (i fastest)
READ_LABELMAP = """() => {
    const a = window.services.segmentationService.getLabelmapVolume('1').voxelManager.getCompleteScalarDataArray();
    let s = '';
    for (let x = 0; x < a.length; x += 8192) s += String.fromCharCode.apply(null, a.subarray(x, x + 8192));
    return btoa(s);
}"""


@pytest.fixture(scope="module")
def stack(orthanc_server, tmp_path_factory):
    """The MNI152 T1 as an MR series in Orthanc, its white matter in the viewer's index space, and our server."""
    work = orthanc_server["work"]
    t1, _, _, affine = mni152()
    image, wm = thick_slices(t1, mni152_structures()["white_matter"].astype(np.uint8), 5)
    affine = affine.copy()
    affine[:3, 2] *= 5
    uid = orthanc.write_series(image, affine, str(work / "mni152"), "MR", "MNI152 T1 5 mm")
    orthanc.upload(orthanc_server["url"], str(work / "mni152"))
    # the truth written with the same geometry and read back as a viewer indexes a series (not uploaded)
    orthanc.write_series(wm, affine, str(work / "truth"), "CT", "truth")
    truth = viewer_index_space(str(work / "truth")) > 0
    study = requests.get(f"{orthanc_server['dicomweb']}/series?SeriesInstanceUID={uid}",
                         timeout=30).json()[0]["0020000D"]["Value"][0]
    app = copy_app(tmp_path_factory.mktemp("app"))
    log = open(work / "server.log", "w+")
    try:
        # answers gzip-encoded as a remote viewer gets them (on loopback the default sends them raw)
        server, url = start_server(app, orthanc_server["dicomweb"], log=log, conf={"answer_gzip": "always"},
                                   HOME=str(tmp_path_factory.mktemp("home")))
    except RuntimeError:
        log.seek(0)
        raise RuntimeError("server did not start:\n" + log.read()[-3000:]) from None
    yield {"orthanc": orthanc_server["url"], "dicomweb": orthanc_server["dicomweb"], "server": url, "series": uid,
           "study": study, "truth": truth, "app_dir": app, "log": log, "z0": float(affine[2, 3]),
           "dz": float(affine[2, 2])}
    stop_server(server)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), headless=True,
                              args=["--no-sandbox", "--disable-background-networking", "--disable-component-update",
                                    "--disable-sync", "--disable-dev-shm-usage"])
        yield b
        b.close()


def _dismiss(page, text: str) -> None:
    button = page.locator(f"button:has-text('{text}')")
    if button.count() and button.first.is_visible():
        button.first.click()


def _labelmap(page, dims) -> np.ndarray:
    raw = base64.b64decode(page.evaluate(READ_LABELMAP))
    return np.frombuffer(raw, np.uint8).reshape(dims[::-1]).transpose(2, 1, 0)


def _foreground(request) -> list:
    """The `foreground` clicks of the panel's multipart infer request."""
    body = request.post_data_buffer or b""
    start = body.index(b'name="params"')
    part = body[start:].split(b"\r\n\r\n", 1)[1].split(b"\r\n--", 1)[0]
    return json.loads(part)["foreground"]


@pytest.fixture(scope="module")
def segmented(stack, browser):
    """OHIF with LIM-Net's mask of the white matter, made by clicking in the viewer and pressing Run. On failure
    the page's console and a screenshot (`ohif_failure.png` in the artifacts) come with the error."""
    page = browser.new_page(viewport={"width": 1920, "height": 1080})
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"[:300]))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"[:300]))
    try:
        result = _segment_in_ohif(page, stack)
    except Exception as e:
        os.makedirs(ARTIFACTS, exist_ok=True)
        page.screenshot(path=os.path.join(ARTIFACTS, "ohif_failure.png"))
        noise = ("Set value to model", "Crosshairs mapping", "GL Driver", "ProtocolEngine")
        tail = "\n".join(c for c in console if not any(n in c for n in noise))[-4000:]
        raise RuntimeError(f"OHIF flow failed: {e}\n--- browser console ---\n{tail}") from e
    yield {"page": page, "console": console, **result}
    page.close()


def _segment_in_ohif(page, stack) -> dict:
    t0 = time.time()
    server = stack["server"]
    page.goto(f"{server}/ohif/monai-label?StudyInstanceUIDs={stack['study']}", timeout=60_000)
    page.wait_for_function(f"() => {{ try {{ const vp = {VP}; return !!(vp && vp.getImageData()); }}"
                           " catch (e) { return false; } }", timeout=120_000)
    t_image = time.time() - t0
    _dismiss(page, "Confirm and Hide")  # the "investigational use only" banner

    # connect the MONAI Label panel to our server
    page.fill("#monailabelServerURL", server + "/")
    page.click(".monaiLabelPanel button.actionButton")
    # the panel creates the labelmap after connecting; until then getLabelmapVolume throws (no segmentation yet)
    page.wait_for_function("() => { try { return window.services.segmentationService.getLabelmapVolume('1') != null; }"
                           " catch (e) { return false; } }", timeout=60_000)
    page.click(".monaiLabelPanel label.tab-label:has-text('Point Prompts')")
    page.locator(f"{PANEL} select.selectBox").select_option("limnet")
    page.locator(f"{PANEL} tr.clickable-row", has_text="object").click()

    # the deepest white-matter voxel of the slice the axial viewport shows, clicked where the viewer draws it
    geo = page.evaluate(f"""() => {{ const vp = {VP}; const img = vp.getImageData().imageData;
        return {{dims: img.getDimensions(), k: Math.round(img.worldToIndex(vp.getCamera().focalPoint)[2])}}; }}""")
    dims, k = geo["dims"], geo["k"]
    truth = stack["truth"]
    assert list(truth.shape) == dims, "the viewer's volume has the series' dimensions"
    from scipy import ndimage as ndi

    depth = ndi.distance_transform_edt(truth[:, :, k])
    i, j = (int(v) for v in np.unravel_index(np.argmax(depth), depth.shape))
    x, y = page.evaluate(f"""([i, j, k]) => {{ const vp = {VP}; const img = vp.getImageData().imageData;
        const c = vp.worldToCanvas(img.indexToWorld([i, j, k])); const r = vp.canvas.getBoundingClientRect();
        return [r.left + c[0], r.top + c[1]]; }}""", [i, j, k])
    axial = page.evaluate(f"() => {{ const r = {VP}.element.getBoundingClientRect(); "
                          "return {x: r.left, y: r.top, width: r.width, height: r.height}; }")
    page.mouse.click(x, y)
    page.wait_for_timeout(500)
    before = page.screenshot(clip=axial)

    with page.expect_response(lambda r: "/infer/limnet" in r.url, timeout=300_000) as answer:
        page.click(f"{PANEL} button[title='Run PointPrompts']")
    response = answer.value
    page.wait_for_function("""() => { try { const a = window.services.segmentationService.getLabelmapVolume('1')
        .voxelManager.getCompleteScalarDataArray(); for (let x = 0; x < a.length; x++) if (a[x]) return true;
        return false; } catch (e) { return false; } }""", timeout=60_000, polling=500)
    t_mask = time.time() - t0
    page.get_by_text("Running Inference for Point Prompts - Successful").wait_for(state="hidden", timeout=15_000)
    page.wait_for_timeout(500)
    os.makedirs(ARTIFACTS, exist_ok=True)
    shot = os.path.join(ARTIFACTS, "ohif_limnet.png")
    page.screenshot(path=shot)
    after = page.screenshot(clip=axial, path=os.path.join(ARTIFACTS, "ohif_limnet_axial.png"))
    return {"click": [i, j, k], "sent": _foreground(response.request), "status": response.status,
            "encoding": response.headers.get("content-encoding"),
            "answer": response.body(), "labelmap": _labelmap(page, dims), "dims": dims, "before": before,
            "after": after, "screenshot": shot, "t_image": t_image, "t_mask": t_mask}


def test_limnet_mask_appears_in_ohif_on_the_clicked_structure(stack, segmented):
    import nrrd
    from PIL import Image

    assert segmented["status"] == 200
    assert segmented["encoding"] == "gzip", "the browser asked for gzip and the answer came deflated"
    i, j, k = segmented["click"]
    sent = segmented["sent"]
    assert len(sent) == 1 and max(abs(a - b) for a, b in zip(sent[0], segmented["click"])) <= 1, \
        f"the click on the canvas reached the server as voxel {sent}, not {segmented['click']}"

    # the viewer's labelmap is exactly the server's answer (raw NRRD, inflated by the browser, copied into the
    # labelmap in the same voxel order)
    path = os.path.join(str(stack["app_dir"]), "answer.nrrd")
    with open(path, "wb") as f:
        f.write(segmented["answer"])
    answer, header = nrrd.read(path)
    lab = segmented["labelmap"]
    assert header["encoding"] == "raw" and answer.shape == lab.shape
    assert np.array_equal(answer > 0, lab > 0), "the viewer shows what the server answered, voxel for voxel"

    # on the structure: the clicked voxel is labelled and the mask overlaps the white matter
    mask, truth = lab > 0, stack["truth"]
    assert mask[i, j, k], "the clicked voxel is in the mask"
    inter = int((mask & truth).sum())
    dice = 2 * inter / (mask.sum() + truth.sum())
    precision = inter / mask.sum()
    print(f"OHIF: first image {segmented['t_image']:.1f} s, mask {segmented['t_mask']:.1f} s after opening; "
          f"mask {int(mask.sum())} voxels, white matter {int(truth.sum())}, Dice {dice:.3f}, precision {precision:.3f}")
    assert 0.2 * truth.sum() < mask.sum() < 3 * truth.sum()
    # one click on a sprawling tissue class: the committed weights (interaction module fine-tuned 2026-12-02 on
    # compact targets) answer 0.54 here with precision 0.96 (the weights before: about 0.70, README); the mask must
    # lie on the white matter (precision) and cover a good part of it
    assert dice > 0.45 and precision > 0.8, (dice, precision)

    # the mask is drawn over the image: the axial viewport changed, inside the head and not elsewhere
    before = np.asarray(Image.open(io.BytesIO(segmented["before"])).convert("RGB"), np.int16)
    after = np.asarray(Image.open(io.BytesIO(segmented["after"])).convert("RGB"), np.int16)
    changed = np.abs(after - before).sum(-1) > 30
    head = before.sum(-1) > 60  # the image's non-dark pixels (the brain), before the mask was drawn
    assert changed.mean() > 0.02, f"only {changed.mean():.3%} of the axial viewport changed"
    assert (changed & head).sum() > 0.95 * changed.sum(), "the mask is drawn on the brain, not beside it"
    assert os.path.getsize(segmented["screenshot"]) > 50_000


def _seg_series(stack) -> dict[str, dict]:
    """Orthanc's SEG series: SeriesInstanceUID -> {Orthanc id, referenced series}."""
    out = {}
    for sid in requests.get(f"{stack['orthanc']}/series", timeout=30).json():
        info = requests.get(f"{stack['orthanc']}/series/{sid}", timeout=30).json()
        if info["MainDicomTags"].get("Modality") != "SEG":
            continue
        tags = requests.get(f"{stack['orthanc']}/instances/{info['Instances'][0]}/tags?simplify",
                            timeout=30).json()
        refs = [r["SeriesInstanceUID"] for r in tags.get("ReferencedSeriesSequence", [])]
        out[info["MainDicomTags"]["SeriesInstanceUID"]] = {"id": sid, "instance": info["Instances"][0],
                                                           "references": refs}
    return out


def test_label_saved_from_ohif_reaches_orthanc_as_seg_and_trains(stack, segmented):
    """The viewer's labelmap saved the MONAI Label client's way (`label.bin` to `PUT /datastore/label`)."""
    from lib.trainers.limnet import load_labelled_cases

    page, uid, server = segmented["page"], stack["series"], stack["server"]
    segs_before = _seg_series(stack)
    saved = page.evaluate("""async ([server, uid]) => {
        const a = window.services.segmentationService.getLabelmapVolume('1').voxelManager.getCompleteScalarDataArray();
        const form = new FormData();
        form.append('params', JSON.stringify({label_info: [{name: 'object'}]}));
        form.append('label', new Blob([a]), 'label.bin');
        const r = await fetch(server + '/datastore/label?image=' + encodeURIComponent(uid) + '&tag=final',
                              {method: 'PUT', body: form});
        return {status: r.status, body: await r.text()};
    }""", [server, uid])
    assert saved["status"] == 200, saved

    new = {k: v for k, v in _seg_series(stack).items() if k not in segs_before}
    assert len(new) == 1 and list(new.values())[0]["references"] == [uid], \
        "Orthanc holds one new DICOM SEG series and it references the image series"

    datalist = requests.get(f"{server}/datastore/?output=train", timeout=120).json()
    items = [d for d in datalist if os.path.basename(d["image"]).startswith(uid)]
    assert len(items) == 1, f"the trainer's datalist lists the image with its label: {datalist}"
    listing = requests.get(f"{server}/datastore/?output=all", timeout=30).json()
    assert "final" in listing["objects"][uid]["labels"], "the datastore lists the SEG as the image's final label"

    cases = load_labelled_cases(items)
    assert len(cases) == 1, "the trainer's loader takes the label (not skipped as mismatched)"
    trained_on = cases[0][1].label > 0
    assert np.array_equal(trained_on, segmented["labelmap"] > 0), \
        "what training reads is exactly the mask the viewer showed (same voxels, same order)"

    # one short training run on it, through the REST API (a subprocess of the server)
    t0 = time.time()
    r = requests.post(f"{server}/train/limnet", json={"max_epochs": 1, "steps_per_epoch": 2, "val_rounds": 1},
                      timeout=60)
    assert r.status_code == 200, r.text[:500]
    status = {}
    while time.time() - t0 < 300 and status.get("status") not in ("DONE", "ERROR"):
        time.sleep(2)
        status = requests.get(f"{server}/train/", timeout=30).json()
    stack["log"].seek(0)
    assert status.get("status") == "DONE", f"{status}\n" + stack["log"].read()[-3000:]
    stats = requests.get(f"{server}/info/", timeout=30).json()["train_stats"]["limnet"]
    print(f"training on the label saved from OHIF: {time.time() - t0:.1f} s; {stats}")
    assert stats["train_objects"] == 1 and stats["end"], stats


def test_ohif_export_dicom_seg_reaches_orthanc(stack, segmented):
    """OHIF's own export (the command behind "Export DICOM SEG") stores a SEG through the server's DICOMweb proxy."""
    import pydicom

    page, uid = segmented["page"], stack["series"]
    segs_before = _seg_series(stack)
    page.evaluate("""() => { window._limnetStored = window.commandsManager.runCommand('storeSegmentation',
        {segmentationId: '1', dataSource: window.extensionManager.getActiveDataSource()[0]}); }""")
    page.get_by_text("Create Report").wait_for(timeout=20_000)
    page.locator("input[type='text']:near(:text('Enter the report name'))").first.fill("LIM-Net (OHIF export)")
    page.locator("button:has-text('Save')").click()
    stored = page.evaluate("async () => { const r = await window._limnetStored; return r && r.SeriesInstanceUID; }")
    new = {k: v for k, v in _seg_series(stack).items() if k not in segs_before}
    assert list(new) == [stored] and new[stored]["references"] == [uid], \
        "the viewer's SEG is in Orthanc and references the image series"
    seg = new[stored]
    try:
        ds = pydicom.dcmread(io.BytesIO(requests.get(f"{stack['orthanc']}/instances/{seg['instance']}/file",
                                                     timeout=60).content))
        shown = segmented["labelmap"] > 0
        # the SEG as a volume on the image's grid: each frame at the slice of its position (+z, 5 mm apart)
        z0, dz = stack["z0"], stack["dz"]
        written = np.zeros_like(shown)
        for frame, fg in zip(ds.pixel_array.reshape(-1, ds.Rows, ds.Columns), ds.PerFrameFunctionalGroupsSequence):
            kk = int(round((float(fg.PlanePositionSequence[0].ImagePositionPatient[2]) - z0) / dz))
            written[:, :, kk] |= frame.T > 0
        if not np.array_equal(written, shown):
            if np.array_equal(written, shown[:, :, ::-1]):
                pytest.xfail("this OHIF build's DICOM SEG export writes the slices in reverse order (the frames "
                             "name the right positions, the pixel data are the mirrored slices; OHIF/Viewers#5038): "
                             "do not train on SEGs exported from the viewer")
            raise AssertionError("the exported SEG differs from the viewer's mask")
    finally:
        requests.delete(f"{stack['orthanc']}/series/{seg['id']}", timeout=30)  # keep it away from training
