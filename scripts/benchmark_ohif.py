"""OHIF's first click on CT-sized DICOMweb series: Orthanc (Debian's package) on loopback holding generated
512x512x300 CT series, the server reading it over DICOMweb, and the requests OHIF's MONAI Label panel sends.

Per series, one of two ways, alternating:
- cold: the first request the server sees for the series is the click (it downloads the series from Orthanc,
  converts it to NIfTI, reads and normalises it, then segments);
- opened: first the viewer's read of the series metadata through the server's DICOMweb proxy (what OHIF does when
  it opens a series), then, once the server has prepared the series in the background, the click. The time the
  preparation took after the proxied read is printed too: a user who clicks sooner waits for the rest of it.
Then one later click (a second positive point) for reference. Prints a table (median, min, max per way).

With `--viewer-load N`, instead: a viewer loading a series as OHIF does (its metadata, then every frame with 6
requests in flight, a browser's limit per host), N times from Orthanc directly and N times through the server's
DICOMweb proxy (`/proxy/dicom/...`, where OHIF's requests go), alternating, while a probe times `GET /info/` every
50 ms (how long the server keeps other requests, a click's answer among them, waiting).

    .venv/bin/python scripts/benchmark_ohif.py               # 4 series (2 per way)
    .venv/bin/python scripts/benchmark_ohif.py --series 6    # 3 per way
    .venv/bin/python scripts/benchmark_ohif.py --viewer-load 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time

import numpy as np
import orthanc
import requests
from benchmark_speed import phantom
from serverctl import free_port, start_server, stop_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ohif_click(url: str, uid: str, fg: list) -> float:
    """The request OHIF's panel sends (raw NRRD answer); seconds until the whole answer has arrived."""
    params = {"foreground": fg, "background": [], "result_extension": ".nrrd", "result_dtype": "uint8",
              "result_compress": False, "restore_label_idx": False}
    t = time.perf_counter()
    r = requests.post(f"{url}/infer/limnet?image={uid}&output=image", data={"params": json.dumps(params)},
                      timeout=600)
    r.raise_for_status()
    return time.perf_counter() - t


def wait_for_log(path: str, text: str, timeout: float = 300) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with open(path, errors="replace") as f:
            if any(text in line and "prefetched" in line for line in f):
                return True
        time.sleep(0.05)
    return False


def fmt(v: list[float]) -> str:
    return f"{np.median(v):.2f} | {min(v):.2f} | {max(v):.2f}"


