"""Speed and memory through the REST API on CT-sized volumes, side by side with a classical flood-fill click tool
given the same clicks in the same run. Prints tables (median, min, max of several clicks).

Per volume: cold first clicks (the image is read and normalised inside the request), one on each of `--cold`
copies of the volume (each a fresh image to the server; median, min and max), then a client that fetches
the image as Slicer does (`GET /datastore/image`, which also starts the server's background prefetch) and clicks
with the robot: its first click (image prepared, new interaction) and later clicks. Dice of the last click against
the phantom's truth is printed too, so that speed is never bought with a wrong mask.

The phantoms are stored as CT is: int16 Hounsfield units in a `.nii.gz` (scanners' DICOM and every converter give
int16); the last row stores one as float32 instead (twice the bytes to inflate; scaled where read until its first
click is answered, then scaled to float16 whole in the background).

    .venv/bin/python scripts/benchmark_speed.py            # 512x512x300, objects of several extents
    .venv/bin/python scripts/benchmark_speed.py --quick    # smaller, for a smoke run
    .venv/bin/python scripts/benchmark_speed.py --real --volumes rider_lung_tumour   # one real CT row alone

`--real` adds a real scan: the held-out thin-slice chest CT (512 x 512 x 236, 1.25 mm, int16 HU) with its
hand-drawn 132,507-voxel lung tumour (`lib.data.heldout`, fetched once with pip), clicked the same way.
"""

from __future__ import annotations

import argparse
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
from scipy import ndimage as ndi
from serverctl import start_server, stop_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "apps", "limnet"))
from lib.data.baseline import FloodFillTool  # noqa: E402
from lib.data.robot import dice  # noqa: E402


