"""A click's time to its whole answer over links of a given bandwidth, raw against gzip-encoded answers, in the
same run. Prints a table (median, min, max of the later clicks; bytes on the wire).

A click's answer is a whole label volume (78 MB for a 512x512x300 CT). Slicer's client gets it raw; a browser
(OHIF) asks for gzip and, from a server on another machine, gets it deflated (`lib.server_patches.CompressAnswers`).
Here two servers run on this machine on the same studies, one with `--conf answer_gzip never` (raw answers, as
before) and one with `always`; the client asks both for gzip, as a browser does, and reaches them either directly
(loopback) or through a relay on loopback that paces the server's bytes to the link's bandwidth (`--links`, Mbit/s;
bandwidth only, no added latency). Per link and server a fresh interaction clicks the same robot sequence on an
image the server has prepared (`GET /datastore/image` first, as Slicer does). The client is Python (`requests`;
urllib3 inflates with zlib), with `--client chromium` Debian's Chromium through Playwright sending OHIF's request
with `fetch` from a page of the server's origin (the browser inflates), or with `--client slicer` MONAI Label's
own client as Slicer's plugin sends the click (no HTTP gzip: the `always` server answers with a gzip NRRD), the
answer read back into an array with pynrrd. Dice of the last answer against
the truth is printed, so that the two ways are seen to carry the same mask.

    .venv/bin/python scripts/benchmark_network.py                  # the 60-voxel phantom, loopback, 1000, 100 Mbit/s
    .venv/bin/python scripts/benchmark_network.py --real           # and the held-out thin-slice chest CT
    .venv/bin/python scripts/benchmark_network.py --real --client chromium
    .venv/bin/python scripts/benchmark_network.py --real --client slicer
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import nibabel as nib
import numpy as np
import psutil
import requests
from benchmark_speed import fmt, mask_dice, phantom, real_case, robot_clicks
from relay import Relay
from serverctl import start_server, stop_server

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "apps", "limnet"))
from lib.data.robot import dice  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def click(url: str, image: str, fg, bg, client: str) -> tuple[float, int, bytes]:
    """(seconds until the whole answer is read and inflated, bytes on the wire, the raw NRRD answer), asking for
    gzip as a browser does."""
    params = {"foreground": fg, "background": bg, "client_id": client, "result_extension": ".nrrd",
              "result_compress": False}
    t = time.perf_counter()
    r = requests.post(f"{url}/infer/limnet?image={image}&output=image", data={"params": json.dumps(params)},
                      headers={"Accept-Encoding": "gzip, deflate"}, stream=True)
    r.raise_for_status()
    content = r.raw.read(decode_content=True)
    seconds = time.perf_counter() - t
    return seconds, r.raw.tell(), content


def slicer_click(url: str, image: str, fg, bg, client: str) -> tuple[float, int, np.ndarray]:
    """The same, sent by MONAI Label's client as Slicer's plugin sends it (http.client, no HTTP gzip; the answer
    saved to a file) and read back as an array (`nrrd.read`, inflating a gzip NRRD as Slicer's reader would)."""
    import nrrd
    from monailabel.client import MONAILabelClient

    t = time.perf_counter()
    path, _ = MONAILabelClient(url).infer("limnet", image, {"foreground": fg, "background": bg, "client_id": client,
                                                            "label": "target", "result_extension": ".nrrd",
                                                            "result_dtype": "uint8"})
    mask = nrrd.read(path)[0]
    seconds = time.perf_counter() - t
    size = os.path.getsize(path)
    os.remove(path)
    return seconds, size, mask


BROWSER_CLICKS = """async ([image, clicks, client]) => {
  const out = [];
  for (let i = 1; i <= clicks.length; i++) {
    const fd = new FormData();
    fd.append('params', JSON.stringify({foreground: clicks.slice(0, i), background: [], client_id: client,
      result_extension: '.nrrd', result_dtype: 'uint8', result_compress: false, restore_label_idx: false}));
    const url = `/infer/limnet?image=${image}&output=image&n=${i}`;
    const t = performance.now();
    const r = await fetch(url, {method: 'POST', body: fd});
    const body = new Uint8Array(await r.arrayBuffer());
    const seconds = (performance.now() - t) / 1000;
    const timing = performance.getEntriesByName(new URL(url, location.href).href).pop();
    let b64 = '';
    if (i === clicks.length) {  // the last answer comes back for its Dice
      for (let k = 0; k < body.length; k += 0x8000) b64 += String.fromCharCode.apply(null, body.subarray(k, k + 0x8000));
      b64 = btoa(b64);
    }
    out.push([seconds, timing ? timing.encodedBodySize : -1, b64]);
  }
  return out;
}"""


def browser_clicks(browser, url: str, image: str, clicks: list, client: str) -> tuple[list, list, bytes]:
    """The same clicks sent by Chromium's `fetch` (as OHIF's panel sends them) from a page of `url`'s origin."""
    import base64

    page = browser.new_page()
    try:
        page.goto(url + "/info/")
        out = page.evaluate(BROWSER_CLICKS, [image, clicks, client])
    finally:
        page.close()
    return [o[0] for o in out], [o[1] for o in out], base64.b64decode(out[-1][2])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clicks", type=int, default=5)
    p.add_argument("--links", default="1000,100", help="paced links to add to loopback, Mbit/s, comma-separated")
    p.add_argument("--real", action="store_true", help="add the held-out thin-slice chest CT with its lung tumour")
    p.add_argument("--client", choices=("python", "chromium", "slicer"), default="python",
                   help="python (requests), Debian's chromium through Playwright (fetch, as OHIF), or slicer "
                        "(MONAI Label's client, as Slicer's plugin; the answer read back with pynrrd)")
    args = p.parse_args()
    links = [0.0] + [float(v) for v in args.links.split(",") if v.strip()]
    work = tempfile.mkdtemp(prefix="limnet-bench-")
    # monailabel.client saves an answer under tempfile's folder with the server's file name: keep them apart
    tempfile.tempdir = os.path.join(work, "client")
    os.makedirs(tempfile.tempdir)
    studies = os.path.join(work, "studies")
    os.makedirs(studies)
    truth = {}
    img, gt = phantom((512, 512, 300), 60)
    nib.save(nib.Nifti1Image(np.round(img).astype(np.int16), np.diag([0.7, 0.7, 1.5, 1])),
             os.path.join(studies, "r60.nii.gz"))
    truth["r60"] = gt
    if args.real:
        img, gt, affine = real_case("rider_lung_tumour")
        nib.save(nib.Nifti1Image(img.astype(np.int16), affine), os.path.join(studies, "rider_lung_tumour.nii.gz"))
        truth["rider_lung_tumour"] = gt
    del img
    # two servers on the same studies: one never compresses (the answers before), one always does (the relay's
    # connections come from loopback, which the default would answer raw)
    servers, logs = {}, []
    for encoding, mode in (("raw", "never"), ("gzip", "always")):
        app = os.path.join(work, f"limnet_{encoding}")
        shutil.copytree(os.path.join(ROOT, "apps", "limnet"), app,
                        ignore=shutil.ignore_patterns("logs", "__pycache__"))
        logs.append(open(os.path.join(work, f"server_{encoding}.log"), "w"))
        servers[encoding] = start_server(app, studies, log=logs[-1], conf={"answer_gzip": mode},
                                         MONAI_LABEL_AUTO_UPDATE_SCORING="false")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GB; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; client {args.client}")
    relays = {(encoding, mbit): Relay(int(url.rsplit(":", 1)[1]), mbit)
              for encoding, (_, url) in servers.items() for mbit in links if mbit}
    rows = []
    playwright = browser = None
    try:
        if args.client == "chromium":
            from playwright.sync_api import sync_playwright

            playwright = sync_playwright().start()
            browser = playwright.chromium.launch(
                executable_path=os.environ.get("LIMNET_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium",
                headless=True, args=["--no-sandbox", "--disable-background-networking", "--disable-component-update",
                                     "--disable-sync", "--disable-dev-shm-usage"])
        for name, gt in truth.items():
            for _, url in servers.values():  # the client opens the image on both servers
                requests.get(f"{url}/datastore/image?image={name}").raise_for_status()
            clicks = robot_clicks(gt, args.clicks)
            for mbit in links:
                for encoding, (_, url) in servers.items():
                    base = f"http://127.0.0.1:{relays[(encoding, mbit)].port}" if mbit else url
                    client = f"net-{name}-{mbit}-{encoding}"
                    if browser is not None:
                        times, sizes, content = browser_clicks(browser, base, name, [c for c, _ in clicks], client)
                    else:
                        fg, times, sizes = [], [], []
                        for c, _ in clicks:
                            fg.append(c)
                            send = slicer_click if args.client == "slicer" else click
                            seconds, size, content = send(base, name, list(fg), [], client)
                            times.append(seconds)
                            sizes.append(size)
                    d = dice(content > 0, gt) if isinstance(content, np.ndarray) else mask_dice(content, gt)
                    rows.append((name, mbit, encoding, times, sizes, d))
                    print(f"  {name} {mbit or 'loopback'} {encoding}: " + " ".join(f"{t:.2f}" for t in times),
                          flush=True)
    finally:
        if browser is not None:
            browser.close()
            playwright.stop()
        for relay in relays.values():
            relay.close()
        for proc, _ in servers.values():
            stop_server(proc)
        for log in logs:
            log.close()
        shutil.rmtree(work, ignore_errors=True)
    print("\n| volume | link | answer | bytes on the wire (median) | first click s | later clicks s, median | min | max "
          "| raw / gzip (later, median) | LIM-Net Dice, last click |")
    print("|---" * 10 + "|")
    medians = {(r[0], r[1], r[2]): np.median(r[3][1:]) for r in rows}
    for name, mbit, encoding, times, sizes, d in rows:
        ratio = medians[(name, mbit, "raw")] / medians[(name, mbit, "gzip")]
        print(f"| {name} | {f'{mbit:g} Mbit/s' if mbit else 'loopback'} | {encoding} "
              f"| {int(np.median(sizes)):,} | {times[0]:.2f} | {fmt(times[1:])} | "
              f"{f'{ratio:.2f}x' if encoding == 'gzip' else ''} | {d:.3f} |")


if __name__ == "__main__":
    main()