def load_series(base: str, study: str, uid: str, probe_url: str) -> tuple[float, int, list[float]]:
    """(seconds to read a series' metadata and every frame as a viewer does, bytes read, `probe_url` latencies)."""
    from concurrent.futures import ThreadPoolExecutor

    stop, latencies = threading.Event(), []

    def probe() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            requests.get(probe_url, timeout=120)
            latencies.append(time.perf_counter() - t)
            time.sleep(0.05)

    prober = threading.Thread(target=probe)
    prober.start()
    t0 = time.perf_counter()
    try:
        meta = requests.get(f"{base}/studies/{study}/series/{uid}/metadata", timeout=120)
        meta.raise_for_status()
        accept = {"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}

        def frame(sop: str) -> int:
            r = requests.get(f"{base}/studies/{study}/series/{uid}/instances/{sop}/frames/1", headers=accept,
                             timeout=120)
            r.raise_for_status()
            return len(r.content)

        with ThreadPoolExecutor(6) as pool:
            size = sum(pool.map(frame, [m["00080018"]["Value"][0] for m in meta.json()])) + len(meta.content)
        return time.perf_counter() - t0, size, latencies
    finally:
        stop.set()
        prober.join()


def viewer_load(url: str, ourl: str, study: str, uid: str, reps: int) -> None:
    rows: dict[str, dict[str, list]] = {"Orthanc directly": {"s": [], "probe": []},
                                        "through the server's proxy": {"s": [], "probe": []}}
    size = 0
    for _ in range(reps):
        for way, base in (("Orthanc directly", f"{ourl}/dicom-web"),
                          ("through the server's proxy", f"{url}/proxy/dicom/wado")):
            seconds, size, probe = load_series(base, study, uid, f"{url}/info/")
            rows[way]["s"].append(seconds)
            rows[way]["probe"] += probe
            print(f"  {way}: {seconds:.2f} s", flush=True)
    print("\n| series read from | loads | bytes | seconds, median | min | max | GET /info/ meanwhile ms, median | max |")
    print("|---" * 8 + "|")
    for way, r in rows.items():
        print(f"| {way} | {len(r['s'])} | {size:,} | {fmt(r['s'])} | {np.median(r['probe']) * 1000:.0f} | "
              f"{max(r['probe']) * 1000:.0f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--series", type=int, default=4)
    p.add_argument("--shape", default="512,512,300")
    p.add_argument("--viewer-load", type=int, default=0, metavar="N",
                   help="only time a viewer's loads of one series, N times each way")
    args = p.parse_args()
    if args.viewer_load:
        args.series = 1
    shape = tuple(int(s) for s in args.shape.split(","))
    work = tempfile.mkdtemp(prefix="limnet-ohif-bench-")
    olog = open(os.path.join(work, "orthanc.log"), "w")
    port = free_port()
    oproc = orthanc.start(work, port, free_port(), log=olog)
    ourl = f"http://127.0.0.1:{port}"
    series, clicks = [], []
    try:
        for i in range(args.series):
            img, gt = phantom(shape, 30, seed=i)
            folder = os.path.join(work, f"s{i}")
            uid = orthanc.write_series(img, np.diag([0.7, 0.7, 1.5, 1.0]), folder, "CT", f"bench{i}")
            orthanc.upload(ourl, folder)
            shutil.rmtree(folder)
            centre = [int(round(v)) for v in np.argwhere(gt).mean(0)]
            study = requests.get(f"{ourl}/dicom-web/series", params={"SeriesInstanceUID": uid}).json()
            series.append((uid, study[0]["0020000D"]["Value"][0]))
            clicks.append((centre, [centre[0] + 8, centre[1], centre[2]]))
        app = os.path.join(work, "limnet")
        shutil.copytree(os.path.join(ROOT, "apps", "limnet"), app, ignore=shutil.ignore_patterns("logs", "__pycache__"))
        log_path = os.path.join(work, "server.log")
        log = open(log_path, "w")
        proc, url = start_server(app, f"{ourl}/dicom-web", log=log, MONAI_LABEL_AUTO_UPDATE_SCORING="false",
                                 HOME=work)
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M')}; "
              f"series {'x'.join(map(str, shape))} int16 CT, Orthanc on loopback")
        if args.viewer_load:
            try:
                viewer_load(url, ourl, series[0][1], series[0][0], args.viewer_load)
            finally:
                stop_server(proc)
                log.close()
            return
        rows: dict[str, dict[str, list[float]]] = {"cold": {"first": [], "later": []},
                                                   "opened": {"first": [], "later": [], "prepare": []}}
        try:
            for i, ((uid, study), (first, second)) in enumerate(zip(series, clicks)):
                way = "cold" if i % 2 == 0 else "opened"
                if way == "opened":
                    t = time.perf_counter()
                    requests.get(f"{url}/proxy/dicom/wado/studies/{study}/series/{uid}/metadata",
                                 timeout=120).raise_for_status()
                    if not wait_for_log(log_path, uid):
                        raise SystemExit(f"no prefetch of {uid} within 300 s (see {log_path})")
                    rows[way]["prepare"].append(time.perf_counter() - t)
                rows[way]["first"].append(ohif_click(url, uid, [first]))
                rows[way]["later"].append(ohif_click(url, uid, [first, second]))
        finally:
            stop_server(proc)
            log.close()
    finally:
        os.killpg(oproc.pid, 15)
        oproc.wait(30)
        olog.close()
        shutil.rmtree(work, ignore_errors=True)
    print("\n| way | series | preparation after the viewer's read s (median, min, max) | first click s, median | min "
          "| max | second click s, median | min | max |")
    print("|---" * 9 + "|")
    for way, r in rows.items():
        prep = fmt(r["prepare"]) if r.get("prepare") else "- | - | -"
        print(f"| {way} | {len(r['first'])} | {prep.replace(' | ', ', ')} | {fmt(r['first'])} | {fmt(r['later'])} |")


if __name__ == "__main__":
    sys.exit(main())