def phantom(shape: tuple[int, int, int], radius: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like volume (HU) with a body, noise, distractors and one ellipsoidal target of in-plane `radius`."""
    rng = np.random.default_rng(seed)
    x, y, z = np.ogrid[: shape[0], : shape[1], : shape[2]]
    cx, cy, cz = shape[0] / 2, shape[1] / 2, shape[2] / 2
    body = ((x - cx) / (shape[0] * 0.45)) ** 2 + ((y - cy) / (shape[1] * 0.4)) ** 2 < 1
    img = np.empty(shape, np.float32)
    img[:] = np.where(body, 40.0, -1000.0)
    rz = max(3.0, radius * 0.4)
    target = ((x - cx) / radius) ** 2 + ((y - cy) / (radius * 0.8)) ** 2 + ((z - cz) / rz) ** 2 < 1
    for _ in range(4):
        dx, dy = rng.uniform(-0.3, 0.3, 2) * np.array(shape[:2])
        r = rng.uniform(10, 40)
        img[((x - cx - dx) / r) ** 2 + ((y - cy - dy) / r) ** 2 + ((z - cz) / (r * 2)) ** 2 < 1] = rng.uniform(-100, 200)
    img[target] = 120.0
    img += rng.normal(0, 12, img.shape).astype(np.float32)
    return img, target


def real_case(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(HU volume, truth, RAS affine) of a held-out real scan."""
    from lib.data.heldout import heldout_cases

    case = {c.name: c for c in heldout_cases(sources=("rider",))}[name]
    return case.image, case.label > 0, case.affine


def rss_mb(pid: int) -> float:
    p = psutil.Process(pid)
    return sum(q.memory_info().rss for q in [p] + p.children(recursive=True)) / 2**20


def infer(url: str, image: str, fg, bg, client: str) -> tuple[float, bytes]:
    import json

    t = time.perf_counter()
    r = requests.post(f"{url}/infer/limnet?image={image}&output=image", stream=True,
                      data={"params": json.dumps({"foreground": fg, "background": bg, "client_id": client,
                                                  "result_extension": ".nrrd", "result_compress": False})})
    r.raise_for_status()
    # the body in one read, as MONAI Label's own client (`http.client`'s `response.read()`, used by Slicer) and a
    # browser read it; `requests`' `.content` joins 10 KB chunks in Python: 0.2-0.4 s more for a 78 MB answer here
    content = r.raw.read(decode_content=True)
    return time.perf_counter() - t, content


def last_inferer_seconds(log_path: str) -> float:
    """The network's share of the last request: the `Inferer:` latency MONAI Label logs for it (the rest of a
    click is writing the answer and sending it)."""
    with open(log_path, errors="replace") as f:
        lines = [ln for ln in f if "Latencies =>" in ln]
    return float(lines[-1].split("Inferer:")[1].split(";")[0])


def mask_dice(content: bytes, gt: np.ndarray) -> float:
    """Dice of a raw NRRD answer against the truth (the voxel order of the image, as OHIF reads it)."""
    import nrrd

    path = tempfile.mktemp(suffix=".nrrd")
    with open(path, "wb") as f:
        f.write(content)
    m = nrrd.read(path)[0] > 0
    os.remove(path)
    return dice(m, gt)


def robot_clicks(gt: np.ndarray, n: int) -> list[tuple[list, bool]]:
    """A fixed click sequence: the centre first, then alternating boundary corrections inside/outside."""
    c = [int(v) for v in ndi.center_of_mass(gt)]
    zs = np.nonzero(gt.any((0, 1)))[0]
    clicks = [(c, True)]
    for i in range(1, n):
        z = int(zs[int(len(zs) * (0.25 + 0.5 * (i % 2)))])
        xs, ys = np.nonzero(gt[:, :, z])
        clicks.append(([int(xs.mean()), int(ys.mean()), z], True))
    return clicks


def fmt(v: list[float]) -> str:
    return f"{np.median(v):.2f} | {min(v):.2f} | {max(v):.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--clicks", type=int, default=5)
    p.add_argument("--cold", type=int, default=3, help="fresh copies of each volume for the cold first click")
    p.add_argument("--real", action="store_true", help="add the held-out thin-slice chest CT with its lung tumour")
    p.add_argument("--volumes", default="", help="comma-separated row names to run (default: all)")
    args = p.parse_args()
    big = (256, 256, 100) if args.quick else (512, 512, 300)
    # object extent grows at a fixed CT size; then one object in volumes of growing size
    volumes = [(f"r{r}", big, r, np.int16) for r in ([10, 30] if args.quick else [10, 30, 60, 120])]
    volumes += [(f"r20_{'x'.join(map(str, s))}", s, 20, np.int16) for s in [(128, 128, 60), (256, 256, 150), big]]
    volumes.append((f"r20_{'x'.join(map(str, big))}_float32", big, 20, np.float32))
    if args.real:
        volumes.append(("rider_lung_tumour", None, None, np.int16))
    wanted = {v.strip() for v in args.volumes.split(",") if v.strip()}
    if wanted - {v[0] for v in volumes}:
        raise SystemExit(f"unknown volumes {sorted(wanted - {v[0] for v in volumes})}")
    volumes = [v for v in volumes if not wanted or v[0] in wanted]
    work = tempfile.mkdtemp(prefix="limnet-bench-")
    studies = os.path.join(work, "studies")
    os.makedirs(studies)
    truth = {}
    for name, shape, r, dtype in volumes:
        if shape is None:  # the real scan
            img, gt, affine = real_case(name)
        else:
            img, gt = phantom(shape, r)
            affine = np.diag([0.7, 0.7, 1.5, 1])
        if dtype != np.float32:
            img = np.round(img).astype(dtype)  # HU, as CT is stored
        nib.save(nib.Nifti1Image(img, affine), os.path.join(studies, f"{name}.nii.gz"))
        for i in range(args.cold):  # the same file under other names: images the server has not seen
            os.link(os.path.join(studies, f"{name}.nii.gz"), os.path.join(studies, f"{name}_cold{i}.nii.gz"))
        truth[name] = (img, gt)
    app = os.path.join(work, "limnet")
    shutil.copytree(os.path.join(ROOT, "apps", "limnet"), app, ignore=shutil.ignore_patterns("logs", "__pycache__"))
    # no start-up scoring job: it would probe every volume in the background while we time clicks
    log_path = os.path.join(work, "server.log")
    log = open(log_path, "w")
    proc, url = start_server(app, studies, log=log, MONAI_LABEL_AUTO_UPDATE_SCORING="false")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GB; "
          f"{time.strftime('%Y-%m-%d')}; phantoms {big[0]}x{big[1]}x{big[2]}")
    rows = []
    try:
        base_rss = rss_mb(proc.pid)
        for name, (img, gt) in truth.items():
            clicks = robot_clicks(gt, args.clicks)
            cold = [infer(url, f"{name}_cold{i}", [clicks[0][0]], [], client=f"cold-{name}-{i}")[0]
                    for i in range(args.cold)]
            requests.get(f"{url}/datastore/image?image={name}").raise_for_status()  # the client opens the image
            lim, ff, engine = [], [], []
            tool = FloodFillTool(img)  # scaling and smoothing precomputed, not timed
            fg, bg = [], []
            for c, positive in clicks:
                (fg if positive else bg).append(c)
                seconds, content = infer(url, name, list(fg), list(bg), client=f"bench-{name}")
                lim.append(seconds)
                engine.append(last_inferer_seconds(log_path))
                t = time.perf_counter()
                flooded = tool(fg, bg)
                ff.append(time.perf_counter() - t)
            rows.append((name, img.shape, int(gt.sum()), cold, lim, engine, ff, mask_dice(content, gt),
                         dice(flooded, gt)))
            if len(rows) == 1:  # the cold copies and the robot's image: interactions on that many CT-sized images
                first_open = (requests.get(f"{url}/info/").json()["models"]["limnet"]["open_interactions"],
                              rss_mb(proc.pid), name)
        open_rss = rss_mb(proc.pid)
        n_open = requests.get(f"{url}/info/").json()["models"]["limnet"]["open_interactions"]
    finally:
        stop_server(proc)
        log.close()
        shutil.rmtree(work, ignore_errors=True)
    print("\n| volume | shape | object voxels | cold first click s, median | min | max | first click s "
          "| later clicks s, median | min | max "
          "| of which network s (later, median) | flood fill s, median | min | max | flood / LIM-Net (later, REST) "
          "| flood / network | LIM-Net Dice, last click | flood fill Dice, last click |")
    print("|---" * 18 + "|")
    for name, shape, n, cold, lim, engine, ff, d, fd in rows:
        print(f"| {name} | {'x'.join(map(str, shape))} | {n} | {fmt(cold)} | {lim[0]:.2f} | {fmt(lim[1:])} | "
              f"{np.median(engine[1:]):.2f} | {fmt(ff)} | {np.median(ff) / np.median(lim[1:]):.2f}x | "
              f"{np.median(ff) / np.median(engine[1:]):.2f}x | {d:.3f} | {fd:.3f} |")
    print(f"\nserver memory: {base_rss:.0f} MB at start, {open_rss:.0f} MB with {n_open} interactions open "
          f"(the store keeps at most max_interactions; {(args.cold + 1) * len(rows)} were started on "
          f"{(args.cold + 1) * len(rows)} images); {first_open[1]:.0f} MB with {first_open[0]} open after the "
          f"first volume's row ({first_open[2]}: one image each)")


if __name__ == "__main__":
    main()
